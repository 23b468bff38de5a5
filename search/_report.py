"""After a search: the results table, the gain over the baselines, the Pareto front, the top-k checkpoints."""
from __future__ import annotations

import csv
import json
import math

import compress
from compress._atomic import atomic_file
from search import _tracking
from search._trial import GB, load_on_device, plan_for, recover, schedule_for

COLUMNS = ("trial_id", "name", "status", "rung", "score", "proxy_accuracy", "kl_to_teacher", "perplexity",
           "peak_memory_bytes", "decode_tokens_per_s", "params", "kept_fraction", "distill_step", "distill_world", "constraint", "reason")


def collect(grid, setup, paths) -> list[dict]:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        config = dict(result.config or {})
        trial_id = metrics.get("trial_id", "?")
        row = {k: metrics.get(k) for k in COLUMNS if k in metrics}
        row.update(trial_id=trial_id, name=config.get("baseline") or trial_id,
                   params_json=json.dumps({k: v for k, v in config.items() if k != "baseline"}))
        if result.error is not None:
            row.update(status="failed", reason=str(result.error).strip().splitlines()[-1][:300])
        elif metrics.get("training_iteration", 0) < setup.rungs:
            row["status"] = "stopped early"
        else:
            row["status"] = "complete"
        rows.append(row)
    return rows


def feasible_complete(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "complete" and (r.get("constraint") or 0) <= 0
            and r.get("score") is not None and math.isfinite(r["score"])]


def pareto_front(rows: list[dict], second: str, second_mode: str) -> list[dict]:
    sign = 1 if second_mode == "max" else -1
    front = [r for r in rows if not any(
        o["score"] >= r["score"] and sign * o[second] >= sign * r[second] and
        (o["score"] > r["score"] or sign * o[second] > sign * r[second]) for o in rows)]
    return sorted(front, key=lambda r: -r["score"])


def finish(rows: list[dict], exp, setup, paths) -> dict:
    ranked = sorted(feasible_complete(rows), key=lambda r: -r["score"])
    summary = {"experiment": paths.name, "trials": len(rows),
               "complete": sum(r["status"] == "complete" for r in rows),
               "stopped_early": sum(r["status"] == "stopped early" for r in rows),
               "failed": [{"trial_id": r["trial_id"], "reason": r.get("reason")} for r in rows if r["status"] == "failed"],
               "budget_bytes": setup.budget_bytes, "baselines": {}, "best": ranked[0] if ranked else None}
    for r in rows:
        if r["name"] in ("uniform-l1", "owl"):
            summary["baselines"][r["name"]] = r
    if summary["best"] and "uniform-l1" in summary["baselines"]:
        base = summary["baselines"]["uniform-l1"].get("score")
        summary["gain_over_uniform_l1"] = summary["best"]["score"] - base if base is not None else None
    if setup.multi:
        from search._driver import SECOND_OBJECTIVE
        summary["pareto_front"] = pareto_front(ranked, *SECOND_OBJECTIVE[setup.multi])
    top_rows = (summary.get("pareto_front") or ranked)[: exp.search.top_k]
    summary["top"] = [materialise(r, rank, setup, paths) for rank, r in enumerate(top_rows, start=1)]
    paths.write_json(paths.results, {"summary": summary, "trials": rows})
    _write_csv(rows, paths.path / "trials.csv")
    _log_parent(summary, rows, setup, paths)
    return summary


def materialise(row: dict, rank: int, setup, paths) -> dict:
    """Re-create the candidate from its parameters (pruning is deterministic) and save it as FP16."""
    params = json.loads(row["params_json"])
    plan = plan_for(params, setup)
    schedule = schedule_for(params, setup)
    model, tokenizer = load_on_device(setup.model_source)
    result = compress.prune(model, tokenizer, plan)
    if schedule is not None:  # what the trial scored was the recovered student: save that
        model = recover(model, tokenizer, result, schedule, setup)
    out = paths.top / f"rank{rank}-{row['name'] or row['trial_id']}"
    compress.save_pruned(model, tokenizer, out, plan=plan, summary=result.summary(), force=True)
    return {"rank": rank, "trial_id": row["trial_id"], "name": row["name"], "score": row["score"],
            "peak_memory_bytes": row.get("peak_memory_bytes"), "params": result.params, "dir": str(out),
            "plan": plan.to_dict()}


def _write_csv(rows, path) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _log_parent(summary, rows, setup, paths) -> None:
    if not setup.tracking_uri:
        return
    c = _tracking.client(setup.tracking_uri)
    run_id = setup.parent_run_id
    if summary["best"]:
        c.log_metric(run_id, "best_score", summary["best"]["score"])
    if summary.get("gain_over_uniform_l1") is not None:
        c.log_metric(run_id, "gain_over_uniform_l1", summary["gain_over_uniform_l1"])
    c.log_figure(run_id, score_vs_memory_figure(rows, summary, setup), "score_vs_memory.png")
    c.log_text(run_id, top_table(summary), "top_k.md")
    c.log_artifact(run_id, str(paths.results))
    _close_trial_runs(c, run_id, rows)
    c.set_terminated(run_id, status="FINISHED")


def _close_trial_runs(c, parent_id: str, rows: list[dict]) -> None:
    """Trials end their own runs, but one stopped or killed between reports cannot always do so in time:
    the driver's table is authoritative, so it closes what is still open."""
    by_id = {r["trial_id"]: r for r in rows}
    exp_id = c.get_run(parent_id).info.experiment_id
    children = c.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    latest = {}
    for run in children:  # a trial re-run after `resume` has a newer run with the same trial id
        tid = run.data.tags.get("tune_trial_id")
        if tid not in latest or run.info.start_time > latest[tid].info.start_time:
            latest[tid] = run
    for run in (r for r in children if r.info.status == "RUNNING"):
        tid = run.data.tags.get("tune_trial_id")
        row = by_id.get(tid, {})
        if latest[tid].info.run_id != run.info.run_id:
            c.set_tag(run.info.run_id, "interrupted", "the driver was killed; the trial was re-run after resume")
            c.set_terminated(run.info.run_id, status="KILLED")
        elif row.get("status") == "failed":
            c.set_tag(run.info.run_id, "failure_reason", row.get("reason") or "unknown")
            c.set_terminated(run.info.run_id, status="FAILED")
        else:
            if row.get("status") == "stopped early":
                c.set_tag(run.info.run_id, "stopped_early", "true")
            c.set_terminated(run.info.run_id, status="FINISHED" if row else "KILLED")


def score_vs_memory_figure(rows, summary, setup):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    done = [r for r in rows if r.get("score") is not None and r.get("peak_memory_bytes")]
    ax.scatter([r["peak_memory_bytes"] / GB for r in done], [r["score"] for r in done], s=14, c="tab:blue",
               label="trials")
    for name, r in summary["baselines"].items():
        if r.get("score") is not None:
            ax.scatter([r["peak_memory_bytes"] / GB], [r["score"]], marker="*", s=160, label=name)
    front = summary.get("pareto_front")
    if front:
        pts = sorted((r["peak_memory_bytes"] / GB, r["score"]) for r in front)
        ax.plot(*zip(*pts), "k--", lw=1, label="Pareto front")
    ax.axvline(setup.budget_bytes / GB, color="r", lw=1, label="budget")
    ax.set_xlabel("simulated peak memory (GB)"), ax.set_ylabel("proxy score"), ax.legend(fontsize=7)
    plt.close(fig)
    return fig


def top_table(summary) -> str:
    lines = ["| rank | name | score | peak memory | params | dir |", "|---|---|---|---|---|---|"]
    for t in summary["top"]:
        lines.append(f"| {t['rank']} | {t['name']} | {t['score']:.4f} | {human_bytes(t['peak_memory_bytes'])} | "
                     f"{t['params']:,} | {t['dir']} |")
    return "\n".join(lines) + "\n"


def print_summary(summary, *, stream) -> None:
    print(f"\n{summary['trials']} trials: {summary['complete']} complete, {summary['stopped_early']} stopped early "
          f"by ASHA, {len(summary['failed'])} failed", file=stream)
    for f in summary["failed"]:
        print(f"  failed {f['trial_id']}: {f['reason']}", file=stream)
    print(f"{'':14}{'score':>10}{'accuracy':>10}{'KL':>10}{'ppl':>10}{'memory':>12}{'params':>12}", file=stream)
    named = [("best", summary["best"])] + list(summary["baselines"].items())
    for label, r in named:
        if r:
            print(f"{label:<14}{_f(r.get('score'))}{_f(r.get('proxy_accuracy'))}{_f(r.get('kl_to_teacher'))}"
                  f"{_f(r.get('perplexity'))}{human_bytes(r.get('peak_memory_bytes')):>12}{int(r.get('params') or 0):12,}",
                  file=stream)
    if summary.get("gain_over_uniform_l1") is not None:
        print(f"gain over uniform-L1 baseline at the same budget: {summary['gain_over_uniform_l1']:+.4f}", file=stream)
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


def _f(v) -> str:
    return f"{v:10.4f}" if isinstance(v, (int, float)) else f"{'-':>10}"
