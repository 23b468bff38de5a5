"""`validate_experiment` and the `search validate` / `search export` verbs on a hand-made finished
experiment (two pruned checkpoints of the bundled model), with the emulated backend."""
import argparse
import json

import pytest

import compress
from compress import LayerPlan, Plan
from search._record import ExperimentRecord
from search._verbs_export import add_export_args, add_validate_args, run_export, run_validate

pytest.importorskip("llama_cpp")

PLANS = {"rank1-trial_a": [(0.5, 0.75)] * 5, "rank2-trial_b": [(0, 1), (1, 0), (0, 0), (0.5, 0.5), (0.75, 0.3)]}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    exp = root / "stories"
    top = []
    for rank, (name, layers) in enumerate(PLANS.items(), start=1):
        model, tok = compress.load_model("stories260k")
        plan = Plan(layers=tuple(LayerPlan(attn_keep=a, mlp_keep=m) for a, m in layers))
        result = compress.prune(model, tok, plan)
        compress.save_pruned(model, tok, exp / "top" / name, plan=plan, summary=result.summary())
        top.append({"rank": rank, "trial_id": name[6:], "name": None, "score": 0.5 - rank / 10,
                    "peak_memory_bytes": 700_000, "params": result.params, "dir": str(exp / "top" / name)})
    (exp / "results.json").write_text(json.dumps({"summary": {"top": top}, "trials": []}))
    (exp / "config.yaml").write_text("model: stories260k\ndevice: phone-12gb\n")
    return root, exp


@pytest.fixture
def mlflow_parent(experiment, monkeypatch):
    """A parent run in a file store (the SQLite store's first migration alone takes ~10 s)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    _, exp = experiment
    uri = (exp.parent / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("stories"))
    (exp / "state.json").write_text(json.dumps({"tracking_uri": uri, "parent_run_id": run.info.run_id}))
    yield client, run.info.run_id
    (exp / "state.json").unlink()


def test_validate_experiment_writes_measured_next_to_simulated(experiment, mlflow_parent):
    from cluster import validate_experiment
    _, exp = experiment
    client, run_id = mlflow_parent
    record = validate_experiment(ExperimentRecord(exp.parent, exp.name), top=2, device="emulated", prompt_tokens=16,
                                 gen_tokens=8, repetitions=1, backend_options={"threads": 1})
    assert json.loads((exp / "validation.json").read_text()) == json.loads(json.dumps(record, default=str))
    assert record["profile"] == "phone-12gb" and [c["rank"] for c in record["candidates"]] == [1, 2]
    for cand in record["candidates"]:
        measured, simulated = cand["measured"], cand["simulated"]
        assert measured["decode_tokens_per_s"] > 0 and measured["prefill_tokens_per_s"] > 0
        assert measured["peak_memory_bytes"] > 0 and measured["fits"]
        assert simulated["decode_tokens_per_s"] > 0 and simulated["peak_memory_bytes"] > 0
        assert cand["measured_over_simulated"]["decode"] > 0
        assert cand["raw"]["llama_buffers"]["model"] > 0 and (exp / "exports" / cand["gguf"].split("/")[-1]).is_file()
    metrics = client.get_run(run_id).data.metrics
    assert metrics["validation_emulated_rank1_decode_tokens_per_s"] > 0
    assert "validation_emulated_rank2_simulated_peak_memory_bytes" in metrics
    assert [a.path for a in client.list_artifacts(run_id)] == ["validation.json"]


def test_validate_verb_and_tiny_budget_does_not_fit(experiment, capsys):
    root, exp = experiment
    p = argparse.ArgumentParser()
    add_validate_args(p)
    args = p.parse_args(["--experiment", "stories", "--root", str(root), "--top", "1", "--profile", "stories260k-tiny",
                         "--prompt-tokens", "16", "--gen-tokens", "4", "--repetitions", "1", "--threads", "1"])
    assert run_validate(args) == 0
    out = capsys.readouterr().out
    assert "written:" in out and "NO" in out          # llama.cpp's own buffers exceed the 0.7 MB toy budget
    record = json.loads((exp / "validation.json").read_text())
    assert record["candidates"][0]["measured"]["notes"][0].startswith("does not fit")
    with pytest.raises(ValueError, match="adb only"):
        run_validate(p.parse_args(["--experiment", "stories", "--root", str(root), "--serial", "X"]))


def test_export_verb(experiment, tmp_path, capsys):
    _, exp = experiment
    p = argparse.ArgumentParser()
    add_export_args(p)
    assert run_export(p.parse_args(["--model", str(exp / "top" / "rank2-trial_b"), "--format", "gguf",
                                    "--out", str(tmp_path / "m.gguf")])) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="did you mean 'mlc'"):
        run_export(p.parse_args(["--model", "stories260k", "--format", "mlx", "--out", str(tmp_path / "x")]))
    with pytest.raises(ValueError, match="not MLC-compatible"):
        run_export(p.parse_args(["--model", str(exp / "top" / "rank2-trial_b"), "--format", "mlc",
                                 "--out", str(tmp_path / "mlc")]))
