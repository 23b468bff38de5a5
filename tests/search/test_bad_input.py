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
    ("no prefix matching (--tracking)", ["launch", "--tracking", "x", "--root", "{root}"],
     "unrecognized arguments: --tracking"),
    ("unknown experiment key", ["launch", "--config", "{yaml_typo}", "--root", "{root}"], "unknown keys in 'search'"),
    ("unknown ladder rung key", ["launch", "--config", "{yaml_ladder}", "--root", "{root}"],
     "unknown ladder rung keys ['kl_tokens']"),
    ("plan JSON malformed", ["prune", "--plan", "{plan_bad_json}", "--out", "{out}"], "is not valid JSON"),
    ("plan with the wrong layer count", ["prune", "--plan", "{plan_3_layers}", "--out", "{out}"],
     "3 layer entries but the model has 5"),
    ("plan keep outside [0, 1]", ["prune", "--plan", "{plan_keep_1_5}", "--out", "{out}"],
     "attn_keep must be a number in [0, 1]"),
    ("plan reconstruct not a boolean", ["prune", "--plan", "{plan_reconstruct_yes}", "--out", "{out}"],
     "reconstruct must be true or false"),
    ("plan file missing", ["prune", "--plan", "{tmp}/nope.json", "--out", "{out}"], "plan file not found"),
    ("plan calibration select 0", ["prune", "--plan", "{plan_select_0}", "--out", "{out}"],
     "calibration.select must be a fraction in (0, 1]"),
    ("experiment calibration select 2", ["launch", "--set", "space.calibration.select=2", "--root", "{root}"],
     "space.calibration.select must be a fraction in (0, 1]"),
    ("a budget no plan fits", ["launch", "--budget-gb", "0.0000001", "--root", "{root}"], "below the smallest plan"),
    ("--trials 0", ["launch", "--trials", "0", "--root", "{root}"], "search.trials (--trials) must be an integer in [1, "),
    ("--workers 0", ["launch", "--workers", "0", "--root", "{root}"], "search.workers (--workers)"),
    ("--full-eval-top without the data for a full run", ["launch", "--full-eval-top", "1", "--root", "{root}"],
     "needs more than the shipped subsets"),
    ("--full-eval-data-root that is no folder", ["launch", "--full-eval-top", "1", "--full-eval-data-root",
                                                 "{tmp}/nope", "--root", "{root}"], "is not a directory"),
    ("more rungs than the ladder has", ["launch", "--rungs", "3", "--root", "{root}"], "must be 1..2 (the ladder's rungs)"),
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
    ("--address with nothing listening", ["launch", "--address", "{closed_port}", "--root", "{root}"],
     "no Ray cluster answers there"),
    ("--address where something else listens", ["launch", "--address", "{silent_port}", "--root", "{root}"],
     "not a Ray head"),
    ("--address of Ray Client", ["launch", "--address", "ray://127.0.0.1:10001", "--root", "{root}"],
     "Ray Client addresses are not supported"),
    ("--storage with no filesystem installed", ["launch", "--storage", "nofs://bucket/dir", "--root", "{root}"],
     "no filesystem for nofs:// is installed"),
    ("--tracking-uri of a server that refuses", ["launch", "--tracking-uri", "http://{closed_port}", "--root",
                                                  "{root}"], "the MLflow server refuses"),
    ("track 2: a dataset other than C4 / Alpaca-zh",
     ["launch", "--track", "scratch", "--datasets", "c4", "wikitext", "--root", "{root}"], "'wikitext' is not allowed"),
    ("track 2: a budget no architecture fits", ["launch", "--track", "scratch", "--size-gb", "0.00005", "--root", "{root}"],
     "no architecture of the space fits"),
    ("track 2: a quantized dtype", ["launch", "--track", "scratch", "--dtype", "int8", "--root", "{root}"],
     "FP16 or FP32 weights (no quantization)"),
    ("track 2: distillation", ["launch", "--track", "scratch", "--distill", "--root", "{root}"],
     "distillation from a teacher (--distill) is not allowed"),
    ("track 2: a pre-trained model", ["launch", "--track", "scratch", "--model", "stories260k", "--root", "{root}"],
     "--model (a pre-trained model) is not allowed"),
    ("track 2: a teacher in the experiment", ["launch", "--config", "{yaml_teacher}", "--root", "{root}"],
     "distillation from a teacher or a pre-trained model is not allowed"),
    ("track 2: fewer tokens than rungs", ["launch", "--track", "scratch", "--tokens", "100", "--root", "{root}"],
     "fewer than the 3 fidelity rungs"),
    ("track 2: existing experiment name", ["launch", "--track", "scratch", "--experiment", "exists", "--root", "{root}"],
     "already exists"),
    ("track 2 flag on a track 1 launch", ["launch", "--tokens", "1000", "--root", "{root}"],
     "--tokens applies to --track scratch"),
    ("submit: an experiment without finished trials", ["submit", "--experiment", "exists", "--out", "{out}",
                                                        "--root", "{root}"], "has no finished trials yet"),
    ("submit: --top above the finished candidates", ["submit", "--experiment", "one", "--top", "2", "--out", "{out}",
                                                     "--root", "{root}"], "has 1 finished candidate with checkpoints"),
    ("submit: a non-empty --out", ["submit", "--experiment", "one", "--out", "{full}", "--root", "{root}"],
     "is not empty"),
    ("submit: no such experiment", ["submit", "--experiment", "nope", "--out", "{out}", "--root", "{root}"],
     "no experiment 'nope'"),
    ("validate --calibrate into a folder", ["validate", "--experiment", "one", "--calibrate", "{json_dir}",
                                            "--root", "{root}"], "is a directory"),
    ("validate --calibrate into a JSON that is no profile", ["validate", "--experiment", "one", "--calibrate",
                                                            "{plan}", "--root", "{root}"], "'profile' section"),
    ("a profile file that does not exist", ["evaluate", "--device", "{tmp}/mine.json"], "not found"),
    ("unknown model (opencompass)", ["opencompass", "--model", "stories26k", "--limit", "1"],
     "did you mean 'stories260k'"),
    ("truncated GGUF (prune)", ["prune", "--model", "{gguf_truncated}", "--plan", "{plan}", "--out", "{out}"],
     "is truncated"),
    ("a file that is not GGUF (launch)", ["launch", "--model", "{gguf_foreign}", "--root", "{root}"],
     "is not a GGUF file"),
    ("GGUF of an unsupported architecture (evaluate)", ["evaluate", "--model", "{gguf_phi2}", "--tasks", "csqa"],
     "GGUF architecture 'phi2' is not supported"),
    ("GGUF file missing (export)", ["export", "--model", "{tmp}/nope.gguf", "--format", "gguf", "--out",
                                    "{tmp}/m.gguf"], "GGUF file not found"),
]

# Issue 23: what a hostile new user tried (fresh clone at 387e43c) and the last table did not hold.
CASES_23 = [
    # outputs that would replace or change their own input
    ("prune --out the model itself, --force", ["prune", "--model", "{model}", "--plan", "{plan}", "--out", "{model}",
                                               "--force"], "is the input"),
    ("prune --out inside the model", ["prune", "--model", "{model}", "--plan", "{plan}", "--out", "{model}/sub"],
     "lies inside the input"),
    ("prune --out a folder holding the plan, --force", ["prune", "--plan", "{tmp}/plans/good.json", "--out",
                                                        "{tmp}/plans", "--force"], "contains the input"),
    ("distill --out the student itself, --force", ["distill", "--student", "{model}", "--out", "{model}", "--force"],
     "is the input"),
    ("export --out into the model", ["export", "--model", "{model}", "--format", "gguf", "--out", "{model}/m.gguf"],
     "lies inside the input"),
    ("export --out in a missing folder", ["export", "--model", "stories260k", "--format", "gguf", "--out",
                                          "{tmp}/nodir/sub/m.gguf"], "does not exist; create it first"),
    ("submit --out inside the experiment", ["submit", "--experiment", "one", "--out", "{root}/one/bundle", "--root",
                                            "{root}"], "lies inside the input"),
    # damaged or disagreeing experiment records
    ("resume: killed, optuna.db truncated", ["resume", "--experiment", "killed_db", "--root", "{root}"], "is damaged"),
    ("resume: finished copy, optuna.db truncated, state running",
     ["resume", "--experiment", "copied_db", "--root", "{root}"], "is damaged"),
    ("resume: Tune knows trials optuna.db does not", ["resume", "--experiment", "foreign_db", "--root", "{root}"],
     "the records disagree"),
    ("resume: state.json []", ["resume", "--experiment", "state_list", "--root", "{root}"], "is damaged"),
    ("validate: state.json []", ["validate", "--experiment", "state_list", "--root", "{root}"], "is damaged"),
    ("top: results.json []", ["top", "--experiment", "results_list", "--root", "{root}"], "is damaged"),
    ("top: results.json {}", ["top", "--experiment", "results_dict", "--root", "{root}"], "is damaged"),
    ("submit: a truncated top checkpoint", ["submit", "--experiment", "truncated_top", "--out", "{out}", "--root",
                                            "{root}"], "corrupt or truncated"),
    # counts against what exists, bounds that keep work bounded
    ("full-eval --limit -1", ["full-eval", "--experiment", "one", "--top", "1", "--limit", "-1", "--root", "{root}"],
     "--limit must be >= 1"),
    ("full-eval --limit 0", ["full-eval", "--experiment", "one", "--top", "1", "--limit", "0", "--root", "{root}"],
     "--limit must be >= 1"),
    ("full-eval --top 999", ["full-eval", "--experiment", "one", "--top", "999", "--limit", "1", "--root", "{root}"],
     "--top 999: experiment one has 1 finished candidate"),
    ("validate --top 999", ["validate", "--experiment", "one", "--top", "999", "--root", "{root}"],
     "--top 999: experiment one has 1 finished candidate"),
    ("validate --threads 0", ["validate", "--experiment", "one", "--threads", "0", "--root", "{root}"],
     "--threads must be 1.."),
    ("plan calibration samples 1e9", ["prune", "--plan", "{plan_calib_1e9}", "--out", "{out}"],
     "calibration.samples must be an integer in [1, 4096]"),
    # launches that failed after starting (left "running") or were accepted
    ("--set search.trials=true", ["launch", "--set", "search.trials=true", "--root", "{root}"],
     "search.trials (--trials) must be an integer"),
    ("--set search.seed=abc", ["launch", "--set", "search.seed=abc", "--root", "{root}"],
     "search.seed must be an integer"),
    ("--set resources.cpus_per_trial=-1", ["launch", "--set", "resources.cpus_per_trial=-1", "--root", "{root}"],
     "resources.cpus_per_trial must be a number in (0, "),
    ("--set budget_gb=abc", ["launch", "--set", "budget_gb=abc", "--root", "{root}"], "budget_gb must be positive"),
    ("--set space.min_keep=abc", ["launch", "--set", "space.min_keep=abc", "--root", "{root}"],
     "space.min_keep must be a number"),
    ("--set space.allow_drop=maybe", ["launch", "--set", "space.allow_drop=maybe", "--root", "{root}"],
     "space.allow_drop must be true or false"),
    ("--min-tokens-per-s nan", ["launch", "--min-tokens-per-s", "nan", "--root", "{root}"],
     "search.min_tokens_per_s must be a positive number"),
    ("--storage a file", ["launch", "--storage", "{plan}", "--root", "{root}"], "it is a file, not a folder"),
    ("--root a file", ["launch", "--root", "{plan}"], "is a file, not a folder"),
    ("--root a read-only place", ["launch", "--root", "/proc/self/edgeprune-runs"], "is not writable"),
    ("--tracking-uri notaurl", ["launch", "--tracking-uri", "notaurl", "--root", "{root}"],
     "expected http(s)://HOST:PORT"),
    ("--experiment with a trailing newline", ["launch", "--experiment", "nl\n", "--root", "{root}"],
     "experiment name 'nl\\n'"),
    ("--experiment ''", ["launch", "--experiment", "", "--root", "{root}"], "experiment name ''"),
    ("--config a list", ["launch", "--config", "{yaml_list}", "--root", "{root}"], "must be a mapping of settings"),
    ("--config a scalar", ["launch", "--config", "{yaml_scalar}", "--root", "{root}"], "must be a mapping of settings"),
    ("--config with a syntax error", ["launch", "--config", "{yaml_syntax}", "--root", "{root}"], "is not valid YAML"),
    ("--config with tabs", ["launch", "--config", "{yaml_tabs}", "--root", "{root}"], "is not valid YAML"),
    # plans
    ("plan keep 1e400", ["prune", "--plan", "{plan_keep_1e400}", "--out", "{out}"],
     "attn_keep must be a number in [0, 1], got inf"),
    ("plan keep 10**400 (an integer)", ["prune", "--plan", "{plan_keep_int_huge}", "--out", "{out}"],
     "attn_keep must be a number in [0, 1], got 1000"),
    ("plan importance a list", ["prune", "--plan", "{plan_importance_list}", "--out", "{out}"],
     "importance must be a criterion name"),
    ("plan importance a mapping", ["prune", "--plan", "{plan_importance_dict}", "--out", "{out}"],
     "importance must be a criterion name"),
    ("plan nested 100k deep", ["prune", "--plan", "{plan_deep}", "--out", "{out}"], "is nested too deeply"),
    ("plan keep true / false", ["prune", "--plan", "{plan_keep_bool}", "--out", "{out}"],
     "attn_keep must be a number in [0, 1], got True"),
    ("plan mlp_multiple 1e30", ["prune", "--plan", "{plan_multiple_huge}", "--out", "{out}"],
     "larger than the model's MLP width"),
    # model folders
    ("config num_hidden_layers 'five' (prune)", ["prune", "--model", "{layers_five}", "--plan", "{plan}", "--out",
                                                 "{out}"], "expected int, got str"),
    ("config num_hidden_layers 'five' (launch)", ["launch", "--model", "{layers_five}", "--root", "{root}"],
     "expected int, got str"),
    ("config num_key_value_heads 0 (prune)", ["prune", "--model", "{kv_zero}", "--plan", "{plan}", "--out", "{out}"],
     "num_key_value_heads must be an integer >= 1"),
    ("config num_key_value_heads 0 (launch)", ["launch", "--model", "{kv_zero}", "--root", "{root}"],
     "num_key_value_heads must be an integer >= 1"),
    ("tokenizer.json of another shape (prune)", ["prune", "--model", "{bad_tokenizer}", "--plan", "{plan}", "--out",
                                                 "{out}"], "cannot be loaded"),
    ("tokenizer.json of another shape (launch, before Ray)", ["launch", "--model", "{bad_tokenizer}", "--root",
                                                              "{root}"], "cannot be loaded"),
    # device profiles
    ("profile runtimes [1] (evaluate)", ["evaluate", "--device", "{profile_runtimes_list}"], "runtimes maps each of"),
    ("profile runtimes [1] (launch)", ["launch", "--device", "{profile_runtimes_list}", "--root", "{root}"],
     "runtimes maps each of"),
    ("profile runtime vllm", ["evaluate", "--device", "{profile_vllm}"], "runtime must be one of llama.cpp, mlc"),
    ("profile runtime_overhead_bytes true", ["evaluate", "--device", "{profile_overhead_true}"],
     "runtime_overhead_bytes must be an integer >= 0, got True"),
    # track 2's schedule ranges, as track 1's settings
    ("track 2: --set train.batch_size=[0]", ["launch", "--track", "scratch", "--set", "train.batch_size=[0]", "--root",
                                             "{root}"], "space batch_size must be an integer in [1, "),
    ("track 2: --set train.warmup=[0, 5]", ["launch", "--track", "scratch", "--set", "train.warmup=[0, 5]", "--root",
                                            "{root}"], "space warmup must be a number in [0, 1)"),
    ("track 2: --set train.tokens=5", ["launch", "--track", "scratch", "--set", "train.tokens=5", "--root", "{root}"],
     "train.tokens must be a list"),
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
    import socket
    tmp = tmp_path_factory.mktemp("bad_input")
    closed = socket.socket()                 # bound, never listening: connections are refused
    closed.bind(("127.0.0.1", 0))
    silent = socket.socket()                 # listening, never answering: what `ray.init` retries for minutes
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    files = {"plan": GOOD_PLAN, "plan_l3": {**GOOD_PLAN, "importance": "l3"},
             "plan_3_layers": {"layers": GOOD_PLAN["layers"][:3]},
             "plan_keep_1_5": {"layers": [{"attn_keep": 1.5, "mlp_keep": 0.5}] * 5},
             "plan_reconstruct_yes": {**GOOD_PLAN, "reconstruct": "yes"},
             "plan_select_0": {**GOOD_PLAN, "calibration": {"select": 0}}}
    paths = {"tmp": tmp, "out": tmp / "out", "root": tmp / "runs",
             "closed_port": f"127.0.0.1:{closed.getsockname()[1]}", "silent_port": f"127.0.0.1:{silent.getsockname()[1]}"}
    for key, data in files.items():
        paths[key] = tmp / f"{key}.json"
        paths[key].write_text(json.dumps(data))
    paths["plan_bad_json"] = tmp / "bad.json"
    paths["plan_bad_json"].write_text('{"layers": [')
    paths["yaml_l3"] = tmp / "l3.yaml"
    paths["yaml_l3"].write_text("model: stories260k\ndevice: stories260k-tiny\nspace: {criteria: [l3]}\n")
    paths["yaml_ladder"] = tmp / "ladder.yaml"
    paths["yaml_ladder"].write_text("model: stories260k\ndevice: stories260k-tiny\nproxy: {ladder: [{kl_tokens: 256}]}\n")
    paths["yaml_teacher"] = tmp / "teacher.yaml"
    paths["yaml_teacher"].write_text("track: scratch\ndistill: {enabled: true}\n")
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
    paths["json_dir"] = tmp / "profiles.json"
    paths["json_dir"].mkdir()
    (paths["full"] / "precious.txt").write_text("keep me")
    for name, state in (("exists", None), ("done", {"status": "finished"}), ("one", {"status": "finished"})):
        (paths["root"] / name).mkdir(parents=True)
        (paths["root"] / name / "config.yaml").write_text("model: stories260k\ndevice: stories260k-tiny\n")
        if state:
            (paths["root"] / name / "state.json").write_text(json.dumps(state))
    from compress._export_gguf import export_gguf
    whole = export_gguf("stories260k", tmp / "whole.gguf").read_bytes()
    (tmp / "whole.gguf").unlink()
    paths["gguf_truncated"] = tmp / "truncated.gguf"
    paths["gguf_truncated"].write_bytes(whole[: len(whole) // 2])
    paths["gguf_foreign"] = tmp / "foreign.gguf"
    paths["gguf_foreign"].write_bytes(b"PK\x03\x04" + whole[4:4096])
    tok = __import__("compress").load_model("stories260k")[1]
    __import__("compress").save_pruned(tiny_model("phi", vocab_size=520), tok, tmp / "phi")
    paths["gguf_phi2"] = export_gguf(tmp / "phi", tmp / "phi2.gguf")
    one = {"rank": 1, "trial_id": "t1", "name": "owl", "folder": "owl", "score": 0.5}     # one finished candidate
    (paths["root"] / "one" / "results.json").write_text(json.dumps({"summary": {"top": [one]}, "trials": [one]}))
    _issue23_world(tmp, paths)
    yield paths
    closed.close()
    silent.close()


def _issue23_world(tmp: Path, paths: dict) -> None:
    import sqlite3
    from objectives import get_profile
    layers = GOOD_PLAN["layers"]
    plans = {"plan_calib_1e9": {**GOOD_PLAN, "importance": "activation", "calibration": {"samples": 10**9, "seq_len": 8}},
             "plan_importance_list": {**GOOD_PLAN, "importance": ["l1"]},
             "plan_importance_dict": {**GOOD_PLAN, "importance": {"a": 1}},
             "plan_keep_bool": {"layers": [{"attn_keep": True, "mlp_keep": False}] * 5},
             "plan_multiple_huge": {**GOOD_PLAN, "mlp_multiple": 10**30}}
    for key, data in plans.items():
        paths[key] = tmp / f"{key}.json"
        paths[key].write_text(json.dumps(data))
    paths["plan_keep_1e400"] = tmp / "keep_1e400.json"
    paths["plan_keep_1e400"].write_text(json.dumps(GOOD_PLAN).replace("0.5", "1e400"))
    paths["plan_keep_int_huge"] = tmp / "keep_int_huge.json"
    paths["plan_keep_int_huge"].write_text(json.dumps(GOOD_PLAN).replace("0.5", "1" + "0" * 400))
    paths["plan_deep"] = tmp / "deep.json"
    paths["plan_deep"].write_text("[" * 100_000 + "]" * 100_000)
    (tmp / "plans").mkdir()
    (tmp / "plans" / "good.json").write_text(json.dumps({"layers": layers}))
    paths["model"] = _copy_model(tmp / "model")
    paths["layers_five"] = _copy_model(tmp / "layers_five", lambda c: c.update(num_hidden_layers="five"))
    paths["kv_zero"] = _copy_model(tmp / "kv_zero", lambda c: c.update(num_key_value_heads=0))
    paths["bad_tokenizer"] = _copy_model(tmp / "bad_tokenizer")
    (paths["bad_tokenizer"] / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": 5}))
    profile = get_profile("stories260k-tiny").to_dict()
    for key, change in (("profile_runtimes_list", {"runtimes": [1]}), ("profile_vllm", {"runtime": "vllm"}),
                        ("profile_overhead_true", {"runtime_overhead_bytes": True})):
        paths[key] = tmp / f"{key}.json"
        paths[key].write_text(json.dumps({"profile": {**profile, **change}}))
    for key, text in (("yaml_list", "- a\n- b\n"), ("yaml_scalar", "42\n"), ("yaml_syntax", "model: [stories260k\n"),
                      ("yaml_tabs", "model: stories260k\nsearch:\n\ttrials: 3\n")):
        paths[key] = tmp / f"{key}.yaml"
        paths[key].write_text(text)
    root = paths["root"]

    def experiment(name, *, state=None, results=None, trials=("t1", "t2"), db="good"):
        """A run directory with Tune's state naming `trials` and an optuna.db holding t1, t2 (or a damaged one)."""
        folder = root / name
        (folder / "tune").mkdir(parents=True)
        (folder / "config.yaml").write_text("model: stories260k\ndevice: stories260k-tiny\n")
        (folder / "state.json").write_text(json.dumps(state if state is not None else {"status": "running"}))
        tune_state = {"trial_data": [[json.dumps({"trial_id": t}), "{}"] for t in trials]}
        (folder / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(tune_state))
        con = sqlite3.connect(folder / "optuna.db")
        con.executescript("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT);"
                          "CREATE TABLE trials (trial_id INTEGER PRIMARY KEY, number INTEGER, study_id INTEGER);"
                          "CREATE TABLE trial_user_attributes (trial_user_attribute_id INTEGER PRIMARY KEY, "
                          "trial_id INTEGER, key TEXT, value_json TEXT);"
                          "INSERT INTO studies VALUES (1, 'x'); INSERT INTO trials VALUES (1, 0, 1), (2, 1, 1);"
                          "INSERT INTO trial_user_attributes VALUES (1, 1, 'tune_trial_id', '\"t1\"'), "
                          "(2, 2, 'tune_trial_id', '\"t2\"');")
        con.commit()
        con.close()
        if db == "truncated":
            raw = (folder / "optuna.db").read_bytes()
            (folder / "optuna.db").write_bytes(raw[: len(raw) // 2])
        if results is not None:
            (folder / "results.json").write_text(json.dumps(results))
    experiment("killed_db", db="truncated")
    experiment("copied_db", db="truncated", results={"summary": {"top": []}, "trials": [{"trial_id": "t1"}]})
    experiment("foreign_db", trials=("t1", "t2", "t3"))
    experiment("state_list", state=[])
    experiment("results_list", results=[])
    experiment("results_dict", results={})
    # a finished experiment whose only top checkpoint lost half of its weights
    candidate = {"rank": 1, "trial_id": "t1", "name": "owl", "folder": "owl", "score": 0.5}
    experiment("truncated_top", state={"status": "finished"}, results={"summary": {"top": [candidate]},
                                                                      "trials": [candidate]})
    top = _copy_model(root / "truncated_top" / "top" / "owl")
    (top / "candidate.json").write_text(json.dumps(candidate))
    weights = top / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:           # argparse errors exit from inside parse_args
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CASES + CASES_23], ids=[c[0] for c in CASES + CASES_23])
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
    from search._record import ExperimentRecord
    from search._verbs import _search_status
    record = ExperimentRecord(tmp_path, "x")
    summary = {"trials": 2, "failed": [{"trial_id": "a", "reason": "ValueError: boom"}, {"trial_id": "b"}]}
    record.write_json(record.results, {"summary": summary, "trials": []})
    assert _search_status(record, 0) == 1
    assert capsys.readouterr().err.strip() == "error: every trial failed (2); first: ValueError: boom"
    record.write_json(record.results, {"summary": {**summary, "failed": summary["failed"][:1]}, "trials": []})
    assert _search_status(record, 0) == 0


def test_unknown_model_gets_a_generic_experiment_sized_by_the_model(tmp_path):
    import experiments
    from search._verbs import _default_name
    assert _default_name(str(BUNDLED)) == "stories260k"              # a local folder: its name, a valid one
    assert _default_name("Qwen/Qwen2-7B-Instruct") == "Qwen_Qwen2-7B-Instruct"
    assert _default_name("/models/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    small = experiments.load_experiment(model=str(BUNDLED), model_params=lambda m: 260_000)
    big = experiments.load_experiment(model="someorg/llama-70b", model_params=lambda m: 70_000_000_000)
    assert small.origin.startswith("generic experiment for a 0.26M-parameter model")
    assert (small.resources.gpus_per_trial, small.search.workers) == (0, 2)
    assert (big.resources.gpus_per_trial, big.resources.cpus_per_trial, big.distill.zero_stage) == (2, 8, 3)
    assert "70.0B-parameter" in big.origin and big.device == "phone-12gb"
    path = tmp_path / "config.yaml"
    experiments.save_experiment(big, path)
    assert experiments.read_experiment(path) == big


def test_opencompass_takes_a_registry_name_like_every_verb(monkeypatch, capsys):
    """`opencompass --model stories260k` answered '<cwd>/stories260k is not a model directory'."""
    import objectives._opencompass
    seen = {}

    def fake(folder, **kwargs):
        seen.update(folder=folder, abbr=kwargs.get("abbr"))
        return {"model_abbr": kwargs.get("abbr"), "model_class": "HF", "device": "cpu", "dtype": "float32",
                "seconds": 0, "limit": 1, "data": "shipped", "scores": {}, "average": None, "output_dir": "x"}
    monkeypatch.setattr(objectives._opencompass, "run_opencompass", fake)
    code, out, err = run_cli(["opencompass", "--model", "stories260k", "--limit", "1"], capsys)
    assert code == 0, err
    assert seen == {"folder": BUNDLED, "abbr": "stories260k"}
