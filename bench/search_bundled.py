"""Benchmark: the main job on the bundled model, as a new user runs it (target: >= 30 trials in < 15 min on
2 cores, best trial above the uniform-L1 baseline at the same memory budget).

    .venv/bin/python bench/search_bundled.py [--trials 30]

Writes bench/results/search_bundled.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "search_bundled.json"
TARGET_SECONDS = 15 * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgeprune-bench-"))
    try:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "search", "launch", "--trials", str(args.trials), "--root",
                               str(root), "--experiment", "bench"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"search failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((root / "bench" / "results.json").read_text())["summary"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = {name: row.get("score") for name, row in summary["baselines"].items()}
    result = {"trials": summary["trials"], "complete": summary["complete"], "stopped_early": summary["stopped_early"],
              "failed": len(summary["failed"]), "wall_seconds": round(seconds, 1), "target_seconds": TARGET_SECONDS,
              "best_score": summary["best"]["score"], "best_name": summary["best"]["name"], "baseline_scores": base,
              "gain_over_uniform_l1": summary.get("gain_over_uniform_l1"), "budget_bytes": summary["budget_bytes"],
              "meets_target": seconds < TARGET_SECONDS and (summary.get("gain_over_uniform_l1") or 0) > 0,
              "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count()}
    RESULTS.parent.mkdir(exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, RESULTS)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
