"""A real multi-node search on this machine: a head (no CPUs: it runs no trials) and two worker nodes, each
started with the real CLI (`ray start`, own --temp-dir, own process group), then `launch --address` against
them with --storage in a folder of its own.

The worker nodes run every Python process under an audit hook (sitecustomize on their PYTHONPATH) that refuses
and records any file operation inside the driver's runs folder: a trial that still read the teacher cache, the
MLflow store or anything else from the driver's disk would fail and be caught here. One trial worker is
SIGKILLed mid-search: the trial is retried and still appears once in Optuna and once in MLflow.

Only the nodes started here are stopped at the end (never `ray stop`: it stops every cluster of the user).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest

from cluster import LocalNodes
from cluster._nodes import pids_mentioning

REPO = Path(__file__).resolve().parents[2]
HOOK = '''
import os, sys
_PREFIX, _LOG = os.environ.get("EP_FORBIDDEN"), os.environ.get("EP_FORBIDDEN_LOG")
_EVENTS = {"open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.listdir", "os.scandir"}

def _hook(event, args):
    if event not in _EVENTS or not args or isinstance(args[0], int) or args[0] is None:
        return
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    if path == _PREFIX.rstrip("/") or path.startswith(_PREFIX):
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {event} {path}\\n")
        raise PermissionError(f"{event} {path}: a path on the driver's disk, used on a worker node")

if _PREFIX and _LOG:
    sys.addaudithook(_hook)
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("multinode")
    runs, hook = base / "runs", base / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    short = Path(tempfile.mkdtemp(prefix="epmn", dir="/tmp"))     # Ray's socket paths must stay < 108 bytes
    worker_env = {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "EP_FORBIDDEN": f"{runs}{os.sep}",
                  "EP_FORBIDDEN_LOG": str(base / "forbidden.log"), "OMP_NUM_THREADS": "1"}
    nodes = LocalNodes(short)
    try:
        address = nodes.start_head(num_cpus=0, extra_env={"PYTHONPATH": str(REPO)})
        workers = nodes.add_workers(2, num_cpus=1, extra_env=worker_env)
        yield {"nodes": nodes, "address": address, "workers": workers, "base": base, "runs": runs}
    finally:
        nodes.stop()
        shutil.rmtree(short, ignore_errors=True)


def _kill_one_trial_worker(workers, stop: threading.Event, killed: list) -> None:
    """SIGKILL the first trial actor seen on a worker node (a worker process dying mid-trial)."""
    while not stop.is_set() and not killed:
        for node in workers:
            for pid, title in node.processes("ray::ImplicitFunc"):
                time.sleep(2)                        # let it get into the trial (load, prune, first rung)
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append((node.name, pid, title))
                except ProcessLookupError:
                    continue
                return
        time.sleep(0.5)


def test_launch_on_three_nodes(cluster):
    runs, shared = cluster["runs"], cluster["base"] / "shared"
    env = {**os.environ, **cluster["nodes"].env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # the proxy scored on every item of three tasks (chance_z null): trials last long enough to be killed mid-way
    ladder = "[{kl_blocks: 8}, {kl_blocks: 32, proxy: loglik, proxy_level: 2, chance_z: null}]"
    cmd = [sys.executable, "-m", "search", "launch", "--trials", "2", "--rungs", "2", "--workers", "2",
           "--set", f"proxy.ladder={ladder}", "--set", "proxy.tasks=[csqa, chid, gsm8k]",
           "--experiment", "mn", "--root", str(runs), "--storage", str(shared), "--address", cluster["address"]]
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_trial_worker, args=(cluster["workers"], stop, killed), daemon=True)
    killer.start()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        stop.set()
        killer.join()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # nothing a trial touched was a path on the driver's disk
    log = cluster["base"] / "forbidden.log"
    assert not log.exists(), log.read_text()
    record = runs / "mn"
    assert not (record / "tune").exists() and (shared / "mn" / "tune").is_dir()

    # every trial ran on a worker node (the head has no CPUs), both workers were used: the killed attempt ran on
    # one of them, and its retry may land on either (on the other one once that finished its own trial)
    assert killed and "retried (failure 1)" in proc.stdout, (killed, proc.stdout[-2000:])
    results = json.loads((record / "results.json").read_text())
    rows = results["trials"]
    assert len(rows) == 2 and all(r["status"] in ("complete", "stopped early") for r in rows), rows
    workers = {node.node_id for node in cluster["workers"]}
    killed_on = {node.node_id for node in cluster["workers"] if node.name == killed[0][0]}
    assert {r["node_id"] for r in rows} <= workers and len(killed_on) == 1
    assert {r["node_id"] for r in rows} | killed_on == workers, (rows, killed)

    # the killed worker's trial was retried as the same trial: once in Optuna, once in MLflow
    study = optuna.load_study(study_name="mn", storage=f"sqlite:///{record / 'optuna.db'}")
    assert len(study.trials) == 2 and {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert sorted(t.user_attrs["tune_trial_id"] for t in study.trials) == sorted(r["trial_id"] for r in rows)
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{record / 'mlflow.db'}")
    runs_ = client.search_runs([client.get_experiment_by_name("mn").experiment_id])
    children = [r for r in runs_ if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["tune_trial_id"] for r in children) == sorted(r["trial_id"] for r in rows)
    # ASHA's stops are no failures: FINISHED, told apart by the outcome tag
    assert all(r.info.status == "FINISHED" and r.data.tags["outcome"] in ("complete", "stopped early")
               and "score" in r.data.metrics for r in children)
    parent = next(r for r in runs_ if "mlflow.parentRunId" not in r.data.tags)
    artifacts = record / "mlartifacts" / parent.info.experiment_id / parent.info.run_id / "artifacts"
    shipped = (artifacts / "trial_setup.json").read_text()      # what every trial received
    assert str(record) not in shipped and str(runs) not in shipped and "Shipped(" in shipped

    # the top candidates were written by their trials into the shared storage, and only they are kept
    top = results["summary"]["top"]
    assert top and sorted(p.name for p in (shared / "mn" / "top").iterdir()) == sorted(t["folder"] for t in top)
    for entry in top:
        folder = shared / "mn" / "top" / entry["folder"]
        assert (folder / "model.safetensors").is_file() and not json.loads(
            (folder / "candidate.json").read_text()).get("rebuilt")
    assert not pids_mentioning(record)                  # the experiment's MLflow server is gone
