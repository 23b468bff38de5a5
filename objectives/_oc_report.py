"""After a search: full OpenCompass scores of its top candidates, the competition CSV, and how well the proxy
score ranked them (Spearman).

Competition CSV: the starting kit's Generate_CSV.py (TianjinYellow/EdgeDeviceLLMCompetition-Starting-Kit)
writes one row with pandas `to_csv(index=False)` and no model/name column. Its stored version still lists
LongBench; the final kit dropped LongBench from the evaluation command, and a track-1 submission's copy of
Generate_CSV.py (Probe100/EdgeDeviceLLMCompetition-NEffalg-Track1) has exactly COMPETITION_COLUMNS below.
opencompass.csv therefore has no name column either: its rows are in rank order, and opencompass.json
names each row. Throughput and Memory-Usage are measured values where `validate` measured the candidate (a
phone run first, else the emulated one), else the search's simulated ones; two columns after the kit's
say which (KIND_COLUMNS: simulated / measured-emulated / measured-phone).

`full_eval_top` takes the search's experiment record (search/_record.py, passed down: objectives/ sits below
search/): it resolves the checkpoints, names the output files and logs to the experiment's MLflow parent run.

The correlation is reported with its 95 % confidence interval (objectives._agreement: Fisher z, n >= 4), and
every candidate's task scores are checked against chance (CHANCE_PERCENT; binomial noise over the items scored):
when the candidates sit at chance, no correlation between them can say anything, and the report says so.
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from compress._atomic import atomic_file

from . import _oc_data
from ._agreement import at_chance, describe_rho, spearman, spearman_interval
from ._opencompass import ABBR_SEP, COMPETITION_DATASETS, TASK_OF_CONFIG, run_opencompass

COMPETITION_COLUMNS = ("CommonsenseQA", "BIG-Bench-Hard", "GSM8K", "HumanEval", "CHID", "TruthfulQA",
                       "Throughput", "Memory-Usage")
TASK_COLUMNS = COMPETITION_COLUMNS[:6]
KIND_COLUMNS = ("Throughput-Kind", "Memory-Usage-Kind")      # where each efficiency number comes from
CSV_COLUMNS = COMPETITION_COLUMNS + KIND_COLUMNS
# Memory-Usage unit. The brief asks for GB; the kit's EvaluateThrougthputAndMemory.py prints MB
# (torch.cuda.max_memory_allocated / 2**20), and submissions used both. One constant to change.
MEMORY_UNIT_BYTES = 2**30
SIGNIFICANT = 6      # digits per CSV cell: Memory-Usage of the bundled model is a few MB, i.e. 0.00279 GB
METRIC_PREFIX = "opencompass"
# Chance level (percent) of each task's primary metric, for a model that guesses: CSQA has 5 options, CHID 7;
# GSM8K and HumanEval are open-ended (0). BIG-Bench-Hard averages its subtasks: see bbh_chance_percent.
# TruthfulQA's bleu_acc (BLEU nearer a true than a false reference) has no guessing baseline: not checked.
CHANCE_PERCENT = {"CommonsenseQA": 20.0, "CHID": 100 / 7, "GSM8K": 0.0, "HumanEval": 0.0}
BBH_BINARY = ("sports_understanding", "web_of_lies", "causal_judgement", "navigate", "formal_fallacies",
              "boolean_expressions")     # free-form with two possible answers (yes/no, valid/invalid, True/False)


def write_competition_csv(rows, path) -> Path:
    """Rows: mappings with keys from CSV_COLUMNS (missing or None -> empty cell, never a fake 0)."""
    path = Path(path)
    rows = list(rows)
    for row in rows:
        unknown = sorted(set(row) - set(CSV_COLUMNS))
        if unknown:
            raise ValueError(f"unknown competition CSV columns {unknown}; expected {list(CSV_COLUMNS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(col)) for col in CSV_COLUMNS])
    return path


def competition_row(result: dict | None, numbers: dict) -> dict:
    """run_opencompass's result (or None after a failure) + the candidate's numbers by kind (the experiment
    record's `numbers`) -> one competition CSV row: the most real throughput and memory, and their kinds."""
    from ._provenance import preferred
    scores = (result or {}).get("scores", {})
    row = {task: scores.get(task) for task in TASK_COLUMNS}
    throughput, row["Throughput-Kind"] = preferred(numbers, "decode_tokens_per_s")
    memory, row["Memory-Usage-Kind"] = preferred(numbers, "peak_memory_bytes")
    row["Throughput"] = throughput
    row["Memory-Usage"] = memory / MEMORY_UNIT_BYTES if memory is not None else None
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


def full_eval_top(experiment, k: int, *, limit: int | None = None, data_root=None, max_out_len: int | None = None,
                  bbh_subsets=None, device: str = "auto", work_dir=None, echo=print, download: bool = False) -> dict:
    """Run OpenCompass on the experiment's top-k checkpoints; write opencompass.json / .csv next to results.json.

    A candidate whose run fails (its checkpoint missing included) is recorded with its error and left out of
    the correlation."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    top = experiment.top_entries(k, require_checkpoints=False)
    trials = {t.get("trial_id"): t for t in experiment.read_results().get("trials", [])}
    # the data must be there before the first candidate runs (one line naming what is missing)
    check_data(limit=limit, data_root=data_root, download=download, bbh_subsets=bbh_subsets)
    work_dir = Path(work_dir) if work_dir else experiment.opencompass_dir
    candidates = []
    for entry in top:
        trial = trials.get(entry.get("trial_id"), {})
        numbers = experiment.numbers({**trial, **{k: v for k, v in entry.items() if v is not None}})
        cand = {"rank": entry.get("rank"), "trial_id": entry.get("trial_id"), "name": entry.get("name"),
                "dir": entry.get("dir"), "proxy_score": entry.get("score"), "numbers": numbers}
        echo(f"[full-eval] rank {cand['rank']} {cand['name']}: OpenCompass on {cand['dir']}")
        start = time.perf_counter()
        try:
            if not cand["dir"]:
                raise ValueError("the checkpoint of this candidate is missing from the experiment's storage")
            result = run_opencompass(cand["dir"], limit=limit, work_dir=work_dir, data_root=data_root,
                                     max_out_len=max_out_len, bbh_subsets=bbh_subsets, device=device,
                                     download=download)
            cand.update(scores=result["scores"], average=result["average"], model_class=result["model_class"],
                        output_dir=result["output_dir"], errors=result["errors"], error=None,
                        items=result.get("items") or item_counts(result))
            cand["at_chance"] = chance_tasks(result["scores"], cand["items"], bbh_subsets=bbh_subsets)
        except (RuntimeError, ValueError, OSError) as err:
            result = None
            cand.update(scores={}, average=None, items=None, at_chance=[], error=str(err).splitlines()[0])
        cand["seconds"] = round(time.perf_counter() - start, 1)
        cand["row"] = competition_row(result, numbers)
        chance = f"  at chance: {', '.join(cand['at_chance'])}" if cand["at_chance"] else ""
        echo(f"[full-eval]   average {_fmt(cand['average'])}{chance}  {cand['error'] or ''}".rstrip())
        candidates.append(cand)

    scored = [c for c in candidates if c["average"] is not None and c["proxy_score"] is not None]
    rho = spearman([c["proxy_score"] for c in scored], [c["average"] for c in scored]) if len(scored) >= 2 else None
    interval = spearman_interval(rho, len(scored))
    checked = [t for t in TASK_COLUMNS if t in CHANCE_PERCENT or t == "BIG-Bench-Hard"]
    all_chance = bool(scored) and all(set(checked) <= set(c["at_chance"]) for c in scored)
    report = {"experiment": str(experiment.path), "k": k, "limit": limit, "max_out_len": max_out_len,
              "bbh_subsets": bbh_subsets, "spearman": rho, "spearman_ci95": list(interval) if interval else None,
              "n_correlated": len(scored), "all_at_chance": all_chance, "candidates": candidates}
    experiment.write_json(experiment.opencompass_json, report)
    write_competition_csv([c["row"] for c in candidates], experiment.opencompass_csv)
    echo(f"[full-eval] Spearman(proxy score, OpenCompass average) = {describe_rho(rho, len(scored))}")
    if all_chance:
        echo(f"[full-eval] every candidate scores within binomial noise of chance on {', '.join(checked)}: "
             "their OpenCompass scores are indistinguishable from guessing, so the correlation says nothing")
    report["mlflow_run_id"] = experiment.log_to_parent(
        metrics=parent_metrics(report), files=[(experiment.opencompass_json, METRIC_PREFIX),
                                               (experiment.opencompass_csv, METRIC_PREFIX)])
    return report


def parent_metrics(report: dict) -> dict:
    """Per-candidate task scores, averages and the correlation, as metrics of the experiment's parent run."""
    metrics = {}
    for c in report["candidates"]:
        values = {**(c.get("scores") or {}), "average": c.get("average")}
        metrics.update({f"{METRIC_PREFIX}/rank{c['rank']}/{key}": float(v) for key, v in values.items()
                        if isinstance(v, (int, float)) and math.isfinite(v)})
    if report["spearman"] is not None:
        metrics[f"{METRIC_PREFIX}/spearman"] = float(report["spearman"])
    for bound, value in zip(("low", "high"), report.get("spearman_ci95") or ()):
        metrics[f"{METRIC_PREFIX}/spearman_ci95_{bound}"] = float(value)
    return metrics


def item_counts(result: dict) -> dict:
    """Items OpenCompass scored per competition task: the predictions it wrote (one per item)."""
    import json
    folder = Path(result.get("output_dir") or "") / "predictions" / str(result.get("model_abbr") or "")
    counts: dict[str, int] = {}
    for abbr, task in (result.get("task_of") or {}).items():
        stem = f"{task}{ABBR_SEP}{abbr}"          # one file per dataset, or stem_0.json, stem_1.json ... when split
        files = [folder / f"{stem}.json", *folder.glob(f"{stem}_[0-9]*.json")]
        n = sum(len(json.loads(f.read_text())) for f in files if f.is_file())
        counts[task] = counts.get(task, 0) + n
    return counts


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
