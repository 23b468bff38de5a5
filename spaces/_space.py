"""Search spaces: Optuna define-by-run functions, and the one pure map from parameters to a Plan.

Parametrisation (why no trial is wasted on an infeasible point): a trial samples per-layer *shares*
(relative importance of each layer's attention and MLP, in [0, 1]), not absolute keep ratios. The
map to a plan scales every share by one global factor c and picks the largest c whose realised
shapes fit the memory target (bisection; memory is monotone in c). So every trial lands on the
budget, and the sampler only decides *where* the parameters are kept. A share scaled below
`min_keep` removes that sub-block (or, with drops disallowed, keeps `min_keep`).

Runtimes: `llama.cpp` runs per-layer shapes (GGUF `deci`), so every layer has its own two shares.
`mlc` (MLC-LLM) needs the same head count and FFN width in every layer: one attention and one MLP
share for all layers, plus optional whole-layer drops (dropping layers keeps shapes uniform).

In multi-objective mode a trial also samples `budget_use`, the fraction of the budget it targets,
so the Pareto front spans memory: the fraction of what the budget leaves the model beyond the runtime's
fixed memory (`fixed_bytes`, the profile's overhead), so a runtime that holds most of a tiny budget
still leaves every fraction reachable.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from typing import Callable

from compress import LayerPlan, Plan

BISECTION_STEPS = 40
# parameter names, the same in Optuna, MLflow and results.json: shares are not keep fractions (the repair scales
# them onto the budget), and the criterion is named apart from Optuna's "parameter importance"
CRITERION = "criterion"
LEGACY_NAMES = {"importance": CRITERION, "attn": "attn_share", "mlp": "mlp_share"}   # before they were renamed
DISTILL_KEYS = ("distill_steps", "distill_lr", "distill_warmup", "distill_temperature", "distill_kd_weight",
                "distill_hidden_weight")


@dataclass(frozen=True, kw_only=True)
class SpaceSpec:
    num_layers: int
    runtime: str = "llama.cpp"
    criteria: tuple = ("l1",)
    attn_unit: str = "kv_group"
    min_keep: float = 0.15
    allow_drop: bool = True
    multi: bool = False
    min_budget_use: float = 0.5
    distill_steps: tuple = ()          # empty: distillation is off
    distill_lr: tuple = (1e-4, 3e-3)
    reconstruct: bool = False          # every plan refits its cut output projections (compress/_reconstruct.py)
    compensate: bool = False           # every plan compensates its cuts with output biases (FLAP; Plan.compensate)
    calibration: tuple = ()            # (key, value) pairs of every plan's "calibration" (hashable: a frozen spec)
    # the depth lever (llama.cpp runtime): a trial's "depth" removes that many whole layers, the first ones of
    # depth_order (the layers by ascending block influence, ShortGPT's order), before its shares allocate the rest
    depth_order: tuple = ()
    max_depth: int = 0


def define_space(trial, spec: SpaceSpec) -> None:
    """Optuna define-by-run space (used through ray.tune.search.optuna.OptunaSearch)."""
    if spec.runtime == "mlc":
        trial.suggest_float(share_name("attn"), 0.0, 1.0)
        trial.suggest_float(share_name("mlp"), 0.0, 1.0)
        if spec.allow_drop:
            for i in range(spec.num_layers):
                trial.suggest_categorical(f"drop_{i}", [False, True])
    else:
        for i in range(spec.num_layers):
            trial.suggest_float(share_name("attn", i), 0.0, 1.0)
            trial.suggest_float(share_name("mlp", i), 0.0, 1.0)
        if spec.max_depth:
            if len(spec.depth_order) != spec.num_layers:
                raise ValueError("the depth lever needs the layers' block-influence order (the dense model's rankings)")
            trial.suggest_int("depth", 0, spec.max_depth)
    trial.suggest_categorical(CRITERION, list(spec.criteria))
    if spec.multi:
        trial.suggest_float("budget_use", spec.min_budget_use, 1.0)
    if spec.distill_steps:
        trial.suggest_categorical("distill_steps", list(spec.distill_steps))
        trial.suggest_float("distill_lr", *spec.distill_lr, log=True)
        trial.suggest_float("distill_warmup", 0.0, 0.2)
        trial.suggest_float("distill_temperature", 1.0, 4.0)
        trial.suggest_float("distill_kd_weight", 0.0, 1.0)
        trial.suggest_float("distill_hidden_weight", 0.0, 1.0)


def share_name(kind: str, layer: int | None = None) -> str:
    """attn_share_3 / mlp_share_3 (per layer), attn_share / mlp_share (one for every layer: mlc)."""
    return f"{kind}_share" + ("" if layer is None else f"_{layer}")


def current_names(params: dict) -> dict:
    """Parameters of a search started before the renaming (attn_3, importance) under today's names, so that a
    resumed search goes on with them."""
    out = {}
    for key, value in params.items():
        head, _, index = key.partition("_")
        if key in LEGACY_NAMES:
            key = LEGACY_NAMES[key]
        elif head in ("attn", "mlp") and index.isdigit():
            key = share_name(head, int(index))
        out[key] = value
    return out


def shares_of(params: dict, spec: SpaceSpec) -> tuple[list[float], list[float]]:
    """Per-layer (attention, MLP) shares; a dropped layer (mlc) has both at 0."""
    n, params = spec.num_layers, current_names(params)
    if spec.runtime == "mlc":
        dropped = [bool(params.get(f"drop_{i}", False)) for i in range(n)]
        if all(dropped):
            dropped[0] = False  # keep at least one layer
        attn, mlp = params[share_name("attn")], params[share_name("mlp")]
        return [0.0 if d else attn for d in dropped], [0.0 if d else mlp for d in dropped]
    attn, mlp = [params[share_name("attn", i)] for i in range(n)], [params[share_name("mlp", i)] for i in range(n)]
    removed = set(spec.depth_order[:int(params.get("depth", 0))]) if spec.max_depth else set()
    if len(removed) >= n:
        removed -= {spec.depth_order[n - 1]}
    return ([0.0 if i in removed else a for i, a in enumerate(attn)],
            [0.0 if i in removed else m for i, m in enumerate(mlp)])


def params_to_plan(params: dict, spec: SpaceSpec, *, memory_of: Callable[[Plan], float], budget_bytes: float,
                   fixed_bytes: float = 0.0, shapes=None) -> Plan:
    """The pure map trial parameters -> pruning plan, repaired onto the memory target.

    The repair shrinks (one global scale on the shares, bisected) and then grows: the integer rounding of the
    scaled shares leaves the plan below the target by up to one rounding step of every layer at once (a
    uniform plan's KV groups flip together), so with the base `shapes` given (every search passes them) the
    slack is spent on whole MLP channels where the realised keep lies furthest below the scaled share
    (`grow`). Every plan then lands on the target within one MLP channel."""
    attn, mlp = shares_of(params, spec)
    target = memory_target(budget_bytes, float(params.get("budget_use", 1.0)), fixed_bytes)
    criterion = current_names(params)[CRITERION]
    build = lambda c: _plan_at(c, attn, mlp, spec, criterion)  # noqa: E731
    top = 1.0 / max(min([s for s in attn + mlp if s > 0] or [1.0]), 1e-6)
    full = build(top)
    if full is not None and memory_of(full) <= target:
        return full  # already fits without touching this much
    lo, hi = 0.0, top
    best = None
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        plan = build(mid)
        if plan is not None and memory_of(plan) <= target:
            best, lo = plan, mid
        else:
            hi = mid
    if best is None:
        raise ValueError(f"no plan of this shape fits {target / 1e9:.3f} GB: the memory target is below what "
                         "embeddings and one kept sub-block need")
    if shapes is None:
        return best
    return grow(best, [min(1.0, lo * m) for m in mlp], spec, shapes, lambda p: memory_of(p) <= target)


def grow(plan: Plan, wanted: list[float], spec: SpaceSpec, shapes, fits: Callable[[Plan], bool]) -> Plan:
    """Add whole MLP channels (steps of the plan's mlp_multiple) to `plan` while it `fits`: each to the MLP
    whose realised keep lies furthest below its `wanted` keep (ties: the lower layer). Sub-blocks whose
    wanted keep is 0 (the trial removed them) stay removed; one the bisection rounded away (below min_keep)
    may come back with the channels the slack pays for. MLC keeps one shape: a step adds a channel to every
    kept layer. Memory grows with every step, so the longest sequence that fits is found by doubling and
    bisection over its length, not one memory evaluation per channel."""
    base = shapes.layers
    counts = [s.intermediate_size for s in plan.realise(shapes)]
    open_ = [i for i, w in enumerate(wanted) if w > 0 and base[i].intermediate_size]
    if not open_:
        return plan
    step = plan.mlp_multiple
    groups = [open_] if spec.runtime == "mlc" else [[i] for i in open_]
    heap = [(counts[g[0]] / base[g[0]].intermediate_size - wanted[g[0]], g[0], n) for n, g in enumerate(groups)]
    heapq.heapify(heap)
    sequence: list[int] = []      # group index of each step, in order

    def extend(length: int) -> None:
        state = list(counts)
        for n in sequence:
            for i in groups[n]:
                state[i] = min(base[i].intermediate_size, state[i] + step)
        while len(sequence) < length and heap:
            _, i, n = heapq.heappop(heap)
            if any(state[j] >= base[j].intermediate_size for j in groups[n]):
                continue                                 # full: never again
            for j in groups[n]:
                state[j] = min(base[j].intermediate_size, state[j] + step)
            sequence.append(n)
            heapq.heappush(heap, (state[i] / base[i].intermediate_size - wanted[i], i, n))

    def at(length: int) -> Plan:
        state = list(counts)
        for n in sequence[:length]:
            for i in groups[n]:
                state[i] = min(base[i].intermediate_size, state[i] + step)
        layers = list(plan.layers)
        for i in open_:
            if state[i] != counts[i]:
                layers[i] = LayerPlan(attn_keep=layers[i].attn_keep, mlp_keep=state[i] / base[i].intermediate_size)
        return replace(plan, layers=tuple(layers))

    good, bad = 0, 1
    while True:                       # doubling: the first length that does not fit (or every channel added)
        extend(bad)
        if len(sequence) < bad:
            bad = len(sequence) + 1
            break
        if not fits(at(bad)):
            break
        good, bad = bad, 2 * bad
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(at(mid)):
            good = mid
        else:
            bad = mid
    return at(good) if good else plan


def memory_target(budget_bytes: float, use: float, fixed_bytes: float = 0.0) -> float:
    """The peak memory a trial targets: the runtime's fixed bytes + `use` of what the budget leaves the model."""
    return fixed_bytes + use * (budget_bytes - fixed_bytes)


def smallest_plans(spec: SpaceSpec, importance: str = "l1") -> list[Plan]:
    """The smallest plans this space can produce (one of them uses the least memory): what the launch
    preflight checks against the budget before anything is written."""
    keep, n = max(spec.min_keep, 1e-6), spec.num_layers      # a keep above 0 realises at least one unit
    dropped = [LayerPlan(attn_keep=0.0, mlp_keep=0.0)] * (n - 1)
    plan = lambda layers: Plan(layers=tuple(layers), importance=importance, attn_unit=spec.attn_unit,  # noqa: E731
                               reconstruct=spec.reconstruct, compensate=spec.compensate)
    if not spec.allow_drop:
        return [plan([LayerPlan(attn_keep=keep, mlp_keep=keep)] * n)]
    if spec.runtime == "mlc":                 # whole layers only: one kept layer
        return [plan([LayerPlan(attn_keep=keep, mlp_keep=keep), *dropped])]
    return [plan([LayerPlan(attn_keep=keep, mlp_keep=0.0), *dropped]),
            plan([LayerPlan(attn_keep=0.0, mlp_keep=keep), *dropped])]


def _plan_at(c: float, attn: list, mlp: list, spec: SpaceSpec, importance: str) -> Plan | None:
    layers = [LayerPlan(attn_keep=0.0, mlp_keep=0.0) if a == m == 0 else  # a layer the trial dropped
              LayerPlan(attn_keep=_keep(c * a, spec), mlp_keep=_keep(c * m, spec)) for a, m in zip(attn, mlp)]
    if all(layer.dropped for layer in layers):
        return None
    return Plan(layers=tuple(layers), importance=importance, attn_unit=spec.attn_unit, reconstruct=spec.reconstruct,
                compensate=spec.compensate, calibration=dict(spec.calibration))


def _keep(x: float, spec: SpaceSpec) -> float:
    """Clip to [min_keep, 1]; below min_keep a sub-block is removed where the runtime allows it
    (MLC needs one shape in every kept layer, so it only drops whole layers, via drop_<i>)."""
    x = min(1.0, x)
    if x < spec.min_keep:
        return 0.0 if (spec.allow_drop and spec.runtime != "mlc") else spec.min_keep
    return round(x, 6)


def distill_schedule_params(params: dict) -> dict | None:
    """The distillation part of a trial's parameters (None when distillation is off)."""
    if "distill_steps" not in params:
        return None
    return {k.removeprefix("distill_"): params[k] for k in DISTILL_KEYS}
