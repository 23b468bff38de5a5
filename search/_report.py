"""After a search: the results table, the gain over the baselines, the Pareto front, the top-k checkpoints,
MLflow brought in line with the table."""
from __future__ import annotations

import csv
import json
import sys

import objectives
from compress._atomic import atomic_file
from search import _candidates, _tracking
from search._candidates import SECOND_OBJECTIVE
from search._plots import kept_ratio_figure, score_vs_memory_figure
from search._trial import plan_for

# what Tune adds to every result (the trial's own report is the rest)
TUNE_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
             "time_total_s", "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore",
             "should_checkpoint"}
COLUMNS = ("trial_id", "name", "status", "rung", "score", "proxy_accuracy", "kl_to_teacher", "perplexity",
           "peak_memory_bytes", "decode_tokens_per_s", "prefill_tokens_per_s", "params", "kept_fraction",
           "distill_step", "distill_world", "constraint", "mlflow_delayed", "reason")
TASK_SUFFIXES = ("_accuracy", "_items")    # the proxy's per-task accuracy and item count (kept with the row)


def collect(grid, setup, *, columns: tuple = ()) -> list[dict]:
    """One row per trial; `columns`: metrics a trial kind keeps beyond COLUMNS."""
    rows = []
    # a trial that failed before its first report has no metrics: its id comes from Tune's trial list
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or [None] * len(grid)
    for result, trial in zip(grid, trials):
        metrics = result.metrics or {}
        config = dict(result.config or {})
        trial_id = metrics.get("trial_id") or getattr(trial, "trial_id", None) or "?"
        row = {k: metrics.get(k) for k in COLUMNS + tuple(columns) if k in metrics}
        row.update({k: v for k, v in metrics.items() if k.endswith(TASK_SUFFIXES) and k not in row})
        row.update(trial_id=trial_id, name=config.get("baseline") or trial_id,
                   params_json=json.dumps({k: v for k, v in config.items() if k != "baseline"}),
                   **{k: v for k, v in metrics.items() if k.startswith("score_rung")})
        if result.error is not None:
            row.update(status="failed", reason=str(result.error).strip().splitlines()[-1][:300])
        elif metrics.get("training_iteration", 0) < setup.rungs:
            row["status"] = "stopped early"
        else:
            row["status"] = "complete"
        row["node_id"] = metrics.get("node_id")
        row["_history"] = _history(result)
        if metrics.get("timestamp"):       # the trial's own wall time, for its MLflow run (Tune's clock)
            row["_ended"] = float(metrics["timestamp"])
            row["_started"] = row["_ended"] - float(metrics.get("time_total_s") or 0)
        rows.append(row)
    return rows


def _history(result) -> list[tuple[int, dict]]:
    """Every rung the trial reported (retried and resumed trials included), for MLflow's reconciliation."""
    frame = getattr(result, "metrics_dataframe", None)
    if frame is None or frame.empty:
        return []
    own = [c for c in frame.columns if c not in TUNE_KEYS and not c.startswith("config/")]
    history = {}
    for record in frame[own].to_dict("records"):
        if record.get("rung") is not None and record["rung"] == record["rung"]:      # NaN-safe
            history[int(record["rung"])] = {k: v for k, v in record.items() if isinstance(v, (int, float))
                                            and v == v}
    return sorted(history.items())


def feasible_complete(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "complete" and _candidates.feasible(r)]


def finish(rows: list[dict], exp, setup, record, *, kind) -> dict:
    """results.json, trials.csv, the top-k checkpoints (kind.keep_top, or kind.materialise per candidate) and
    the MLflow parent run. kind.reference: the baseline the best trial's gain is measured against."""
    ranked = sorted(feasible_complete(rows), key=lambda r: -r["score"])
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    summary = {"experiment": record.name, "trials": len(rows),
               "complete": sum(r["status"] == "complete" for r in rows),
               "stopped_early": sum(r["status"] == "stopped early" for r in rows),
               "failed": [{"trial_id": r["trial_id"], "reason": r.get("reason")} for r in rows if r["status"] == "failed"],
               "budget_bytes": setup.budget_bytes, "rungs": setup.rungs, "baselines": {},
               "best": ranked[0] if ranked else None}
    for r in public:
        if r["name"] != r["trial_id"]:   # a named baseline (enqueued first)
            summary["baselines"][r["name"]] = r
    if summary["best"]:
        summary["best"] = {k: v for k, v in summary["best"].items() if not k.startswith("_")}
    reference = kind.reference
    if summary["best"] and reference in summary["baselines"]:
        comparison = compare(summary["best"], summary["baselines"][reference])
        summary[_gain_key(reference)] = comparison["gain"] if comparison else None
        summary["gains"] = {reference: comparison}
    second = SECOND_OBJECTIVE[setup.multi] if setup.multi else None
    if second:
        summary["pareto_front"] = [{k: v for k, v in r.items() if not k.startswith("_")}
                                   for r in _candidates.pareto_front(ranked, *second)]
    summary["rung_agreement"] = rung_agreement(rows, setup.rungs)
    top_rows = _candidates.selection(rows, k=exp.search.top_k, second=second)
    if kind.keep_top is not None:
        summary["top"] = kind.keep_top(top_rows, setup, exp, record)
    else:
        summary["top"] = [kind.materialise(r, rank, setup, record) for rank, r in enumerate(top_rows, start=1)]
    record.write_json(record.results, {"summary": summary, "trials": public, "number_kinds": number_kinds(public)})
    _write_csv(public, record.trials_csv)
    _log_parent(summary, rows, setup, record)
    return summary


def number_kinds(rows: list[dict]) -> dict:
    """What each efficiency number of results.json is: every one a search writes is simulated (measurements
    live in validation-<device>.json, and `top` / `submit` put them side by side)."""
    from objectives._provenance import SIMULATED, simulated_metrics
    present = {k for r in rows for k in r}
    return {k: SIMULATED for k in sorted((simulated_metrics() | {"constraint"}) & present)}


def keep_top(top_rows: list[dict], setup, exp, record) -> list[dict]:
    """The top candidates' checkpoints in the experiment's storage: the ones their trials wrote, the others
    rebuilt by Ray tasks on the cluster; every other candidate folder is deleted."""
    if not top_rows:
        return []
    _candidates.materialise_missing(top_rows, setup, exp)
    top = record.top
    keep = {_candidates.folder_name(r) for r in top_rows}
    _candidates.prune_folders(top, keep=keep, finished={name for name in top.list_dirs()})
    top.remove(_candidates.BOARD_FILE)
    top.clear_temporaries()
    entries = []
    for rank, r in enumerate(top_rows, start=1):
        folder = _candidates.folder_name(r)
        plan = plan_for(json.loads(r["params_json"]), setup)
        entries.append({"rank": rank, "trial_id": r["trial_id"], "name": r["name"], "score": r["score"],
                        "proxy_accuracy": r.get("proxy_accuracy"), "kl_to_teacher": r.get("kl_to_teacher"),
                        "peak_memory_bytes": r.get("peak_memory_bytes"),
                        "params": plan.realised_shapes(setup.base_shapes).param_count(),
                        "folder": folder, "dir": top.child(folder).uri, "plan": plan.to_dict()})
    return entries


def compare(best: dict, base: dict) -> dict | None:
    """best's score minus base's at the highest rung both reported (same KL blocks, same proxy items), with the
    parameter count of each: the two stand on the same memory budget, not necessarily on the same count.
    None when the baseline never scored."""
    rungs = [r.get("rung") for r in (best, base)]
    if None in rungs or base.get("score") is None:
        return None
    rung = min(rungs)
    scores = [r["score"] if r["rung"] == rung else r.get(f"score_rung{rung}") for r in (best, base)]
    if None in scores:
        return None
    return {"gain": scores[0] - scores[1], "rung": int(rung), "best_score": scores[0], "baseline_score": scores[1],
            "best_params": best.get("params"), "baseline_params": base.get("params")}


def _gain_key(reference: str) -> str:
    return "gain_over_" + reference.replace("-", "_")


def _gains(summary: dict) -> list[tuple[str, float]]:
    return [(k, v) for k, v in summary.items() if k.startswith("gain_over_") and v is not None]


def rung_agreement(rows: list[dict], rungs: int) -> dict | None:
    """How well each cheap rung ranked the trials the way the final rung does: Spearman over the trials
    that completed every rung (ASHA promoted them, so this is the agreement among the better trials)."""
    if rungs < 2:
        return None
    keys = [f"score_rung{k}" for k in range(rungs)]
    histories = [[r[k] for k in keys] for r in rows if r["status"] == "complete" and all(k in r for k in keys)]
    rhos = objectives.rank_agreement(histories)
    intervals = [objectives.spearman_interval(rho, len(histories)) for rho in rhos]
    final = [r for r in rows if r["status"] == "complete" and r.get(keys[-1]) is not None]
    items = {}
    for k in range(rungs - 1):      # per-item agreement of rung k's proxy credits with the final rung's
        values = [r[f"item_agreement_rung{k}"] for r in final if r.get(f"item_agreement_rung{k}") is not None]
        if values:
            items[f"rung{k}"] = {"mean": sum(values) / len(values), "trials": len(values)}
    return {"trials": len(histories), "spearman": {f"rung{k}": rho for k, rho in enumerate(rhos)},
            "spearman_ci95": {f"rung{k}": list(ci) if ci else None for k, ci in enumerate(intervals)},
            "item_agreement": items}


def _write_csv(rows, path) -> None:
    extra = dict.fromkeys(k for r in rows for k in r if k not in COLUMNS and k != "params_json")
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS) + list(extra), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _log_parent(summary, rows, setup, record) -> None:
    if not setup.tracking_uri:
        return
    if not _tracking.wait_reachable(setup.tracking_uri):
        print(f"MLflow unreachable at {setup.tracking_uri}: not brought up to date; every result is in "
              f"{record.results}", file=sys.stderr, flush=True)
        return
    from search._trial import TrialSetup
    plans = (lambda t: _plan_ops(t, setup)) if isinstance(setup, TrialSetup) else None   # pruning plans only
    counts = _tracking.reconcile(setup.tracking_uri, setup.mlflow_experiment_id, setup.parent_run_id,
                                 [_trial_for_mlflow(r) for r in rows], artifacts=plans)
    repaired = {k: v for k, v in counts.items() if v}
    if repaired:
        print(f"MLflow reconciled with the trial table: {repaired}", flush=True)
    metrics = {"best_score": summary["best"]["score"] if summary["best"] else None, **dict(_gains(summary)),
               "trials_complete": summary["complete"], "trials_stopped_early": summary["stopped_early"],
               "trials_failed": len(summary["failed"])}
    agreement = summary.get("rung_agreement") or {}
    for rung, rho in (agreement.get("spearman") or {}).items():
        metrics[f"{rung}_spearman_vs_final"] = rho
    for rung, ci in (agreement.get("spearman_ci95") or {}).items():
        if ci:
            metrics[f"{rung}_spearman_ci95_low"], metrics[f"{rung}_spearman_ci95_high"] = ci
    for rung, items in (agreement.get("item_agreement") or {}).items():
        metrics[f"{rung}_item_agreement_vs_final"] = items["mean"]
    if agreement:
        metrics["rung_agreement_trials"] = agreement["trials"]
    ranked = sorted(feasible_complete(rows), key=lambda r: -r["score"])
    figure = score_vs_memory_figure(rows, top=summary["top"], budget_bytes=setup.budget_bytes,
                                    front=_candidates.pareto_front(ranked, "peak_memory_bytes", "min"),
                                    title=f"{record.name}: proxy score vs simulated peak memory "
                                          f"({summary['trials']} trials)")
    record.log_to_parent(metrics={k: v for k, v in metrics.items() if v is not None},
                         figures={"score_vs_memory.png": figure}, texts={"top_k.md": top_table(summary)},
                         files=[(record.results, None)], status="FINISHED")


def _trial_for_mlflow(row: dict) -> dict:
    baseline = row["name"] if row["name"] != row["trial_id"] else ""
    reason = (row.get("reason") or "unknown") if row["status"] == "failed" else None
    return {"trial_id": row["trial_id"], "name": f"{baseline or 'trial'}-{row['trial_id']}",
            "params": json.loads(row["params_json"]), "history": row.get("_history") or [],
            "tags": _tracking.trial_tags(baseline=baseline, outcome=row["status"], reason=reason),
            "status": _tracking.OUTCOME_STATUS.get(row["status"], "FINISHED"),
            "started": row.get("_started"), "ended": row.get("_ended")}


def _plan_ops(trial: dict, setup) -> list:
    """plan.json and the kept-ratio plot of a trial whose own upload never arrived (pruning plans are
    deterministic: the driver recomputes them from the parameters)."""
    plan = plan_for(trial["params"], setup)
    realised = plan.realise(setup.base_shapes)
    kept = plan.realised_shapes(setup.base_shapes).param_count() / setup.base_shapes.param_count()
    record = {"plan": plan.to_dict(), "realised": {"layers": [s.__dict__ for s in realised], "kept_fraction": kept}}
    return [("text", json.dumps(record, indent=2), "plan.json"),
            ("figure", kept_ratio_figure(realised, setup.base_shapes, kept), "kept_ratio.png")]


def top_table(summary) -> str:
    """The top k in Markdown: name (baseline name or trial id), score, accuracy, KL, simulated memory."""
    lines = ["| rank | name | score | proxy accuracy | KL to teacher | peak memory (simulated) | parameters | "
             "checkpoint |", "|---|---|---|---|---|---|---|---|"]
    for t in summary["top"]:   # memory to the byte beside the rounded unit: candidates often differ by < 1 KiB
        memory = t["peak_memory_bytes"]
        lines.append(f"| {t['rank']} | {t['name']} | {t['score']:.4f} | {_cell(t.get('proxy_accuracy'))} | "
                     f"{_cell(t.get('kl_to_teacher'))} | {human_bytes(memory)} ({_count(memory)} B) | "
                     f"{t['params']:,} | `{t.get('folder') or t['dir']}` |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def print_summary(summary, *, stream) -> None:
    print(f"\n{summary['trials']} trials: {summary['complete']} complete, {summary['stopped_early']} stopped early "
          f"by ASHA, {len(summary['failed'])} failed", file=stream)
    for f in summary["failed"]:
        print(f"  failed {f['trial_id']}: {f['reason']}", file=stream)
    print(f"{'':14}{'rung':>6}{'score':>10}{'accuracy':>10}{'KL':>10}{'ppl':>10}{'memory (sim.)':>14}{'params':>12}",
          file=stream)
    named = [("best", summary["best"])] + list(summary["baselines"].items())
    for label, r in named:
        if r:
            print(f"{label:<14}{_rung(r.get('rung'), summary.get('rungs')):>6}{_f(r.get('score'))}"
                  f"{_f(r.get('proxy_accuracy'))}{_f(r.get('kl_to_teacher'))}{_f(r.get('perplexity'))}"
                  f"{human_bytes(r.get('peak_memory_bytes')):>14}{_count(r.get('params')):>12}", file=stream)
    for reference, c in (summary.get("gains") or {}).items():
        print(gain_line(reference, c, summary.get("rungs")), file=stream)
    agreement = summary.get("rung_agreement")
    if agreement and any(rho is not None for rho in agreement["spearman"].values()):
        cis = agreement.get("spearman_ci95") or {}
        rhos = ", ".join(f"{rung} {'-' if rho is None else f'{rho:+.2f}'}"
                         + (f" [{cis[rung][0]:+.2f}, {cis[rung][1]:+.2f}]" if cis.get(rung) else "")
                         for rung, rho in agreement["spearman"].items())
        print(f"fidelity ladder, Spearman with the final rung (95% CI) over {agreement['trials']} trials that "
              f"completed it: {rhos}", file=stream)
    for rung, items in ((agreement or {}).get("item_agreement") or {}).items():
        print(f"fidelity ladder, {rung}: {items['mean']:.1%} of proxy items credited as at the final rung "
              f"(mean over {items['trials']} trials)", file=stream)
    if summary.get("pareto_front"):
        print(f"Pareto front: {len(summary['pareto_front'])} candidates", file=stream)
    print(top_table(summary), file=stream)


def human_bytes(n) -> str:
    """727,462 -> '710.412 KiB' (binary units, like --budget-gb and the 12 GiB phone): tiny and 7B models read alike."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{int(n)} B"


def gain_line(reference: str, c: dict | None, rungs: int | None) -> str:
    """The best trial against a baseline, said with what makes the two comparable (rung, memory budget) and
    what may not be equal (parameters)."""
    name = {"uniform-l1": "uniform-L1"}.get(reference, reference)
    if c is None:
        return f"gain over {name} baseline: none (the baseline has no score)"
    where = "the final rung" if _rung(c["rung"], rungs) == "final" else f"rung {c['rung']}, the highest both reached"
    params = (f"parameters {_count(c['best_params'])} vs {_count(c['baseline_params'])}"
              if c.get("best_params") != c.get("baseline_params") else f"both {_count(c['best_params'])} parameters")
    return (f"gain over {name} baseline at the same memory budget, both scored at {where}: {c['gain']:+.4f} "
            f"(score {c['best_score']:.4f} vs {c['baseline_score']:.4f}; {params})")


def _rung(rung, rungs) -> str:
    """'final' for the last rung of the ladder, else the rung's index ('-' when unknown)."""
    if rung is None:
        return "-"
    return "final" if rungs and int(rung) == rungs - 1 else str(int(rung))


def _count(n) -> str:
    return f"{int(n):,}" if isinstance(n, (int, float)) else "-"


def _f(v) -> str:
    """A 10-wide column that never runs into its neighbour (a pruned model's perplexity can be 53,806.79)."""
    if not isinstance(v, (int, float)):
        return f"{'-':>10}"
    text = f"{v:.4f}"
    return f"{text if len(text) <= 9 else f'{v:.4g}':>10}"
