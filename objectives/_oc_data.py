"""The OpenCompass data layout, built offline from the raw benchmark files (shared/data style).

OpenCompass looks its datasets up under $COMPASS_DATA_CACHE/<DATASETS_MAPPING local path> and downloads them
when missing, which fails offline. This builds that layout once per (raw root, layout version):

    <cache>/data/gsm8k/{test.jsonl -> raw, train.jsonl (empty)}
    <cache>/data/BBH/data/<task>.json -> raw bbh/bbh/<task>.json
    <cache>/data/commonsenseqa/{dev_rand_split.jsonl -> raw, train_rand_split.jsonl (empty)}
    <cache>/data/FewCLUE/chid/{dev_few_all.json, test_public.json} -> raw
    <cache>/data/humaneval/human-eval-v2-20210705.jsonl        (gunzipped HumanEval.jsonl.gz)
    <cache>/truthful_qa/{README.md, generation/validation.jsonl} (a local HF dataset dir, from the CSV)

TruthfulQA is not read through COMPASS_DATA_CACHE: its config calls datasets.load_dataset('truthful_qa'),
so the run config points the dataset's `path` at the truthful_qa dir built here.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from pathlib import Path

from compress._atomic import atomic_dir

LAYOUT_VERSION = 1                      # bump when the layout below changes: cached layouts are rebuilt
MARKER = ".edgeprune-layout.json"
# The project's raw data sits next to the repository (../shared/data) in development and CI.
DEFAULT_RAW_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"

# raw file (relative to the raw root) -> its place in the OpenCompass layout (relative to the cache root)
LINKS = {
    "gsm8k/test.jsonl": "data/gsm8k/test.jsonl",
    "commonsenseqa/dev_rand_split.jsonl": "data/commonsenseqa/dev_rand_split.jsonl",
    "chid/dev_few_all.json": "data/FewCLUE/chid/dev_few_all.json",
    "chid/test_public.json": "data/FewCLUE/chid/test_public.json",
}
# OpenCompass loads the train split too; the competition configs never read from it (fixed few-shot prompts).
EMPTY = ("data/gsm8k/train.jsonl", "data/commonsenseqa/train_rand_split.jsonl")
BBH_RAW, BBH_OUT = "bbh/bbh", "data/BBH/data"
HUMANEVAL_RAW, HUMANEVAL_OUT = "humaneval/HumanEval.jsonl.gz", "data/humaneval/human-eval-v2-20210705.jsonl"
TRUTHFULQA_RAW, TRUTHFULQA_OUT = "truthfulqa/TruthfulQA.csv", "truthful_qa"
# The HF `truthful_qa` dataset card's `generation` config, which datasets.load_dataset reads from README.md.
TRUTHFULQA_CARD = """---
configs:
- config_name: generation
  data_files:
  - split: validation
    path: generation/validation.jsonl
---
TruthfulQA (generation), converted from TruthfulQA.csv (sylinrl/TruthfulQA, Apache-2.0) for offline OpenCompass runs.
"""


def default_raw_root() -> Path:
    if DEFAULT_RAW_ROOT.is_dir():
        return DEFAULT_RAW_ROOT
    raise ValueError(f"no benchmark data at {DEFAULT_RAW_ROOT}: pass --data-root DIR (data_root=...) pointing at "
                     "a folder laid out like shared/data (bbh/bbh/*.json, gsm8k/test.jsonl, "
                     "humaneval/HumanEval.jsonl.gz, truthfulqa/TruthfulQA.csv, commonsenseqa/dev_rand_split.jsonl, "
                     "chid/*.json)")


def required_files(raw: Path) -> list[Path]:
    return [raw / p for p in (*LINKS, HUMANEVAL_RAW, TRUTHFULQA_RAW)]


def check_raw_root(raw: str | os.PathLike) -> Path:
    """Fail with one line naming what is missing, before any model is loaded."""
    raw = Path(raw).expanduser().resolve()
    if not raw.is_dir():
        raise ValueError(f"data root {raw} is not a directory")
    missing = [str(p.relative_to(raw)) for p in required_files(raw) if not p.is_file()]
    if not sorted((raw / BBH_RAW).glob("*.json")):
        missing.append(f"{BBH_RAW}/*.json")
    if missing:
        raise ValueError(f"data root {raw} lacks {', '.join(missing)}")
    return raw


def build_layout(cache: str | os.PathLike, *, raw_root: str | os.PathLike | None = None) -> Path:
    """Build (or reuse) the layout under `cache`; returns the COMPASS_DATA_CACHE root (= cache).

    Built in a temporary sibling and renamed into place, so an interrupted build is never reused."""
    raw = check_raw_root(raw_root if raw_root is not None else default_raw_root())
    cache = Path(cache).expanduser().resolve()
    wanted = {"version": LAYOUT_VERSION, "raw_root": str(raw)}
    marker = cache / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return cache
    with atomic_dir(cache, force=True) as tmp:
        _fill(tmp, raw)
        (tmp / MARKER).write_text(json.dumps(wanted))
    return cache


def truthfulqa_dir(cache: str | os.PathLike) -> Path:
    return Path(cache) / TRUTHFULQA_OUT


def _fill(out: Path, raw: Path) -> None:
    # Symlinks, not copies: the raw files are large-ish and read-only; a layout is rebuilt when the root moves.
    for src, dst in LINKS.items():
        _link(raw / src, out / dst)
    for task in sorted((raw / BBH_RAW).glob("*.json")):
        _link(task, out / BBH_OUT / task.name)
    for path in EMPTY:
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text("")
    target = out / HUMANEVAL_OUT
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(raw / HUMANEVAL_RAW, "rb") as f_in, open(target, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    write_truthfulqa(raw / TRUTHFULQA_RAW, out / TRUTHFULQA_OUT)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def write_truthfulqa(csv_path: Path, out: Path) -> int:
    """TruthfulQA.csv -> HF `generation` rows: the answer columns are '; '-separated lists in the CSV."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append({"type": r["Type"], "category": r["Category"], "question": r["Question"],
                         "best_answer": r["Best Answer"], "correct_answers": _split(r["Correct Answers"]),
                         "incorrect_answers": _split(r["Incorrect Answers"]), "source": r["Source"]})
    (out / "generation").mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(TRUTHFULQA_CARD)
    with open(out / "generation" / "validation.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def _split(cell: str) -> list[str]:
    return [part.strip() for part in cell.split(";") if part.strip()]
