"""Development check behind experiments/smollm2-135m.yaml's final rung: how many held-out KL blocks rank
SmolLM2 candidates as 32 blocks do. It reads a finished SmolLM2 search (its teacher cache holds 32 blocks of 256
tokens and its candidates' parameters) and scores a sample of its candidates block by block: the top ones by
that search's final rung and others spread over its range. Settings are chosen here, on the search's own
candidates and held-out tokens; the launch timing is then measured by bench/sim_vs_measured.py on a new search.

    python bench/smollm2_ladder_blocks.py --root /tmp/smolsim --experiment smollm2-135m --out bench/results/smollm2_ladder_blocks.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOP, SPREAD = 8, 8          # candidates: the search's best TOP and SPREAD more evenly over the rest
BLOCKS = (4, 8, 16, 32)     # prefixes compared with all 32 blocks


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        out = [0] * len(v)
        for r, i in enumerate(order):
            out[i] = r
        return out
    ra, rb, n = ranks(a), ranks(b), len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--experiment", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import torch
    import experiments
    from bench._provenance import run_meta
    from search import _driver
    from search._record import ExperimentRecord
    from search._trial import build_candidate
    torch.set_num_threads(1)                  # as a trial runs
    record = ExperimentRecord.open(args.root, args.experiment)
    exp = experiments.load_experiment(model="smollm2-135m", overrides={})
    setup = _driver.build_setup(exp, record)
    _driver.prepare_teacher(setup, record, baselines=False)
    cache = setup.teacher_cache.get() if hasattr(setup.teacher_cache, "get") else setup.teacher_cache
    total = cache.tokens.shape[0]
    assert total >= max(BLOCKS), f"the search's teacher cache holds {total} blocks, {max(BLOCKS)} are needed"
    rows = [r for r in json.loads(record.results.read_text())["trials"] if r.get("status") == "complete"]
    rows.sort(key=lambda r: -r["score"])
    rest = rows[TOP:]
    picked = rows[:TOP] + [rest[round(i * (len(rest) - 1) / max(1, SPREAD - 1))] for i in range(SPREAD)]
    scored = []
    for row in picked:
        start = time.perf_counter()
        _, _, model, tokenizer = build_candidate(json.loads(row["params_json"]), setup)
        model.eval()
        # the first b blocks' KL sum, one block more each call (the memo keeps the blocks already scored)
        memo, sums = {}, []
        for b in range(1, max(BLOCKS) + 1):
            sums.append(cache.score(model, tokenizer, blocks=b, reuse=memo)["kl_to_teacher"] * b)
        kl = [sums[0]] + [b - a for a, b in zip(sums, sums[1:])]      # each block's own KL
        scored.append({"trial_id": row["trial_id"], "search_score": row["score"], "block_kl": kl,
                       "seconds": round(time.perf_counter() - start, 1)})
        print(row["trial_id"], f"{sum(kl) / len(kl):.4f}", scored[-1]["seconds"], flush=True)
    full = [sum(s["block_kl"]) / len(s["block_kl"]) for s in scored]
    best = min(range(len(full)), key=full.__getitem__)
    compare = {}
    for b in BLOCKS:
        prefix = [sum(s["block_kl"][:b]) / b for s in scored]
        compare[str(b)] = {"spearman_vs_32": spearman(prefix, full),
                           "same_best": min(range(len(prefix)), key=prefix.__getitem__) == best,
                           "top8_overlap": len(set(sorted(range(len(full)), key=full.__getitem__)[:TOP]) &
                                               set(sorted(range(len(prefix)), key=prefix.__getitem__)[:TOP]))}
    out = {**run_meta(), "experiment": str(record.path), "candidates": len(scored), "blocks_of_tokens": 256,
           "prefix_vs_all_32_blocks": compare, "scored": scored}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(compare, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
