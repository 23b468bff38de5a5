"""The fidelity ladder: what a search trial is scored on at each ASHA rung, cheapest first.

Rung 0 is KL to the teacher on one held-out block of 256 tokens (milliseconds on the bundled model); later
rungs add tokens and the task proxy. ASHA stops weak trials on the cheap, informative signal, and only the
promising ones pay for the proxy. A rung is a mapping (experiment YAML `proxy.ladder`, one per rung):

    kl_blocks     held-out blocks of objectives._fidelity.SEQ_LEN tokens for KL and perplexity
    proxy         null (KL only) | "loglik" (the proxy's cheap mode) | any other mode the installed
                  ProxyAccuracyObjective offers (e.g. "faithful": OpenCompass-identical scoring)
    proxy_level   the proxy's item counts: its fidelity level (0 = 8 items per task, 1 = 24, 2 = all)
    chance_z      a task counts only where the dense teacher beats chance by this many standard errors
                  (default Z_CHANCE; null: every task counts, e.g. to time the proxy on a random-weight model)

Weights follow measured noise (objectives/_composite.py, reliable()): KL and the perplexity ratio carry
their batch-means standard errors, and the accuracy term is the paired change against the teacher's own
credits on the same items (computed once per experiment and stored in the teacher cache):

    delta = (1/T) sum_t mean_i (c_ti - t_ti),    se = (1/T) sqrt(sum_t var_i(c_ti - t_ti) / n_t)

A task enters a rung's accuracy only where the dense teacher itself beats chance on that rung's items
(one-sided z >= chance_z against the items' chance credit: 1/options for multiple choice, 0 for generated
answers): where the teacher is at chance, a pruned model's accuracy differences are pure noise, so the task
weighs 0 there and is not scored at all. On the bundled model every task is at chance and the proxy costs
nothing; on Phi-2 / Llama / Qwen the tasks the teacher solves count.

How well rung k predicts the final rung is measured over a search's trials (`rank_agreement`: Spearman of
rung k's scores with the final rung's, over the trials that reached the final rung) and logged with it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from . import _proxy
from ._agreement import item_agreement, spearman
from ._composite import COMPOSITE, ProxyWeights, composite_score
from ._tasks import Choice, get_task
from ._evaluate import evaluate_all
from ._fidelity import FidelityObjective, TeacherCache

KL_ONLY = None
Z_CHANCE = 1.645          # one-sided 95 %: the teacher must beat chance by this many standard errors


def proxy_modes() -> tuple[str, ...]:
    """The proxy modes the installed ProxyAccuracyObjective offers ("loglik" always)."""
    return tuple(getattr(_proxy, "MODES", ("loglik",)))


@dataclass(frozen=True, kw_only=True)
class Rung:
    kl_blocks: int
    proxy: str | None = KL_ONLY
    proxy_level: int = 0
    chance_z: float | None = Z_CHANCE

    def __post_init__(self):
        if not isinstance(self.kl_blocks, int) or self.kl_blocks < 1:
            raise ValueError(f"ladder rung kl_blocks must be an integer >= 1, got {self.kl_blocks!r}")
        if self.proxy is not None and self.proxy not in proxy_modes():
            raise ValueError(f"ladder rung proxy must be null or one of {list(proxy_modes())}, got {self.proxy!r}")
        top = _proxy.ProxyAccuracyObjective.max_fidelity
        if not isinstance(self.proxy_level, int) or not 0 <= self.proxy_level <= top:
            raise ValueError(f"ladder rung proxy_level must be 0..{top}, got {self.proxy_level!r}")
        if self.chance_z is not None and (not isinstance(self.chance_z, (int, float)) or self.chance_z < 0):
            raise ValueError(f"ladder rung chance_z must be a number >= 0 or null, got {self.chance_z!r}")

    @property
    def key(self) -> str:
        """Where the teacher's credits for this rung's items live in TeacherCache.proxy."""
        return f"{self.proxy}/{self.proxy_level}"


def parse_ladder(rungs, *, use: int | None = None) -> tuple[Rung, ...]:
    """Rungs from their mappings; `use` keeps the last `use` rungs (fewer rungs, same final fitness)."""
    if not isinstance(rungs, (list, tuple)) or not rungs:
        raise ValueError("proxy.ladder needs at least one rung, e.g. [{kl_blocks: 1}, {kl_blocks: 8, proxy: loglik}]")
    parsed = []
    for entry in rungs:
        if isinstance(entry, Rung):
            parsed.append(entry)
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"a ladder rung is a mapping {{kl_blocks, proxy, proxy_level, chance_z}}, got {entry!r}")
        unknown = sorted(set(entry) - {"kl_blocks", "proxy", "proxy_level", "chance_z"})
        if unknown:
            raise ValueError(f"unknown ladder rung keys {unknown}; known: kl_blocks, proxy, proxy_level, chance_z")
        parsed.append(Rung(**entry))
    if use is not None:
        if not isinstance(use, int) or not 1 <= use <= len(parsed):
            raise ValueError(f"proxy.rungs (--rungs) must be 1..{len(parsed)} (the ladder's rungs), got {use!r}")
        parsed = parsed[len(parsed) - use:]
    return tuple(parsed)


class Ladder:
    """Scores one candidate at each rung; the composite score weights terms by their measured noise."""

    def __init__(self, rungs, *, tasks=_proxy.DEFAULT_TASKS, unsafe_exec: bool = False,
                 weights: ProxyWeights | None = None):
        self.rungs = parse_ladder(rungs)
        self.tasks = tuple(tasks)
        self.unsafe_exec = unsafe_exec
        self.weights = weights or ProxyWeights()
        self._proxies: dict[tuple, _proxy.ProxyAccuracyObjective] = {}
        self._cache: TeacherCache | None = None
        self.credits: dict[int, dict] = {}   # rung -> {task: [credit per item]} of the last candidate scored there

    def __len__(self) -> int:
        return len(self.rungs)

    def to_config(self) -> list[dict]:
        return [asdict(r) for r in self.rungs]

    def proxy(self, rung: Rung, tasks: tuple | None = None) -> _proxy.ProxyAccuracyObjective:
        tasks = tuple(tasks or self.tasks)
        if (rung.proxy, tasks) not in self._proxies:
            mode = {} if rung.proxy == "loglik" else {"mode": rung.proxy}
            self._proxies[rung.proxy, tasks] = _proxy.ProxyAccuracyObjective(tasks=tasks, unsafe_exec=self.unsafe_exec,
                                                                              **mode)
        return self._proxies[rung.proxy, tasks]

    def informative(self, rung: Rung, cache: TeacherCache) -> tuple[str, ...]:
        """The tasks on which the dense teacher beats chance at this rung's items (all, without its credits)."""
        teacher = cache.proxy.get(rung.key)
        if not teacher or rung.chance_z is None:
            return self.tasks
        return tuple(t for t in self.tasks if t in teacher and
                     above_chance(teacher[t], chance_credits(t, rung.proxy_level), rung.chance_z))

    def at_chance(self, cache: TeacherCache) -> dict[int, list[str]]:
        """Per proxy rung, the tasks left out because the teacher is at chance on them (for the launch note)."""
        return {k: [t for t in self.tasks if t not in self.informative(r, cache)]
                for k, r in enumerate(self.rungs) if r.proxy}

    def teacher(self, context) -> TeacherCache:
        if self._cache is None:
            self._cache = FidelityObjective().cache_for(context)
        return self._cache

    def evaluate(self, candidate, context, rung: int) -> dict[str, float]:
        """Every metric of rung `rung` plus the composite score (`composite_score`)."""
        r = self.rungs[rung]
        cache = self.teacher(context)
        judges = ["memory", "throughput", FidelityObjective(teacher_cache=cache, blocks=r.kl_blocks)]
        tasks = self.informative(r, cache) if r.proxy else ()
        if tasks:
            judges.append(self.proxy(r, tasks))
        metrics = evaluate_all(candidate, context, objectives=judges, fidelity=r.proxy_level, weights=None)
        if tasks:
            teacher = cache.proxy.get(r.key, {})
            credits = self.proxy(r, tasks).last_credits
            self.credits[rung] = {t: list(c) for t, c in credits.items()}
            if all(len(teacher.get(t, ())) == len(credits.get(t, ())) > 0 for t in tasks):
                delta, se = accuracy_change(credits, {t: teacher[t] for t in tasks})
                metrics.update(proxy_accuracy_delta=delta, proxy_accuracy_delta_se=se,
                               teacher_proxy_accuracy=metrics["proxy_accuracy"] - delta)
        # without a scored task the rung has the teacher-distance terms alone (accuracy weight 0, not a missing metric)
        metrics[COMPOSITE] = composite_score(metrics, self.weights if tasks else replace(self.weights, accuracy=0.0))
        return metrics

    def item_agreement(self, rung: int) -> dict[int, float]:
        """Per earlier proxy rung j: the fraction of items whose credit at rung j equals this rung's (same
        candidate). Levels share their leading items (stratified order), so the common prefix is compared."""
        top = self.credits.get(rung)
        out = {}
        for j, own in self.credits.items():
            if j >= rung or not top:
                continue
            tasks = [t for t in own if t in top]
            short = {t: own[t][:len(top[t])] for t in tasks}
            long = {t: top[t][:len(own[t])] for t in tasks}
            per_task = item_agreement(short, long)
            n = sum(v["n"] for v in per_task.values())
            if n:
                out[j] = sum(v["agreement"] * v["n"] for v in per_task.values() if v["n"]) / n
        return out

    def teacher_credits(self, model, tokenizer, context) -> dict:
        """The dense teacher's credits for every proxy rung: {rung key: {task: [credit, ...]}} (once per experiment)."""
        from ._base import Candidate
        out = {}
        for r in self.rungs:
            if r.proxy and r.key not in out:
                objective = self.proxy(r)
                objective.evaluate(Candidate(shapes=None, model=model, tokenizer=tokenizer), context, r.proxy_level)
                out[r.key] = {t: list(c) for t, c in objective.last_credits.items()}
        return out


def chance_credits(task: str, level: int, data_dir=None) -> list[float]:
    """Each item's expected credit from a blind guess: 1/options for multiple choice, 0 for a generated answer."""
    t = get_task(task)
    queries = [t.query(item) for item in t.items(data_dir, level=level)]
    return [1.0 / len(q.options) if isinstance(q, Choice) else 0.0 for q in queries]


def above_chance(credits: list[float], chance: list[float], z: float = Z_CHANCE) -> bool:
    """One-sided test of the mean credit against the mean chance credit (binomial se under chance)."""
    n = len(credits)
    if not n or len(chance) != n:
        return False
    lift = sum(credits) / n - sum(chance) / n
    se = math.sqrt(sum(c * (1 - c) for c in chance)) / n
    return lift > z * se if se > 0 else lift > 0


def accuracy_change(credits: dict, teacher: dict) -> tuple[float, float]:
    """(mean over tasks of the per-item credit change vs the teacher, its standard error), paired by item."""
    deltas, variances = [], []
    for task, own in credits.items():
        diffs = [c - t for c, t in zip(own, teacher[task])]
        n = len(diffs)
        mean = sum(diffs) / n
        var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 1.0   # one item: the widest variance
        deltas.append(mean)
        variances.append(var / n)
    return sum(deltas) / len(deltas), math.sqrt(sum(variances)) / len(deltas)


def rank_agreement(histories: list[list[float]]) -> list[float | None]:
    """Spearman of each rung's scores with the final rung's, over trials with a score at every rung
    (`histories[i][k]`: trial i's score at rung k). One entry per rung before the last; None where undefined."""
    if not histories:
        return []
    rungs = len(histories[0])
    out = []
    for k in range(rungs - 1):
        pairs = [(h[k], h[-1]) for h in histories if len(h) == rungs]
        out.append(spearman([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 3 else None)
    return out
