"""Bad input, as a new user types it: exactly one `error: ...` line on stderr, exit status 2, nothing
written or overwritten. The CASES table is the README's list; each row is one test (in-process CLI
calls: a subprocess per case would cost seconds of imports)."""
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from search._cli import main

BUNDLED = Path(__file__).resolve().parents[2] / "compress" / "_bundled" / "stories260k"
GOOD_PLAN = {"layers": [{"attn_keep": 0.5, "mlp_keep": 0.5}] * 5}

# (id, argv with {placeholders} filled from the `world` fixture, fragment the one error line must contain)
CASES = [
    ("unknown verb", ["lanch"], "did you mean 'launch'"),
    ("unknown model", ["prune", "--model", "stories26k", "--plan", "{plan}", "--out", "{out}"],
     "did you mean 'stories260k'"),
    ("unknown model (launch)", ["launch", "--model", "phi2", "--root", "{root}"], "did you mean 'phi-2'"),
    ("unknown criterion in a plan", ["prune", "--plan", "{plan_l3}", "--out", "{out}"],
     "unknown importance criterion 'l3'"),
    ("unknown criterion in an experiment", ["launch", "--config", "{yaml_l3}", "--root", "{root}"],
     "unknown importance criterion 'l3'"),
    ("unknown device profile", ["evaluate", "--device", "phone-12g"], "did you mean 'phone-12gb'"),
    ("unknown task", ["evaluate", "--tasks", "gsm8"], "did you mean 'gsm8k'"),
    ("unknown sampler: one line, no usage", ["launch", "--sampler", "tp", "--root", "{root}"], "did you mean 'tpe'"),
    ("no prefix matching (--track)", ["launch", "--track", "scratch", "--root", "{root}"],
     "unrecognized arguments: --track"),
    ("unknown experiment key", ["launch", "--config", "{yaml_typo}", "--root", "{root}"], "unknown keys in 'search'"),
    ("plan JSON malformed", ["prune", "--plan", "{plan_bad_json}", "--out", "{out}"], "is not valid JSON"),
    ("plan with the wrong layer count", ["prune", "--plan", "{plan_3_layers}", "--out", "{out}"],
     "3 layer entries but the model has 5"),
    ("plan keep outside [0, 1]", ["prune", "--plan", "{plan_keep_1_5}", "--out", "{out}"],
     "attn_keep must be a number in [0, 1]"),
    ("plan file missing", ["prune", "--plan", "{tmp}/nope.json", "--out", "{out}"], "plan file not found"),
    ("a budget no plan fits", ["launch", "--budget-gb", "0.0000001", "--root", "{root}"], "below the smallest plan"),
    ("--trials 0", ["launch", "--trials", "0", "--root", "{root}"], "search.trials (--trials) must be an integer >= 1"),
    ("--workers 0", ["launch", "--workers", "0", "--root", "{root}"], "search.workers (--workers)"),
    ("truncated safetensors (evaluate)", ["evaluate", "--model", "{truncated}", "--tasks", "csqa"],
     "corrupt or truncated"),
    ("truncated safetensors (prune)", ["prune", "--model", "{truncated}", "--plan", "{plan}", "--out", "{out}"],
     "corrupt or truncated"),
    ("truncated safetensors (export)",
     ["export", "--model", "{truncated}", "--format", "gguf", "--out", "{tmp}/m.gguf"],
     "corrupt or truncated"),
    ("config lies about shapes (evaluate)", ["evaluate", "--model", "{lies}", "--tasks", "csqa"],
     "does not match its config.json"),
    ("config lies about shapes (prune)", ["prune", "--model", "{lies}", "--plan", "{plan}", "--out", "{out}"],
     "does not match its config.json"),
    ("truncated safetensors (launch)", ["launch", "--model", "{truncated}", "--root", "{root}"], "corrupt or truncated"),
    ("config lies about shapes (launch)", ["launch", "--model", "{lies}", "--root", "{root}"],
     "does not match its config.json"),
    ("config claims more layers than the weights", ["evaluate", "--model", "{extra_layer}", "--tasks", "csqa"],
     "is missing from the weights"),
    ("non-empty --out", ["prune", "--plan", "{plan}", "--out", "{full}"], "not empty; pass --force"),
    ("existing experiment name", ["launch", "--experiment", "exists", "--root", "{root}"], "already exists"),
    ("resume of a missing experiment", ["resume", "--experiment", "nope", "--root", "{root}"], "no experiment 'nope'"),
    ("resume of a finished experiment", ["resume", "--experiment", "done", "--root", "{root}"], "has finished"),
    ("quantized checkpoint", ["evaluate", "--model", "{quantized}", "--tasks", "csqa"],
     "quantized checkpoint (gptq) refused"),
    ("teacher with another vocabulary", ["evaluate", "--teacher", "{other_vocab}", "--tasks", "csqa"],
     "teacher vocabulary (128 tokens)"),
    ("unreadable data directory", ["evaluate", "--tasks", "csqa", "--data-dir", "{unreadable}"],
     "cannot read the csqa items"),
    ("missing data directory", ["evaluate", "--tasks", "csqa", "--data-dir", "{tmp}/nodata"], "not found"),
    ("non-FP dtype", ["prune", "--dtype", "int8", "--plan", "{plan}", "--out", "{out}"], "FP16 or FP32"),
    ("unknown export format", ["export", "--model", "stories260k", "--format", "ggfu", "--out", "{out}"],
     "did you mean 'gguf'"),
    ("fidelity out of range", ["evaluate", "--tasks", "csqa", "--fidelity", "7"], "--fidelity must be 0..2"),
    ("top --k 0", ["top", "--experiment", "done", "--k", "0", "--root", "{root}"], "--k must be >= 1"),
    ("validate --top 0", ["validate", "--experiment", "done", "--top", "0", "--root", "{root}"], "--top must be >= 1"),
    ("distill a missing student", ["distill", "--student", "{tmp}/nope", "--out", "{out}"], "not found"),
]


def _copy_model(dst: Path, edit=None) -> Path:
    shutil.copytree(BUNDLED, dst)
    if edit:
        config = json.loads((dst / "config.json").read_text())
        edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every bad input, built once; tests must leave it exactly as it is."""
    tmp = tmp_path_factory.mktemp("bad_input")
    files = {"plan": GOOD_PLAN, "plan_l3": {**GOOD_PLAN, "importance": "l3"},
             "plan_3_layers": {"layers": GOOD_PLAN["layers"][:3]},
             "plan_keep_1_5": {"layers": [{"attn_keep": 1.5, "mlp_keep": 0.5}] * 5}}
    paths = {"tmp": tmp, "out": tmp / "out", "root": tmp / "runs"}
    for key, data in files.items():
        paths[key] = tmp / f"{key}.json"
        paths[key].write_text(json.dumps(data))
    paths["plan_bad_json"] = tmp / "bad.json"
    paths["plan_bad_json"].write_text('{"layers": [')
    paths["yaml_l3"] = tmp / "l3.yaml"
    paths["yaml_l3"].write_text("model: stories260k\ndevice: stories260k-tiny\nspace: {criteria: [l3]}\n")
    paths["yaml_typo"] = tmp / "typo.yaml"
    paths["yaml_typo"].write_text("model: stories260k\nsearch: {trails: 3}\n")
    paths["truncated"] = _copy_model(tmp / "truncated")
    weights = paths["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    paths["lies"] = _copy_model(tmp / "lies", lambda c: c.update(intermediate_size=200))
    paths["extra_layer"] = _copy_model(tmp / "extra_layer", lambda c: c.update(num_hidden_layers=6))
    paths["quantized"] = _copy_model(tmp / "quantized", lambda c: c.update(
        quantization_config={"quant_method": "gptq", "bits": 4}))
    from tests.conftest import tiny_model
    paths["other_vocab"] = tmp / "other_vocab"
    tiny_model("llama").save_pretrained(paths["other_vocab"])          # vocabulary 128, the bundled model's 512
    paths["unreadable"] = tmp / "data"
    (paths["unreadable"] / "commonsenseqa" / "dev_rand_split.jsonl").mkdir(parents=True)  # a folder, not a file
    paths["full"] = tmp / "full"
    paths["full"].mkdir()
    (paths["full"] / "precious.txt").write_text("keep me")
    for name, state in (("exists", None), ("done", {"status": "finished"})):
        (paths["root"] / name).mkdir(parents=True)
        (paths["root"] / name / "config.yaml").write_text("model: stories260k\ndevice: stories260k-tiny\n")
        if state:
            (paths["root"] / name / "state.json").write_text(json.dumps(state))
    return paths


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:           # argparse errors exit from inside parse_args
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, fragment, world, capsys, monkeypatch):
    monkeypatch.chdir(world["tmp"])                  # a default `runs/` would land here, and be caught
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _snapshot(world["tmp"])
    code, out, err = run_cli([a.format(**world) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert fragment in lines[0], lines[0]
    assert _snapshot(world["tmp"]) == before


def test_disk_full_while_saving_leaves_nothing_and_keeps_the_old_checkpoint(world, tmp_path, capsys, monkeypatch):
    import compress._io

    def full(path, tensors):
        with open(path, "wb") as f:
            f.write(b"x" * 1000)                                     # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(compress._io, "_write_shard", full)
    plan = world["plan"]
    code, _, err = run_cli(["prune", "--plan", plan, "--out", tmp_path / "new"], capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: cannot write {tmp_path / 'new'}: No space left on "
                                                      "device; nothing was changed"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "precious.txt").write_text("keep me")
    code, _, err = run_cli(["prune", "--plan", plan, "--out", old, "--force"], capsys)
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]      # no new dir, no temporary left behind
    assert [p.name for p in old.iterdir()] == ["precious.txt"]


def test_every_trial_failed_makes_launch_exit_non_zero(tmp_path, capsys):
    from search._paths import ExperimentDir
    from search._verbs import _search_status
    paths = ExperimentDir.create(tmp_path, "x")
    summary = {"trials": 2, "failed": [{"trial_id": "a", "reason": "ValueError: boom"}, {"trial_id": "b"}]}
    paths.write_json(paths.results, {"summary": summary, "trials": []})
    assert _search_status(paths, 0) == 1
    assert capsys.readouterr().err.strip() == "error: every trial failed (2); first: ValueError: boom"
    paths.write_json(paths.results, {"summary": {**summary, "failed": summary["failed"][:1]}, "trials": []})
    assert _search_status(paths, 0) == 0


def test_unknown_model_gets_a_generic_experiment_sized_by_the_model(tmp_path):
    import experiments
    from search._verbs import _default_name
    assert _default_name(str(BUNDLED)) == "stories260k"              # a local folder: its name, a valid one
    assert _default_name("Qwen/Qwen2-7B-Instruct") == "Qwen_Qwen2-7B-Instruct"
    small = experiments.load_experiment(model=str(BUNDLED), model_params=lambda m: 260_000)
    big = experiments.load_experiment(model="someorg/llama-70b", model_params=lambda m: 70_000_000_000)
    assert small.origin.startswith("generic experiment for a 0.26M-parameter model")
    assert (small.resources.gpus_per_trial, small.search.workers) == (0, 2)
    assert (big.resources.gpus_per_trial, big.resources.cpus_per_trial, big.distill.zero_stage) == (2, 8, 3)
    assert "70.0B-parameter" in big.origin and big.device == "phone-12gb"
    path = tmp_path / "config.yaml"
    experiments.save_experiment(big, path)
    assert experiments.read_experiment(path) == big
