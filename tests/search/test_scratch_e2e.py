"""Track 2 end to end: `launch --track scratch` trains real models from scratch through Ray Tune + Optuna + ASHA +
MLflow and saves deployable checkpoints. (Its bad input, foreign data, impossible budgets, quantized dtypes and
teachers, is in tests/search/test_bad_input.py's CASES table.)"""
import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

import experiments

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def search(*args, root=None, timeout=1800):     # a hang guard, not a speed target
    where = ["--root", str(root)] if root else []
    return subprocess.run([sys.executable, "-m", "search", *args, *where], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_scratch_search_end_to_end(tmp_path):
    proc = search("launch", "--track", "scratch", "--trials", "3", "--tokens", "30000", "--rungs", "2", "--workers", "2",
                  "--set", "proxy.tasks=[csqa, chid]",
                  "--experiment", "s2", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "track 2 experiment: experiments/scratch-tiny.yaml" in proc.stdout        # no GPU here
    assert "gain over hand-picked baseline" in proc.stdout
    exp = tmp_path / "s2"
    results = json.loads((exp / "results.json").read_text())
    rows, summary = results["trials"], results["summary"]
    assert len(rows) == 3 and rows[0]["name"] == "hand-picked"
    for row in rows:
        assert row["status"] in ("complete", "stopped early"), row
        assert row["peak_memory_bytes"] <= summary["budget_bytes"]      # every sampled shape repaired onto the budget
        assert 0 < row["heldout_nats_per_byte"] < 8 and row["c4_perplexity"] > 1 and row["train_tokens"] > 0
        assert row["score"] == pytest.approx(row["proxy_accuracy"] - row["heldout_nats_per_byte"])
        assert row.get("kl_to_teacher") is None                           # no teacher in Track 2
    assert set(json.loads(rows[0]["params_json"])) >= {"layers", "hidden", "vocab", "lr", "tokens", "c4_share"}
    # the top-k are complete FP16 checkpoints with their tokenizer, which export to GGUF
    top = summary["top"]
    assert top and all(os.path.isfile(os.path.join(t["dir"], f)) for t in top
                       for f in ("model.safetensors", "tokenizer.json", "plan.json"))
    record = json.loads(open(os.path.join(top[0]["dir"], "plan.json")).read())["realised"]
    assert record["track"] == "scratch" and record["arch"] == top[0]["arch"]
    gguf = search("export", "--model", top[0]["dir"], "--format", "gguf", "--out", str(tmp_path / "best.gguf"))
    assert gguf.returncode == 0 and (tmp_path / "best.gguf").stat().st_size > 0, gguf.stderr[-2000:]
    # MLflow: a parent run, one nested run per trial with its architecture and per-rung metrics
    client = MlflowClient(f"sqlite:///{exp / 'mlflow.db'}")          # the experiment's own store, read directly
    runs = client.search_runs([client.get_experiment_by_name("s2").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    # ASHA's stops are no failures: FINISHED, told apart by the outcome tag; the hand-picked baseline ran every rung
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    assert [r.data.tags["outcome"] for r in children if r.data.tags.get("baseline")] == ["complete"]
    assert all("heldout_nats_per_byte" in r.data.metrics for r in children)
    first = children[0].info
    assert (exp / "mlartifacts" / first.experiment_id / first.run_id / "artifacts" / "arch.json").is_file()
    # the saved config is a Track 2 experiment again (resume reads it)
    again = experiments.read_experiment(exp / "config.yaml")
    assert isinstance(again, experiments.ScratchExperiment) and again.train.tokens == [30000]
