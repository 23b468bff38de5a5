"""Groups: which weight slices form one prunable unit and must be removed together.

A unit group holds, for every weight it touches, an index matrix [n_units, width] of the rows
(producers: q/k/v, gate/up, fc1) or columns (consumers: o_proj, down_proj, fc2) that belong to
each unit. Criteria score units from these slices; the surgery keeps the slices of kept units.
The same index matrices serve both, so scoring and cutting can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Coupling:
    """One weight touched by a unit group."""
    module: nn.Linear
    index: torch.Tensor          # [n_units, width] rows (producer) or columns (consumer)
    consumer: bool               # columns of an output projection: its inputs are the units' outputs
    act_sq: torch.Tensor | None = None   # consumers: per-input-feature sum of squared calibration activations
    act_sum: torch.Tensor | None = None  # consumers: per-input-feature sum of calibration activations ...
    act_count: int | None = None         # ... over this many tokens
    abs_mean_sq: torch.Tensor | None = None   # consumers: sum over blocks of (block mean of |x|)^2 (Minitron)
    grads: dict | None = None            # parameter -> FP32 gradient summed over calibration batches (taylor)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """[n_units, -1] view of the unit slices of `tensor` (a weight, its grad, or a bias)."""
        flat = self.index.reshape(-1)
        if tensor.dim() == 1:
            if self.consumer:   # a consumer's bias is not per-unit
                return tensor.new_zeros(self.index.shape[0], 0)
            return tensor[flat].reshape(self.index.shape[0], -1)
        picked = tensor[:, flat].t() if self.consumer else tensor[flat]
        return picked.reshape(self.index.shape[0], -1)

    def tensors(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(parameter, grad) pairs of this coupling: weight, then bias if any. The gradient is the FP32
        sum collected for the criterion (`grads`), else whatever autograd left in .grad."""
        params = [self.module.weight] + ([self.module.bias] if self.module.bias is not None else [])
        grads = self.grads or {}
        return [(p, grads.get(p, p.grad)) for p in params]


@dataclass
class UnitGroup:
    kind: str                    # "attn" or "mlp"
    n_units: int
    couplings: list[Coupling]
    per_bucket: int = 0          # >0: units are selected equally within consecutive buckets of this size


def _blocks(n_units: int, width: int, device) -> torch.Tensor:
    # index tensors live with the weights they index: a CPU index on a GPU weight fails in index_select
    return torch.arange(n_units * width, device=device).reshape(n_units, width)


def attention_group(attn: dict, *, heads: int, kv_heads: int, head_dim: int, unit: str) -> UnitGroup:
    """KV groups (K/V head + its query heads + their o columns), or query heads within groups."""
    per_group = heads // kv_heads
    device = attn["q"].weight.device
    if unit == "kv_group":
        q_idx = _blocks(kv_heads, per_group * head_dim, device)
        kv_idx = _blocks(kv_heads, head_dim, device)
        couplings = [Coupling(attn["q"], q_idx, False), Coupling(attn["k"], kv_idx, False),
                     Coupling(attn["v"], kv_idx, False), Coupling(attn["o"], q_idx, True)]
        return UnitGroup("attn", kv_heads, couplings)
    head_idx = _blocks(heads, head_dim, device)
    couplings = [Coupling(attn["q"], head_idx, False), Coupling(attn["o"], head_idx, True)]
    return UnitGroup("attn", heads, couplings, per_bucket=per_group)


def mlp_group(mlp: dict, *, ffn: int) -> UnitGroup:
    """MLP channels: gate/up (fc1) rows and down (fc2) columns, biases included."""
    idx = torch.arange(ffn, device=mlp["out"].weight.device).reshape(ffn, 1)
    couplings = [Coupling(m, idx, False) for m in mlp["ins"]] + [Coupling(mlp["out"], idx, True)]
    return UnitGroup("mlp", ffn, couplings)


def select_units(group: UnitGroup, scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (sorted) of the units to keep: the top `keep` by score, per bucket when bucketed."""
    if scores.shape != (group.n_units,):
        raise ValueError(f"criterion returned shape {tuple(scores.shape)}, expected ({group.n_units},)")
    if not torch.isfinite(scores).all():
        raise ValueError("criterion returned non-finite scores")
    if group.per_bucket:
        buckets = scores.reshape(-1, group.per_bucket)
        top = buckets.topk(keep, dim=1).indices.sort(dim=1).values
        offsets = torch.arange(buckets.shape[0], device=scores.device).unsqueeze(1) * group.per_bucket
        return (top + offsets).reshape(-1)
    return scores.topk(keep).indices.sort().values


def kept_indices(coupling: Coupling, units: torch.Tensor) -> torch.Tensor:
    return coupling.index[units.to(coupling.index.device)].reshape(-1)
