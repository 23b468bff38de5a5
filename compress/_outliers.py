"""Per-layer outlier ratios (OWL, Yin et al. 2024): how many weights matter disproportionately.

For every linear layer, the Wanda score |W_ij| * ||X_j|| over calibration text; a layer's outlier
ratio is the fraction of scores above `multiplier` x that layer's mean. Layers with more outliers are
more sensitive to pruning, so the OWL-style baseline keeps more of them.
"""
from __future__ import annotations

import torch
from torch import nn

from ._families import family_of
from ._statistics import accumulate_input_square

OWL_MULTIPLIER = 5.0


def layer_outlier_ratios(model, tokens: torch.Tensor, *, multiplier: float = OWL_MULTIPLIER) -> list[float]:
    adapter = family_of(model.config)
    sums: dict = {}
    hooks = []
    for layer in adapter.layers(model):
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                hooks.append(module.register_forward_pre_hook(accumulate_input_square(sums, module)))
    try:
        with torch.no_grad():
            for batch in tokens.split(4):
                model(input_ids=batch.to(next(model.parameters()).device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    ratios = []
    for layer in adapter.layers(model):
        # on the weights' device: a 7B layer's scores are ~1 GB of FP32, cheap there, slow to copy out
        scores = [(m.weight.detach().float().abs() * sums[m].sqrt()).reshape(-1)
                  for m in layer.modules() if isinstance(m, nn.Linear) and m in sums]
        flat = torch.cat(scores)
        ratios.append(float((flat > multiplier * flat.mean()).float().mean()))
    return ratios

