"""Benchmark: the dense SmolLM2-135M's accuracy on the six proxy tasks, in both proxy modes, with the chance test
the fidelity ladder applies (objectives/_ladder.py: a task counts at a rung only where the dense teacher beats
chance on that rung's items, one-sided z >= 1.645 against 1/options, or against 0 for generated answers).

    .venv/bin/python bench/smollm2_accuracy.py [--runs loglik:0 loglik:2 faithful:0] [--max-out-len N] [--out FILE]

Each run is MODE:LEVEL: the proxy mode (loglik: option log-likelihoods and short generations; faithful: the
competition's OpenCompass prompts and generation) and the fidelity level (0: the ladder's default rung, 8 items
per task, 27 for BBH; 1: 24 / 81; 2: every shipped item). Writes bench/results/smollm2_accuracy.json with each
task's accuracy, item count, chance, z and verdict per run (date, machine, commit, command, load average).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import run_meta  # noqa: E402

RESULTS = REPO / "bench" / "results" / "smollm2_accuracy.json"
TASKS = ("csqa", "bbh", "gsm8k", "humaneval", "truthfulqa", "chid")


def run(model, tokenizer, mode: str, level: int, max_out_len: int | None) -> dict:
    import objectives
    from objectives._ladder import Z_CHANCE, above_chance, chance_credits
    proxy = objectives.ProxyAccuracyObjective(tasks=TASKS, mode=mode, max_out_len=max_out_len)
    start = time.perf_counter()
    proxy.evaluate(objectives.Candidate(shapes=None, model=model, tokenizer=tokenizer), objectives.EvalContext(), level)
    tasks = {}
    for task in TASKS:
        credits, chance = proxy.last_credits[task], chance_credits(task, level)
        n = len(credits)
        lift = sum(credits) / n - sum(chance) / n
        se = math.sqrt(sum(c * (1 - c) for c in chance)) / n
        tasks[task] = {"accuracy": sum(credits) / n, "items": n, "chance": sum(chance) / n,
                       "z": lift / se if se > 0 else None, "above_chance": above_chance(credits, chance),
                       "seconds": round(proxy.last_seconds[task], 1), "credits": credits}
    return {"mode": mode, "level": level, "max_out_len": max_out_len, "z_threshold": Z_CHANCE,
            "seconds": round(time.perf_counter() - start, 1), "tasks": tasks,
            "tasks_above_chance": [t for t, v in tasks.items() if v["above_chance"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--runs", nargs="+", default=["loglik:0", "loglik:2", "faithful:0"], metavar="MODE:LEVEL")
    ap.add_argument("--max-out-len", type=int, default=None, help="faithful mode: cap on generated tokens per item "
                                                                  "(default: each config's own / the competition's 1024)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    meta = run_meta()
    import torch
    import compress
    torch.set_num_threads(1)
    model, tokenizer = compress.load_model(args.model, dtype="float32")
    out = {**meta, "model": args.model, "params": compress.shapes_from_config(model.config).param_count(), "runs": []}
    from compress._atomic import write_json
    for spec in args.runs:
        mode, _, level = spec.partition(":")
        result = run(model, tokenizer, mode, int(level or 0), args.max_out_len if mode == "faithful" else None)
        out["runs"].append(result)
        out["load_average_at_end"] = list(os.getloadavg())
        out["tasks_above_chance_anywhere"] = sorted({t for r in out["runs"] for t in r["tasks_above_chance"]})
        write_json(Path(args.out), out)               # after every run: a long faithful run keeps what came before
        print(f"{mode} level {level} ({result['seconds']} s): " + ", ".join(
            f"{t} {v['accuracy']:.3f}/{v['items']} (chance {v['chance']:.3f}, z {v['z'] if v['z'] is None else round(v['z'], 2)})"
            for t, v in result["tasks"].items()), flush=True)
    print(f"tasks above chance: {out['tasks_above_chance_anywhere'] or 'none'}; wrote {args.out}")


if __name__ == "__main__":
    main()
