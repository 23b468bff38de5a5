"""Calibration statistics of the dense model: what the criteria, the reconstruction, the bias compensation and
the layer-level baselines read, collected by hooks over the calibration blocks (`collect_statistics`).

Per output projection (o_proj, down_proj / fc2: the consumers whose input columns are the prunable units), over
every calibration token x of its input:
    "activations"      act_sq[module]      sum x^2 per input feature                (Wanda-sp, OWL)
    "moments"          act_sum[module]     sum x per input feature, act_count[module] tokens
                                           (FLAP's fluctuation = variance, and its bias compensation = mean)
    "sample_abs_mean"  abs_mean_sq[module] sum over calibration blocks b of (mean over the block's tokens of |x|)^2
                                           (Minitron's batch-L2 / sequence-mean aggregation)
    "gram"             gram[module]        X^T X                                    (reconstruction)
Per decoder layer:
    "influence"        influence[i]        (sum over tokens of 1 - cos(layer input, layer output), tokens)  (ShortGPT)
Per linear weight of the decoder layers:
    "gradients"        grads[param]        FP32 sum of dL/dw over the calibration batches (Taylor / LLM-Pruner)
"""
from __future__ import annotations

import torch
from torch import nn

from ._families import FamilyAdapter

CALIBRATION_BATCH = 4          # calibration blocks per forward pass
INITIAL_LOSS_SCALE = 2.0**12   # taylor on a 16-bit model: halved on overflow until gradients are finite
FORWARD_STATISTICS = ("activations", "moments", "sample_abs_mean", "gram", "influence")
STATISTICS = FORWARD_STATISTICS + ("gradients",)


def output_projections(adapter: FamilyAdapter, layer) -> dict:
    """{"attn": o_proj, "mlp": down_proj / fc2}: the consumers whose inputs the statistics describe."""
    return {"attn": adapter.attention(layer)["o"], "mlp": adapter.mlp(layer)["out"]}


def linear_weights(layer) -> list[torch.Tensor]:
    return [p for m in layer.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)]


def collect_statistics(model, adapter: FamilyAdapter, tokens: torch.Tensor, requires: frozenset) -> dict:
    """The statistics named in `requires` (module docstring), in FP32 on the model's device.

    Gradients (taylor) are taken batch by batch and summed in FP32 outside autograd: a 16-bit model's own
    .grad would accumulate in FP16 and under/overflow. Each batch's loss is scaled (dynamic loss scaling,
    as mixed-precision training does) so small FP16 gradients survive, and unscaled when summed."""
    unknown = set(requires) - set(STATISTICS)
    if unknown:
        raise ValueError(f"criterion requires unknown statistics {sorted(unknown)}")
    stats: dict = {}
    hooks = []
    # statistics of the output projections' inputs: one store per requirement, one hook per projection each
    makers = {"activations": ("act_sq", accumulate_input_square), "moments": ("act_sum", accumulate_input_sum),
              "sample_abs_mean": ("abs_mean_sq", accumulate_sample_abs_mean), "gram": ("gram", accumulate_gram)}
    for name in sorted(set(requires) & set(makers)):
        key, make = makers[name]
        store = stats[key] = {}
        counts = stats.setdefault("act_count", {}) if name == "moments" else None
        for layer in adapter.layers(model):
            for module in output_projections(adapter, layer).values():
                hooks.append(module.register_forward_pre_hook(make(store, module, counts) if counts is not None
                                                              else make(store, module)))
    if "influence" in requires:
        store = stats["influence"] = {}
        for idx, layer in enumerate(adapter.layers(model)):
            hooks.append(layer.register_forward_hook(accumulate_influence(store, idx), with_kwargs=True))
    grad_on = "gradients" in requires
    # only the projections a criterion scores need gradients (not embeddings, norms or the LM head)
    params = [p for layer in adapter.layers(model) for p in linear_weights(layer)]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(grad_on)
        device = params[0].device
        if grad_on:
            stats["grads"] = _gradient_sums(model, params, tokens, device)
        else:
            with torch.no_grad():
                for batch in tokens.split(CALIBRATION_BATCH):
                    model(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return stats


def _gradient_sums(model, params, tokens: torch.Tensor, device) -> dict:
    half = params[0].dtype in (torch.float16, torch.bfloat16)
    scale = INITIAL_LOSS_SCALE if half else 1.0
    sums = {p: torch.zeros_like(p, dtype=torch.float32) for p in params}
    for batch in tokens.split(CALIBRATION_BATCH):
        batch = batch.to(device)
        while True:
            for p in params:
                p.grad = None
            logits = model(input_ids=batch, use_cache=False).logits.float()   # the loss itself in FP32
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
            (loss * scale).backward()
            finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
            if finite or scale <= 1.0:
                break
            scale /= 2                                                        # overflow: retry this batch
        for p in params:
            if p.grad is not None:
                sums[p] += p.grad.float() / scale
    return sums


# ---- hooks (forward pre-hooks on the output projections, forward hooks on the decoder layers) ----------
def accumulate_input_square(store: dict, module):
    def hook(_module, args):
        x = args[0].detach().float()
        total = x.pow(2).reshape(-1, x.shape[-1]).sum(0)
        store[module] = store.get(module, 0) + total
    return hook


def accumulate_input_sum(store: dict, module, counts: dict):
    """store[module] += sum of the input per feature; counts[module] += tokens (means and variances)."""
    def hook(_module, args):
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        store[module] = store.get(module, 0) + x.sum(0)
        counts[module] = counts.get(module, 0) + x.shape[0]
    return hook


def accumulate_sample_abs_mean(store: dict, module):
    """store[module] += sum over the batch's blocks of (mean over the block's tokens of |x|)^2, per feature."""
    def hook(_module, args):
        x = args[0].detach().float()
        x = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() > 2 else x[None]
        store[module] = store.get(module, 0) + x.abs().mean(1).pow(2).sum(0)
    return hook


def accumulate_gram(store: dict, module):
    """store[module] += X^T X of the module's input, in FP32 on the input's device (reconstruction)."""
    def hook(_module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        store[module] = store.get(module, 0) + x.t() @ x
    return hook


def accumulate_influence(store: dict, idx: int):
    """store[idx] = (sum over tokens of 1 - cos(hidden state into layer idx, out of it), tokens): ShortGPT's
    block influence (Men et al. 2024, eq. 1) before its mean is taken."""
    def hook(_module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        y = output[0] if isinstance(output, tuple) else output
        cos = torch.nn.functional.cosine_similarity(x.detach().float(), y.detach().float(), dim=-1)
        total, count = store.get(idx, (0.0, 0))
        store[idx] = (total + float((1 - cos).sum()), count + cos.numel())
    return hook
