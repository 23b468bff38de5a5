"""The README's figures, re-derived from the results files they cite.

    python bench/readme_figures.py        # exit 1, one line per problem, when any figure does not follow

Each entry below is the README's own words with `{}` where a figure stands, the results file(s) it comes from, and
how the figure follows from them. A figure whose file or key is gone, whose value changed, or whose sentence was
reworded fails here (tests/bench/test_readme_figures.py runs this in the suite). Also checked: every results file
the README names exists, and every results file records its commit and command or says it predates them.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f}"


def span(values, digits: int = 0) -> tuple[str, str]:
    values = [abs(v) for v in values]
    return pct(min(values), digits), pct(max(values), digits)


# ---- derivations -------------------------------------------------------------------------------------------
def sim_memory(d, profile="bundled_profile", digits=1):
    p = d[profile]
    return (*span([r["memory_error"] for r in p["median_over_runs"]], digits), pct(p["worst_run_memory_error"], digits))


def sim_decode(d, profile="bundled_profile"):
    p = d[profile]
    return (*span([r["decode_error"] for r in p["median_over_runs"]]), pct(p["worst_run_decode_error"]))


def sim_runs(d):
    """Per candidate over all six validate runs (three per profile): (peak spread in bytes, decode spread)."""
    peaks, speeds = {}, {}
    for profile in ("bundled_profile", "fitted_profile"):
        for run in d[profile]["runs"]:
            for r in run:
                peaks.setdefault(r["name"], []).append(r["measured_peak_memory_bytes"])
                speeds.setdefault(r["name"], []).append(r["measured_decode_tokens_per_s"])
    return (max(max(v) - min(v) for v in peaks.values()), max(max(v) / min(v) - 1 for v in speeds.values()))


def sim_spread(here, fresh):
    (peak_here, speed_here), (peak_fresh, speed_fresh) = sim_runs(here), sim_runs(fresh)
    return f"{peak_here:,}", f"{peak_fresh:,}", pct(speed_here), pct(speed_fresh)


def sim_headroom(d):
    p = d["bundled_profile"]
    return (f"{min(p['budget_bytes'] - r['measured_peak_memory_bytes'] for run in p['runs'] for r in run) / 1e3:.0f}",)


def sim_residuals(d):
    res = d["fit"]["memory_residuals_bytes"]
    return f"{min(res) / 1e6:.2f}", f"{max(res) / 1e6:.2f}", str(len(res))


def faults(d):
    f = d["faults"]
    deaths = set(d["worker_deaths_of_each_failed_trial"].values())
    load = d["load_avg_before"] + d["load_avg_after"]
    return (f"{f['kill_every_s']:.0f}", str(f["trial_workers_killed"]), str(f["node_stopped"]["done"]),
            f"{f['mlflow_killed']['outage_s']:.0f}", str(d["lost"]), str(d["completed"]),
            f"{d['wall_seconds']:.0f}", f"{min(load):.0f}", f"{max(load):.0f}", str(d["failed"]),
            str(deaths.pop() if len(deaths) == 1 else deaths), str(f["max_failures"]))


def faults20(d):
    duplicated = d["duplicated_in_results"] + d["optuna"]["duplicated"] + d["mlflow"]["duplicated"]
    return (f"{d['faults']['kill_every_s']:.0f}", str(d["faults"]["trial_workers_killed"]), str(d["lost"]),
            str(duplicated), str(d["completed"]), str(d["failed"]))


def prune_scale(d):
    return f"{d['peak_over_model']:.2f}", f"{d['model_fp16_bytes'] / 1e9:.1f}", f"{d['prune_seconds']:.0f}"


def memory_model(d):
    family = [r for r in d["rows"] if r["name"] != "stories260k"]
    bundled = next(r for r in d["rows"] if r["name"] == "stories260k")
    return (f"{min(r['params'] for r in family) / 1e6:.0f}", f"{max(r['params'] for r in family) / 1e6:.0f}",
            pct(d["summary"]["max_abs_relative_error_family_models"], 1), pct(abs(bundled["relative_error"])),
            f"{(bundled['measured_bytes'] - bundled['predicted_bytes']) / 1e6:.2f}")


def distill(d):
    return (pct(d["kept_fraction"]), str(d["steps"]), str(d["zero_stage"]), d["precision"], f"{d['before_kl']:.2f}",
            f"{d['after_kl']:.2f}", f"{d['before_ppl']:.0f}", f"{d['after_ppl']:.1f}", f"{d['seconds']:.0f}")


def proxy_items(d):
    totals = d["totals"]
    credited = {side: round(sum(t["items"] * t[key] / 100 for m in d["models"].values() for t in m["tasks"].values()))
                for side, key in (("proxy", "proxy_accuracy_percent"), ("opencompass", "opencompass_score_percent"))}
    assert credited["proxy"] == credited["opencompass"], credited
    same = totals["identical_prompts"] == totals["identical_texts"] == totals["identical_scores"] == totals["items"]
    return str(credited["proxy"]), str(totals["items"]), str(totals["items"] - credited["proxy"]) if same else "?"


def proxy_total(d):
    t = d["totals"]
    return (str(t["items"]),) if t["identical_prompts"] == t["identical_texts"] == t["identical_scores"] == t["items"] \
        else ("(not identical)",)


def scratch(d):
    r = d["runs"][0]
    return str(r["trials"]), str(r["complete"]), str(r["stopped_early"]), str(r["failed"]), f"{r['wall_seconds']:.0f}"


def scratch_nats(d):
    b, h = d["runs"][0]["best"], d["runs"][0]["hand_picked"]
    keys = ("heldout_nats_per_byte", "c4_nats_per_byte", "alpaca_zh_nats_per_byte")
    return tuple(f"{row[k]:.2f}" for k in keys for row in (b, h))


def smollm2_launch(d):
    t = d["trial_outcomes"]
    return (f"{d['search_seconds']:.0f}", str(t["complete"]), str(t["stopped early"]), str(len(t["failed_reasons"])),
            f"{t['best']['kl_to_teacher']:.2f}", f"{t['best']['kept_fraction']:.2f}")


def smollm2_memory(d):
    return (f"{100 * max(abs(r['memory_error']) for r in d['bundled_profile']['median_over_runs']):.1f}",)


def smollm2_decode(d):
    errors = sorted(abs(r["decode_error"]) for r in d["bundled_profile"]["median_over_runs"])
    return tuple(f"{100 * e:.1f}" if e < 0.01 else f"{100 * e:.0f}" for e in errors)


def ladder_blocks(d):
    c = d["prefix_vs_all_32_blocks"]
    assert c["16"]["same_best"] and not c["8"]["same_best"]
    return (str(d["candidates"]), f"{c['16']['spearman_vs_32']:.3f}", str(c["16"]["top8_overlap"]),
            f"{c['8']['spearman_vs_32']:.3f}")


def suite(d):
    counts = dict((k, v) for v, k in re.findall(r"(\d+) (passed|skipped)", d["after"]["summary"]))
    return (f"{d['after']['pytest_seconds']:.0f}", counts["passed"], counts["skipped"],
            f"{d['before']['pytest_seconds']:.0f}")


def smollm2_pipeline(d):
    steps = d["steps"]
    assert d["all_succeeded"]
    r = steps["distill"]["result"]
    bbh = [c["scores"]["BIG-Bench-Hard"] for c in steps["full-eval"]["candidates"]]
    return (f"{steps['top']['seconds']:.1f}", f"{steps['distill']['seconds']:.0f}", f"{r['before_kl']:.3f}",
            f"{r['after_kl']:.3f}", f"{steps['full-eval']['seconds']:.0f}", f"{min(bbh):.1f}", f"{max(bbh):.1f}",
            f"{steps['submit']['seconds']:.0f}")


def limits_row(*variants):
    def derive(d):
        cells = []
        for budget in ("default", "half"):
            cells.append(", ".join(f"{d['budgets'][budget][v]['owl+lsq']['x_uniform_c4']:.3f} / "
                                   f"{d['budgets'][budget][v]['owl+lsq']['x_uniform_sampled']:.3f}" for v in variants))
        return tuple(cells)
    return derive


def uniform_kept(d):
    uniform = [r for r in d["runs"]["trial_runs"] if r["name"].startswith("uniform-l1")]
    assert uniform and uniform[0]["shares"] == ["1.0"], uniform
    return (f"{float(uniform[0]['kept_fraction']):.2f}",)


def fresh_clone(d):
    run, load = d["make_run"], d["load_before"] + d["make_run"]["load_after"]
    assert d["phone_built_by_make_run"] is False
    return (f"{run['first_trial_seconds']:.0f}", f"{run['search_start_seconds']:.0f}", f"{min(load):.0f}",
            f"{max(load):.0f}")


# (the README's words with {} for each figure, results file(s), derivation)
FIGURES = [
    ("With the bundled profile: simulated peak within {}-{} % of the measured one (target 10 %; worst single run {} %)",
     ["sim_vs_measured.json"], sim_memory),
    ("simulated decode within {}-{} % (target 25 %; worst single run {} %)", ["sim_vs_measured.json"], sim_decode),
    ("With the fitted profile: memory within {}-{} %", ["sim_vs_measured.json"],
     lambda d: sim_memory(d, "fitted_profile")[:2]),
    ("decode within {}-{} % (worst run {} %), fits agree in 3 of 3 runs", ["sim_vs_measured.json"],
     lambda d: sim_decode(d, "fitted_profile")),
    ("the highest measured peak was {} KB under the budget", ["sim_vs_measured.json"], sim_headroom),
    ("llama.cpp's residual (peak minus the model's bytes) spanned {}-{} MB over the {} measurements",
     ["sim_vs_measured.json"], sim_residuals),
    ("a candidate's own measured peak moved by at most {} B here and {} B in the fresh clone below, and its measured "
     "decode speed by up to {} % here and {} % there", ["sim_vs_measured.json", "sim_vs_measured_fresh_clone.json"],
     sim_spread),
    ("with the bundled profile fitted here: memory within {}-{} % (worst run {} %)",
     ["sim_vs_measured_fresh_clone.json"], sim_memory),
    ("decode within {}-{} % (worst run {} %), fits agree in 3 of 3 runs.", ["sim_vs_measured_fresh_clone.json"],
     sim_decode),
    ("while a trial worker is SIGKILLed every {} s ({} kills), a worker node is stopped after {} trials, the MLflow "
     "server is killed once (its supervisor had it back after {} s) and the driver is SIGKILLed once and resumed: "
     "{} trials lost, 0 duplicated in Optuna or MLflow, each of the {} completed trials exactly one MLflow run "
     "(`bench/results/faults.json`, {} s on 2 shared cores, load average {}-{}). {} trials failed for good: each was "
     "killed {} times, one more than `max_failures` {} allows", ["faults.json"], faults),
    ("With a kill every {} s (`faults_kill20.json`, {} kills; the file does not record the run's `max_failures`): "
     "also {} lost and {} duplicated, {} completed, {} failed.", ["faults_kill20.json"], faults20),
    ("peak RSS {} x the model's {} GB, {} s.", ["prune_scale.json"], prune_scale),
    ("random-weight models of {}M-{}M parameters, including a per-layer pruned one: within {} %. The bundled 260K "
     "model is off by {} % ({} MB", ["memory_model.json"], memory_model),
    ("the bundled model pruned to {} % of its parameters, {} DeepSpeed (ZeRO-{}, {}, CPU) steps: held-out KL {} -> {}, "
     "perplexity {} -> {}, {} s.", ["distill_recovery.json"], distill),
    ("{} items (8 per task, 27 BBH), FP32 greedy on CPU: prompts, generated texts and scores identical on every item",
     ["proxy_vs_opencompass.json"], proxy_total),
    ("these tiny models are credited on {} of the {} items (BBH, on both sides); the other {} score 0 on both.",
     ["proxy_vs_opencompass.json"], proxy_items),
    ("only {} of those items are credited (on both sides)", ["proxy_vs_opencompass.json"],
     lambda d: proxy_items(d)[:1]),
    ("{} trials ({} complete, {} stopped by ASHA, {} failed) in {} s", ["scratch_bundled.json"], scratch),
    ("`top --k 3` {} s. `distill` of the best candidate from the dense model, 20 steps: {} s, held-out KL {} -> {} "
     "(worse: 20 steps at the default learning rate do not recover this model; distillation recovery on SmolLM2 is "
     "bench/distill_recovery_llm.py's question, not yet run). `full-eval --top 3 --limit 4 --max-out-len 128`: {} s, "
     "every dataset scored (BBH 108 items, CHID 8, the others 4 each); BBH {}-{}", ["smollm2_pipeline.json"],
     lambda d: smollm2_pipeline(d)[:7]),
    ("`submit --top 3`: {} s, every check of the bundle passed", ["smollm2_pipeline.json"],
     lambda d: smollm2_pipeline(d)[7:]),
    ("It takes {} s in a fresh clone on 2 cores ({} passed, {} skipped; `.ci/run` with the venv already built, "
     "nothing else running; `bench/results/suite_timing.json`, logs in `bench/results/suite_logs/`), against {} s "
     "serially before", ["suite_timing.json"], suite),
    ("with its YAML's 60 trials took {} s (target 15 min: met; {} complete, {} stopped by ASHA, {} failed), best "
     "candidate KL {} on the final rung's 16 blocks at {} of the parameters", ["sim_vs_measured_smollm2.json"],
     smollm2_launch),
    ("simulated peak memory within {} % of the measured one (medians over runs, target 5 %)",
     ["sim_vs_measured_smollm2.json"], smollm2_memory),
    ("simulated decode within {} %, {} % and {} % of the measured medians", ["sim_vs_measured_smollm2.json"],
     smollm2_decode),
    ("on {} candidates of the earlier search) found Spearman {} between the 16- and 32-block KL, the same best "
     "candidate and {} of the top 8 (8 blocks: {}, another best)", ["smollm2_ladder_blocks.json"], ladder_blocks),
    ("best model {} vs hand-picked baseline {} held-out nats per byte (C4 {} vs {}, Alpaca-zh {} vs {}",
     ["scratch_bundled.json"], scratch_nats),
    ("| calibration from all C4 documents, draws (seeds) 0 / 1 / 2 | {} | {} |", ["reconstruction_limits.json"],
     limits_row("product", "seed1", "seed2")),
    ("| from the 30 % of C4 the model predicts best, draws 0 / 1 / 2 | {} | {} |", ["reconstruction_limits.json"],
     limits_row("select30_s0", "select30_s1", "select30_s2")),
    ("| ridge 10x (0.1) / 100x (1.0) the default, draw 0 | {} | {} |", ["reconstruction_limits.json"],
     limits_row("damp0.1", "damp1")),
    ("| units ranked by greedy OBS instead of activation-aware scores | {} | {} |", ["reconstruction_limits.json"],
     limits_row("obs")),
    ("| an intercept in the refit (FLAP's bias compensation; a new bias, measured only) | {} | {} |",
     ["reconstruction_limits.json"], limits_row("bias")),
    ("a share of 1.0 everywhere still keeps {} at the default budget", ["ui_check.json"], uniform_kept),
    ("From a fresh clone `make run` reached its first trial {} s after it started (the launch's first line came at "
     "{} s: setup with pip, then imports and Ray), on this 2-core machine while other jobs kept its load average at "
     "{}-{} (`bench/results/fresh_clone.json`",
     ["fresh_clone.json"], fresh_clone),
]


# JSON files the README names that are not benchmark results: what a run, a plan or a submission writes, and the
# GPU benchmark's output (written on a GPU machine, none recorded yet)
RUN_FILES = {"results.json", "state.json", "plan.json", "arch.json", "candidate.json", "check.json", "submission.json",
             "opencompass.json", "trial_setup.json", "test.json", "dev_rand_split.json", "gpu_trial.json",
             "gguf_source.json"}


def normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def problems(readme: str | None = None) -> list[str]:
    readme = normalised(readme if readme is not None else (REPO / "README.md").read_text())
    found = []
    for name in sorted(set(re.findall(r"(?<![\w<>.-])([a-z0-9_]+\.json)", readme)) - RUN_FILES):
        if not (RESULTS / name).is_file():
            found.append(f"README cites {name}, which is not in bench/results/")
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if not (("commit" in data and "command" in data) or "provenance" in data):
            found.append(f"{path.name}: records neither its commit and command nor that it predates them")
    for words, files, derive in FIGURES:
        try:
            data = [load(f) for f in files]
            figure = words.format(*derive(*data))
        except (OSError, KeyError, IndexError, TypeError, ValueError, AssertionError, StopIteration) as err:
            found.append(f"{', '.join(files)}: cannot derive '{words[:60]}...': {type(err).__name__}: {err}")
            continue
        if normalised(figure) not in readme:
            found.append(f"README does not say (from {', '.join(files)}): {figure}")
    return found


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"{len(FIGURES)} figures checked against bench/results: {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
