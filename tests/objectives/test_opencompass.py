"""Full OpenCompass evaluation: data layout, generated config, result parsing, competition CSV, Spearman,
full_eval_top, and (slow) real OpenCompass runs on the bundled model and a non-uniformly pruned copy."""
import ast
import csv
import gzip
import json
import math
from pathlib import Path

import pytest

import compress
from objectives import _oc_data, _oc_report, _opencompass
from objectives._oc_report import COMPETITION_COLUMNS, competition_row, spearman, write_competition_csv
from search import _verbs_opencompass

from tests.objectives.conftest import BUNDLED, random_llama, train_tokenizer

LIMIT, MAX_OUT = 2, 16
# BBH tasks per run: all 27 cost ~1.5 s of evaluation each (90 s idle, 127 s on a loaded 2-core box for the
# dense model), which would take this file past 4 minutes. Both kinds of BBH task (multiple choice, free form)
# are covered; the full 27 through the same path were run by hand (see objectives/_opencompass.py).
BBH_TASKS = {"dense": ["date_understanding", "navigate", "object_counting", "dyck_languages"],
             "pruned": ["boolean_expressions", "snarks", "word_sorting"]}


# ---- data layout -------------------------------------------------------------------------------
def fake_raw_root(root: Path) -> Path:
    """The smallest raw tree the builder accepts."""
    for rel in _oc_data.LINKS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text('{"x": 1}\n')
    (root / "bbh/bbh").mkdir(parents=True)
    (root / "bbh/bbh/navigate.json").write_text('{"examples": []}')
    (root / "humaneval").mkdir()
    with gzip.open(root / _oc_data.HUMANEVAL_RAW, "wt") as f:
        f.write('{"task_id": "HumanEval/0"}\n')
    (root / "truthfulqa").mkdir()
    (root / _oc_data.TRUTHFULQA_RAW).write_text(
        "Type,Category,Question,Best Answer,Best Incorrect Answer,Correct Answers,Incorrect Answers,Source\n"
        'Adversarial,Misc,Why?,Because,No,"Because; It is so ",No; Never,https://x\n')
    return root


def test_layout_builder_links_converts_and_reuses(tmp_path):
    raw = fake_raw_root(tmp_path / "raw")
    cache = _oc_data.build_layout(tmp_path / "cache", raw_root=raw)
    assert (cache / "data/gsm8k/test.jsonl").resolve() == (raw / "gsm8k/test.jsonl").resolve()
    assert (cache / "data/gsm8k/train.jsonl").read_text() == ""
    assert (cache / "data/commonsenseqa/train_rand_split.jsonl").is_file()
    assert (cache / "data/FewCLUE/chid/test_public.json").is_symlink()
    assert (cache / "data/BBH/data/navigate.json").is_symlink()
    assert "HumanEval/0" in (cache / _oc_data.HUMANEVAL_OUT).read_text()
    row = json.loads((cache / "truthful_qa/generation/validation.jsonl").read_text())
    assert row["correct_answers"] == ["Because", "It is so"] and row["incorrect_answers"] == ["No", "Never"]
    assert "config_name: generation" in (cache / "truthful_qa/README.md").read_text()
    stamp = (cache / _oc_data.MARKER).stat().st_mtime_ns
    assert _oc_data.build_layout(tmp_path / "cache", raw_root=raw) == cache       # reused, not rebuilt
    assert (cache / _oc_data.MARKER).stat().st_mtime_ns == stamp


ALL_TASKS = list(_oc_data.PROXY_TASK)


def test_plan_data_names_missing_files(tmp_path):
    raw = fake_raw_root(tmp_path / "raw")
    (raw / "gsm8k/test.jsonl").unlink()
    with pytest.raises(ValueError, match=r"lacks gsm8k/test.jsonl.*--download"):
        _oc_data.plan_data(raw, tasks=["GSM8K"], limit=None)
    assert _oc_data.plan_data(raw, tasks=["HumanEval"], limit=None).kind == "raw"   # only what is asked is needed
    with pytest.raises(ValueError, match="bbh/bbh/date_understanding.json"):     # every BBH task unless subset
        _oc_data.plan_data(raw, tasks=["BIG-Bench-Hard"], limit=2)
    assert _oc_data.plan_data(raw, tasks=["BIG-Bench-Hard"], limit=2, bbh_subsets=["navigate"]).kind == "raw"
    with pytest.raises(ValueError, match="not a directory"):
        _oc_data.plan_data(tmp_path / "nowhere", tasks=["GSM8K"], limit=2)


def test_plain_clone_uses_the_shipped_subsets(tmp_path):
    """No data root: the package's own subsets, enough for --limit 8; more needs real data (one line saying how)."""
    assert _oc_data.plan_data(None, tasks=ALL_TASKS, limit=_oc_data.SHIPPED_LIMIT).kind == "shipped"
    for limit in (None, _oc_data.SHIPPED_LIMIT + 1):
        with pytest.raises(ValueError, match=r"shipped subsets .*--limit N.*--data-root"):
            _oc_data.plan_data(None, tasks=ALL_TASKS, limit=limit)
    with pytest.raises(ValueError, match="no shipped data for mmlu"):
        _oc_data.plan_data(None, tasks=["mmlu"], limit=2)
    cache = _oc_data.build_layout(tmp_path / "cache")
    bbh = sorted((cache / _oc_data.BBH_OUT).glob("*.json"))
    assert len(bbh) == 27 and all(len(json.loads(p.read_text())["examples"]) == 8 for p in bbh)
    chid = [len((cache / f"data/FewCLUE/chid/{n}.json").read_text().splitlines()) for n in ("dev_few_all", "test_public")]
    assert min(chid) >= _oc_data.SHIPPED_LIMIT and sum(chid) == 100
    rows = [json.loads(r) for r in (cache / _oc_data.TRUTHFULQA_ROWS).read_text().splitlines()]
    assert len(rows) == 100 and all(r["correct_answers"] and r["incorrect_answers"] for r in rows)
    assert (cache / "licenses" / "LICENSES.md").is_file() and (cache / "licenses" / "bbh.LICENSE").is_file()
    # what the layout holds is a user's data root too (an OpenCompass folder), checked file by file
    assert _oc_data.plan_data(cache, tasks=ALL_TASKS, limit=None).kind == "opencompass"
    (cache / _oc_data.TRUTHFULQA_ROWS).unlink()
    with pytest.raises(ValueError, match="truthful_qa/generation/validation.jsonl.*HF dataset dir"):
        _oc_data.plan_data(cache, tasks=ALL_TASKS, limit=None)


def test_download_lifts_offline_and_keeps_the_hub_truthfulqa(tmp_path):
    assert _oc_data.plan_data(None, tasks=ALL_TASKS, limit=None, download=True).kind == "download"
    with pytest.raises(ValueError, match="exclude each other"):
        _oc_data.plan_data(tmp_path, tasks=ALL_TASKS, limit=None, download=True)
    assert _opencompass._env(tmp_path, gpu=False, partial=False)["HF_DATASETS_OFFLINE"] == "1"
    assert "HF_DATASETS_OFFLINE" not in _opencompass._env(tmp_path, gpu=False, partial=False, offline=False)
    sources = _opencompass.resolve_dataset_configs(["truthfulqa_gen"])
    model = {"class": "HuggingFaceBaseModel", "abbr": "m", "path": "/m", "trust_remote_code": False,
             "dtype": "float32", "num_gpus": 0, "batch_size": 4, "max_seq_len": 512}
    text = _opencompass.render_config(sources, model, limit=None, max_out_len=None, truthfulqa_path=None)
    assert "_TRUTHFULQA_PATH = None" in text and "max_out_len=1024" in text   # the competition's --max-out-len


def test_layout_on_shared_data(shared_dir, tmp_path):
    cache = _oc_data.build_layout(tmp_path / "cache", raw_root=shared_dir / "data")
    assert len(list((cache / "data/BBH/data").glob("*.json"))) == 27
    assert len((cache / _oc_data.HUMANEVAL_OUT).read_text().splitlines()) == 164
    rows = (cache / "truthful_qa/generation/validation.jsonl").read_text().splitlines()
    assert len(rows) == 790 and all(json.loads(r)["correct_answers"] for r in rows)


# ---- config and results ---------------------------------------------------------------------------
def test_competition_configs_resolve():
    found = _opencompass.resolve_dataset_configs(_opencompass.COMPETITION_DATASETS)
    assert [s["task"] for s in found.values()] == ["CommonsenseQA", "CHID", "HumanEval", "BIG-Bench-Hard", "GSM8K",
                                                   "TruthfulQA"]
    assert found["bbh_gen"]["lists"] == ["bbh_datasets"]
    with pytest.raises(ValueError, match="no OpenCompass dataset config"):
        _opencompass.resolve_dataset_configs(["not_a_dataset_gen"])


def test_generated_config_is_valid_python_without_module_imports():
    sources = _opencompass.resolve_dataset_configs(_opencompass.COMPETITION_DATASETS)
    model = {"class": "HuggingFaceBaseModel", "abbr": "m", "path": "/m", "trust_remote_code": True, "dtype": "float32",
             "num_gpus": 0, "batch_size": 4, "max_seq_len": 512}
    text = _opencompass.render_config(sources, model, limit=3, max_out_len=8, truthfulqa_path="/c/truthful_qa")
    tree = ast.parse(text)
    assert not [n for n in tree.body if isinstance(n, ast.Import)]        # mmengine would dump a module object
    assert "_TEST_RANGE = '[0:3]'" in text and "trust_remote_code=True" in text and "num_gpus=0" in text


def test_hf_type_follows_chat_template(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert _opencompass.resolve_hf_type(tmp_path, "auto") == "base"
    with pytest.raises(ValueError, match="chat template"):
        _opencompass.resolve_hf_type(tmp_path, "chat")
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    assert _opencompass.resolve_hf_type(tmp_path, "auto") == "chat"


def test_remote_code_trusted_only_for_project_checkpoints(tmp_path):
    assert not _opencompass.written_by_project(tmp_path)          # no remote code: nothing to trust
    (tmp_path / "plan.json").write_text('{"plan": null, "realised": {}}')
    assert not _opencompass.written_by_project(tmp_path)
    (tmp_path / "modeling_pruned.py").write_text("x = 1\n")       # code plan.json does not vouch for
    with pytest.raises(ValueError, match="no sha256"):
        _opencompass.written_by_project(tmp_path)


def test_parse_results_scores_and_average(tmp_path):
    files = {"BIG-Bench-Hard__bbh-a": {"score": 10.0}, "BIG-Bench-Hard__bbh-b": {"score": 30.0},
             "CHID__chid-dev": {"accuracy": 50.0}, "CHID__chid-test": {"accuracy": 0.0},
             "TruthfulQA__truthful_qa": {"bleu_max": 1.2, "bleu_diff": 0.1, "bleu_acc": 0.25},
             "GSM8K__gsm8k": {"accuracy": 5.0, "details": {"0": {}}}}
    for name, data in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    r = _opencompass.parse_results(tmp_path)
    assert r["scores"] == {"BIG-Bench-Hard": 20.0, "CHID": 25.0, "GSM8K": 5.0, "TruthfulQA": 25.0}
    assert r["average"] == pytest.approx(75 / 4)
    assert r["metrics"]["gsm8k"] == {"accuracy": 5.0}
    (tmp_path / "HumanEval__openai_humaneval.json").write_text('{"error": "boom"}')
    r = _opencompass.parse_results(tmp_path)
    assert r["scores"]["HumanEval"] is None and r["average"] is None and r["errors"] == {"openai_humaneval": "boom"}


def test_run_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        _opencompass.run_opencompass(tmp_path, work_dir=tmp_path / "w")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="limit"):
        _opencompass.run_opencompass(tmp_path, work_dir=tmp_path / "w", limit=0)
    with pytest.raises(ValueError, match="hf_type"):
        _opencompass.run_opencompass(tmp_path, work_dir=tmp_path / "w", hf_type="instruct")
    raw = fake_raw_root(tmp_path / "raw")
    with pytest.raises(ValueError, match="unknown BBH tasks"):
        _opencompass.run_opencompass(tmp_path, work_dir=tmp_path / "w", data_root=raw, bbh_subsets=["navigat"])
    with pytest.raises(ValueError, match="needs more than the shipped subsets"):
        _opencompass.run_opencompass(tmp_path, work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()            # refused before anything was written


def test_cli_missing_dataset_is_one_line(tmp_path, capsys):
    """Bad input (issue 14): OpenCompass missing a dataset -> one `error:` line, exit 2, nothing written."""
    from search._cli import main
    raw = fake_raw_root(tmp_path / "raw")
    (raw / "chid/test_public.json").unlink()
    model = BUNDLED.parent if BUNDLED.is_file() else fake_model_dir(tmp_path)
    rc = main(["opencompass", "--model", str(model), "--data-root", str(raw), "--datasets", "FewCLUE_chid_gen",
               "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "chid/test_public.json" in err[0]
    assert not (tmp_path / "w").exists()


def fake_model_dir(root: Path) -> Path:
    (root / "m").mkdir()
    (root / "m" / "config.json").write_text('{"max_position_embeddings": 64}')
    return root / "m"


# ---- competition CSV and Spearman ------------------------------------------------------------------
def test_competition_csv_matches_the_kit_and_labels_each_efficiency_number(tmp_path):
    simulated = {"simulated": {"decode_tokens_per_s": 99.0, "peak_memory_bytes": 2**30}}
    measured = {**simulated, "measured-emulated": {"decode_tokens_per_s": 12.5, "peak_memory_bytes": 3 * 2**29},
                "measured-phone": {"decode_tokens_per_s": 7.0, "peak_memory_bytes": None}}   # the phone ran out of memory
    rows = [competition_row({"scores": {"CommonsenseQA": 20.0, "BIG-Bench-Hard": 1 / 3, "GSM8K": 0.0, "HumanEval": None,
                                        "CHID": 14.5, "TruthfulQA": 30.0}}, measured),
            competition_row(None, simulated), competition_row(None, {})]
    path = write_competition_csv(rows, tmp_path / "r.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == ("CommonsenseQA,BIG-Bench-Hard,GSM8K,HumanEval,CHID,TruthfulQA,Throughput,Memory-Usage,"
                        "Throughput-Kind,Memory-Usage-Kind")
    assert lines[1] == "20,0.333333,0,,14.5,30,7,1.5,measured-phone,measured-emulated"
    assert lines[2] == ",,,,,,99,1,simulated,simulated"
    assert lines[3] == ",,,,,,,,,"
    assert list(csv.DictReader(open(path)))[0]["Memory-Usage"] == "1.5"
    with pytest.raises(ValueError, match="unknown competition CSV columns"):
        write_competition_csv([{"GSM8k": 1.0}], tmp_path / "bad.csv")


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr
    x, y = [0.1, 0.4, 0.4, 0.9, 0.3, 0.7], [2.0, 5.0, 1.0, 9.0, 5.0, 8.0]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="equally long"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        spearman([1, math.nan], [1, 2])


# ---- full_eval_top (OpenCompass replaced by a stub) ---------------------------------------------------
def test_full_eval_top_writes_reports_and_logs_to_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from search._record import ExperimentRecord
    exp = tmp_path / "exp"
    top = [{"rank": i + 1, "trial_id": f"t{i}", "name": f"c{i}", "folder": f"rank{i + 1}",
            "score": s, "peak_memory_bytes": 2**30} for i, s in enumerate([0.9, 0.5, 0.7])]
    for entry in top:                                   # candidate folders as trials write them
        (exp / "top" / entry["folder"]).mkdir(parents=True)
        (exp / "top" / entry["folder"] / "candidate.json").write_text("{}")
    trials = [{"trial_id": "t0", "decode_tokens_per_s": 42.0}]
    (exp / "results.json").write_text(json.dumps({"summary": {"top": top}, "trials": trials}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    (exp / "state.json").write_text(json.dumps({"tracking_uri": uri, "parent_run_id": run_id}))
    full = {"rank1": 30.0, "rank2": 10.0, "rank3": 20.0}

    def fake_run(model_dir, **kwargs):
        assert kwargs["limit"] == 2
        value = full[Path(model_dir).name]
        return {"scores": dict.fromkeys(_oc_report.TASK_COLUMNS, value), "average": value, "model_class": "X",
                "output_dir": "o", "errors": {}}

    monkeypatch.setattr(_oc_report, "run_opencompass", fake_run)
    report = _oc_report.full_eval_top(ExperimentRecord(tmp_path, "exp"), 3, limit=2, echo=lambda *_: None)
    assert report["spearman"] == pytest.approx(1.0)
    saved = json.loads((exp / "opencompass.json").read_text())
    assert [c["name"] for c in saved["candidates"]] == ["c0", "c1", "c2"]
    lines = (exp / "opencompass.csv").read_text().splitlines()
    assert lines[0].split(",")[:8] == list(COMPETITION_COLUMNS) and lines[1] == "30,30,30,30,30,30,42,1,simulated,simulated"
    metrics = client.get_run(run_id).data.metrics
    assert metrics["opencompass/spearman"] == pytest.approx(1.0)
    assert metrics["opencompass/rank2/GSM8K"] == 10.0 and metrics["opencompass/rank3/average"] == 20.0


def test_cli_verbs_parse():
    import argparse
    p = argparse.ArgumentParser()
    _verbs_opencompass.add_opencompass_args(p)
    args = p.parse_args(["--model", "m", "--limit", "2", "--json"])
    assert args.limit == 2 and args.datasets is None and args.json
    p = argparse.ArgumentParser()
    _verbs_opencompass.add_full_eval_args(p)
    args = p.parse_args(["--experiment", "x", "--top", "3"])
    assert args.top == 3 and args.root == "runs"


# ---- real OpenCompass runs (slow: ~45-60 s each on 2 cores) ---------------------------------------------------
@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """The bundled model (a random tiny Llama when it is absent) and a non-uniformly pruned copy (auto_map)."""
    root = tmp_path_factory.mktemp("oc_models")
    if BUNDLED.is_file():
        dense = BUNDLED.parent
        model, tok = compress.load_model("stories260k")
    else:
        model, tok = random_llama(), train_tokenizer()
        dense = compress.save_pruned(model, tok, root / "dense", dtype=model.dtype)
    n = model.config.num_hidden_layers
    plan = compress.Plan.from_dict({"layers": [{"attn_keep": 0.5 if i % 2 else 1.0, "mlp_keep": 1.0 - 0.25 * (i % 3)}
                                               for i in range(n)]})
    result = compress.prune(model, tok, plan)
    pruned = compress.save_pruned(model, tok, root / "pruned", plan=plan, summary=result.summary())
    assert "auto_map" in json.loads((pruned / "config.json").read_text())
    return {"dense": Path(dense), "pruned": pruned}


@pytest.mark.slow
@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_real_opencompass_run(which, model_dirs, tmp_path_factory):
    """On the shipped subsets (no data root): what a plain clone runs."""
    r = _opencompass.run_opencompass(model_dirs[which], limit=LIMIT, max_out_len=MAX_OUT, device="cpu",
                                     work_dir=tmp_path_factory.mktemp(f"oc_{which}"), bbh_subsets=BBH_TASKS[which])
    assert r["model_class"] == "HuggingFaceBaseModel" and r["dtype"] == "float32"
    assert r["trust_remote_code"] == (which == "pruned")
    assert set(r["scores"]) == set(_oc_report.TASK_COLUMNS)
    assert all(isinstance(v, float) and 0 <= v <= 100 for v in r["scores"].values()), r["scores"]
    assert isinstance(r["average"], float) and not r["errors"] and r["data"] == "shipped"
    assert r["items"]["GSM8K"] == LIMIT and r["items"]["CHID"] == 2 * LIMIT   # per-item details were dumped
    bbh = [a for a, t in r["task_of"].items() if t == "BIG-Bench-Hard"]
    assert sorted(a.removeprefix("bbh-") for a in bbh) == sorted(BBH_TASKS[which])
    assert {"chid-dev", "chid-test", "openai_humaneval", "truthful_qa", "gsm8k", "commonsense_qa"} <= set(r["task_of"])
    predictions = Path(r["output_dir"]) / "predictions" / r["model_abbr"] / "GSM8K__gsm8k.json"
    assert len(json.loads(predictions.read_text())) == LIMIT
    assert r["summary_csv"] and "BIG-Bench-Hard" in Path(r["summary_csv"]).read_text()
