"""After a search: full OpenCompass scores of its top candidates, the competition CSV, and how well the proxy
score ranked them (Spearman).

Competition CSV: the starting kit's Generate_CSV.py (TianjinYellow/EdgeDeviceLLMCompetition-Starting-Kit)
writes one row with pandas `to_csv(index=False)` and no model/name column. Its stored version still lists
LongBench; the final kit dropped LongBench from the evaluation command, and a track-1 submission's copy of
Generate_CSV.py (Probe100/EdgeDeviceLLMCompetition-NEffalg-Track1) has exactly COMPETITION_COLUMNS below.
opencompass.csv therefore has no name column either: its rows are in rank order, and opencompass.json
names each row.

The correlation is reported with its 95 % confidence interval (objectives._agreement: Fisher z, n >= 4), and
every candidate's task scores are checked against chance (CHANCE_PERCENT; binomial noise over the items scored):
when the candidates sit at chance, no correlation between them can say anything, and the report says so.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

from compress._atomic import atomic_file, write_json

from . import _oc_data
from ._agreement import at_chance, describe_rho, spearman, spearman_interval
from ._opencompass import COMPETITION_DATASETS, TASK_OF_CONFIG, run_opencompass

COMPETITION_COLUMNS = ("CommonsenseQA", "BIG-Bench-Hard", "GSM8K", "HumanEval", "CHID", "TruthfulQA",
                       "Throughput", "Memory-Usage")
TASK_COLUMNS = COMPETITION_COLUMNS[:6]
# Memory-Usage unit. The brief asks for GB; the kit's EvaluateThrougthputAndMemory.py prints MB
# (torch.cuda.max_memory_allocated / 2**20), and submissions used both. One constant to change.
MEMORY_UNIT_BYTES = 2**30
SIGNIFICANT = 6      # digits per CSV cell: Memory-Usage of the bundled model is a few MB, i.e. 0.00279 GB
RESULTS_FILE, STATE_FILE = "results.json", "state.json"
OUT_JSON, OUT_CSV, OUT_DIR = "opencompass.json", "opencompass.csv", "opencompass"
METRIC_PREFIX = "opencompass"
# Chance level (percent) of each task's primary metric, for a model that guesses: CSQA has 5 options, CHID 7;
# GSM8K and HumanEval are open-ended (0). BIG-Bench-Hard averages its subtasks: see bbh_chance_percent.
# TruthfulQA's bleu_acc (BLEU nearer a true than a false reference) has no guessing baseline: not checked.
CHANCE_PERCENT = {"CommonsenseQA": 20.0, "CHID": 100 / 7, "GSM8K": 0.0, "HumanEval": 0.0}
BBH_BINARY = ("sports_understanding", "web_of_lies", "causal_judgement", "navigate", "formal_fallacies",
              "boolean_expressions")     # free-form with two possible answers (yes/no, valid/invalid, True/False)


def write_competition_csv(rows, path) -> Path:
    """Rows: mappings with keys from COMPETITION_COLUMNS (missing or None -> empty cell, never a fake 0)."""
    path = Path(path)
    rows = list(rows)
    for row in rows:
        unknown = sorted(set(row) - set(COMPETITION_COLUMNS))
        if unknown:
            raise ValueError(f"unknown competition CSV columns {unknown}; expected {list(COMPETITION_COLUMNS)}")
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COMPETITION_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(col)) for col in COMPETITION_COLUMNS])
    return path


def competition_row(result: dict | None, *, throughput=None, memory_bytes=None) -> dict:
    """run_opencompass's result (or None after a failure) + efficiency numbers -> one competition CSV row."""
    scores = (result or {}).get("scores", {})
    row = {task: scores.get(task) for task in TASK_COLUMNS}
    row["Throughput"] = throughput
    row["Memory-Usage"] = memory_bytes / MEMORY_UNIT_BYTES if memory_bytes is not None else None
    return row


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{float(value):.{SIGNIFICANT}g}" if isinstance(value, (int, float)) else str(value)


def bbh_chance_percent(subtasks=None) -> float:
    """Mean chance level over BBH subtasks: 1/k for a multiple-choice subtask (k options, averaged over its shipped
    items), 1/2 for a two-answer free-form one, 0 for the open-ended rest."""
    import re
    from ._make_subsets import BBH_MULTIPLE_CHOICE, BBH_SUBTASKS
    from ._tasks import get_task
    subtasks = list(subtasks or BBH_SUBTASKS)
    options: dict[str, list[int]] = {}
    for item in get_task("bbh").items():
        options.setdefault(item["subtask"], []).append(len(set(re.findall(r"^\(([A-Z])\)", item["input"], re.M))))
    levels = [sum(1 / k for k in options[t] if k) / len(options[t]) if t in BBH_MULTIPLE_CHOICE
              else 0.5 if t in BBH_BINARY else 0.0 for t in subtasks]
    return 100 * sum(levels) / len(levels)


def chance_tasks(scores: dict, items: dict, *, bbh_subsets=None) -> list[str]:
    """The tasks whose score cannot be told apart from chance (tasks without a chance level or item count skipped)."""
    out = []
    for task, score in scores.items():
        level = bbh_chance_percent(bbh_subsets) if task == "BIG-Bench-Hard" else CHANCE_PERCENT.get(task)
        n = (items or {}).get(task)
        if level is not None and score is not None and n and at_chance(score, level, n):
            out.append(task)
    return out


def check_data(*, limit: int | None, data_root=None, download: bool = False, bbh_subsets=None) -> None:
    """The competition datasets' data is there (one line naming what is missing): what full_eval_top checks before
    its first candidate, and what `launch --full-eval-top` should check before the search starts."""
    _oc_data.plan_data(data_root, tasks=[TASK_OF_CONFIG[c] for c in COMPETITION_DATASETS], limit=limit,
                       download=download, bbh_subsets=bbh_subsets)


def full_eval_top(experiment_dir, k: int, *, limit: int | None = None, data_root=None, max_out_len: int | None = None,
                  bbh_subsets=None, device: str = "auto", work_dir=None, echo=print, download: bool = False) -> dict:
    """Run OpenCompass on the experiment's top-k checkpoints; write opencompass.json / .csv next to results.json.

    A candidate whose run fails is recorded with its error and left out of the correlation."""
    exp = Path(experiment_dir).expanduser().resolve()
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not (exp / RESULTS_FILE).is_file():
        raise ValueError(f"{exp} has no {RESULTS_FILE}: finish the search first (python -m search resume)")
    data = json.loads((exp / RESULTS_FILE).read_text())
    top = (data.get("summary") or {}).get("top") or []
    if not top:
        raise ValueError(f"{exp / RESULTS_FILE} lists no top candidates (summary.top is empty)")
    trials = {t.get("trial_id"): t for t in data.get("trials", [])}
    check_data(limit=limit, data_root=data_root, download=download, bbh_subsets=bbh_subsets)
    work_dir = Path(work_dir) if work_dir else exp / OUT_DIR
    candidates = []
    for entry in top[:k]:
        trial = trials.get(entry.get("trial_id"), {})
        cand = {"rank": entry.get("rank"), "trial_id": entry.get("trial_id"), "name": entry.get("name"),
                "dir": _checkpoint_dir(exp, entry.get("dir")), "proxy_score": entry.get("score"),
                "throughput": _first(entry, trial, "decode_tokens_per_s"),
                "peak_memory_bytes": _first(entry, trial, "peak_memory_bytes")}
        echo(f"[full-eval] rank {cand['rank']} {cand['name']}: OpenCompass on {cand['dir']}")
        start = time.perf_counter()
        try:
            if not cand["dir"]:
                raise ValueError("results.json records no checkpoint directory for this candidate")
            result = run_opencompass(cand["dir"], limit=limit, work_dir=work_dir, data_root=data_root,
                                     max_out_len=max_out_len, bbh_subsets=bbh_subsets, device=device,
                                     download=download)
            cand.update(scores=result["scores"], average=result["average"], model_class=result["model_class"],
                        output_dir=result["output_dir"], errors=result["errors"], items=result.get("items"),
                        at_chance=chance_tasks(result["scores"], result.get("items"), bbh_subsets=bbh_subsets),
                        error=None)
        except (RuntimeError, ValueError, OSError) as err:
            result = None
            cand.update(scores={}, average=None, items=None, at_chance=[], error=str(err).splitlines()[0])
        cand["seconds"] = round(time.perf_counter() - start, 1)
        cand["row"] = competition_row(result, throughput=cand["throughput"], memory_bytes=cand["peak_memory_bytes"])
        chance = f"  at chance: {', '.join(cand['at_chance'])}" if cand["at_chance"] else ""
        echo(f"[full-eval]   average {_fmt(cand['average'])}{chance}  {cand['error'] or ''}".rstrip())
        candidates.append(cand)

    scored = [c for c in candidates if c["average"] is not None and c["proxy_score"] is not None]
    rho = spearman([c["proxy_score"] for c in scored], [c["average"] for c in scored]) if len(scored) >= 2 else None
    interval = spearman_interval(rho, len(scored))
    checked = [t for t in TASK_COLUMNS if t in CHANCE_PERCENT or t == "BIG-Bench-Hard"]
    all_chance = bool(scored) and all(set(checked) <= set(c["at_chance"]) for c in scored)
    report = {"experiment": str(exp), "k": k, "limit": limit, "max_out_len": max_out_len, "bbh_subsets": bbh_subsets,
              "spearman": rho, "spearman_ci95": list(interval) if interval else None, "n_correlated": len(scored),
              "all_at_chance": all_chance, "candidates": candidates}
    write_json(exp / OUT_JSON, report)
    write_competition_csv([c["row"] for c in candidates], exp / OUT_CSV)
    echo(f"[full-eval] Spearman(proxy score, OpenCompass average) = {describe_rho(rho, len(scored))}")
    if all_chance:
        echo(f"[full-eval] every candidate scores within binomial noise of chance on {', '.join(checked)}: "
             "their OpenCompass scores are indistinguishable from guessing, so the correlation says nothing")
    report["mlflow_run_id"] = log_to_parent(exp, report)
    return report


def log_to_parent(exp: Path, report: dict) -> str | None:
    """Per-candidate task scores, averages and the correlation -> the experiment's MLflow parent run."""
    state_path = exp / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    uri, run_id = state.get("tracking_uri"), state.get("parent_run_id")
    if not uri or not run_id:
        return None
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    now = int(time.time() * 1000)
    metrics = []
    for c in report["candidates"]:
        values = {**(c.get("scores") or {}), "average": c.get("average")}
        metrics += [Metric(f"{METRIC_PREFIX}/rank{c['rank']}/{key}", float(v), now, 0)
                    for key, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)]
    if report["spearman"] is not None:
        metrics.append(Metric(f"{METRIC_PREFIX}/spearman", float(report["spearman"]), now, 0))
    for bound, value in zip(("low", "high"), report.get("spearman_ci95") or ()):
        metrics.append(Metric(f"{METRIC_PREFIX}/spearman_ci95_{bound}", float(value), now, 0))
    client = MlflowClient(tracking_uri=uri)
    for i in range(0, len(metrics), 900):      # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=metrics[i:i + 900])
    for name in (OUT_JSON, OUT_CSV):
        client.log_artifact(run_id, str(exp / name), artifact_path=METRIC_PREFIX)
    return run_id


def _checkpoint_dir(exp: Path, recorded) -> str | None:
    """The recorded absolute path, or the same folder under this experiment's top/ when the experiment moved."""
    if not recorded:
        return None
    moved = exp / "top" / Path(recorded).name
    return str(moved) if not Path(recorded).is_dir() and moved.is_dir() else recorded


def _first(entry: dict, trial: dict, key: str):
    return entry.get(key) if entry.get(key) is not None else trial.get(key)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
