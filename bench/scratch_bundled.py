"""Benchmark: Track 2 at bundled scale, as a user runs it (target: a 20-trial scratch search of sub-million-
parameter models finishes in <= 15 min on 2 cores, and its best model beats the hand-picked baseline
architecture, trained on the same token budget, on held-out C4 and Alpaca-zh).

    .venv/bin/python bench/scratch_bundled.py [--trials 20] [--repeats 1] [--lr-sweep 5e-4 1e-3 2e-3 5e-3 1e-2]

Runs `python -m search launch --track scratch` (experiments/scratch-tiny.yaml) in a fresh folder, then scores
the best trial's and the baseline's saved FP16 checkpoints on EVERY bundled held-out document (the search
itself reads the first 16 KB per source). Held-out loss is compared per UTF-8 byte (the two may use different
vocabularies); per-token perplexity is recorded too. So that the baseline is not a strawman, its architecture
is also trained (same tokens, same data) at each learning rate of --lr-sweep. The machine may be shared: the
load average is recorded before and after each run. Writes bench/results/scratch_bundled.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))       # run as a script from a checkout: import the project's packages
from bench._provenance import provenance  # noqa: E402
RESULTS = REPO / "bench" / "results" / "scratch_bundled.json"
TARGET_SECONDS = 15 * 60
SOURCES = ("c4", "alpaca_zh")


def checkpoint_of(exp: Path, summary: dict, trial_id: str) -> Path:
    for entry in summary["top"]:
        if entry["trial_id"] == trial_id:
            return Path(entry["dir"])
    return exp / "trials" / trial_id


def heldout_all(directory: Path) -> dict:
    import compress
    import objectives
    model, tokenizer = compress.load_model(str(directory), dtype="float32")
    candidate = objectives.Candidate(shapes=compress.shapes_from_config(model.config), model=model, tokenizer=tokenizer)
    top = objectives.HeldoutObjective().max_fidelity
    metrics = objectives.HeldoutObjective().evaluate(candidate, objectives.EvalContext(), top)
    out = {k: round(v, 5) for k, v in metrics.items()}
    for s in SOURCES:
        out[f"{s}_perplexity_per_byte"] = round(math.exp(metrics[f"{s}_nats_per_byte"]), 5)
    return {**out, "params": sum(p.numel() for p in model.parameters()), "vocab": model.config.vocab_size}


def baseline_lr_sweep(lrs) -> list[dict]:
    """The hand-picked architecture and schedule of experiments/scratch-tiny.yaml at other learning rates."""
    import compress
    import experiments
    import objectives
    from search import _scratch_trial
    from search._record import ExperimentRecord
    exp = experiments.load_experiment(model=None, config=str(REPO / "experiments" / "scratch-tiny.yaml"))
    root = Path(tempfile.mkdtemp(prefix="edgeprune-scratch-sweep-"))
    try:
        paths = ExperimentRecord(root, "sweep")
        setup = _scratch_trial.build_setup(exp, paths, tracking_uri=None)
        _scratch_trial.prepare(setup, paths)
        out = []
        for lr in lrs:
            arch, schedule, model, tokenizer = _scratch_trial.build_candidate({**setup.baseline, "lr": lr}, setup)
            model, _ = compress.train_scratch(model, tokenizer, schedule)
            candidate = objectives.Candidate(shapes=arch.shapes(), model=model, tokenizer=tokenizer)
            heldout = objectives.HeldoutObjective()
            metrics = heldout.evaluate(candidate, objectives.EvalContext(), heldout.max_fidelity)
            out.append({"lr": lr, "tokens": schedule.tokens, **{k: round(v, 5) for k, v in metrics.items()}})
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_once(trials: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="edgeprune-scratch-bench-"))
    try:
        load_before = os.getloadavg()
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "search", "launch", "--track", "scratch", "--trials", str(trials),
                               "--root", str(root), "--experiment", "bench"], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        seconds = time.perf_counter() - start
        load_after = os.getloadavg()
        if proc.returncode != 0:
            raise SystemExit(f"search failed:\n{proc.stderr[-3000:]}")
        exp = root / "bench"
        data = json.loads((exp / "results.json").read_text())
        summary, rows = data["summary"], data["trials"]
        best, base = summary["best"], summary["baselines"]["hand-picked"]
        evaluated = {"best": heldout_all(checkpoint_of(exp, summary, best["trial_id"])),
                     "hand_picked": heldout_all(checkpoint_of(exp, summary, base["trial_id"]))}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    trial_seconds = [r["trial_seconds"] for r in rows if r.get("trial_seconds")] if rows and "trial_seconds" in rows[0] \
        else []
    beats = {s: evaluated["best"][f"{s}_nats_per_byte"] < evaluated["hand_picked"][f"{s}_nats_per_byte"]
             for s in SOURCES}
    return {"wall_seconds": round(seconds, 1), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in load_after], "trials": summary["trials"],
            "complete": summary["complete"], "stopped_early": summary["stopped_early"],
            "failed": len(summary["failed"]), "median_trial_seconds": round(statistics.median(trial_seconds), 1)
            if trial_seconds else None,
            "best": {"name": best["name"], "arch": best.get("arch"), "score": best["score"],
                     "params_sampled": json.loads(best["params_json"]),
                     "search_heldout_nats_per_byte": best.get("heldout_nats_per_byte"), **evaluated["best"]},
            "hand_picked": {"arch": base.get("arch"), "score": base.get("score"), "status": base["status"],
                            "search_heldout_nats_per_byte": base.get("heldout_nats_per_byte"),
                            **evaluated["hand_picked"]},
            "gain_over_hand_picked": summary.get("gain_over_hand_picked"), "best_beats_hand_picked": beats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--lr-sweep", type=float, nargs="*", default=[5e-4, 1e-3, 2e-3, 5e-3, 1e-2])
    args = ap.parse_args()
    runs = [run_once(args.trials) for _ in range(args.repeats)]
    sweep = baseline_lr_sweep(args.lr_sweep) if args.lr_sweep else []
    best_swept = min(sweep, key=lambda r: r["heldout_nats_per_byte"]) if sweep else None
    wall = statistics.median(r["wall_seconds"] for r in runs)
    result = {"benchmark": "Track 2 scratch search, bundled scale (experiments/scratch-tiny.yaml)",
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": _machine(), **provenance(), "trials": args.trials,
              "repeats": args.repeats, "median_wall_seconds": wall, "target_seconds": TARGET_SECONDS,
              "meets_target": wall <= TARGET_SECONDS and all(all(r["best_beats_hand_picked"].values()) for r in runs),
              "runs": runs, "hand_picked_lr_sweep": sweep,
              "best_beats_every_swept_baseline": None if not sweep else all(
                  r["best"]["heldout_nats_per_byte"] < best_swept["heldout_nats_per_byte"] for r in runs)}
    from compress._atomic import write_json
    write_json(RESULTS, result)
    print(json.dumps(result, indent=2))


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else \
        platform.processor()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "shared": "several sessions share this machine; load averages are per run"}


if __name__ == "__main__":
    main()
