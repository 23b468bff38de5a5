"""Benchmark: distillation recovery of a real LLM pruned to half its parameters (SmolLM2-135M-Instruct).

    .venv/bin/python bench/distill_recovery_llm.py --model MODEL [--fraction 0.5] [--steps 300] [--report-every 100]
        [--lr 2e-4] [--from bench/results/search_quality_llm.json] [--out FILE]

The pruned start is the search's best candidate at `--fraction` in bench/search_quality_llm.py's results (the run
with the lowest dev C4 KL; its plan re-cut by the product, reconstruction included). It is distilled from the dense
model with the product's own distillation (compress.distill: DeepSpeed ZeRO-2, FP32 on CPU) on C4 only (the
bundled train split), and judged every `--report-every` steps by bench/_judge.py on both splits: the share of the
KL gap to the dense model it closes (1 - KL / KL at the start), and perplexity.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
RESULTS = REPO / "bench" / "results" / "distill_recovery_llm.json"
SCHEDULE = dict(lr=2e-4, warmup_steps=20, temperature=1.0, kd_weight=1.0, seq_len=128, batch_size=8,
                mix={"c4": 1.0}, heldout_blocks=8, zero_stage=2, precision="fp32")
TARGET = 0.5          # share of the held-out C4 (test) KL gap closed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--fraction", default="0.5")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--report-every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=SCHEDULE["lr"])
    ap.add_argument("--from", dest="source", default=str(REPO / "bench" / "results" / "search_quality_llm.json"))
    ap.add_argument("--work", default=None, help="search_quality_llm.py's --work (its caches)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    import torch
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    import _judge
    import compress
    import search_quality_llm as sql
    from search._trial import build_candidate

    found = json.loads(Path(args.source).read_text())
    entry = found["fractions"][args.fraction]
    runs = [r for s in entry["searches"].values() for r in s["runs"]]
    best = min(runs, key=lambda r: r["kl_c4_dev"])
    bench_args = argparse.Namespace(model=args.model, set=[], out=str(Path(args.out).with_suffix(".scratch.json")),
                                    work=args.work or found["args"]["work"])
    bench = sql.Bench(bench_args)
    setup = bench.setup(float(args.fraction))[0]
    plan, result, student, tokenizer = build_candidate(best["best_params"], setup)
    teacher = bench.dense[0]
    schedule = compress.DistillSchedule(steps=args.steps, report_every=args.report_every,
                                        **{**SCHEDULE, "lr": args.lr})
    history = [{"step": 0, **_judge.judge_model(student.eval(), tokenizer, bench.judge_sets)}]
    print(json.dumps(history[-1]), flush=True)
    start = time.perf_counter()

    def report(step, metrics):
        student.eval()
        history.append({"step": step, "seconds": round(time.perf_counter() - start, 1), "loss": metrics["loss"],
                        **_judge.judge_model(student, tokenizer, bench.judge_sets)})
        student.train()
        print(json.dumps(history[-1]), flush=True)

    student.train()
    compress.distill(student, teacher, tokenizer, schedule, layer_map=result.layer_map, on_report=report)
    first = history[0]
    closed = {f"{name}": [round(1 - h[f"kl_{name}"] / first[f"kl_{name}"], 4) for h in history[1:]]
              for name in bench.judge_sets}
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": sql.commit(), "model": args.model,
           "fraction": args.fraction, "start": {k: best[k] for k in ("sampler", "seed", "trials", "params")},
           "params": result.params, "params_fraction": round(result.params / result.base_params, 4),
           "schedule": {k: v for k, v in schedule.__dict__.items()}, "history": history, "gap_closed": closed,
           "target": f"closes >= {TARGET:.0%} of the test C4 KL gap",
           "passed": bool(closed["c4_test"] and closed["c4_test"][-1] >= TARGET), "load": sql.load()}
    from compress._atomic import write_json
    write_json(Path(args.out), out)
    print(json.dumps({k: out[k] for k in ("gap_closed", "passed")}, indent=1))


if __name__ == "__main__":
    main()
