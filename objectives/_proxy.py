"""Proxy for the competition score: per-task accuracy on small fixed subsets, unweighted mean over tasks.

Item counts per fidelity level (shipped data; a user data directory gives the same first items and, at
the top level, all of its items):

    level   csqa  bbh  gsm8k  humaneval  truthfulqa  chid   max_new_tokens
      0       8    27     8       8          8          8        128
      1      24    81    24      24         24         24        256
      2     100   216   100     100        100        100        512

Multiple-choice items cost one forward pass over the prompt plus one over the options; GSM8K, the ten
free-form BBH subtasks and HumanEval generate greedily up to max_new_tokens (or their stop pattern).
"""
from __future__ import annotations

import time

from ._base import OBJECTIVES, Candidate, EvalContext, Metric, Objective
from ._sandbox import require_isolation
from ._scoring import PROGRAM_TIMEOUT, choice_credit, greedy_generate, option_loglikelihoods, run_programs
from ._tasks import TASKS, Choice, HumanEval, Task, get_task

DEFAULT_TASKS = ("csqa", "bbh", "gsm8k", "humaneval", "truthfulqa", "chid")
MAX_NEW_TOKENS = (128, 256, 512)     # generation budget per fidelity level (512 = OpenCompass's GSM8K cap)
AGGREGATE = "proxy_accuracy"


@OBJECTIVES.register("proxy")
class ProxyAccuracyObjective(Objective):
    """Metrics <task>_accuracy, <task>_items and proxy_accuracy. Items come from the shipped subsets,
    or from `data_dir` (else the context's data_dir) in the shared/data or OpenCompass layout."""
    name = "proxy"
    max_fidelity = len(MAX_NEW_TOKENS) - 1

    def __init__(self, *, tasks=DEFAULT_TASKS, max_new_tokens=MAX_NEW_TOKENS, data_dir=None,
                 program_timeout: float = PROGRAM_TIMEOUT, unsafe_exec: bool = False):
        if isinstance(tasks, str):
            tasks = (tasks,)
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError("the proxy objective needs at least one task")
        for name in tasks:
            TASKS.get(name)              # unknown names fail here, with a did-you-mean
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task in {list(tasks)}")
        max_new_tokens = tuple(max_new_tokens)
        if len(max_new_tokens) != len(MAX_NEW_TOKENS) or not all(isinstance(n, int) and n > 0 for n in max_new_tokens):
            raise ValueError(f"max_new_tokens needs {len(MAX_NEW_TOKENS)} positive integers (one per fidelity "
                             f"level), got {list(max_new_tokens)}")
        self.tasks = tasks
        self.max_new_tokens = max_new_tokens
        self.data_dir = data_dir
        self.program_timeout = program_timeout
        self.unsafe_exec = unsafe_exec   # run HumanEval programs even where they cannot be isolated
        if "humaneval" in tasks:
            require_isolation(unsafe_exec)   # refuse before any model work, in one line
        self.last_seconds: dict[str, float] = {}   # per task, from the latest evaluate (for reports)
        self.last_credits: dict[str, list[float]] = {}   # per task, each item's credit in item order

    def metrics(self) -> list[Metric]:
        out = []
        for name in self.tasks:
            out.append(Metric(name=f"{name}_accuracy", unit="fraction", higher_is_better=True))
            out.append(Metric(name=f"{name}_items", unit="count", higher_is_better=True))
        out.append(Metric(name=AGGREGATE, unit="fraction", higher_is_better=True))
        return out

    def evaluate(self, candidate: Candidate, context: EvalContext, fidelity: int = 0) -> dict[str, float]:
        if not 0 <= fidelity <= self.max_fidelity:
            raise ValueError(f"fidelity must be 0..{self.max_fidelity}, got {fidelity}")
        if candidate.model is None or candidate.tokenizer is None:
            raise ValueError("the proxy objective needs a loaded model and tokenizer on the candidate")
        data_dir = self.data_dir if self.data_dir is not None else getattr(context, "data_dir", None)
        candidate.model.eval()
        result, accuracies = {}, []
        for name in self.tasks:
            start = time.perf_counter()
            task = get_task(name)
            items = task.items(data_dir, level=fidelity)
            credits = self.score_items(candidate.model, candidate.tokenizer, task, items, fidelity)
            self.last_credits[name] = credits
            accuracy = sum(credits) / len(credits) if credits else 0.0
            result[f"{name}_accuracy"] = accuracy
            result[f"{name}_items"] = float(len(credits))
            accuracies.append(accuracy)
            self.last_seconds[name] = time.perf_counter() - start
        result[AGGREGATE] = sum(accuracies) / len(accuracies)   # the competition averages tasks unweighted
        return result

    def score_items(self, model, tokenizer, task: Task, items: list[dict], fidelity: int) -> list[float]:
        """Credit in [0, 1] per item, in item order."""
        queries = [task.query(item) for item in items]
        credits: list[float | None] = [None] * len(items)
        for i, query in enumerate(queries):
            if isinstance(query, Choice):
                credits[i] = choice_credit(option_loglikelihoods(model, tokenizer, query.prompt, query.options),
                                           query.label)
        pending = [i for i, c in enumerate(credits) if c is None]
        if pending:
            texts = greedy_generate(model, tokenizer, [queries[i] for i in pending],
                                    max_new_tokens=self.max_new_tokens[fidelity])
            if isinstance(task, HumanEval):
                passed = run_programs([task.program(items[i], t) for i, t in zip(pending, texts)],
                                      timeout=self.program_timeout, unsafe=self.unsafe_exec)
                for i, ok in zip(pending, passed):
                    credits[i] = float(ok)
            else:
                for i, text in zip(pending, texts):
                    credits[i] = task.score(items[i], text)
        return credits
