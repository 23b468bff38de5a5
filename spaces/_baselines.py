"""Warm-start points: every search first evaluates the baselines it must beat, as named trials.

- uniform-l1: the competition starting kit's promised baseline: the same keep ratio for attention and
  MLP in every layer, L1-magnitude importance, scaled onto the memory target like any other trial.
- owl: a non-uniform OWL / FLAP-style allocation: layers whose weights x activations have more
  outliers (OWL's layer-wise outlier ratio) keep more; activation-aware importance (FLAP style).
"""
from __future__ import annotations

from ._space import CRITERION, SpaceSpec, share_name

OWL_LAMBDA = 0.2      # spread of per-layer shares around their mean (OWL uses +-0.08 of sparsity at 50-70 %)


def uniform_l1(spec: SpaceSpec) -> dict:
    return _point(spec, [1.0] * spec.num_layers, "l1" if "l1" in spec.criteria else spec.criteria[0])


def owl(spec: SpaceSpec, outlier_ratios: list[float]) -> dict:
    """Shares from per-layer outlier ratios, rescaled to [1 - lambda, 1] by rank-free min-max."""
    if len(outlier_ratios) != spec.num_layers:
        raise ValueError("one outlier ratio per layer is needed")
    lo, hi = min(outlier_ratios), max(outlier_ratios)
    span = (hi - lo) or 1.0
    shares = [1.0 - OWL_LAMBDA * (hi - r) / span for r in outlier_ratios]
    criterion = "activation" if "activation" in spec.criteria else spec.criteria[0]
    return _point(spec, shares, criterion)


def _point(spec: SpaceSpec, shares: list[float], criterion: str) -> dict:
    params: dict = {CRITERION: criterion}
    if spec.runtime == "mlc":
        params.update({share_name("attn"): 1.0, share_name("mlp"): 1.0})
        params.update({f"drop_{i}": False for i in range(spec.num_layers)} if spec.allow_drop else {})
    else:
        for i, s in enumerate(shares):
            params[share_name("attn", i)] = s
            params[share_name("mlp", i)] = s
    if spec.multi:
        params["budget_use"] = 1.0
    if spec.distill_steps:
        params.update(distill_steps=spec.distill_steps[0], distill_lr=(spec.distill_lr[0] * spec.distill_lr[1]) ** 0.5,
                      distill_warmup=0.05, distill_temperature=2.0, distill_kd_weight=0.5, distill_hidden_weight=0.0)
    return params


BASELINES = ("uniform-l1", "owl")
