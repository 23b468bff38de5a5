"""Cut: apply a Plan to a loaded model, layer by layer, in place, keeping the top-ranked units
(and, when the plan reconstructs, refitting each cut output projection on its kept units: _reconstruct.py).

The ranking (score + group, `_rankings.py`) is computed before any cut: once per experiment by a search
(`rankings=`), or here for this plan alone. Weights are physically removed (smaller dense tensors). Each
layer's old tensors are released as soon as its slices exist, so peak memory stays near the model's own
size (see bench/prune_scale.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ._families import family_of
from ._groups import UnitGroup, attention_group, kept_indices, mlp_group, select_units
from ._modeling_pruned import RemovedAttention, RemovedMLP
from ._plan import Plan
from ._rankings import Rankings, compute_rankings
from ._statistics import linear_weights
from ._reconstruct import refit
from ._release import release
from ._shapes import OUTPUT_BIAS_KEY, LayerShape, ModelShapes, shapes_from_config


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


def prune(model: nn.Module, tokenizer, plan: Plan, *, calibration=None, release_old: bool = False,
          rankings: Rankings | None = None) -> PruneResult:
    """Prune `model` in place according to `plan`. `calibration`: LongTensor [n, seq] (else bundled C4).

    rankings: unit scores computed once from this model's dense weights (`compute_rankings`); without
    them the plan's own criterion is ranked here first, by the same code.
    release_old: return each cut weight's pages to the OS at once (only when nothing else shares the
    model's tensors, e.g. the prune command that just loaded it).
    """
    start = time.perf_counter()
    adapter = family_of(model.config)
    base = shapes_from_config(model.config)
    targets = plan.realise(base)
    if rankings is None:
        rankings = compute_rankings(model, tokenizer, criteria=[plan.importance], attn_units=[plan.attn_unit],
                                    calibration=plan.calibration, tokens=calibration, grams=plan.reconstruct,
                                    means=plan.compensate)
    rankings.check(plan, base)
    kept = []
    for idx, (layer, shape, target) in enumerate(zip(adapter.layers(model), base.layers, targets)):
        before = linear_weights(layer) if release_old else []
        kept.append({"q_heads": _prune_attention(adapter, layer, idx, base, shape, target, plan, rankings),
                     "mlp_channels": _prune_mlp(adapter, layer, idx, shape, target, plan, rankings)})
        still_used = {id(t) for t in linear_weights(layer)}
        for tensor in before:
            if id(tensor) not in still_used:
                release(tensor)
    model.zero_grad(set_to_none=True)
    layer_map = _drop_layers(model, adapter, targets)
    if plan.adds_bias(base):
        _zero_output_biases(model, adapter)
    _write_shapes_to_config(model.config, base, [targets[i] for i in layer_map], output_bias=plan.adds_bias(base))
    shapes = shapes_from_config(model.config)
    return PruneResult(model=model, shapes=shapes, layer_map=layer_map, realised=targets,
                       base_shapes=base, seconds=time.perf_counter() - start, kept=kept)


# ---- cut ---------------------------------------------------------------------------------------
def _ranked(group: UnitGroup, scores, keep: int):
    """The kept units of `group`, selected on the device of its weights (where ties break as they always did)."""
    return select_units(group, scores.to(group.couplings[0].module.weight.device), keep)


def _prune_attention(adapter, layer, idx, base, shape, target, plan, rankings) -> list[int] | None:
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
    units = _ranked(group, rankings.layer_scores(plan.importance, "attn", idx, plan.attn_unit), keep)
    attn = layer.self_attn
    _cut(attn, group, _attn_names(adapter, unit), units, _fit(plan, rankings, "attn", idx))
    attn.num_key_value_groups = target.num_attention_heads // target.num_key_value_heads
    if unit == "kv_group":
        per_group = shape.num_attention_heads // shape.num_key_value_heads
        return [g * per_group + j for g in units.tolist() for j in range(per_group)]
    return units.tolist()


def _attn_names(adapter, unit):
    return ["q_proj", "k_proj", "v_proj", adapter.o_proj] if unit == "kv_group" else ["q_proj", adapter.o_proj]


def _prune_mlp(adapter, layer, idx, shape, target, plan, rankings) -> list[int] | None:
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
    units = _ranked(group, rankings.layer_scores(plan.importance, "mlp", idx), target.intermediate_size)
    _cut(layer.mlp, group, list(adapter.mlp_in) + [adapter.mlp_out], units, _fit(plan, rankings, "mlp", idx))
    return units.tolist()


def _stand_in(cls, out_proj: nn.Linear, *args):
    """A removed sub-block: keeps only its output projection's bias (what the zeroed block computes)."""
    removed = cls(*args, out_proj.bias is not None, device=out_proj.weight.device, dtype=out_proj.weight.dtype)
    if out_proj.bias is not None:
        removed.bias.data = out_proj.bias.data.clone()
    return removed


def _fit(plan: Plan, rankings: Rankings, kind: str, idx: int) -> dict:
    """What this sub-block's output projection is refit with: the Gram matrix of its input (reconstruction)
    and / or its mean (bias compensation); empty for a plain cut."""
    fit = {}
    if plan.reconstruct:
        fit["gram"] = rankings.layer_gram(kind, idx)
    if plan.compensate:
        fit["mean"] = rankings.layer_mean(kind, idx)
        fit["count"] = rankings.meta.get("calibration_tokens")
    return fit


def _cut(owner: nn.Module, group: UnitGroup, names: list[str], units: torch.Tensor, fit: dict) -> None:
    """Replace each coupled projection of `owner` by its kept rows (producers) or columns (consumers);
    the consumer's kept columns are refit by least squares and / or its bias compensated (`fit`, _reconstruct)."""
    for coupling, name in zip(group.couplings, names):
        kept = kept_indices(coupling, units)
        if not coupling.consumer:
            setattr(owner, name, _slice_linear(coupling.module, rows=kept))
            continue
        old = coupling.module
        weight, bias = (None, None) if not fit else \
            refit(old.weight.data, None if old.bias is None else old.bias.data, kept, **fit)
        setattr(owner, name, _slice_linear(old, cols=kept, weight=weight, bias=bias))


def _zero_output_biases(model, adapter) -> None:
    """Compensation on a family without output biases: every kept o_proj / down_proj carries one (zeros where
    nothing was cut), so the checkpoint has one uniform layout (config `pruned_output_bias`)."""
    for layer in adapter.layers(model):
        kept = [getattr(owner, name) for owner, name, stand_in in ((layer.self_attn, adapter.o_proj, RemovedAttention),
                                                                   (layer.mlp, adapter.mlp_out, RemovedMLP))
                if not isinstance(owner, stand_in)]
        for module in kept:
            if module.bias is None:
                module.bias = nn.Parameter(module.weight.new_zeros(module.weight.shape[0]), requires_grad=False)


def _slice_linear(linear: nn.Linear, *, rows=None, cols=None, weight=None, bias=None) -> nn.Linear:
    """A new, smaller nn.Linear holding only the kept rows / columns (no masking); `weight`: the kept
    columns' values when they were refit (reconstruction), else sliced from the old weight; `bias`: a
    consumer's new bias (compensation), else the old one."""
    if weight is None:
        weight = linear.weight.data
        if rows is not None:
            rows = rows.to(weight.device)
            weight = weight.index_select(0, rows)
        if cols is not None:
            weight = weight.index_select(1, cols.to(weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None or bias is not None, device="meta")
    new.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is None and linear.bias is not None:
        bias = linear.bias.data if rows is None else linear.bias.data.index_select(0, rows)
    if bias is not None:
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


def _write_shapes_to_config(config, base: ModelShapes, kept: list[LayerShape], *, output_bias: bool = False) -> None:
    """Uniform result: stock fields. Otherwise `layer_shapes` (read by _modeling_pruned), the stock
    fields left as they were. A uniform result whose head count does not divide the hidden size takes
    the per-layer form too: transformers refuses such a stock config (LlamaConfig validates
    hidden_size % num_attention_heads whatever head_dim says), so it could not be saved or loaded. Added
    output biases (compensation) take it as well: a stock Llama / Qwen2 config cannot put a bias on o_proj and
    down_proj alone (attention_bias / mlp_bias would add q/k/v / gate/up biases too)."""
    config.head_dim = base.head_dim  # explicit: head counts change, head size must not
    if output_bias:
        setattr(config, OUTPUT_BIAS_KEY, True)
    first = kept[0]
    uniform = not output_bias and all(s == first and s.has_attention and s.has_mlp for s in kept)
    if uniform and config.hidden_size % first.num_attention_heads == 0:
        config.num_attention_heads = first.num_attention_heads
        config.num_key_value_heads = first.num_key_value_heads
        config.intermediate_size = first.intermediate_size
        if hasattr(config, "layer_shapes"):
            del config.layer_shapes
    else:
        config.layer_shapes = [dict(s.__dict__) for s in kept]
