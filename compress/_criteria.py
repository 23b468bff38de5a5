"""Importance criteria: score the units of one group. They know nothing of surgery.

A criterion declares what calibration statistics it needs (`requires`): the orchestrator collects
"activations" (per-input-feature sums of squares at every consumer projection) or "gradients"
(parameter .grad from the LM loss on calibration text) only when some criterion asks for them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ._groups import UnitGroup
from ._names import Registry


class Criterion(ABC):
    requires: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""

    @abstractmethod
    def score(self, group: UnitGroup) -> torch.Tensor:
        """One score per unit, shape [group.n_units]; higher = more important (standardized scores may be
        negative)."""


CRITERIA: Registry[type[Criterion]] = Registry("importance criterion")


def get_criterion(name: str) -> Criterion:
    return CRITERIA.get(name)()


def _zeros(group: UnitGroup) -> torch.Tensor:
    """A float64 score accumulator on the device of the group's weights (scores stay with what they rank)."""
    return torch.zeros(group.n_units, dtype=torch.float64, device=group.couplings[0].module.weight.device)


def _sum_over_tensors(group: UnitGroup, fn) -> torch.Tensor:
    total = _zeros(group)
    for coupling in group.couplings:
        for param, grad in coupling.tensors():
            total += fn(coupling, param, grad)
    return total


@CRITERIA.register("l1")
class L1Magnitude(Criterion):
    description = "sum of |w| over every weight of the unit (the competition kit's baseline)"

    def score(self, group):
        return _sum_over_tensors(group, lambda c, p, g: c.gather(p.detach()).double().abs().sum(1))


@CRITERIA.register("l2")
class L2Magnitude(Criterion):
    description = "Euclidean norm of every weight of the unit"

    def score(self, group):
        return _sum_over_tensors(group, lambda c, p, g: c.gather(p.detach()).double().pow(2).sum(1)).sqrt()


@CRITERIA.register("activation")
class ActivationAware(Criterion):
    """Wanda-sp / FLAP style: how much each unit's output actually moves the residual stream.

    For every input feature j of a consumer projection (o_proj / down_proj columns), |W[:, j]|
    summed over outputs times the RMS of the calibration activation feeding it; a unit sums its features.
    """
    requires = frozenset({"activations"})
    description = "output-projection column norm x calibration activation RMS (Wanda-sp / FLAP)"

    def score(self, group):
        total = _zeros(group)
        for c in group.couplings:
            if not c.consumer:
                continue
            if c.act_sq is None:
                raise ValueError("activation criterion needs calibration activations")
            col_l1 = c.module.weight.detach().double().abs().sum(0)          # [in_features]
            feature = col_l1 * c.act_sq.to(col_l1.device).double().sqrt()
            total += feature[c.index.reshape(-1)].reshape(group.n_units, -1).sum(1)
        return total


def _consumer(group: UnitGroup, *needed: str):
    """The group's consumer coupling (the output projection), with the statistics a criterion reads."""
    for c in group.couplings:
        if c.consumer:
            missing = [name for name in needed if getattr(c, name) is None]
            if missing:
                raise ValueError(f"this criterion needs calibration statistics {missing}")
            return c
    raise ValueError("the group has no output projection")


def _per_unit(c, feature: torch.Tensor, n_units: int) -> torch.Tensor:
    """[n_units, width] view of per-input-feature values of consumer coupling `c`."""
    return feature[c.index.reshape(-1)].reshape(n_units, -1)


@CRITERIA.register("fluctuation")
class Fluctuation(Criterion):
    """FLAP (An et al., "Fluctuation-based Adaptive Structured Pruning for Large Language Models", AAAI 2024):
    the weighted input feature variance of the output projection, eq. 5,

        S_j = Var_n(X_nj) * ||W[:, j]||_2^2     (j: an input feature of o_proj / down_proj, n: calibration tokens),

    standardized within the layer and sub-block (eq. 7, "AL-AM"), Z_j = (S_j - mean_j S) / std_j S, so that one
    global threshold compares attention and MLP units of every layer (spaces.flap). As FLAP's code does, an
    attention feature's metric is S_j^2 before standardizing, and a unit scores the mean Z of its features
    (a head: head_dim features; a KV group: those of its query heads). The variance is the population variance
    over all calibration tokens (FLAP's running estimate differs by N/(N-1), which standardization cancels)."""
    requires = frozenset({"activations", "moments"})
    description = "FLAP: standardized variance of the output projection's input x its column norm^2"

    def score(self, group):
        c = _consumer(group, "act_sq", "act_sum", "act_count")
        n = float(c.act_count)
        mean = c.act_sum.double() / n
        variance = (c.act_sq.double() / n - mean.pow(2)).clamp_min(0)
        metric = variance.to(c.module.weight.device) * c.module.weight.detach().double().pow(2).sum(0)
        if group.kind == "attn":
            metric = metric.pow(2)
        z = (metric - metric.mean()) / metric.std().clamp_min(torch.finfo(torch.float64).tiny)
        return _per_unit(c, z, group.n_units).mean(1)


@CRITERIA.register("minitron")
class MinitronActivation(Criterion):
    """Minitron (Muralidharan et al., "Compact Language Models via Pruning and Knowledge Distillation", 2024,
    sec. 2.2): activation-based importance from the output of each head / neuron, aggregated over the batch by
    L2 and over the sequence by the mean (their best aggregation, Table 11; NVIDIA Model Optimizer's hooks):

        a_j = sqrt( sum_b ( mean_s |X_bsj| )^2 )   (j: an input feature of o_proj / down_proj, b: a calibration block)

    A neuron (MLP channel) scores a_j; a head scores the L2 norm of a_j over its head_dim features, a KV group
    the L2 norm over all its query heads' features."""
    requires = frozenset({"sample_abs_mean"})
    description = "Minitron: L2-over-batch / mean-over-sequence activation of each head and neuron"

    def score(self, group):
        c = _consumer(group, "abs_mean_sq")
        feature = c.abs_mean_sq.to(c.module.weight.device).double().sqrt()
        return _per_unit(c, feature, group.n_units).pow(2).sum(1).sqrt()


@CRITERIA.register("taylor")
class FirstOrderTaylor(Criterion):
    """LLM-Pruner (Ma et al., "LLM-Pruner: On the Structural Pruning of Large Language Models", NeurIPS 2023),
    element-wise first-order importance (eq. 4 with the Hessian term dropped), summed over every weight of the
    coupled group (their "sum" aggregation over the group, eq. 5):

        I(G) = sum_{w in G} | w * dL/dw |,   dL/dw summed over the calibration batches

    (LLM-Pruner's default `--pruner_type taylor --taylor param_first`)."""
    requires = frozenset({"gradients"})
    description = "first-order Taylor |w * grad| of the LM loss on calibration text"

    def score(self, group):
        def term(c, p, g):
            if g is None:
                raise ValueError("taylor criterion needs gradients from calibration text")
            return (c.gather(p.detach()).double() * c.gather(g).double()).abs().sum(1)
        return _sum_over_tensors(group, term)
