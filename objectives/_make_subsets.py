"""Raw benchmark files -> normalised items in a fixed, seeded, stratified order; writes objectives/_data/.

Run once (the shipped files are its output; rerunning with the same sources reproduces them byte for byte):

    python objectives/_make_subsets.py --source ../shared/data     (stdlib + OpenCompass only)

Every task's items are put in ONE order, and every subset is a prefix of it: the shipped files are the
first `SHIP_ITEMS` items and fidelity level k uses the first n_k. Because prefixes of a stratified order
are themselves stratified, a level-0 subset of 8 covers the answer letters, BBH level 0 has one item per
subtask, and reading the full data from a user directory gives the same first items as the shipped files
(so scores at levels 0 and 1 do not depend on where the data came from).

Accepted source layouts (the first that has the task's file wins):
  shared/data:      gsm8k/test.jsonl, bbh/bbh/<task>.json, commonsenseqa/dev_rand_split.jsonl,
                    chid/{dev_few_all,test_public}.json, humaneval/HumanEval.jsonl.gz,
                    truthfulqa/mc_task.json or truthfulqa/TruthfulQA.csv
  OpenCompass (COMPASS_DATA_CACHE root, or its data/ folder): data/gsm8k/test.jsonl, data/BBH/data/<task>.json,
                    data/commonsenseqa/dev_rand_split.jsonl, data/FewCLUE/chid/{dev_few_all,test_public}.json,
                    data/humaneval/human-eval-v2-20210705.jsonl; TruthfulQA (which OpenCompass loads as an HF
                    dataset dir) from truthful_qa/generation/validation.jsonl or data/truthfulqa/<either file above>
"""
from __future__ import annotations

import argparse
import ast
import csv
import gzip
import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).parent / "_data"
SEED = 0
SHIP_ITEMS = {"csqa": 100, "gsm8k": 100, "humaneval": 100, "truthfulqa": 100, "chid": 100, "bbh": 8 * 27}
TASKS = tuple(SHIP_ITEMS)
CANARY = "canary GUID"   # BIG-Bench canary line, dropped from CoT prompts as OpenCompass's lib_prompt does

BBH_MULTIPLE_CHOICE = (
    "temporal_sequences", "disambiguation_qa", "date_understanding", "tracking_shuffled_objects_three_objects",
    "penguins_in_a_table", "geometric_shapes", "snarks", "ruin_names", "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_five_objects", "logical_deduction_three_objects", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects", "movie_recommendation",
    "salient_translation_error_detection", "reasoning_about_colored_objects")
BBH_FREE_FORM = (
    "multistep_arithmetic_two", "navigate", "dyck_languages", "word_sorting", "sports_understanding",
    "boolean_expressions", "object_counting", "formal_fallacies", "causal_judgement", "web_of_lies")
BBH_SUBTASKS = tuple(sorted(BBH_MULTIPLE_CHOICE + BBH_FREE_FORM))

# task -> candidate relative paths, shared/data layout first, then OpenCompass's
LAYOUTS = {
    "gsm8k": ("gsm8k/test.jsonl", "data/gsm8k/test.jsonl"),
    "csqa": ("commonsenseqa/dev_rand_split.jsonl", "data/commonsenseqa/dev_rand_split.jsonl"),
    "humaneval": ("humaneval/HumanEval.jsonl.gz", "data/humaneval/human-eval-v2-20210705.jsonl"),
    "truthfulqa": ("truthfulqa/mc_task.json", "truthfulqa/TruthfulQA.csv", "data/truthfulqa/mc_task.json",
                   "data/truthfulqa/TruthfulQA.csv", "truthful_qa/generation/validation.jsonl"),
    "chid": ("chid/dev_few_all.json", "data/FewCLUE/chid/dev_few_all.json"),
    "bbh": ("bbh/bbh", "data/BBH/data"),
}


# ---- reading -------------------------------------------------------------------------------------
def find_source(task: str, root) -> Path:
    """The task's file (or BBH folder) under `root`, in either layout; one ValueError naming both."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"benchmark data directory not found: {root}")
    for rel in LAYOUTS[task]:
        # also accept the data/ folder itself as root (COMPASS_DATA_CACHE/data)
        for path in (root / rel, root / rel[len("data/"):]) if rel.startswith("data/") else (root / rel,):
            if path.exists():
                return path
    raise ValueError(f"no {task} data under {root}: expected one of {', '.join(LAYOUTS[task])} "
                     "(shared/data or OpenCompass COMPASS_DATA_CACHE layout)")


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_task(task: str, root) -> list[dict]:
    """All items of a task from a data directory, normalised (see the shipped files for the fields)."""
    path = find_source(task, root)
    return READERS[task](path)


def _read_gsm8k(path: Path) -> list[dict]:
    # gsm8k_dataset_postprocess: the number after '#### ', thousands separators removed
    return [{"id": f"gsm8k/{i}", "question": r["question"], "answer": r["answer"].split("#### ")[1].replace(",", "")}
            for i, r in enumerate(_jsonl(path))]


def _read_csqa(path: Path) -> list[dict]:
    return [{"id": f"csqa/{r['id']}", "question": r["question"]["stem"],
             "choices": {c["label"]: c["text"] for c in r["question"]["choices"]}, "answer": r["answerKey"]}
            for r in _jsonl(path)]


def _read_humaneval(path: Path) -> list[dict]:
    keys = ("prompt", "entry_point", "test", "canonical_solution")
    return [{"id": r["task_id"], **{k: r[k] for k in keys}} for r in _jsonl(path)]


def split_answers(cell: str) -> list[str]:
    """A TruthfulQA.csv answer cell ('; '-separated) as the HF `generation` config lists it."""
    return [part.strip() for part in cell.split(";") if part.strip()]


def _truthfulqa_records(path: Path) -> list[dict]:
    """question, category, best answer, incorrect answers (MC1 = best + incorrect) and, where the source has
    them, the generation references (correct / incorrect answer lists) that truthfulqa_gen's BLEU reads. From
    mc_task.json (+ the CSV beside it for categories and references), TruthfulQA.csv, or an HF-style
    generation/validation.jsonl."""
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return [{"question": r["Question"], "category": r["Category"], "best": r["Best Answer"],
                     "wrong": r["Incorrect Answers"].split(";"), "correct_answers": split_answers(r["Correct Answers"]),
                     "incorrect_answers": split_answers(r["Incorrect Answers"])} for r in csv.DictReader(f)]
    if path.suffix == ".jsonl":
        return [{"question": r["question"], "category": r.get("category", ""), "best": r["best_answer"],
                 "wrong": r["incorrect_answers"], **({"correct_answers": r["correct_answers"],
                 "incorrect_answers": r["incorrect_answers"]} if "correct_answers" in r else {})} for r in _jsonl(path)]
    beside = {}
    if (path.parent / "TruthfulQA.csv").is_file():   # mc_task.json has no categories and no generation references
        beside = {r["question"]: r for r in _truthfulqa_records(path.parent / "TruthfulQA.csv")}
    out = []
    for r in json.loads(path.read_text(encoding="utf-8")):
        targets = r["mc1_targets"]
        csv_row = beside.get(r["question"], {})
        out.append({"question": r["question"], "category": csv_row.get("category", ""),
                    "best": next(k for k, v in targets.items() if v == 1),
                    "wrong": [k for k, v in targets.items() if v == 0],
                    **{k: csv_row[k] for k in ("correct_answers", "incorrect_answers") if k in csv_row}})
    return out


def _read_truthfulqa(path: Path) -> list[dict]:
    items = []
    for i, r in enumerate(_truthfulqa_records(path)):
        # stripped, empty ones dropped (mc_task.json has 17 empty options), duplicates merged
        options = list(dict.fromkeys(x.strip() for x in [r["best"], *r["wrong"]] if x.strip()))
        label = options[0]
        # the sources list the correct answer first; shuffle so a model that ties every option (or
        # prefers the first) gets no credit for the file's order
        random.Random(f"truthfulqa/{i}").shuffle(options)
        item = {"id": f"truthfulqa/{i}", "question": r["question"], "category": r["category"],
                "options": options, "label": options.index(label)}
        if "correct_answers" in r:      # truthfulqa_gen's references (faithful mode)
            item.update(best_answer=r["best"], correct_answers=r["correct_answers"],
                        incorrect_answers=r["incorrect_answers"])
        items.append(item)
    return items


def _read_chid(path: Path) -> list[dict]:
    # the competition config scores both chid-dev (dev_few_all) and chid-test (test_public): pool them
    items = []
    for name in ("dev_few_all", "test_public"):
        file = path.parent / f"{name}.json"
        if file.is_file():
            items += [{"id": f"chid/{name}/{r['id']}", "content": r["content"], "candidates": r["candidates"],
                       "answer": r["answer"]} for r in _jsonl(file)]
    return items


def _read_bbh(folder: Path) -> list[dict]:
    missing = [t for t in BBH_SUBTASKS if not (folder / f"{t}.json").is_file()]
    if missing:
        raise ValueError(f"BBH folder {folder} lacks {len(missing)} subtask files, e.g. {missing[0]}.json")
    items = []
    for task in BBH_SUBTASKS:
        examples = json.loads((folder / f"{task}.json").read_text(encoding="utf-8"))["examples"]
        items += [{"id": f"bbh/{task}/{i}", "subtask": task, "input": e["input"], "target": e["target"]}
                  for i, e in enumerate(examples)]
    return items


READERS = {"gsm8k": _read_gsm8k, "csqa": _read_csqa, "humaneval": _read_humaneval,
           "truthfulqa": _read_truthfulqa, "chid": _read_chid, "bbh": _read_bbh}


# ---- ordering ------------------------------------------------------------------------------------
def _stratum(task: str, item: dict) -> str:
    return {"bbh": item.get("subtask"), "csqa": item.get("answer"), "truthfulqa": item.get("category")}.get(task) or ""


def stratified_order(task: str, items: list[dict], *, seed: int = SEED) -> list[dict]:
    """A seeded order whose every prefix is stratified.

    Items are shuffled within their stratum, then drawn one at a time from the stratum furthest below its
    share: equal shares for BBH subtasks (so the first 27 are one per subtask), shares proportional to
    stratum size elsewhere (TruthfulQA categories range from 3 to 100 questions).
    """
    strata: dict[str, list[dict]] = {}
    for item in sorted(items, key=lambda x: x["id"]):      # input order must not matter
        strata.setdefault(_stratum(task, item), []).append(item)
    names = sorted(strata)
    random.Random(f"{task}/strata/{seed}").shuffle(names)  # tie-break order between strata
    for name in names:
        random.Random(f"{task}/{name}/{seed}").shuffle(strata[name])
    total = sum(len(v) for v in strata.values())
    share = {n: (1 / len(names) if task == "bbh" else len(strata[n]) / total) for n in names}
    taken = dict.fromkeys(names, 0)
    out = []
    while len(out) < total:
        open_ = [n for n in names if taken[n] < len(strata[n])]
        pick = max(open_, key=lambda n: (len(out) + 1) * share[n] - taken[n])   # max() keeps the first on ties
        out.append(strata[pick][taken[pick]])
        taken[pick] += 1
    return out


# ---- writing -------------------------------------------------------------------------------------
def bbh_prompt(text: str) -> str:
    """A BIG-Bench-Hard CoT prompt file minus its canary header, as OpenCompass ships them."""
    lines = text.split("\n")
    while lines and (CANARY in lines[0] or lines[0].strip() == "-----"):
        lines = lines[1:]
    return "\n".join(lines)


# prompt templates and few-shot exemplars taken verbatim from the installed OpenCompass configs the competition runs
OPENCOMPASS_CONFIGS = {"csqa": "commonsenseqa/commonsenseqa_7shot_cot_gen_734a22.py",
                       "gsm8k": "gsm8k/gsm8k_gen_1d7fe4.py",
                       "chid": "FewCLUE_chid/FewCLUE_chid_gen_0a29a2.py",
                       "humaneval": "humaneval/humaneval_openai_sample_evals_gen_dcae0e.py"}


def opencompass_rounds(config: Path) -> list[dict]:
    """The dict(role=..., prompt=...) rounds of an OpenCompass dataset config, read with ast (no import)."""
    rounds = []
    for node in ast.walk(ast.parse(config.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "dict":
            kw = {k.arg: k.value for k in node.keywords}
            if set(kw) == {"role", "prompt"} and all(isinstance(v, ast.Constant) for v in kw.values()):
                rounds.append({"role": kw["role"].value, "prompt": kw["prompt"].value})
    return rounds


def write_exemplars(out: Path) -> None:
    import opencompass
    package = Path(opencompass.__file__).parent
    for name, rel in OPENCOMPASS_CONFIGS.items():
        rounds = opencompass_rounds(package / "configs" / "datasets" / rel)
        (out / f"{name}.json").write_text(json.dumps(rounds, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    licence = next(package.parent.glob("opencompass-*.dist-info/licenses/LICENSE"), None)
    if licence is not None:
        (out.parent / "licenses").mkdir(exist_ok=True)
        (out.parent / "licenses" / "opencompass.LICENSE").write_bytes(licence.read_bytes())


def copy_licences(source: Path, out: Path) -> None:
    """The MIT / Apache-2.0 texts of the sources we ship parts of (both licences ask for a copy)."""
    (out / "licenses").mkdir(exist_ok=True)
    for name in ("bbh", "gsm8k", "humaneval", "truthfulqa"):
        if (source / name / "LICENSE").is_file():
            (out / "licenses" / f"{name}.LICENSE").write_bytes((source / name / "LICENSE").read_bytes())


def write_subsets(source, out: Path = DATA_DIR, *, seed: int = SEED) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for task in TASKS:
        items = stratified_order(task, read_task(task, source), seed=seed)[:SHIP_ITEMS[task]]
        with open(out / f"{task}.jsonl", "w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        counts[task] = len(items)
    prompts = out / "prompts" / "bbh"
    prompts.mkdir(parents=True, exist_ok=True)
    cot = Path(source) / "bbh" / "cot-prompts"
    for task in BBH_SUBTASKS:
        (prompts / f"{task}.txt").write_text(bbh_prompt((cot / f"{task}.txt").read_text(encoding="utf-8")),
                                            encoding="utf-8")
    write_exemplars(out / "prompts")
    copy_licences(Path(source), out)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="benchmark data directory (shared/data layout)")
    parser.add_argument("--out", default=str(DATA_DIR))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    counts = write_subsets(args.source, Path(args.out), seed=args.seed)
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(json.dumps({"items": counts, "bytes": size}))


if __name__ == "__main__":
    main()
