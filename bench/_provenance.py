"""What every results file records beside its numbers: the commit and the command that produced it, and the
machine's memory (a figure such as "24 GB" must come from the file, not from memory)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def provenance(argv: list[str] | None = None) -> dict:
    """{"commit": sha (+ "-dirty" when tracked files other than bench/results differ from it), "command": how to
    run it again from the repository root, "machine_memory_bytes": this host's RAM}."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and script.is_relative_to(REPO):
        argv[0] = str(script.relative_to(REPO))
    return {"commit": commit(), "command": shlex.join(["python", *argv]), "machine_memory_bytes": _memory()}


def commit() -> str | None:
    try:
        sha = _git("rev-parse", "HEAD")
        # (not stripped: porcelain's "XY path" starts with a space when only the work tree changed)
        changed = [line for line in _git("status", "--porcelain", "--untracked-files=no", strip=False).splitlines()
                   if line and not line[3:].startswith("bench/results/")]
    except (OSError, subprocess.CalledProcessError):
        return None          # not a git checkout (an exported tree): said as unknown, never guessed
    return sha + ("-dirty" if changed else "")


def _git(*args, strip: bool = True) -> str:
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout
    return out.strip() if strip else out


def _memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def run_meta() -> dict:
    """The header of a results file: when, where and under what load it ran, and its provenance."""
    import platform
    import time
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "load_average_at_start": list(os.getloadavg()), **provenance()}
