"""The competition bundle end to end on the bundled model, as a user runs it: launch (2 trials) -> validate
(emulated) -> full-eval (limit 2) -> submit -> the bundle's own checks (a fresh process: plain transformers with
the experiment's logits, llama.cpp, a limited OpenCompass run from the bundle). Along the way, every place that
shows memory or speed says which kind of number it is, and MLflow / Optuna read as the issue asks (through their
APIs). Bad input of `submit` is in tests/search/test_bad_input.py's CASES table."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient


REPO = Path(__file__).resolve().parents[2]


def search(*args, root, timeout=1800):      # a hang guard, not a speed target
    proc = subprocess.run([sys.executable, "-m", "search", *args, "--root", str(root)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_launch_validate_full_eval_submit_and_the_bundle_checks(tmp_path):
    # chance_z null: the proxy is scored although the 260K model is at chance (the bundle carries its item counts)
    search("launch", "--trials", "2", "--rungs", "1", "--workers", "2", "--set", "proxy.tasks=[csqa]",
           "--set", "proxy.ladder=[{kl_blocks: 8}, {kl_blocks: 32, proxy: loglik, proxy_level: 0, chance_z: null}]",
           "--experiment", "sub", root=tmp_path)
    exp = tmp_path / "sub"
    results = json.loads((exp / "results.json").read_text())
    assert results["number_kinds"]["peak_memory_bytes"] == "simulated"
    assert all(r["csqa_items"] == 8 for r in results["trials"])          # the proxy's item counts are kept
    out = search("validate", "--experiment", "sub", "--top", "1", "--prompt-tokens", "8", "--gen-tokens", "4",
                 "--repetitions", "1", "--threads", "1", root=tmp_path)
    assert "measured-emulated" in out       # whether it fits when measured is bench/sim_vs_measured.py's target
    assert "measured-emulated" in search("top", "--experiment", "sub", "--k", "2", root=tmp_path)
    search("full-eval", "--experiment", "sub", "--top", "1", "--limit", "2", "--bbh-subsets", "navigate",
           "--max-out-len", "8", "--device", "cpu", root=tmp_path)      # the shipped subsets: no ../shared
    row = next(csv.DictReader(open(exp / "opencompass.csv")))
    assert row["Memory-Usage-Kind"] == row["Throughput-Kind"] == "measured-emulated" and row["GSM8K"] != ""

    bundle = tmp_path / "bundle"
    out = search("submit", "--experiment", "sub", "--out", str(bundle), root=tmp_path, timeout=1800)
    assert "checks passed" in out
    check = json.loads((bundle / "check.json").read_text())
    (name, checks), = check["candidates"].items()
    assert check["ok"] and all(c["ok"] for c in checks.values()), checks
    assert checks["transformers"]["max_abs_diff"] == 0.0
    cand = json.loads((bundle / name / "candidate.json").read_text())
    assert {"hf/model.safetensors", "hf/config.json", "model-f16.gguf"} <= set(cand["files"])
    assert cand["parameters"] > 0 and len(cand["realised_layers"]) == 5 and cand["plan"]["layers"]
    assert cand["proxy"]["tasks"]["csqa"]["items"] == 8
    assert cand["opencompass"]["ran"] and cand["opencompass"]["limit"] == 2
    assert cand["opencompass"]["items"]["GSM8K"] == 2
    assert set(cand["numbers"]) == {"simulated", "measured-emulated"}
    assert (bundle / name / "hf" / "modeling_pruned.py").is_file() == cand["remote_code"]
    assert cand["mlc"]["buildable"] == cand["uniform"] and (cand["mlc"].get("reason") or cand["mlc"]["commands"])
    row = next(csv.DictReader(open(bundle / "results.csv")))
    assert row["Memory-Usage-Kind"] == "measured-emulated" and float(row["Memory-Usage"]) > 0
    assert "measured-emulated" in (bundle / "README.md").read_text()
    _mlflow_reads_right(exp)
    _study_reads_right(exp)


def _mlflow_reads_right(exp: Path):
    client = MlflowClient(f"sqlite:///{exp / 'mlflow.db'}")
    mlexp = client.get_experiment_by_name("sub")
    assert mlexp.tags["mlflow.experimentKind"] == "custom_model_development"        # opens on the runs table
    runs = client.search_runs([mlexp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {"model": "stories260k", "trials": "2", "rungs": "1", "seed": "0", "sampler": "evolution"}.items() <= \
        parent.data.params.items() and parent.data.params["budget"].endswith("MiB")
    metrics = parent.data.metrics
    assert metrics["measured-emulated/rank1/peak_memory_bytes"] > 0 and "simulated/rank1/peak_memory_bytes" in metrics
    assert any(k.startswith("opencompass/rank1/") for k in metrics)
    art = exp / "mlartifacts" / parent.info.experiment_id / parent.info.run_id / "artifacts"
    assert {"config.yaml", "top_k.md", "score_vs_memory.png", "validation-emulated.json"} <= {p.name for p in art.iterdir()}
    assert "KL to teacher" in (art / "top_k.md").read_text()
    for run in children:
        tags = run.data.tags
        assert tags["outcome"] == "complete" and "stopped_early" not in tags and tags["baseline"] in ("owl", "uniform-l1")
        assert {"param_count", "simulated/peak_memory_bytes"} <= set(run.data.metrics)
        assert not {"params", "composite_score", "kept_attn_L00"} & set(run.data.metrics)
        assert {"attn_share_0", "criterion", "kept_attn_L00", "kept_fraction"} <= set(run.data.params)


def _study_reads_right(exp: Path):
    study = optuna.load_study(study_name="sub", storage=f"sqlite:///{exp / 'optuna.db'}")
    assert study.metric_names == ["score"]
    assert all(len(t.user_attrs["realised_attn_keep"]) == 5 for t in study.trials)
    # the study says what was searched, and names its parameters as MLflow and results.json do
    expected = {"experiment": "sub", "model": "stories260k", "device": "stories260k-tiny"}
    assert expected.items() <= study.user_attrs.items()
    assert "budget" in study.user_attrs and "sampler" in study.user_attrs
    assert {"attn_share_0", "criterion"} <= set(study.trials[0].params)


def test_uniform_candidate_gets_an_mlc_build_sharing_the_weights(tmp_path):
    """Uniform shapes: the MLC folder's FP16 weights are hard links to hf/'s, and the commands name folders
    relative to the candidate (the bundle is written in a temporary folder and moved into place)."""
    import compress
    from compress import Plan
    from search._submit import _mlc
    model, tok = compress.load_model("stories260k")
    plan = Plan.uniform(5, attn_keep=0.5, mlp_keep=0.5, importance="l1")
    compress.prune(model, tok, plan)
    source = compress.save_pruned(model, tok, tmp_path / "source", plan=plan)
    cand = tmp_path / "rank1-x"
    cand.mkdir()
    compress.export_model(source, "hf", cand / "hf")
    mlc = _mlc(source, cand / "mlc")
    assert mlc["buildable"] and "mlc_llm convert_weight mlc/hf --quantization q0f16 -o mlc/mlc" in mlc["commands"]
    assert str(tmp_path) not in mlc["commands"]
    assert (cand / "mlc" / "hf" / "model.safetensors").stat().st_ino == (cand / "hf" / "model.safetensors").stat().st_ino
