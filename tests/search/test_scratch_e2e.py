"""Track 2 end to end: `launch --track scratch` trains real models from scratch through Ray Tune + Optuna + ASHA +
MLflow, saves deployable checkpoints; bad input (foreign data, impossible budgets, quantized dtypes, teachers)
is one line, exit 2, nothing written."""
import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

import experiments
from search._cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def search(*args, root=None, timeout=400):
    where = ["--root", str(root)] if root else []
    return subprocess.run([sys.executable, "-m", "search", *args, *where], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_scratch_search_end_to_end(tmp_path):
    proc = search("launch", "--track", "scratch", "--trials", "3", "--tokens", "30000", "--workers", "2",
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
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("s2").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    assert all("heldout_nats_per_byte" in r.data.metrics for r in children)
    assert "arch.json" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    # the saved config is a Track 2 experiment again (resume reads it)
    again = experiments.read_experiment(exp / "config.yaml")
    assert isinstance(again, experiments.ScratchExperiment) and again.train.tokens == [30000]


@pytest.mark.parametrize("args, message", [
    (["--datasets", "c4", "wikitext"], "'wikitext' is not allowed"),
    (["--size-gb", "0.00005"], "no architecture of the space fits"),
    (["--dtype", "int8"], "no quantization"),
    (["--distill"], "distillation from a teacher (--distill) is not allowed"),
    (["--model", "stories260k"], "--model (a pre-trained model) is not allowed"),
    (["--tokens", "100"], "fewer than the 3 fidelity rungs"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    root = tmp_path / "runs"
    assert main(["launch", "--track", "scratch", *args, "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not root.exists()


def test_teacher_in_a_scratch_yaml_and_track2_flags_on_track1_are_refused(tmp_path, capsys):
    config = tmp_path / "x.yaml"
    config.write_text("track: scratch\ndistill: {enabled: true}\n")
    assert main(["launch", "--config", str(config), "--root", str(tmp_path / "runs")]) == 2
    assert "distillation from a teacher or a pre-trained model is not allowed" in capsys.readouterr().err
    assert main(["launch", "--tokens", "1000", "--root", str(tmp_path / "runs")]) == 2
    assert "--tokens applies to --track scratch" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
