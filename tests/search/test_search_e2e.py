"""End to end: a short real search on the bundled model (Ray Tune + Optuna + MLflow), then kill and resume.

These start a local Ray cluster in a subprocess, exactly as a user's `python -m search launch` does.
"""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def search(*args, root, timeout=400):
    cmd = [sys.executable, "-m", "search", *args, "--root", str(root)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_env())


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}


def study_states(root, name):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / name / 'optuna.db'}")
    return [t.state.name for t in study.trials]


def test_short_search_end_to_end(tmp_path):
    proc = search("launch", "--trials", "4", "--rungs", "2", "--workers", "2", "--experiment", "e2e", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Ray dashboard: http://" in out and "gain over uniform-L1 baseline" in out
    results = json.loads((tmp_path / "e2e" / "results.json").read_text())
    rows = results["trials"]
    assert len(rows) == 4 and {r["name"] for r in rows} >= {"uniform-l1", "owl"}
    budget = results["summary"]["budget_bytes"]
    for row in rows:
        assert row["status"] in ("complete", "stopped early")
        assert row["peak_memory_bytes"] <= budget  # the space repairs every trial onto the budget
        assert row["kl_to_teacher"] > 0 and row["perplexity"] > 1
    # top-k checkpoints are real FP16 model directories
    top = results["summary"]["top"]
    assert top and all(os.path.isfile(os.path.join(t["dir"], "model.safetensors")) for t in top)
    assert all(s in ("COMPLETE", "PRUNED") for s in study_states(tmp_path, "e2e"))
    # MLflow: one parent run, one nested run per trial, with plan and kept-ratio plot
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"plan.json", "kept_ratio.png"}
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"score_vs_memory.png", "top_k.md"}
    assert all("kl_to_teacher" in c.data.metrics and c.info.status == "FINISHED" for c in children)
    # `top` reads the results; launching the same experiment again refuses to overwrite it
    top_out = search("top", "--experiment", "e2e", "--k", "2", root=tmp_path)
    assert top_out.returncode == 0 and "rank1-" in top_out.stdout
    again = search("launch", "--trials", "1", "--experiment", "e2e", root=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_kill_then_resume_keeps_completed_trials(tmp_path):
    cmd = [sys.executable, "-m", "search", "launch", "--trials", "6", "--rungs", "1", "--workers", "2",
           "--experiment", "kill", "--root", str(tmp_path)]
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(), start_new_session=True)
    db = tmp_path / "kill" / "optuna.db"
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(2)
        if db.exists() and study_states(tmp_path, "kill").count("COMPLETE") >= 2:
            break
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "stop", "--force"], capture_output=True)
    before = study_states(tmp_path, "kill")
    completed_before = before.count("COMPLETE")
    assert completed_before >= 2 and len(before) < 6 + 2, before

    proc = search("resume", "--experiment", "kill", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = study_states(tmp_path, "kill")
    assert after[:completed_before] == ["COMPLETE"] * completed_before
    assert after.count("COMPLETE") == 6 and "RUNNING" not in after
    results = json.loads((tmp_path / "kill" / "results.json").read_text())
    assert len(results["trials"]) == 6 and all(r["status"] == "complete" for r in results["trials"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kill").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    finished = [r.data.tags["tune_trial_id"] for r in children if r.info.status == "FINISHED"]
    # every trial has a finished run (a trial that finished just before the kill, after Tune's last state
    # snapshot, is re-run deterministically and may have two)
    assert set(finished) == {r["trial_id"] for r in results["trials"]}
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)


def test_bad_input_is_one_line(tmp_path):
    for args, message in [(("launch", "--model", "qwen-7"), "did you mean 'qwen-7b'"),
                          (("launch", "--device", "phone-12g"), "did you mean 'phone-12gb'"),
                          (("resume", "--experiment", "nope"), "no experiment 'nope'"),
                          (("launch", "--budget-gb", "-1"), "budget_gb must be positive")]:
        proc = search(*args, root=tmp_path, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


def test_multi_objective_mlc_search_prints_pareto_front(tmp_path):
    proc = search("launch", "--trials", "4", "--rungs", "1", "--mode", "multi", "--versus", "memory",
                  "--sampler", "nsga2", "--runtime", "mlc", "--experiment", "multi", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Pareto front:" in proc.stdout
    results = json.loads((tmp_path / "multi" / "results.json").read_text())
    front = results["summary"]["pareto_front"]
    assert front and all(r["status"] == "complete" for r in front)
    # MLC: every kept layer has one shape
    for entry in results["summary"]["top"]:
        shapes = json.loads(open(os.path.join(entry["dir"], "plan.json")).read())["realised"]["layers"]
        kept = {(s["num_attention_heads"], s["num_key_value_heads"], s["intermediate_size"]) for s in shapes
                if s["num_attention_heads"] or s["intermediate_size"]}
        assert len(kept) == 1
