"""MLflow as a user reads it, through the MLflow API (a file store: the transport code is the same as over
HTTP): an experiment that opens on its runs table, trial runs whose outcome is a tag and a status of their own
(stopped_early only on stopped trials, baseline only on baselines), sampled shares named as shares, realised
keep ratios, labelled simulated numbers, no duplicate or misleading metric names; figures whose memory axis
unit suits the numbers and whose labels stay inside the saved image. (The whole chain on a real search:
tests/search/test_submit.py; the same views in a real browser: bench/ui_check.py.)"""
import json

import pytest

from search import _plots, _report, _tracking



def _row(trial_id, status, name=None, started=None, **extra):
    return {"trial_id": trial_id, "name": name or trial_id, "status": status, "params_json": json.dumps(
        {"attn_share_0": 0.86, "mlp_share_0": 0.5, "criterion": "l1"}), "_history": [(0, {"score": 0.1,
        "params": 1234.0, "composite_score": 0.1, "peak_memory_bytes": 5e5, "kept_attn_L00": 0.64,
        "kept_mlp_L00": 0.5, "kept_fraction": 0.645833})], "_started": started, "_ended": started and started + 2.5,
        **extra}


def test_trial_runs_read_right_in_mlflow(store):
    uri, exp_id, parent = store
    c = _tracking.client(uri)
    assert c.get_experiment(exp_id).tags[_tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    rows = [_row("t1", "complete", started=1.7e9), _row("t2", "stopped early", started=1.7e9 + 60),
            _row("t3", "failed", reason="OOM"), _row("t4", "complete", name="owl")]
    _tracking.reconcile(uri, exp_id, parent, [_report._trial_for_mlflow(r) for r in rows])
    runs = {r.data.tags[_tracking.TRIAL_TAG]: r for r in
            c.search_runs([exp_id], filter_string=f"tags.`{_tracking.PARENT_TAG}` = '{parent}'")}
    # a trial ASHA stopped is not a failure: FINISHED, told apart by its outcome tag
    assert {t: (r.info.status, r.data.tags.get("outcome"), r.data.tags.get("stopped_early"))
            for t, r in runs.items()} == {"t1": ("FINISHED", "complete", None),
                                          "t2": ("FINISHED", "stopped early", "true"),
                                          "t3": ("FAILED", "failed", None), "t4": ("FINISHED", "complete", None)}
    assert "baseline" not in runs["t1"].data.tags and runs["t4"].data.tags["baseline"] == "owl"
    assert runs["t3"].data.tags["failure_reason"] == "OOM"
    # one set of names (Optuna's, results.json's), and what the plan kept beside the sampled shares
    assert runs["t1"].data.params == {"attn_share_0": "0.86", "mlp_share_0": "0.5", "criterion": "l1",
                                      "kept_attn_L00": "0.64", "kept_mlp_L00": "0.5", "kept_fraction": "0.6458"}
    metrics = runs["t1"].data.metrics
    assert metrics["param_count"] == 1234 and metrics["simulated/peak_memory_bytes"] == 5e5
    assert not {"params", "composite_score", "peak_memory_bytes", "kept_attn_L00", "kept_fraction"} & set(metrics)
    # each run's start and end are its trial's own, not the time the driver reconciled
    assert (runs["t1"].info.start_time, runs["t1"].info.end_time) == (1.7e12, 1.7e12 + 2500)
    assert (runs["t2"].info.start_time, runs["t2"].info.end_time) == (1.7e12 + 60000, 1.7e12 + 62500)


def test_reconciling_keeps_the_end_time_a_trial_set_itself(store):
    uri, exp_id, parent = store
    c = _tracking.client(uri)
    run = _tracking.TrialRun(uri, exp_id, parent, "t1", "trial-t1")
    run._do(("params", {"attn_share_0": 0.5}))
    run.finish("FINISHED")
    own = c.get_run(run.run_id).info
    _tracking.reconcile(uri, exp_id, parent, [_report._trial_for_mlflow(_row("t1", "stopped early", started=1.0))])
    info = c.get_run(run.run_id).info
    assert (info.start_time, info.end_time, info.status) == (own.start_time, own.end_time, "FINISHED")


def test_runs_table_view_shows_what_trials_are_compared_by(store):
    """The printed URL opens the runs table (not MLflow 3's GenAI overview) with the view saved as an experiment
    tag: score, KL, simulated memory and parameter count as columns, best score first."""
    uri, exp_id, parent = store
    tags = _tracking.client(uri).get_experiment(exp_id).tags
    view = json.loads(tags["mlflow.sharedViewState.edgeprune"])
    assert view["orderByKey"] == "metrics.`score`" and view["orderByAsc"] is False
    assert {"metrics.`score`", "metrics.`kl_to_teacher`", "metrics.`simulated/peak_memory_bytes`",
            "metrics.`param_count`", "params.`kept_fraction`", "tags.`outcome`"} <= set(view["selectedColumns"])
    assert _tracking.runs_url("http://127.0.0.1:5001/", exp_id) == \
        f"http://127.0.0.1:5001/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=edgeprune"
    # every metric column the view names is one a trial logs
    logged = _tracking.mlflow_metrics({"score": 1, "kl_to_teacher": 1, "peak_memory_bytes": 1, "params": 1,
                                       "proxy_accuracy": 0})
    assert set(_tracking.VIEW_METRICS) <= set(logged)


def test_parent_run_gets_configuration_and_a_readable_top_k(store, tmp_path):
    uri, exp_id, parent = store
    _tracking.log_parent(uri, parent, metrics={}, texts={}, figures={}, params={"model": "stories260k", "trials": 60})
    _tracking.log_parent(uri, parent, metrics={}, texts={}, figures={}, params={"model": "stories260k", "seed": 0})
    assert _tracking.client(uri).get_run(parent).data.params == {"model": "stories260k", "trials": "60", "seed": "0"}
    summary = {"top": [{"rank": 1, "name": "owl", "trial_id": "t4", "score": -2.4, "proxy_accuracy": 0.125,
                        "kl_to_teacher": 1.74, "peak_memory_bytes": 6.9 * 2**20, "params": 175168, "folder": "owl"}]}
    summary["top"].append({**summary["top"][0], "rank": 2, "name": "t5", "peak_memory_bytes": 6.9 * 2**20 + 512})
    table = _report.top_table(summary)
    assert "| 1 | owl | -2.4000 | 0.1250 | 1.7400 | 6.900 MiB (7,235,174 B) | 175,168 | `owl` |" in table
    assert "| 2 | t5 | -2.4000 | 0.1250 | 1.7400 | 6.900 MiB (7,235,686 B) |" in table    # told apart
    assert "KL to teacher" in table and "peak memory (simulated)" in table


@pytest.mark.parametrize("peak, unit", [(6.5e5, "KiB"), (7.2e6, "MiB"), (9e9, "GiB")])
def test_score_vs_memory_units_labels_inside_and_every_group_drawn(peak, unit):
    rows = [{"trial_id": f"t{i}", "name": f"t{i}", "score": -i, "peak_memory_bytes": peak * (1 - i / 100),
             "status": "complete" if i % 2 else "stopped early"} for i in range(6)]
    top = [{**rows[1], "rank": 1}, {**rows[3], "rank": 2}]
    fig = _plots.score_vs_memory_figure(rows, top=top, budget_bytes=peak, front=rows[1:2], title="exp: 6 trials")
    ax = fig.axes[0]
    assert ax.get_xlabel() == f"simulated peak memory ({unit})" and ax.get_title() == "exp: 6 trials"
    xs = [x for coll in ax.collections for x, _ in coll.get_offsets()]
    assert 0.5 < max(xs) <= 1024                                     # numbers read in the chosen unit
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["complete (3)", "stopped early (3)", "Pareto front", "top k", "budget"]
    _inside(fig)


def test_top_k_labels_never_print_over_each_other():
    """The top candidates of a search sit at nearly the same memory and score: each label gets its own place."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    rows = [{"trial_id": f"t{i}", "name": f"trial-{i:05d}", "score": -0.81 - i * 1e-4,
             "peak_memory_bytes": 3459456 - 256 * i, "status": "complete"} for i in range(8)]
    top = [{**r, "rank": k + 1} for k, r in enumerate(rows[:5])]
    fig = _plots.score_vs_memory_figure(rows, top=top, budget_bytes=3459500, front=rows[:1], title="t")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    boxes = [Text.get_window_extent(t, canvas.get_renderer()) for t in fig.axes[0].texts]   # the text, no line
    assert len(boxes) == 5 and all(fig.bbox.x0 <= b.x0 and b.x1 <= fig.bbox.x1 and fig.bbox.y0 <= b.y0
                                   and b.y1 <= fig.bbox.y1 for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert "3.2992 MiB" in fig.axes[0].texts[0].get_text() and "3.2982 MiB" in fig.axes[0].texts[4].get_text()


def test_kept_ratio_plot_keeps_its_labels_inside():
    from compress import LayerShape, ModelShapes
    layer = LayerShape(8, 4, 172)
    base = ModelShapes("llama", 512, 64, 8, True, 512, (layer,) * 5)
    fig = _plots.kept_ratio_figure([LayerShape(4, 2, 86)] * 5, base, 0.55)
    assert fig.axes[0].get_xlabel() == "layer"
    _inside(fig)


def _inside(fig):
    """The title, axis labels and legend lie within the saved image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)          # what savefig (MLflow's log_figure) renders with
    canvas.draw()
    renderer, box = canvas.get_renderer(), fig.bbox
    ax = fig.axes[0]
    texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_legend().get_texts()]
    for t in texts:
        if t.get_text():
            e = t.get_window_extent(renderer)
            assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, t.get_text()


def test_study_names_its_objectives_and_keeps_the_realised_plan(tmp_path):
    import optuna
    from search._searcher import ConstrainedOptunaSearch
    searcher = ConstrainedOptunaSearch(space=lambda t: t.suggest_float("attn_share_0", 0, 1) and None, metric="score",
                                       mode="max", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"),
                                       study_name="s", study_attrs={"model": "stories260k", "budget": "3.3 MiB"})
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"score": 0.5, "kept_attn_L00": 0.64, "kept_mlp_L00": 0.5, "kept_fraction": 0.6,
                                     "training_iteration": 1, "constraint": -0.1})
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert study.metric_names == ["score"]
    attrs = study.trials[0].user_attrs
    assert attrs["realised_attn_keep"] == [0.64] and attrs["realised_mlp_keep"] == [0.5]
    assert attrs["kept_fraction"] == 0.6
    assert study.user_attrs == {"model": "stories260k", "budget": "3.3 MiB"}     # what was searched
