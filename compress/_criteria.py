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
        """One non-negative score per unit, shape [group.n_units]; higher = more important."""


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


@CRITERIA.register("taylor")
class FirstOrderTaylor(Criterion):
    """|sum w * dL/dw| per unit (LLM-Pruner's element-wise first-order term, summed over the unit)."""
    requires = frozenset({"gradients"})
    description = "first-order Taylor |w * grad| of the LM loss on calibration text"

    def score(self, group):
        def term(c, p, g):
            if g is None:
                raise ValueError("taylor criterion needs gradients from calibration text")
            return (c.gather(p.detach()).double() * c.gather(g).double()).abs().sum(1)
        return _sum_over_tensors(group, term)
