"""Processes a launch started die with it, within seconds, however the driver ends.

A local Ray cluster started by `ray.init` shares the driver's fate only in part: Ray kills its GCS and raylet
when the driver dies (parent-death signal), but the raylet's agents (ray::DashboardAgent, ray::RuntimeEnvAgent)
are re-parented to init and live on for minutes after a SIGKILLed driver. The driver therefore starts this
reaper next to it (`python -m cluster._reaper --parent PID`, a session of its own, so killing the driver's
process group does not take it along). While the driver lives it records the driver's descendants (pid and
start time, so a reused pid is never touched); once the driver is gone it stops every recorded process
still alive (SIGTERM, then SIGKILL after GRACE_S) and exits.

A joined cluster (`--address`) is not the driver's to stop: the reaper is started for a local cluster only.
It runs as a plain script in isolated mode (psutil only, no project imports), so it watches within a second.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5
GRACE_S = 3.0


def spawn() -> subprocess.Popen:
    """Start the reaper for this (the driver's) process."""
    return subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "--parent", str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _descendants(parent: int) -> dict[int, float]:
    import psutil
    try:
        children = psutil.Process(parent).children(recursive=True)
    except psutil.Error:
        return {}
    found = {}
    for child in children:
        if child.pid == os.getpid():
            continue
        try:
            found[child.pid] = child.create_time()
        except psutil.Error:
            continue
    return found


def _alive(recorded: dict[int, float]) -> list:
    import psutil
    alive = []
    for pid, started in recorded.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def reap(recorded: dict[int, float]) -> None:
    """SIGTERM every recorded process still alive (the same process: same start time), SIGKILL what is left."""
    import psutil
    procs = _alive(recorded)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=GRACE_S)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=GRACE_S)


def watch(parent: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)         # a Ctrl-C reaches the driver's group, not this session
    recorded: dict[int, float] = {}
    while os.getppid() == parent:
        recorded.update(_descendants(parent))
        time.sleep(POLL_S)
    # the driver is gone: what it started may still be re-parenting (an agent whose raylet just died)
    for _ in range(3):
        reap(recorded)
        time.sleep(POLL_S)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cluster/_reaper.py")
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    return watch(args.parent)


if __name__ == "__main__":
    sys.exit(main())
