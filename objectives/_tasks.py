"""The competition's benchmark tasks as cheap proxies: prompts as OpenCompass builds them, fixed item subsets.

Each task turns an item into a query: `Choice` (score each option's summed log-likelihood, pick the best,
as OpenCompass's PPL mode does) or `Generate` (greedy text, then the OpenCompass answer extraction).
Prompts follow the OpenCompass 0.5.4 configs the competition runs with a base (no chat template) model:
rounds joined by newlines. Where the competition config generates free text for a multiple-choice task,
we score the options instead, continuing the prompt with the phrase its few-shot exemplars end with
("So the answer is (B)."), which costs one forward pass instead of a chain of thought.

TruthfulQA: the competition config scores free generation with BLEU against reference answers (needs
the `evaluate` bleu module and is noisy); we use the standard MC1 form instead, with the TruthfulQA
paper's QA primer prompt (truthfulqa/presets.py, Apache-2.0) and options shuffled per question.

Fidelity levels: level k uses the first `level_items[k]` items of the task's stratified order (None =
all available), so every level is a superset of the one below (see _make_subsets).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from compress import Registry

from ._make_subsets import BBH_MULTIPLE_CHOICE, DATA_DIR, read_task, stratified_order
from ._oc_post import (bbh_freeform_postprocess, gsm8k_equal, gsm8k_postprocess,  # noqa: F401 (re-exported)
                       humaneval_postprocess, humaneval_program)

LEVEL_ITEMS = (8, 24, None)          # items per fidelity level; None = everything available
BBH_LEVEL_ITEMS = (27, 81, None)     # one, three, all (8 shipped) per subtask
PROMPTS = DATA_DIR / "prompts"
BBH_TEMPLATE = "Follow the given examples and answer the question.\n{hint}\n\nQ: {input}\nA: Let's think step by step."
TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.")


@dataclass(frozen=True, kw_only=True)
class Choice:
    """Multiple choice: the option continuing `prompt` with the highest summed log-likelihood wins."""
    prompt: str
    options: tuple[str, ...]
    label: int                         # index of the right option; -1 when none is (broken upstream item)


@dataclass(frozen=True, kw_only=True)
class Generate:
    """Greedy generation; stops at the first match of `stop` (a regex), cut at its start or end."""
    prompt: str
    stop: str | None = None
    keep_stop: bool = False


# ---- OpenCompass prompt rendering and answer extraction -------------------------------------------
@lru_cache(maxsize=None)
def _rounds(name: str) -> tuple[tuple[str, str], ...]:
    data = json.loads((PROMPTS / f"{name}.json").read_text(encoding="utf-8"))
    return tuple((r["role"], r["prompt"]) for r in data)


def render(rounds, fields: dict, *, generate: bool = True, begin: bool = False) -> str:
    """LMTemplateParser without a meta template: non-empty prompts joined by newlines. In gen mode the
    template's final BOT round (the answer slot) is left empty. `begin`: the template has a `begin`
    section (CSQA's ice token, rendered empty), which still puts a newline before the first round."""
    parts = []
    for i, (role, text) in enumerate(rounds):
        if generate and role == "BOT" and i == len(rounds) - 1:
            continue
        for key, value in fields.items():
            text = text.replace("{" + key + "}", str(value))
        if text:
            parts.append(text)
    return ("\n" if begin else "") + "\n".join(parts)


@lru_cache(maxsize=None)
def bbh_hint(subtask: str) -> str:
    return (PROMPTS / "bbh" / f"{subtask}.txt").read_text(encoding="utf-8")


# ---- tasks ---------------------------------------------------------------------------------------
class Task:
    name = ""
    level_items: tuple = LEVEL_ITEMS

    def query(self, item: dict) -> Choice | Generate:
        raise NotImplementedError

    def score(self, item: dict, text: str) -> float:
        """Credit for one generated text (generation tasks only)."""
        raise NotImplementedError

    def items(self, data_dir=None, level: int | None = None) -> list[dict]:
        """The task's items in stratified order: the shipped subset, or all of a user's data directory."""
        items = _load(self.name, None if data_dir is None else str(Path(data_dir).expanduser()))
        if level is None:
            return list(items)
        if not 0 <= level < len(self.level_items):
            raise ValueError(f"fidelity level must be 0..{len(self.level_items) - 1}, got {level}")
        count = self.level_items[level]
        return list(items if count is None else items[:count])


@lru_cache(maxsize=None)
def _load(task: str, data_dir: str | None) -> tuple[dict, ...]:
    if data_dir is None:
        lines = (DATA_DIR / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
        return tuple(json.loads(line) for line in lines if line.strip())
    return tuple(stratified_order(task, read_task(task, data_dir)))


TASKS: Registry[type[Task]] = Registry("task")


@TASKS.register("csqa")
class CommonsenseQA(Task):
    name = "csqa"

    def query(self, item):
        prompt = render(_rounds("csqa"), {"question": item["question"], **item["choices"]}, begin=True)
        letters = sorted(item["choices"])
        return Choice(prompt=prompt, options=tuple(f" So the answer is {x}." for x in letters),
                      label=letters.index(item["answer"]))


@TASKS.register("bbh")
class BigBenchHard(Task):
    name = "bbh"
    level_items = BBH_LEVEL_ITEMS

    def query(self, item):
        prompt = BBH_TEMPLATE.format(hint=bbh_hint(item["subtask"]), input=item["input"])
        if item["subtask"] not in BBH_MULTIPLE_CHOICE:
            return Generate(prompt=prompt, stop=r"\n\nQ:")
        letters = set(re.findall(r"^\(([A-Z])\)", item["input"], re.MULTILINE))
        gold = re.fullmatch(r"\(([A-Z])\)", item["target"].strip())
        letters = sorted(letters | {gold.group(1)} if gold else letters)
        # two upstream ruin_names items have a name, not a letter, as target: no option is right,
        # as under OpenCompass's letter matching (label -1 never earns credit)
        return Choice(prompt=prompt, options=tuple(f" So the answer is ({x})." for x in letters),
                      label=letters.index(gold.group(1)) if gold else -1)

    def score(self, item, text):
        pred, ref = bbh_freeform_postprocess(text), bbh_freeform_postprocess(item["target"])
        return float(pred.casefold() == ref.casefold())


@TASKS.register("gsm8k")
class GSM8K(Task):
    name = "gsm8k"

    def query(self, item):
        # gsm8k_postprocess ignores everything from the next 'Question:' on, so stopping there is exact
        return Generate(prompt=render(_rounds("gsm8k"), {"question": item["question"]}), stop="Question:")

    def score(self, item, text):
        return float(gsm8k_equal(gsm8k_postprocess(text), item["answer"]))


@TASKS.register("humaneval")
class HumanEval(Task):
    name = "humaneval"

    def query(self, item):
        # the postprocessor keeps only the first fenced block, so stopping once it closes is exact
        return Generate(prompt=render(_rounds("humaneval"), {"prompt": item["prompt"]}),
                        stop=r"```\w*\n.*?```", keep_stop=True)

    def score(self, item, text):
        raise TypeError("HumanEval is scored in a subprocess: use objectives._scoring.run_programs")

    def program(self, item, text) -> str:
        return humaneval_program(item, humaneval_postprocess(text))


@TASKS.register("truthfulqa")
class TruthfulQA(Task):
    name = "truthfulqa"

    def query(self, item):
        prompt = f"{TRUTHFULQA_PRIMER}\n\nQ: {item['question']}\nA:"
        return Choice(prompt=prompt, options=tuple(" " + x for x in item["options"]), label=item["label"])


@TASKS.register("chid")
class CHID(Task):
    name = "chid"

    def query(self, item):
        letters = "ABCDEFG"[:len(item["candidates"])]
        fields = {"content": item["content"].replace("#idiom#", "______"), **dict(zip(letters, item["candidates"]))}
        return Choice(prompt=render(_rounds("chid"), fields), options=tuple(letters), label=item["answer"])


def get_task(name: str) -> Task:
    return TASKS.get(name)()
