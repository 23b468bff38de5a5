"""Benchmark: a search survives faults with nothing lost. A 30-trial search on a 3-node local cluster (a head
and two worker nodes, each `ray start` with its own temp dir and one CPU) while
  (a) a random trial worker process is SIGKILLed every --kill-every seconds,
  (b) one worker node is stopped mid-search,
  (c) the experiment's MLflow server is killed once (its supervisor restarts it; trials buffer meanwhile),
  (d) the driver is SIGKILLed once and the search is continued with `resume`.
Then it counts trials requested / completed / failed / lost / duplicated, in Tune's table, in Optuna and in
MLflow (target: 0 lost, 0 duplicated, every completed trial in MLflow exactly once).

    .venv/bin/python bench/faults.py [--trials 30] [--kill-every 20]

Writes bench/results/faults.json. Only the processes of the nodes it started are stopped (never `ray stop`).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import provenance  # noqa: E402
RESULTS = REPO / "bench" / "results" / "faults.json"
NAME = "faults"
TRIAL_ACTOR = "ray::ImplicitFunc"
# when each one-off fault fires: after this many trials are done (of 30; scaled to --trials)
STOP_NODE_AT, KILL_MLFLOW_AT, KILL_DRIVER_AT = 6, 11, 17


class Search:
    """The driver process (launch, then resume), its output kept with timestamps."""

    def __init__(self, base: Path, env: dict):
        self.base, self.env, self.lines, self.proc = base, env, [], None
        self.t0 = time.time()

    def start(self, *args) -> None:
        cmd = [sys.executable, "-m", "search", *args, "--root", str(self.base / "runs")]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.lines.append(f"[{time.time() - self.t0:7.1f}] {line.rstrip()}")

    def done(self) -> int:
        """Trials finished so far, from the driver's progress lines."""
        for line in reversed(self.lines):
            match = re.search(r"done (\d+)/\d+", line)
            if match:
                return int(match.group(1))
        return 0

    def log(self, event: str) -> None:
        self.lines.append(f"[{time.time() - self.t0:7.1f}] >>> FAULT {event}")
        print(f"[{time.time() - self.t0:7.1f}] {event}", flush=True)


def trial_workers(nodes) -> list[tuple[int, str]]:
    found = []
    for node in nodes.nodes:
        if node.alive():
            found += node.processes(TRIAL_ACTOR)
    busy = [p for p in found if ".train" in p[1]]      # an actor running a trial, not one cached for reuse
    return busy or found


def kill_workers_periodically(nodes, search: Search, every: float, stop: threading.Event, kills: list) -> None:
    rng = random.Random(0)
    while not stop.wait(every):
        candidates = trial_workers(nodes)
        if not candidates:
            continue
        pid, title = rng.choice(candidates)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        kills.append({"t": round(time.time() - search.t0, 1), "pid": pid, "title": title})
        search.log(f"(a) SIGKILL trial worker {pid} ({title})")


def mlflow_server_pids(run_dir: Path) -> list[int]:
    """The `mlflow server` process of the experiment (not its supervisor)."""
    from cluster._nodes import pids_mentioning
    import psutil
    found = []
    for pid in pids_mentioning(run_dir):
        try:
            cmdline = psutil.Process(pid).cmdline()
        except psutil.Error:
            continue
        if "server" in cmdline and not any("search._mlflow_server" in a for a in cmdline):
            found.append(pid)
    return found


def wait_for(predicate, timeout: float, poll: float = 1.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def count(base: Path, trials: int) -> dict:
    """Trials requested / completed / failed / lost / duplicated: Tune's table, Optuna, MLflow."""
    import optuna
    from mlflow.tracking import MlflowClient
    from mlflow.entities import ViewType
    from search._record import ExperimentRecord
    record = ExperimentRecord.open(base / "runs", NAME)
    rows = record.read_results()["trials"]
    delayed = sum(int(r.get("mlflow_delayed") or 0) for r in rows)
    ids = [r["trial_id"] for r in rows]
    completed = [r for r in rows if r["status"] in ("complete", "stopped early")]
    study = optuna.load_study(study_name=NAME, storage=record.optuna_url)
    by_tune_id = Counter(t.user_attrs.get("tune_trial_id") for t in study.trials)
    client = MlflowClient(record.mlflow_store_uri)
    exp_id = client.get_experiment_by_name(NAME).experiment_id
    children = [r for r in client.search_runs([exp_id], max_results=10000) if "mlflow.parentRunId" in r.data.tags]
    deleted = [r for r in client.search_runs([exp_id], run_view_type=ViewType.DELETED_ONLY, max_results=10000)]
    runs_per_trial = Counter(r.data.tags.get("tune_trial_id") for r in children)
    return {
        "requested": trials, "in_results": len(rows), "completed": len(completed),
        "complete": sum(r["status"] == "complete" for r in rows),
        "stopped_early": sum(r["status"] == "stopped early" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "failure_reasons": [r.get("reason") for r in rows if r["status"] == "failed"],
        "lost": trials - len(set(ids)),
        "duplicated_in_results": len(ids) - len(set(ids)),
        "optuna": {"trials": len(study.trials), "states": dict(Counter(t.state.name for t in study.trials)),
                   "duplicated": sum(n - 1 for tid, n in by_tune_id.items() if tid and n > 1),
                   "asked_but_never_run": sum(n for tid, n in by_tune_id.items() if tid not in set(ids)),
                   "missing": sum(1 for i in ids if i not in by_tune_id)},
        "mlflow": {"trial_runs": len(children), "duplicated": sum(n - 1 for n in runs_per_trial.values() if n > 1),
                   "missing_completed": sum(1 for r in completed if runs_per_trial[r["trial_id"]] == 0),
                   "completed_exactly_once": all(runs_per_trial[r["trial_id"]] == 1 for r in completed),
                   "unknown_trial_ids": sum(1 for tid in runs_per_trial if tid not in set(ids)),
                   "statuses": dict(Counter(r.info.status for r in children)),
                   "runs_deleted_by_reconciliation": len(deleted),
                   "updates_delayed_by_outage_then_delivered": delayed},
    }


def failures_per_trial(log_text: str) -> dict:
    """From the driver's progress lines: how often each trial that finally failed had been retried before."""
    failed = set(re.findall(r"\] (\w+) FAILED ", log_text))
    retried = Counter(re.findall(r"\] (\w+) retried \(failure", log_text))
    return {trial: retried[trial] + 1 for trial in sorted(failed)}       # its last failure is the one not retried


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--kill-every", type=float, default=60.0, help="seconds between trial-worker kills")
    ap.add_argument("--max-failures", type=int, default=3, help="retries per trial (the product's default: 3)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--log", default=None, help="also write the driver's output with the faults marked here")
    args = ap.parse_args()
    from cluster import LocalNodes
    from cluster._nodes import kill_mentioning
    from compress._atomic import write_json
    from search._mlflow_server import health

    scale = args.trials / 30
    base = Path(tempfile.mkdtemp(prefix="epf", dir="/tmp"))     # short: Ray's socket paths must stay < 108 bytes
    node_env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    nodes = LocalNodes(base / "nodes")
    start = time.time()
    faults, kills, stop_killing = {}, [], threading.Event()
    load_before = os.getloadavg()
    try:
        address = nodes.start_head(num_cpus=1, extra_env=node_env)
        workers = nodes.add_workers(2, num_cpus=1, extra_env=node_env)
        env = {**os.environ, **nodes.env, **node_env}
        search = Search(base, env)
        search.log(f"cluster up in {time.time() - start:.0f} s at {address}")
        common = ["--address", address]
        search.start("launch", "--trials", str(args.trials), "--rungs", "2", "--workers", "3", "--experiment", NAME,
                     "--storage", str(base / "shared"), "--max-failures", str(args.max_failures), *common)
        killer = threading.Thread(target=kill_workers_periodically, args=(nodes, search, args.kill_every,
                                                                          stop_killing, kills), daemon=True)
        killer.start()
        run_dir = base / "runs" / NAME

        # (b) stop one worker node
        wait_for(lambda: search.done() >= STOP_NODE_AT * scale or search.proc.poll() is not None, 3600)
        search.log(f"(b) stopping worker node {workers[1].name} at {search.done()} done")
        nodes.stop_node(workers[1])
        faults["node_stopped"] = {"t": round(time.time() - search.t0, 1), "done": search.done()}

        # (c) kill the MLflow server once: its supervisor restarts it, trials buffer meanwhile
        wait_for(lambda: search.done() >= KILL_MLFLOW_AT * scale or search.proc.poll() is not None, 3600)
        from search._record import ExperimentRecord
        state = ExperimentRecord.open(base / "runs", NAME).read_state()
        pids = mlflow_server_pids(run_dir)
        search.log(f"(c) SIGKILL MLflow server {pids} at {search.done()} done")
        killed_at = time.time()
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not health(state["tracking_uri"]), 30, 0.2)
        back = wait_for(lambda: health(state["tracking_uri"]), 300, 0.5)
        faults["mlflow_killed"] = {"t": round(killed_at - search.t0, 1), "done": search.done(), "pids": pids,
                                   "restarted": back, "outage_s": round(time.time() - killed_at, 1)}
        search.log(f"(c) MLflow server back after {faults['mlflow_killed']['outage_s']} s")

        # (d) SIGKILL the driver, then resume
        wait_for(lambda: search.done() >= KILL_DRIVER_AT * scale or search.proc.poll() is not None, 3600)
        done_at_kill = search.done()
        search.log(f"(d) SIGKILL driver at {done_at_kill} done")
        os.killpg(search.proc.pid, signal.SIGKILL)
        search.proc.wait()
        server_gone = wait_for(lambda: not mlflow_server_pids(run_dir), 60)
        faults["driver_killed"] = {"t": round(time.time() - search.t0, 1), "done": done_at_kill,
                                   "mlflow_server_stopped_by_supervisor": server_gone}
        search.start("resume", "--experiment", NAME, *common)
        resume_rc = search.proc.wait()
        stop_killing.set()
        search.log(f"resume exited {resume_rc}")
        if resume_rc != 0:
            raise SystemExit("resume failed:\n" + "\n".join(search.lines[-60:]))
        counts = count(base, args.trials)
    finally:
        stop_killing.set()
        nodes.stop()
        kill_mentioning(base)
        shutil.rmtree(base, ignore_errors=True)
    log_text = "\n".join(search.lines)
    result = {
        **counts, "retries": len(re.findall(r"retried \(failure", log_text)),
        "worker_deaths_of_each_failed_trial": failures_per_trial(log_text),
        "faults": {"trial_workers_killed": len(kills), "kill_every_s": args.kill_every,
                   "max_failures": args.max_failures, **faults},
        "mlflow_reconciled": re.findall(r"MLflow reconciled with the trial table: (.*)", log_text),
        "target_met": counts["lost"] == 0 and counts["optuna"]["duplicated"] == 0
        and counts["mlflow"]["duplicated"] == 0 and counts["mlflow"]["completed_exactly_once"],
        "wall_seconds": round(time.time() - start, 1),
        "cluster": "3 local Ray nodes (head + 2 workers, 1 CPU each), 3 concurrent trials, rungs 2",
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} CPUs, shared",
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        **provenance(),
    }
    write_json(Path(args.out), result)
    if args.log:
        Path(args.log).write_text(log_text + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
