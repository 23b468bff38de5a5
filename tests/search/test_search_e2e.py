"""End to end: a short real search on the bundled model (Ray Tune + Optuna + MLflow), then kill and resume.

These start a local Ray cluster in a subprocess, exactly as a user's `python -m search launch` does, with a
private Ray temp dir (RAY_TMPDIR), so cleaning up after a killed driver stops only that cluster's processes
(`ray stop` would stop every Ray cluster of the user).
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from cluster._nodes import kill_mentioning, pids_mentioning
from tests.search.test_pareto import check_front

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def search(*args, root, timeout=1800, ray_tmp=None):   # a hang guard: two workers on a loaded machine take minutes
    cmd = [sys.executable, "-m", "search", *args, "--root", str(root)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_env(ray_tmp))


def _env(ray_tmp=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    if ray_tmp:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return env


@pytest.fixture
def ray_tmp():
    """A private Ray temp dir (short: Ray's socket paths must stay < 108 bytes); its processes die with the test."""
    folder = Path(tempfile.mkdtemp(prefix="epray", dir="/tmp"))
    yield folder
    kill_mentioning(folder)
    shutil.rmtree(folder, ignore_errors=True)


def mlflow_runs(root, name, experiment=None):
    """(parent, children) of an experiment, read straight from its MLflow store (no server needed)."""
    client = MlflowClient(f"sqlite:///{root / name / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment or name).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def artifacts(root, name, run) -> set:
    folder = root / name / "mlartifacts" / run.info.experiment_id / run.info.run_id / "artifacts"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def study_states(root, name, study=None):
    """States of the study's trials ([] while the driver has created optuna.db but not yet the study)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{root / name / 'optuna.db'}")
    try:
        return [t.state.name for t in optuna.load_study(study_name=study or name, storage=storage).trials]
    except KeyError:
        return []
    finally:
        storage.engine.dispose()     # one engine per poll: the polling loop must not pile up open connections


def test_short_search_end_to_end(tmp_path):
    # two criteria: three baselines (uniform-l1, owl, shortgpt) and one sampled trial
    proc = search("launch", "--trials", "4", "--rungs", "2", "--workers", "2", "--experiment", "e2e",
                  "--set", "space.criteria=[l1, activation]", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Ray dashboard: http://" in out and "gain over uniform-L1 baseline" in out
    results = json.loads((tmp_path / "e2e" / "results.json").read_text())
    rows = results["trials"]
    assert len(rows) == 4 and {r["name"] for r in rows} >= {"uniform-l1", "owl", "shortgpt"}
    budget = results["summary"]["budget_bytes"]
    for row in rows:
        assert row["status"] in ("complete", "stopped early")
        assert row["peak_memory_bytes"] <= budget  # the space repairs every trial onto the budget
        assert row["kl_to_teacher"] > 0 and row["perplexity"] > 1
    # top-k checkpoints are real FP16 model directories
    top = results["summary"]["top"]
    assert top and all(os.path.isfile(os.path.join(t["dir"], "model.safetensors")) for t in top)
    assert sorted(os.listdir(tmp_path / "e2e" / "top")) == sorted(t["folder"] for t in top)   # only the top k kept
    assert all(s in ("COMPLETE", "PRUNED") for s in study_states(tmp_path, "e2e"))
    # MLflow (through the experiment's own tracking server, stopped at the end): one parent run, one nested
    # run per trial, with plan and kept-ratio plot
    parents, children = mlflow_runs(tmp_path, "e2e")
    assert len(parents) == 1 and len(children) == 4 and "MLflow: http://127.0.0.1:" in out
    assert artifacts(tmp_path, "e2e", children[0]) >= {"plan.json", "kept_ratio.png"}
    assert artifacts(tmp_path, "e2e", parents[0]) >= {"score_vs_memory.png", "top_k.md", "trial_setup.json"}
    # ASHA's stops are no failures: FINISHED, told apart by the outcome tag; the baselines ran every rung
    assert all("kl_to_teacher" in c.data.metrics and c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["outcome"] for c in children if c.data.tags.get("baseline")} == {"complete"}
    assert all(r["status"] == "complete" and r["rung"] == 1 for r in rows if r["name"] in ("uniform-l1", "owl"))
    assert "both scored at the final rung" in out and "MLflow afterwards:" in out
    assert parents[0].info.status == "FINISHED" and not pids_mentioning(tmp_path / "e2e")   # the server stopped
    # `top` reads the results; launching the same experiment again refuses to overwrite it
    top_out = search("top", "--experiment", "e2e", "--k", "2", root=tmp_path)
    assert top_out.returncode == 0 and top[0]["dir"] in top_out.stdout
    again = search("launch", "--trials", "1", "--experiment", "e2e", root=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


def launch_processes(ray_tmp, *folders) -> list[tuple[int, str]]:
    """(pid, command) of every live process a launch started: it runs with RAY_TMPDIR=ray_tmp, which Ray's
    processes inherit (the agents rename themselves `ray::...`, so their command lines no longer say so),
    or its command line names one of `folders` (the MLflow server names the run directory)."""
    import psutil
    marks = [str(f).rstrip(os.sep) + os.sep for f in (ray_tmp, *folders)]
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
        try:
            if p.info["pid"] == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(p.info["cmdline"] or ())
            if (p.info["environ"] or {}).get("RAY_TMPDIR") == str(ray_tmp) or any(m in command for m in marks):
                found.append((p.info["pid"], command[:80]))
        except psutil.Error:
            continue
    return found


def digest(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_kill_then_resume_a_copy_keeps_completed_trials_and_leaves_the_original(tmp_path, ray_tmp):
    """SIGKILL the driver alone (as the OOM killer or `kill -9` would): no process of the launch is alive 10 s
    later. Then copy the interrupted experiment elsewhere under another name and resume the copy: it finishes
    with every trial once, and not one byte of the original folder changes (issue 23)."""
    cmd = [sys.executable, "-m", "search", "launch", "--trials", "6", "--rungs", "1", "--workers", "2",
           "--experiment", "kill", "--root", str(tmp_path)]
    log = tmp_path / "driver.log"            # a file, not a pipe nobody reads: the output is there on failure
    with open(log, "w") as out:
        driver = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  env=_env(ray_tmp), start_new_session=True)
    db = tmp_path / "kill" / "optuna.db"
    deadline = time.time() + 900            # under load, two completed trials can take minutes
    while time.time() < deadline and driver.poll() is None:
        time.sleep(2)
        if db.exists() and study_states(tmp_path, "kill").count("COMPLETE") >= 2:
            break
    exited = driver.poll()                   # the driver must still be running when it is killed
    running = launch_processes(ray_tmp, tmp_path / "kill")
    os.kill(driver.pid, signal.SIGKILL)      # the driver only: its Ray cluster and MLflow server must follow it
    killed = time.time()
    driver.wait()
    before = study_states(tmp_path, "kill")
    completed_before = before.count("COMPLETE")
    assert exited is None and completed_before >= 2 and len(before) < 6 + 2, (exited, before, log.read_text()[-3000:])
    assert len(running) > 5, running         # Ray's processes and the MLflow server were found while it ran
    time.sleep(max(0.0, killed + 10 - time.time()))
    assert launch_processes(ray_tmp, tmp_path / "kill") == []      # 10 s after the kill: nothing of it is left

    original = tmp_path / "kill"
    hashes = digest(original)
    shutil.copytree(original, tmp_path / "elsewhere" / "copied")
    proc = search("resume", "--experiment", "copied", root=tmp_path / "elsewhere", ray_tmp=ray_tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert digest(original) == hashes                              # the original folder: not one byte changed
    root, name = tmp_path / "elsewhere", "copied"
    after = study_states(root, name, study="kill")                 # the copy's study keeps its launch name
    assert after[:completed_before] == ["COMPLETE"] * completed_before
    assert after.count("COMPLETE") == 6 and "RUNNING" not in after
    results = json.loads((root / name / "results.json").read_text())
    assert len(results["trials"]) == 6 and all(r["status"] == "complete" for r in results["trials"])
    assert all(Path(t["dir"]).is_relative_to(root / name) for t in results["summary"]["top"])
    assert json.loads((root / name / "state.json").read_text())["status"] == "finished"
    # every trial exactly one run, finished, the trials in flight at the kill included (a re-run trial finds
    # and continues its run; the driver reconciles MLflow with the trial table), in the copy's own store
    parents, children = mlflow_runs(root, name, experiment="kill")
    assert sorted(r.data.tags["tune_trial_id"] for r in children) == sorted(r["trial_id"] for r in results["trials"])
    assert all(r.info.status == "FINISHED" for r in children + parents)


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    from tests.search.test_cli import in_process
    proc = search("launch", "--model", "qwen-7", root=tmp_path, timeout=120)     # the real entry point, once
    assert proc.returncode == 2 and "did you mean 'qwen-7b'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    for args, message in [(("launch", "--device", "phone-12g"), "did you mean 'phone-12gb'"),
                          (("resume", "--experiment", "nope"), "no experiment 'nope'"),
                          (("launch", "--budget-gb", "-1"), "budget_gb must be positive")]:
        code, _, err = in_process([*args, "--root", tmp_path], capsys, monkeypatch)    # the same main, no imports
        assert code == 2 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_multi_objective_mlc_search_prints_pareto_front(tmp_path):
    proc = search("launch", "--trials", "4", "--rungs", "1", "--mode", "multi", "--versus", "memory",
                  "--sampler", "nsga2", "--runtime", "mlc", "--experiment", "multi", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Pareto front:" in proc.stdout
    results = json.loads((tmp_path / "multi" / "results.json").read_text())
    front = results["summary"]["pareto_front"]
    assert front and all(r["status"] == "complete" for r in front)
    # the front is the non-dominated set of the complete trials (score up, simulated memory down)
    complete = [r for r in results["trials"] if r["status"] == "complete"]
    check_front(front, complete, "peak_memory_bytes", "min")
    # MLC: every kept layer has one shape
    for entry in results["summary"]["top"]:
        shapes = json.loads(open(os.path.join(entry["dir"], "plan.json")).read())["realised"]["layers"]
        kept = {(s["num_attention_heads"], s["num_key_value_heads"], s["intermediate_size"]) for s in shapes
                if s["num_attention_heads"] or s["intermediate_size"]}
        assert len(kept) == 1
