"""What a new user waits for: `git clone`, then `make run` (and with --test `make test`) in the clone, timed.

    python bench/fresh_clone.py [--test] [--keep] [--out bench/results/fresh_clone.json]

The clone is of this checkout's HEAD (commit what you measure) into a temporary folder with its own .venv (the
shared one is not touched). `make run` is timed to its first trial (the first progress line saying a trial
started) and to its end; `make test` to its end, with pytest's own summary line and time.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import provenance  # noqa: E402

RESULTS = REPO / "bench" / "results" / "fresh_clone.json"
STARTED = re.compile(r"^\[\s*\d+s\] \S+ started")


def timed(cmd: list[str], cwd: Path, log: Path, marks: dict) -> dict:
    """Run cmd, streaming its output to log; marks: name -> regex, the seconds to each one's first line."""
    start, seen = time.time(), {}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            out.write(line)
            for name, pattern in marks.items():
                if name not in seen and pattern.search(line):
                    seen[name] = round(time.time() - start, 1)
        rc = proc.wait()
    return {"rc": rc, "seconds": round(time.time() - start, 1), **{f"{k}_seconds": v for k, v in seen.items()},
            "load_after": [round(x, 2) for x in os.getloadavg()], "tail": log.read_text().splitlines()[-8:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--test", action="store_true", help="also time `make test` in the clone")
    ap.add_argument("--keep", action="store_true", help="keep the clone (printed)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="edgeprune-fresh-")) / "edgeprune"
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores, shared with other jobs",
           **provenance(), "load_before": [round(x, 2) for x in os.getloadavg()]}
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    out["cloned"] = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                                   check=True).stdout.strip()
    out["make_run"] = timed(["make", "run"], clone, clone.parent / "make_run.log",
                            {"first_trial": STARTED, "search_start": re.compile(r"^experiment \S+: model ")})
    out["phone_built_by_make_run"] = (clone / ".venv" / ".phone").exists()
    if args.test:
        out["make_test"] = timed(["make", "test"], clone, clone.parent / "make_test.log",
                                 {"phone_build": re.compile(r"building llama-cpp-python"),
                                  "pytest_start": re.compile(r"^\.venv/bin/python -m pytest")})
        summary = next((line for line in reversed(out["make_test"]["tail"]) if re.search(r" in [\d.]+s", line)), "")
        found = re.search(r" in ([\d.]+)s", summary)
        out["make_test"].update(summary=summary.strip("= "), pytest_seconds=float(found.group(1)) if found else None)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k.startswith("make")}, indent=1))
    if args.keep:
        print("clone kept:", clone)
    else:
        shutil.rmtree(clone.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
