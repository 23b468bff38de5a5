"""The reaper stops what a driver started once the driver is gone, even a SIGKILLed one: children in sessions
of their own, grandchildren re-parented to init (as Ray's agents are when their raylet dies)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DRIVER = textwrap.dedent("""
    import importlib.util, subprocess, sys, time
    spec = importlib.util.spec_from_file_location("reaper", sys.argv[1])    # (the module alone: no torch import)
    reaper_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reaper_module)
    reaper = reaper_module.spawn()
    own = subprocess.Popen(["sleep", "600"], start_new_session=True)                 # a session of its own
    # a grandchild whose parent exits once the reaper has seen it: re-parented to init, as Ray's agents are
    middle = subprocess.Popen(["sh", "-c", "sleep 600 & echo $!; sleep 2"], stdout=subprocess.PIPE, text=True)
    grandchild = int(middle.stdout.readline())
    middle.wait()
    print(reaper.pid, own.pid, grandchild, flush=True)
    time.sleep(600)
""")


def test_a_killed_drivers_processes_are_stopped_within_seconds():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, os.path.join(REPO, "cluster", "_reaper.py")],
                              stdout=subprocess.PIPE, text=True)
    try:
        reaper, own, grandchild = (int(x) for x in driver.stdout.readline().split())
        assert all(_alive(p) for p in (reaper, own, grandchild)) and psutil.Process(grandchild).ppid() != driver.pid
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in (own, grandchild, reaper)):
            time.sleep(0.2)
        assert not any(_alive(p) for p in (own, grandchild, reaper))
    finally:
        driver.kill()
        for pid in (locals().get("own"), locals().get("grandchild")):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
