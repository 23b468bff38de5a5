"""The command line as a user meets it: prune, evaluate, distill; one-line errors, nothing overwritten."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAN = {"importance": "l2", "layers": [{"attn_keep": 0.5, "mlp_keep": 0.5}, {"attn_keep": 0, "mlp_keep": 0.6},
                                       {"attn_keep": 0, "mlp_keep": 0}, {"attn_keep": 1, "mlp_keep": 0},
                                       {"attn_keep": 0.75, "mlp_keep": 0.8}]}


def cli(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    plan = tmp / "plan.json"
    plan.write_text(json.dumps(PLAN))
    proc = cli("prune", "--plan", str(plan), "--out", str(tmp / "pruned"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["layer_map"] == [0, 1, 3, 4] and summary["params"] < summary["base_params"]
    return tmp / "pruned"


def test_evaluate_json_has_every_metric_with_unit_and_direction(pruned_dir):
    proc = cli("evaluate", "--model", str(pruned_dir), "--teacher", "stories260k", "--device", "stories260k-tiny",
               "--tasks", "csqa", "chid", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    metrics = out["metrics"]
    for name, unit, higher in [("peak_memory_bytes", "bytes", False), ("kl_to_teacher", "nats", False),
                               ("decode_tokens_per_s", "tokens/s", True), ("proxy_accuracy", "fraction", True)]:
        assert metrics[name]["unit"] == unit and metrics[name]["higher_is_better"] is higher
    assert metrics["kl_to_teacher"]["value"] > 0.1        # pruning really moved the distribution
    assert metrics["csqa_items"]["value"] == 8 and "gsm8k_accuracy" not in metrics
    assert metrics["params"]["value"] == json.loads((pruned_dir / "plan.json").read_text())["realised"]["params"]


def test_distill_cli_lowers_kl(pruned_dir, tmp_path):
    proc = cli("distill", "--student", str(pruned_dir), "--teacher", "stories260k", "--steps", "40",
               "--out", str(tmp_path / "recovered"), "--lr", "3e-3")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["after_kl"] < result["before_kl"]
    assert (tmp_path / "recovered" / "model.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (("evaluate", "--device", "phone-12g"), "did you mean 'phone-12gb'"),
    (("evaluate", "--tasks", "gsm8"), "did you mean 'gsm8k'"),
    (("evaluate", "--data-dir", "/nonexistent/data"), "/nonexistent/data"),
    (("prune", "--plan", "/nonexistent/plan.json", "--out", "/tmp/x"), "plan file not found"),
    (("prune", "--model", "/nonexistent/model", "--plan", "PLAN", "--out", "OUT"), "model directory not found"),
    (("prune", "--dtype", "int8", "--plan", "PLAN", "--out", "OUT"), "FP16 or FP32"),
    (("distill", "--student", "/nonexistent", "--out", "OUT"), "nonexistent"),
])
def test_bad_input_one_line_nonzero(args, message, tmp_path, capsys, monkeypatch):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    args = [str(plan) if a == "PLAN" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    code, _, err = in_process(args, capsys, monkeypatch)     # the CLI's main, without seconds of imports per case
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def in_process(argv, capsys, monkeypatch) -> tuple[int, str, str]:
    """`python -m search ARGV` in this process (the entry point itself: test_search_e2e's subprocess cases)."""
    from tests.search.test_bad_input import run_cli
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    return run_cli(argv, capsys)


def test_teacher_with_another_vocabulary_is_refused(pruned_dir, tmp_path, capsys, monkeypatch):
    from tests.conftest import tiny_model
    other = tmp_path / "other"
    tiny_model("llama").save_pretrained(other)   # vocab 128, the bundled model has 512
    code, _, err = in_process(["evaluate", "--model", pruned_dir, "--teacher", other, "--tasks", "csqa"], capsys,
                              monkeypatch)
    assert code == 2 and "vocab" in err.lower() and len(err.strip().splitlines()) == 1


def test_prune_refuses_to_overwrite(pruned_dir, tmp_path, capsys, monkeypatch):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    before = sorted(p.name for p in pruned_dir.iterdir())
    code, _, err = in_process(["prune", "--plan", plan, "--out", pruned_dir], capsys, monkeypatch)
    assert code == 2 and "--force" in err
    assert sorted(p.name for p in pruned_dir.iterdir()) == before


def test_second_launch_without_a_name_gets_a_fresh_experiment(tmp_path):
    from search._verbs import _free_name
    assert _free_name(tmp_path, "stories260k") == "stories260k"
    (tmp_path / "stories260k").mkdir()
    (tmp_path / "stories260k" / "config.yaml").write_text("model: stories260k\n")
    (tmp_path / "stories260k-2").mkdir()            # an empty folder is free to use
    assert _free_name(tmp_path, "stories260k") == "stories260k-2"
    (tmp_path / "stories260k-2" / "config.yaml").write_text("model: stories260k\n")
    assert _free_name(tmp_path, "stories260k") == "stories260k-3"


def test_an_output_never_replaces_or_enters_its_own_model(pruned_dir, tmp_path):
    """`prune --model D --out D --force` once replaced the model folder it read (issue 23): refused in one line,
    and not one byte of D changes."""
    import hashlib
    import shutil
    model = tmp_path / "model"
    shutil.copytree(pruned_dir, model)
    (model / "LICENSE").write_text("MIT")
    digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model.rglob("*"))}
    before = digest()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [{"attn_keep": 0.5, "mlp_keep": 0.5}] * 4}))
    proc = cli("prune", "--model", str(model), "--plan", str(plan), "--out", str(model), "--force")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --out {model} is the input {model} itself; write somewhere else"], proc.stderr
    assert digest() == before
