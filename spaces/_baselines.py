"""Warm-start points: every search first evaluates the baselines it must beat, as named trials.

Each baseline is a point of the search space (per-layer shares + criterion), so it goes through the same repair
onto the budget as every trial (spaces.params_to_plan: shrink, then grow to within one MLP channel) and is cut
like every trial. The literature methods, as their papers allocate:

- uniform-l1: the competition starting kit's baseline: the same keep ratio for attention and MLP in every layer,
  L1-magnitude importance.
- owl: OWL (Yin et al., "Outlier Weighed Layerwise Sparsity", ICML 2024, eq. 2-3): layers with more outliers
  of |W| x ||X|| keep more (shares min-max scaled into [1 - OWL_LAMBDA, 1]); activation-aware importance.
- flap: FLAP (An et al., AAAI 2024): its standardized fluctuation scores (compress "fluctuation" criterion)
  compared across all layers and both sub-blocks with one global threshold (the "AL-AM" adaptive structure,
  sec. 3.3): the highest-scoring attention units and MLP channels are kept until the budget is spent. Its bias
  compensation is a property of the cut (Plan.compensate / space.compensate), not of the allocation.
- llm-pruner: LLM-Pruner (Ma et al., NeurIPS 2023): one uniform ratio for attention and MLP in every pruned
  layer, the first and last layers kept whole (their Llama-7B scripts prune layers 4-29 of 32: we keep the
  first round(4/32 L) and last round(2/32 L) layers, at least one each), first-order Taylor importance.
- shortgpt: ShortGPT (Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You
  Expect", 2024, eq. 1): remove the layers with the lowest block influence BI_i = 1 - E[cos(X_i, X_{i+1})]
  until the budget holds. The paper leaves the parameter count to the number of layers; to land on the budget
  exactly, the last layer that had to go (the highest influence among the removed) gets back what the budget
  leaves, less than one layer: as few attention units as let its MLP channels (fine-grained) fill the rest,
  both ranked by the space's activation criterion (under MLC's uniform shapes: whole layers only).
- minitron: Minitron-style width pruning (Muralidharan et al., 2024): activation importance of heads and
  neurons (compress "minitron" criterion), one uniform width for heads and MLP channels in every layer. The
  paper also prunes the embedding width, which these plans cannot cut, and picks among a few such
  architectures after retraining; here the uniform one, without retraining.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ._space import CRITERION, SpaceSpec, _plan_at, share_name

OWL_LAMBDA = 0.2      # spread of per-layer shares around their mean (OWL uses +-0.08 of sparsity at 50-70 %)
EDGE_SHARE = 1.0      # llm-pruner: the kept first / last layers
MIDDLE_SHARE = 0.15   # llm-pruner: pruned layers' share, low so the edge layers stay whole (min(1, c * 1.0))
BOUNDARY_STEPS = 20    # shortgpt: bisection steps for the partially kept layer's MLP share
# baseline -> the criterion its units are ranked by (shortgpt: that of its one width-pruned layer)
CRITERIA = {"uniform-l1": "l1", "owl": "activation", "flap": "fluctuation", "llm-pruner": "taylor",
            "shortgpt": "activation", "minitron": "minitron"}
BASELINES = tuple(CRITERIA)


def uniform_l1(spec: SpaceSpec) -> dict:
    return _point(spec, [1.0] * spec.num_layers, _criterion(spec, "l1"))


def owl(spec: SpaceSpec, outlier_ratios: list[float]) -> dict:
    """Shares from per-layer outlier ratios, rescaled to [1 - lambda, 1] by rank-free min-max."""
    if len(outlier_ratios) != spec.num_layers:
        raise ValueError("one outlier ratio per layer is needed")
    lo, hi = min(outlier_ratios), max(outlier_ratios)
    span = (hi - lo) or 1.0
    shares = [1.0 - OWL_LAMBDA * (hi - r) / span for r in outlier_ratios]
    return _point(spec, shares, _criterion(spec, "activation"))


def minitron(spec: SpaceSpec) -> dict:
    return _point(spec, [1.0] * spec.num_layers, _criterion(spec, "minitron"))


def llm_pruner(spec: SpaceSpec) -> dict:
    n = spec.num_layers
    first, last = max(1, round(4 / 32 * n)), max(1, round(2 / 32 * n))
    shares = [EDGE_SHARE if (i < first or i >= n - last) else MIDDLE_SHARE for i in range(n)]
    if first + last >= n:          # too shallow to keep both ends: uniform
        shares = [1.0] * n
    return _point(spec, shares, _criterion(spec, "taylor"))


def shortgpt(spec: SpaceSpec, influence: list[float], fits: Callable, attn_units: list[int] | None = None) -> dict:
    """Drop the lowest-influence layers until the rest, kept whole, `fits` (a Plan -> bool). The last layer that
    had to go then gets back what the budget leaves (less than one layer): the fewest attention units (of its
    attn_units[i]) with which its MLP channels can fill the rest, and those MLP channels (the repair's growth
    lands them on the budget)."""
    n = spec.num_layers
    if len(influence) != n:
        raise ValueError("one block influence per layer is needed")
    order = influence_order(influence)
    criterion = _criterion(spec, "activation")
    exact = replace(spec, min_keep=0.0)

    def at(dropped: list[int], boundary: int | None = None, attn: float = 0.0, mlp: float = 0.0):
        shares = [0.0 if i in dropped else 1.0 for i in range(n)]
        heads = list(shares)
        if boundary is not None:
            shares[boundary], heads[boundary] = mlp, attn
        point = _point(spec, shares, criterion, attn=heads, drops=dropped)
        plan = _plan_at(1.0, *_shares(point, spec), exact, criterion)
        return point, plan is not None and fits(plan)

    for k in range(n):
        point, ok = at(order[:k])
        if not ok:
            continue
        if not k or spec.runtime == "mlc":
            return point
        b, units = order[k - 1], (attn_units or [1] * n)[order[k - 1]]
        for a in range(units + 1):       # the fewest attention units whose layer, MLP whole, no longer fits
            if a == units or not at(order[:k - 1], b, a / units, 1.0)[1]:
                break
        # its MLP share: the largest that fits at scale 1 (bisection), so the repair's scale stays at or just
        # above 1 (the whole layers whole, the attention units as chosen) and its growth spends the rest
        lo, hi = 0.0, 1.0
        for _ in range(BOUNDARY_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if at(order[:k - 1], b, a / units, mid)[1] else (lo, mid)
        if lo <= 0:
            return point
        return at(order[:k - 1], b, a / units, lo)[0]
    raise ValueError("no number of removed layers fits the budget")


def influence_order(influence: list[float]) -> tuple[int, ...]:
    """Layers by ascending block influence (ties: the lower layer): ShortGPT's removal order, the depth lever's."""
    return tuple(sorted(range(len(influence)), key=lambda i: (influence[i], i)))


def flap(spec: SpaceSpec, attn_scores: list, mlp_scores: list, unit_sizes: list, fits: Callable) -> dict:
    """FLAP's global adaptive structure: every layer's attention units (attn_scores[i], one standardized score
    each; None for a layer without attention) and MLP channels (mlp_scores[i]) ranked together, the top ones
    kept while the plan `fits`. unit_sizes[i] = (attention units, MLP channels) of layer i. Longest prefix by
    bisection: memory grows with every kept unit."""
    n = spec.num_layers
    ranked = sorted(((float(v), kind, i) for i in range(n) for kind, scores in (("attn", attn_scores),
                                                                                 ("mlp", mlp_scores))
                     for v in (scores[i] if scores[i] is not None else [])), key=lambda t: (-t[0], t[1], t[2]))
    criterion = _criterion(spec, "fluctuation")

    def point(kept: int) -> dict:
        counts = {"attn": [0] * n, "mlp": [0] * n}
        for _, kind, i in ranked[:kept]:
            counts[kind][i] += 1
        attn = [counts["attn"][i] / unit_sizes[i][0] if unit_sizes[i][0] else 0.0 for i in range(n)]
        mlp = [counts["mlp"][i] / unit_sizes[i][1] if unit_sizes[i][1] else 0.0 for i in range(n)]
        return _point(spec, mlp, criterion, attn=attn)

    exact = replace(spec, min_keep=0.0)     # FLAP's own counts (the space's repair applies min_keep afterwards)

    def ok(kept: int) -> bool:
        plan = _plan_at(1.0, *_shares(point(kept), spec), exact, criterion)
        return plan is not None and fits(plan)

    good, bad = 0, len(ranked) + 1
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    if not good:
        raise ValueError("not even FLAP's single best unit fits the budget")
    return point(good)


def _criterion(spec: SpaceSpec, wanted: str) -> str:
    return wanted if wanted in spec.criteria else spec.criteria[0]


def _shares(params: dict, spec: SpaceSpec):
    from ._space import shares_of
    return shares_of(params, spec)


def _point(spec: SpaceSpec, shares: list[float], criterion: str, *, attn: list[float] | None = None,
           drops: list[int] = ()) -> dict:
    params: dict = {CRITERION: criterion}
    if spec.runtime == "mlc":
        params.update({share_name("attn"): 1.0, share_name("mlp"): 1.0})
        params.update({f"drop_{i}": i in drops for i in range(spec.num_layers)} if spec.allow_drop else {})
    else:
        for i, s in enumerate(shares):
            params[share_name("attn", i)] = s if attn is None else attn[i]
            params[share_name("mlp", i)] = s
        if spec.max_depth:     # removed layers that lead the depth order are the depth lever's, the rest shares'
            depth = 0
            while depth < min(spec.max_depth, len(drops)) and spec.depth_order[depth] in drops:
                depth += 1
            params["depth"] = depth
    if spec.multi:
        params["budget_use"] = 1.0
    if spec.distill_steps:
        params.update(distill_steps=spec.distill_steps[0], distill_lr=(spec.distill_lr[0] * spec.distill_lr[1]) ** 0.5,
                      distill_warmup=0.05, distill_temperature=2.0, distill_kd_weight=0.5, distill_hidden_weight=0.0)
    return params
