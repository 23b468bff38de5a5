"""Score -> group -> cut: apply a Plan to a loaded model, layer by layer, in place.

Weights are physically removed (smaller dense tensors). Each layer's old tensors are released as
soon as its slices exist, so peak memory stays near the model's own size (see bench/prune_scale.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ._criteria import get_criterion
from ._data import texts, token_blocks
from ._families import FamilyAdapter, family_of
from ._groups import UnitGroup, attention_group, kept_indices, mlp_group, select_units
from ._modeling_pruned import RemovedAttention, RemovedMLP
from ._plan import Plan
from ._release import release
from ._shapes import LayerShape, ModelShapes, shapes_from_config

CALIBRATION_DEFAULTS = {"samples": 16, "seq_len": 128, "seed": 0}
CALIBRATION_BATCH = 4          # calibration blocks per forward pass
INITIAL_LOSS_SCALE = 2.0**12   # taylor on a 16-bit model: halved on overflow until gradients are finite


@dataclass
class PruneResult:
    model: nn.Module
    shapes: ModelShapes
    layer_map: list[int]                  # kept layer i came from base layer layer_map[i]
    realised: list[LayerShape]            # per base layer (dropped layers as zeros)
    base_shapes: ModelShapes
    seconds: float
    # per base layer: kept query heads and MLP channels (None = untouched, [] = removed)
    kept: list[dict] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.shapes.param_count()

    @property
    def base_params(self) -> int:
        return self.base_shapes.param_count()

    def summary(self) -> dict:
        return {"params": self.params, "fp16_bytes": 2 * self.params, "base_params": self.base_params,
                "kept_fraction": self.params / self.base_params, "layer_map": self.layer_map,
                "layers": [s.__dict__ for s in self.realised], "uniform": self.shapes.is_uniform,
                "seconds": round(self.seconds, 3)}


def prune(model: nn.Module, tokenizer, plan: Plan, *, calibration=None, release_old: bool = False) -> PruneResult:
    """Prune `model` in place according to `plan`. `calibration`: LongTensor [n, seq] (else bundled C4).

    release_old: return each cut weight's pages to the OS at once (only when nothing else shares the
    model's tensors, e.g. the prune command that just loaded it).
    """
    start = time.perf_counter()
    adapter = family_of(model.config)
    base = shapes_from_config(model.config)
    targets = plan.realise(base)
    criterion = get_criterion(plan.importance)
    if criterion.requires:
        if calibration is None:
            calibration = calibration_tokens(tokenizer, plan.calibration)
        stats = collect_statistics(model, adapter, calibration, criterion.requires)
    else:
        stats = {}
    kept = []
    for idx, (layer, shape, target) in enumerate(zip(adapter.layers(model), base.layers, targets)):
        before = _linear_weights(layer) if release_old else []
        kept.append({"q_heads": _prune_attention(adapter, layer, idx, base, shape, target, plan, criterion, stats),
                     "mlp_channels": _prune_mlp(adapter, layer, shape, target, criterion, stats)})
        still_used = {id(t) for t in _linear_weights(layer)}
        for tensor in before:
            if id(tensor) not in still_used:
                release(tensor)
    model.zero_grad(set_to_none=True)
    layer_map = _drop_layers(model, adapter, targets)
    _write_shapes_to_config(model.config, base, [targets[i] for i in layer_map])
    shapes = shapes_from_config(model.config)
    return PruneResult(model=model, shapes=shapes, layer_map=layer_map, realised=targets,
                       base_shapes=base, seconds=time.perf_counter() - start, kept=kept)


def _linear_weights(layer) -> list[torch.Tensor]:
    return [p for m in layer.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)]


def calibration_tokens(tokenizer, calibration: dict | None = None) -> torch.Tensor:
    """Calibration blocks from bundled C4 (or the hub): a plan's "calibration" settings over the defaults."""
    cfg = {**CALIBRATION_DEFAULTS, **(calibration or {})}
    docs = texts("c4", split="train", hub=bool(cfg.get("hub", False)))
    rng = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]))
    order = torch.randperm(len(docs), generator=rng, device="cpu").tolist()
    return token_blocks(tokenizer, [docs[i] for i in order], seq_len=int(cfg["seq_len"]), count=int(cfg["samples"]))


# ---- score: calibration statistics ------------------------------------------------------------
def collect_statistics(model, adapter: FamilyAdapter, tokens: torch.Tensor, requires: frozenset) -> dict:
    """{"act_sq": {module: FP32 sum of x^2 per input feature}} and/or {"grads": {param: FP32 grad sum}}.

    Gradients (taylor) are taken batch by batch and summed in FP32 outside autograd: a 16-bit model's own
    .grad would accumulate in FP16 and under/overflow. Each batch's loss is scaled (dynamic loss scaling,
    as mixed-precision training does) so small FP16 gradients survive, and unscaled when summed."""
    unknown = set(requires) - {"activations", "gradients"}
    if unknown:
        raise ValueError(f"criterion requires unknown statistics {sorted(unknown)}")
    stats: dict = {}
    hooks = []
    if "activations" in requires:
        act_sq: dict = {}
        stats["act_sq"] = act_sq
        for layer in adapter.layers(model):
            consumers = [adapter.attention(layer)["o"], adapter.mlp(layer)["out"]]
            for module in consumers:
                hooks.append(module.register_forward_pre_hook(accumulate_input_square(act_sq, module)))
    grad_on = "gradients" in requires
    # only the projections a criterion scores need gradients (not embeddings, norms or the LM head)
    params = [p for layer in adapter.layers(model) for p in _linear_weights(layer)]
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


def accumulate_input_square(store: dict, module):
    def hook(_module, args):
        x = args[0].detach().float()
        total = x.pow(2).reshape(-1, x.shape[-1]).sum(0)
        store[module] = store.get(module, 0) + total
    return hook


def _scores(criterion, group: UnitGroup, stats: dict) -> torch.Tensor:
    for c in group.couplings:
        if c.consumer:
            c.act_sq = stats.get("act_sq", {}).get(c.module)
        c.grads = stats.get("grads")
    return criterion.score(group)


# ---- cut ---------------------------------------------------------------------------------------
def _prune_attention(adapter, layer, idx, base, shape, target, plan, criterion, stats) -> list[int] | None:
    """Cut one layer's attention; return the kept query-head indices (None when untouched)."""
    if target.num_attention_heads == shape.num_attention_heads:
        return None
    attn_mods = adapter.attention(layer)
    if target.num_attention_heads == 0:
        layer.self_attn = _stand_in(RemovedAttention, attn_mods["o"], base.hidden_size, idx)
        if not adapter.parallel_block:
            layer.input_layernorm = nn.Identity()
        return []
    unit = plan.attn_unit_for(shape)
    group = attention_group(attn_mods, heads=shape.num_attention_heads, kv_heads=shape.num_key_value_heads,
                            head_dim=base.head_dim, unit=unit)
    keep = target.num_key_value_heads if unit == "kv_group" else \
        target.num_attention_heads // target.num_key_value_heads
    units = select_units(group, _scores(criterion, group, stats), keep)
    attn = layer.self_attn
    _cut(attn, group, _attn_names(adapter, unit), units)
    attn.num_key_value_groups = target.num_attention_heads // target.num_key_value_heads
    if unit == "kv_group":
        per_group = shape.num_attention_heads // shape.num_key_value_heads
        return [g * per_group + j for g in units.tolist() for j in range(per_group)]
    return units.tolist()


def _attn_names(adapter, unit):
    return ["q_proj", "k_proj", "v_proj", adapter.o_proj] if unit == "kv_group" else ["q_proj", adapter.o_proj]


def _prune_mlp(adapter, layer, shape, target, criterion, stats) -> list[int] | None:
    """Cut one layer's MLP; return the kept channel indices (None when untouched)."""
    if target.intermediate_size == shape.intermediate_size:
        return None
    mods = adapter.mlp(layer)
    if target.intermediate_size == 0:
        layer.mlp = _stand_in(RemovedMLP, mods["out"], mods["out"].weight.shape[0])
        if not adapter.parallel_block:
            layer.post_attention_layernorm = nn.Identity()
        return []
    group = mlp_group(mods, ffn=shape.intermediate_size)
    units = select_units(group, _scores(criterion, group, stats), target.intermediate_size)
    _cut(layer.mlp, group, list(adapter.mlp_in) + [adapter.mlp_out], units)
    return units.tolist()


def _stand_in(cls, out_proj: nn.Linear, *args):
    """A removed sub-block: keeps only its output projection's bias (what the zeroed block computes)."""
    removed = cls(*args, out_proj.bias is not None, device=out_proj.weight.device, dtype=out_proj.weight.dtype)
    if out_proj.bias is not None:
        removed.bias.data = out_proj.bias.data.clone()
    return removed


def _cut(owner: nn.Module, group: UnitGroup, names: list[str], units: torch.Tensor) -> None:
    """Replace each coupled projection of `owner` by its kept rows (producers) or columns (consumers)."""
    for coupling, name in zip(group.couplings, names):
        kept = kept_indices(coupling, units)
        setattr(owner, name, _slice_linear(coupling.module, **({"cols": kept} if coupling.consumer else {"rows": kept})))


def _slice_linear(linear: nn.Linear, *, rows=None, cols=None) -> nn.Linear:
    """A new, smaller nn.Linear holding only the kept rows / columns (no masking)."""
    weight = linear.weight.data
    if rows is not None:
        rows = rows.to(weight.device)
        weight = weight.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None, device="meta")
    new.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if linear.bias is not None:
        bias = linear.bias.data if rows is None else linear.bias.data.index_select(0, rows)
        new.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
    return new


def _drop_layers(model, adapter, targets: list[LayerShape]) -> list[int]:
    kept = [i for i, t in enumerate(targets) if t.num_attention_heads or t.intermediate_size]
    if len(kept) == len(targets):
        return kept
    layers = adapter.layers(model)
    model.model.layers = nn.ModuleList([layers[i] for i in kept])
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx
    config = model.config
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)
    return kept


def _write_shapes_to_config(config, base: ModelShapes, kept: list[LayerShape]) -> None:
    """Uniform result: stock fields. Otherwise `layer_shapes` (read by _modeling_pruned), the stock
    fields left as they were. A uniform result whose head count does not divide the hidden size takes
    the per-layer form too: transformers refuses such a stock config (LlamaConfig validates
    hidden_size % num_attention_heads whatever head_dim says), so it could not be saved or loaded."""
    config.head_dim = base.head_dim  # explicit: head counts change, head size must not
    first = kept[0]
    uniform = all(s == first and s.has_attention and s.has_mlp for s in kept)
    if uniform and config.hidden_size % first.num_attention_heads == 0:
        config.num_attention_heads = first.num_attention_heads
        config.num_key_value_heads = first.num_key_value_heads
        config.intermediate_size = first.intermediate_size
        if hasattr(config, "layer_shapes"):
            del config.layer_shapes
    else:
        config.layer_shapes = [dict(s.__dict__) for s in kept]
