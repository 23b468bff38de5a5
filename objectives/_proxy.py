"""Proxy for the competition score: per-task accuracy on small fixed subsets, unweighted mean over tasks.

Two modes:
  loglik (default, cheap): multiple-choice tasks (CSQA, the 17 multiple-choice BBH subtasks, TruthfulQA as MC1,
      CHID) by option log-likelihood, one forward pass over the prompt plus one over the options; GSM8K, the ten
      free-form BBH subtasks and HumanEval by short greedy generations (max_new_tokens per level).
  faithful: every task exactly as the competition's OpenCompass configs score it (objectives._faithful): the same
      prompts, generation budget, extraction and evaluator, all six by greedy generation. It gives each item the
      score OpenCompass gives it (bench/proxy_vs_opencompass.py measures this), at generation cost.

Item counts per fidelity level (shipped data; a user data directory gives the same first items and, at the top
level, all of its items); `items={"gsm8k": 40, ...}` asks for the first N of a task's order instead:

    level   csqa  bbh  gsm8k  humaneval  truthfulqa  chid   max_new_tokens (loglik)
      0       8    27     8       8          8          8        128
      1      24    81    24      24         24         24        256
      2     100   216   100     100        100        100        512

After `evaluate`, `last_credits[task]` holds each item's credit in item order and `last_texts[task]` the text
generated for it (None for an item scored by log-likelihood): objectives.item_agreement compares two scorings.
"""
from __future__ import annotations

import time

from ._base import OBJECTIVES, Candidate, EvalContext, Metric, Objective
from ._faithful import score_faithful
from ._sandbox import require_isolation
from ._scoring import PROGRAM_TIMEOUT, choice_credit, greedy_generate, option_loglikelihoods, run_programs
from ._tasks import TASKS, Choice, HumanEval, Task, get_task

DEFAULT_TASKS = ("csqa", "bbh", "gsm8k", "humaneval", "truthfulqa", "chid")
MAX_NEW_TOKENS = (128, 256, 512)     # generation budget per fidelity level (512 = OpenCompass's GSM8K cap)
MODES = ("loglik", "faithful")
AGGREGATE = "proxy_accuracy"


@OBJECTIVES.register("proxy")
class ProxyAccuracyObjective(Objective):
    """Metrics <task>_accuracy, <task>_items and proxy_accuracy. Items come from the shipped subsets,
    or from `data_dir` (else the context's data_dir) in the shared/data or OpenCompass layout.

    mode: "loglik" | "faithful". items: None (the fidelity level's counts) or {task: count}.
    Faithful only: max_out_len (None = each config's own / the competition's 1024; an int caps every task),
    early_stop (stop a generation once its answer can no longer change: same scores, shorter texts) and
    hf_type ("auto": a tokenizer with a chat template is scored as the chat model it is, as OpenCompass would)."""
    name = "proxy"
    max_fidelity = len(MAX_NEW_TOKENS) - 1

    def __init__(self, *, tasks=DEFAULT_TASKS, mode: str = "loglik", items: dict | None = None,
                 max_new_tokens=MAX_NEW_TOKENS, data_dir=None, program_timeout: float = PROGRAM_TIMEOUT,
                 max_out_len: int | None = None, early_stop: bool = True, hf_type: str = "auto",
                 unsafe_exec: bool = False):
        if isinstance(tasks, str):
            tasks = (tasks,)
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError("the proxy objective needs at least one task")
        for name in tasks:
            TASKS.get(name)              # unknown names fail here, with a did-you-mean
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task in {list(tasks)}")
        if mode not in MODES:
            raise ValueError(f"proxy mode must be one of {list(MODES)}, got {mode!r}")
        max_new_tokens = tuple(max_new_tokens)
        if len(max_new_tokens) != len(MAX_NEW_TOKENS) or not all(isinstance(n, int) and n > 0 for n in max_new_tokens):
            raise ValueError(f"max_new_tokens needs {len(MAX_NEW_TOKENS)} positive integers (one per fidelity "
                             f"level), got {list(max_new_tokens)}")
        if max_out_len is not None and (not isinstance(max_out_len, int) or max_out_len < 1):
            raise ValueError(f"max_out_len must be a positive integer, got {max_out_len!r}")
        if hf_type not in ("auto", "base", "chat"):
            raise ValueError(f"hf_type must be auto, base or chat, got {hf_type!r}")
        self.tasks = tasks
        self.mode = mode
        self.item_counts = _check_counts(items, tasks)
        self.max_new_tokens = max_new_tokens
        self.data_dir = data_dir
        self.program_timeout = program_timeout
        self.max_out_len, self.early_stop, self.hf_type = max_out_len, early_stop, hf_type
        self.unsafe_exec = unsafe_exec   # run HumanEval programs even where they cannot be isolated
        if "humaneval" in tasks:
            require_isolation(unsafe_exec)   # refuse before any model work, in one line
        self.last_seconds: dict[str, float] = {}   # per task, from the latest evaluate (for reports)
        self.last_credits: dict[str, list[float]] = {}   # per task, each item's credit in item order
        self.last_texts: dict[str, list[str | None]] = {}  # per task, each item's generated text (None: not generated)

    def metrics(self) -> list[Metric]:
        out = []
        for name in self.tasks:
            out.append(Metric(name=f"{name}_accuracy", unit="fraction", higher_is_better=True))
            out.append(Metric(name=f"{name}_items", unit="count", higher_is_better=True))
        out.append(Metric(name=AGGREGATE, unit="fraction", higher_is_better=True))
        return out

    def items_for(self, name: str, data_dir, fidelity: int) -> list[dict]:
        """The items `evaluate` scores for task `name`: the level's prefix, or the first `items[name]`."""
        task = get_task(name)
        count = self.item_counts.get(name)
        if count is None:
            return task.items(data_dir, level=fidelity)
        available = task.items(data_dir)
        if count > len(available):
            where = f"data directory {data_dir}" if data_dir else "shipped subset (objectives/_data)"
            raise ValueError(f"{count} {name} items asked for, the {where} has {len(available)}: pass a data "
                             "directory with the full benchmark (the raw upstream files or an OpenCompass data "
                             "folder) or ask for fewer")
        return available[:count]

    def evaluate(self, candidate: Candidate, context: EvalContext, fidelity: int = 0) -> dict[str, float]:
        if not 0 <= fidelity <= self.max_fidelity:
            raise ValueError(f"fidelity must be 0..{self.max_fidelity}, got {fidelity}")
        if candidate.model is None or candidate.tokenizer is None:
            raise ValueError("the proxy objective needs a loaded model and tokenizer on the candidate")
        data_dir = self.data_dir if self.data_dir is not None else getattr(context, "data_dir", None)
        selected = {name: self.items_for(name, data_dir, fidelity) for name in self.tasks}  # data errors first
        candidate.model.eval()
        result, accuracies = {}, []
        self.last_credits, self.last_texts = {}, {}
        for name in self.tasks:
            start = time.perf_counter()
            items = selected[name]
            if self.mode == "faithful":
                credits, texts, accuracy = score_faithful(
                    candidate.model, candidate.tokenizer, name, items, max_out_len=self.max_out_len,
                    early_stop=self.early_stop, hf_type=self.hf_type, program_timeout=self.program_timeout,
                    unsafe_exec=self.unsafe_exec)
            else:
                credits, texts = self.score_items(candidate.model, candidate.tokenizer, get_task(name), items, fidelity)
                accuracy = sum(credits) / len(credits) if credits else 0.0
            self.last_credits[name], self.last_texts[name] = credits, texts
            result[f"{name}_accuracy"] = accuracy
            result[f"{name}_items"] = float(len(credits))
            accuracies.append(accuracy)
            self.last_seconds[name] = time.perf_counter() - start
        result[AGGREGATE] = sum(accuracies) / len(accuracies)   # the competition averages tasks unweighted
        return result

    def score_items(self, model, tokenizer, task: Task, items: list[dict], fidelity: int):
        """(credit in [0, 1] per item, generated text per item or None), in item order (log-likelihood mode)."""
        queries = [task.query(item) for item in items]
        credits: list[float | None] = [None] * len(items)
        texts: list[str | None] = [None] * len(items)
        for i, query in enumerate(queries):
            if isinstance(query, Choice):
                credits[i] = choice_credit(option_loglikelihoods(model, tokenizer, query.prompt, query.options),
                                           query.label)
        pending = [i for i, c in enumerate(credits) if c is None]
        if pending:
            generated = greedy_generate(model, tokenizer, [queries[i] for i in pending],
                                        max_new_tokens=self.max_new_tokens[fidelity])
            for i, text in zip(pending, generated):
                texts[i] = text
            if isinstance(task, HumanEval):
                passed = run_programs([task.program(items[i], t) for i, t in zip(pending, generated)],
                                      timeout=self.program_timeout, unsafe=self.unsafe_exec)
                for i, ok in zip(pending, passed):
                    credits[i] = float(ok)
            else:
                for i, text in zip(pending, generated):
                    credits[i] = task.score(items[i], text)
        return credits, texts


def _check_counts(items, tasks) -> dict[str, int]:
    if items is None:
        return {}
    if not isinstance(items, dict):
        raise ValueError(f"items must be a dict task -> count, got {items!r}")
    unknown = sorted(set(items) - set(tasks))
    if unknown:
        raise ValueError(f"items names tasks this objective does not score: {unknown} (tasks: {list(tasks)})")
    for name, count in items.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"items[{name!r}] must be a positive integer, got {count!r}")
    return dict(items)
