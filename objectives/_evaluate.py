"""Run several objectives on one candidate and flatten their metrics (what `search evaluate --json` prints).

Objectives are named (looked up in OBJECTIVES; "memory" / "throughput" when their modules are loaded) or
given as instances when they need constructor arguments. An objective with fewer fidelity levels than
asked for runs at its highest one (shape-only objectives have a single level).
"""
from __future__ import annotations

from ._base import OBJECTIVES, Candidate, EvalContext, Objective
from ._composite import COMPOSITE, ProxyWeights, composite_score

DEFAULT_OBJECTIVES = ("proxy", "fidelity")


def build_objectives(objectives) -> list[Objective]:
    if isinstance(objectives, (str, Objective)):
        objectives = [objectives]
    built = []
    for item in objectives:
        if isinstance(item, Objective):
            built.append(item)
            continue
        if not isinstance(item, str):
            raise ValueError(f"an objective is a registered name or an Objective instance, got {item!r}")
        cls = OBJECTIVES.get(item)
        try:
            built.append(cls())
        except TypeError as err:
            raise ValueError(f"objective {item!r} needs constructor arguments ({err}); pass an instance") from None
    names = [o.name for o in built]
    if len(set(names)) != len(names):
        raise ValueError(f"objective listed twice: {names}")
    return built


def evaluate_all(candidate: Candidate, context: EvalContext, *, objectives=DEFAULT_OBJECTIVES, fidelity: int = 0,
                 weights: ProxyWeights | None = ProxyWeights()) -> dict[str, float]:
    """Metric name -> value over all objectives, plus `composite_score` when `weights` is given and every
    metric it reads was produced."""
    if not isinstance(fidelity, int) or fidelity < 0:
        raise ValueError(f"fidelity must be an integer >= 0, got {fidelity!r}")
    result: dict[str, float] = {}
    for objective in build_objectives(objectives):
        values = objective.evaluate(candidate, context, min(fidelity, objective.max_fidelity))
        clash = sorted(set(values) & set(result))
        if clash:
            raise ValueError(f"objective {objective.name!r} reports metrics already reported: {clash}")
        result.update({k: float(v) for k, v in values.items()})
    if weights is not None and all(m in result for m in weights.needs()):
        result[COMPOSITE] = composite_score(result, weights)
    return result


def describe(objectives=DEFAULT_OBJECTIVES, *, weights: ProxyWeights | None = ProxyWeights()) -> dict[str, dict]:
    """Metric name -> {"unit", "higher_is_better", "objective"} (and "kind" where declared: simulated or
    measured) for everything evaluate_all returns."""
    out: dict[str, dict] = {}
    for objective in build_objectives(objectives):
        for metric in objective.metrics():
            out[metric.name] = {"unit": metric.unit, "higher_is_better": metric.higher_is_better,
                                "objective": objective.name, **({"kind": metric.kind} if metric.kind else {})}
    if weights is not None and all(m in out for m in weights.needs()):
        out[COMPOSITE] = {"unit": "score", "higher_is_better": True, "objective": "composite"}
    return out
