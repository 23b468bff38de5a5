"""MLflow as a user reads it, through the MLflow API (a file store: the transport code is the same as over
HTTP): an experiment that opens on its runs table, trial runs whose outcome is a tag and a status of their own
(stopped_early only on stopped trials, baseline only on baselines), sampled shares named as shares, realised
keep ratios, labelled simulated numbers, no duplicate or misleading metric names; figures whose memory axis
unit suits the numbers and whose labels stay inside the saved image. (The whole chain on a real search:
tests/search/test_submit.py.)"""
import json

import pytest

from search import _plots, _report, _tracking



def _row(trial_id, status, name=None, **extra):
    return {"trial_id": trial_id, "name": name or trial_id, "status": status, "params_json": json.dumps(
        {"attn_0": 0.86, "mlp_0": 0.5, "importance": "l1"}), "_history": [(0, {"score": 0.1, "params": 1234.0,
        "composite_score": 0.1, "peak_memory_bytes": 5e5, "kept_attn_L00": 0.64})], **extra}


def test_trial_runs_read_right_in_mlflow(store):
    uri, exp_id, parent = store
    c = _tracking.client(uri)
    assert c.get_experiment(exp_id).tags[_tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    rows = [_row("t1", "complete"), _row("t2", "stopped early"), _row("t3", "failed", reason="OOM"),
            _row("t4", "complete", name="owl")]
    _tracking.reconcile(uri, exp_id, parent, [_report._trial_for_mlflow(r) for r in rows])
    runs = {r.data.tags[_tracking.TRIAL_TAG]: r for r in
            c.search_runs([exp_id], filter_string=f"tags.`{_tracking.PARENT_TAG}` = '{parent}'")}
    assert {t: (r.info.status, r.data.tags.get("outcome"), r.data.tags.get("stopped_early"))
            for t, r in runs.items()} == {"t1": ("FINISHED", "complete", None), "t2": ("KILLED", "stopped early", "true"),
                                          "t3": ("FAILED", "failed", None), "t4": ("FINISHED", "complete", None)}
    assert "baseline" not in runs["t1"].data.tags and runs["t4"].data.tags["baseline"] == "owl"
    assert runs["t3"].data.tags["failure_reason"] == "OOM"
    assert runs["t1"].data.params == {"attn_share_0": "0.86", "mlp_share_0": "0.5", "importance": "l1"}
    metrics = runs["t1"].data.metrics
    assert metrics["param_count"] == 1234 and metrics["simulated/peak_memory_bytes"] == 5e5
    assert metrics["kept_attn_L00"] == 0.64
    assert not {"params", "composite_score", "peak_memory_bytes"} & set(metrics)


def test_parent_run_gets_configuration_and_a_readable_top_k(store, tmp_path):
    uri, exp_id, parent = store
    _tracking.log_parent(uri, parent, metrics={}, texts={}, figures={}, params={"model": "stories260k", "trials": 60})
    _tracking.log_parent(uri, parent, metrics={}, texts={}, figures={}, params={"model": "stories260k", "seed": 0})
    assert _tracking.client(uri).get_run(parent).data.params == {"model": "stories260k", "trials": "60", "seed": "0"}
    summary = {"top": [{"rank": 1, "name": "owl", "trial_id": "t4", "score": -2.4, "proxy_accuracy": 0.125,
                        "kl_to_teacher": 1.74, "peak_memory_bytes": 6.9 * 2**20, "params": 175168, "folder": "owl"}]}
    table = _report.top_table(summary)
    assert "| 1 | owl | -2.4000 | 0.1250 | 1.7400 | 6.900 MiB | 175,168 | `owl` |" in table
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
    searcher = ConstrainedOptunaSearch(space=lambda t: t.suggest_float("attn_0", 0, 1) and None, metric="score", mode="max",
                                       storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"),
                                       study_name="s")
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"score": 0.5, "kept_attn_L00": 0.64, "kept_mlp_L00": 0.5, "kept_fraction": 0.6,
                                     "training_iteration": 1, "constraint": -0.1})
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert study.metric_names == ["score"]
    attrs = study.trials[0].user_attrs
    assert attrs["realised_attn_keep"] == [0.64] and attrs["realised_mlp_keep"] == [0.5]
    assert attrs["kept_fraction"] == 0.6
