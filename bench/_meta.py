"""What every results file records about the run that wrote it: date, machine, commit, command, load."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commit() -> str:
    """HEAD, with "+uncommitted changes" when the working tree differs from it (tracked files)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + (" +uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_meta() -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": commit(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "load_average_at_start": list(os.getloadavg())}
