"""The test suite's time before and after a change, from the logs of two runs of `make test` under `/usr/bin/time -v`.

    /usr/bin/time -v make test ARGS="--durations=40" > after.log 2>&1      # in a fresh clone of each commit
    python bench/suite_timing.py --before before.log --before-commit SHA --after after.log --after-commit SHA

Writes bench/results/suite_timing.json: per run pytest's summary line and seconds, the wall clock and CPU time of
the whole `make test` (setup included when it ran), the share of the two cores it got, and the slowest tests.
The machine is shared: compare CPU seconds as well as wall seconds, and say what else ran.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import provenance  # noqa: E402

RESULTS = REPO / "bench" / "results" / "suite_timing.json"


def parse(log: Path, commit: str, note: str) -> dict:
    text = log.read_text()
    summary = [line for line in text.splitlines() if re.search(r"\d+ passed.* in [\d.]+s", line)][-1]
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    parts = [float(p) for p in wall.split(":")]
    slowest = re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", text, re.M)
    command = next((line for line in text.splitlines() if " -m pytest " in line), None)
    return {"commit": commit, "note": note, "command": command, "summary": summary.strip("= "),
            "pytest_seconds": float(re.search(r" in ([\d.]+)s", summary).group(1)),
            "make_test_wall_seconds": round(sum(p * 60 ** i for i, p in enumerate(reversed(parts))), 1),
            "cpu_user_seconds": float(re.search(r"User time \(seconds\): ([\d.]+)", text).group(1)),
            "cpu_system_seconds": float(re.search(r"System time \(seconds\): ([\d.]+)", text).group(1)),
            "cpu_percent_of_one_core": int(re.search(r"Percent of CPU this job got: (\d+)%", text).group(1)),
            "failed": re.findall(r"^FAILED (\S+)", text, re.M),
            "slowest": [{"seconds": float(s), "phase": p, "test": t} for s, p, t in slowest[:15]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--before-commit", required=True)
    ap.add_argument("--before-note", default="")
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--after-commit", required=True)
    ap.add_argument("--after-note", default="")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), **provenance(),
           "before": parse(args.before, args.before_commit, args.before_note),
           "after": parse(args.after, args.after_commit, args.after_note)}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: {f: out[k][f] for f in ("summary", "pytest_seconds", "make_test_wall_seconds",
                                                  "cpu_user_seconds", "cpu_percent_of_one_core")}
                      for k in ("before", "after")}, indent=1))


if __name__ == "__main__":
    main()
