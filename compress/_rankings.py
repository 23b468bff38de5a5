"""Score: unit rankings of every layer, computed from the dense model (calibration statistics included).

What depends only on the dense model is computed once (Torch-Pruning / EvoPress practice): a search
calls `compute_rankings` once per experiment for every criterion its space can sample and the attention
unit it uses, caches the result next to the teacher cache and ships it to the trials; a trial's
`prune(..., rankings=...)` then only selects and cuts. A plain `prune` (no rankings) ranks for its own
plan with this same code, so a search trial and a one-off prune keep exactly the same units.

Scores are kept (not just orders): selection takes the top units per KV group when attn_unit is "head",
and ties must break exactly as they would on the scores themselves. Scores are FP64 on the CPU; `prune`
moves each layer's to its weights' device before selecting, where a per-trial ranking would have computed it.
The forward-only statistics (activations, Gram matrices) share one set of passes. On a 16-bit model gradients
get their own: a 16-bit Taylor pass may re-run a batch after an overflow, which must not count that batch's
activations twice. An FP32 model (the CPU) never re-runs a batch, so the gradient pass collects everything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from ._criteria import get_criterion
from ._data import predictable_documents, texts, token_blocks
from ._families import family_of
from ._groups import UnitGroup, attention_group, mlp_group
from ._plan import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
from ._reconstruct import check_gram_memory
from ._shapes import shapes_from_config
from ._statistics import FORWARD_STATISTICS, collect_statistics, output_projections

# select: the fraction of C4 documents calibration draws from, those the dense model predicts best (1.0: all)
CALIBRATION_DEFAULTS = {"samples": DEFAULT_SAMPLES, "seq_len": DEFAULT_SEQ_LEN, "seed": 0, "select": 1.0}
CALIBRATION_BATCH = 4          # calibration blocks per forward pass
INITIAL_LOSS_SCALE = 2.0**12   # taylor on a 16-bit model: halved on overflow until gradients are finite
GIVEN_TOKENS = "given tokens"  # Rankings.calibration when the caller passed its own calibration tensor
FORMAT = 1


def resolved_calibration(calibration: dict | None) -> dict:
    """A plan's "calibration" settings over the defaults (what the statistics were collected with)."""
    return {**CALIBRATION_DEFAULTS, **(calibration or {})}


def attn_unit_of(unit: str, heads: int, kv_heads: int) -> str:
    """Multi-head attention (one query head per KV head): a query head IS a KV group (Plan.attn_unit_for)."""
    return "kv_group" if kv_heads == heads else unit


@dataclass(kw_only=True)
class Rankings:
    """Per (criterion, sub-block) the unit scores of every base layer (None where the layer has no such units)."""
    scores: dict                   # "criterion/attn/kv_group" | "criterion/attn/head" | "criterion/mlp" -> [Tensor | None]
    num_layers: int
    calibration: dict | str        # resolved settings, or GIVEN_TOKENS
    meta: dict = field(default_factory=dict)
    # for plans that reconstruct (_reconstruct.py): "attn" / "mlp" -> per layer the FP32 Gram matrix of the
    # output projection's input on the calibration blocks (None where the layer has no such sub-block)
    grams: dict = field(default_factory=dict)
    # for plans that compensate (FLAP's bias): "attn" / "mlp" -> per layer the FP32 mean of that input
    means: dict = field(default_factory=dict)
    # per base layer ShortGPT's block influence 1 - E[cos(layer input, layer output)] (empty: not collected)
    influence: list = field(default_factory=list)

    @staticmethod
    def key(criterion: str, kind: str, unit: str = "") -> str:
        return f"{criterion}/{kind}/{unit}" if kind == "attn" else f"{criterion}/{kind}"

    def layer_scores(self, criterion: str, kind: str, layer: int, unit: str = "") -> torch.Tensor:
        scores = self.scores[self.key(criterion, kind, unit)][layer]
        if scores is None:
            raise ValueError(f"rankings have no {kind} scores for layer {layer}")
        return scores

    def layer_gram(self, kind: str, layer: int) -> torch.Tensor:
        gram = self.grams[kind][layer]
        if gram is None:
            raise ValueError(f"rankings have no {kind} Gram matrix for layer {layer}")
        return gram

    def layer_mean(self, kind: str, layer: int) -> torch.Tensor:
        mean = self.means[kind][layer]
        if mean is None:
            raise ValueError(f"rankings have no {kind} input mean for layer {layer}")
        return mean

    def check(self, plan, base) -> None:
        """Refuse (one line) a plan these rankings cannot serve, before anything is cut."""
        if base.num_layers != self.num_layers:
            raise ValueError(f"rankings cover {self.num_layers} layers, the model has {base.num_layers}")
        missing = [k for k in (self.key(plan.importance, "mlp"), self.key(plan.importance, "attn", plan.attn_unit))
                   if k not in self.scores]
        if missing:
            known = sorted({k.split("/")[0] for k in self.scores})
            raise ValueError(f"rankings were computed for criteria {known} and attention units "
                             f"{self.meta.get('attn_units')}: none for {', '.join(missing)}")
        if plan.reconstruct and not self.grams:
            raise ValueError("the plan reconstructs, but these rankings were computed without the Gram matrices "
                             "it needs (compute_rankings(..., grams=True))")
        if plan.compensate and not self.means:
            raise ValueError("the plan compensates, but these rankings were computed without the input means it "
                             "needs (compute_rankings(..., means=True))")
        needs_data = bool(get_criterion(plan.importance).requires) or plan.reconstruct or plan.compensate
        if needs_data and self.calibration != GIVEN_TOKENS and self.calibration != resolved_calibration(plan.calibration):
            raise ValueError(f"rankings were computed with calibration {self.calibration}, the plan asks for "
                             f"{resolved_calibration(plan.calibration)}")

    # ---- persistence (next to the teacher cache) -------------------------------------------
    def save(self, path) -> Path:
        from ._atomic import save_torch
        return save_torch(path, {"scores": self.scores, "num_layers": self.num_layers, "calibration": self.calibration,
                                 "meta": dict(self.meta), "grams": self.grams, "means": self.means,
                                 "influence": list(self.influence), "format": FORMAT})

    @classmethod
    def load(cls, path) -> "Rankings":
        from ._atomic import load_torch
        data = load_torch(path, what="rankings file", fmt=FORMAT)
        calibration = data["calibration"]   # a cache saved before a setting existed ran with its default
        calibration = resolved_calibration(calibration) if isinstance(calibration, dict) else calibration
        return cls(scores=data["scores"], num_layers=int(data["num_layers"]), calibration=calibration,
                   meta=data["meta"], grams=data.get("grams") or {}, means=data.get("means") or {},
                   influence=list(data.get("influence") or []))


def statistics_passes(model, needs: frozenset) -> list[frozenset]:
    """How the statistics `needs` are collected: one pass for all of them, or forward-only statistics and
    gradients apart (a 16-bit model re-runs a batch whose scaled loss overflowed; a checkpointed model runs
    each layer's forward twice under backward: either would count activations twice in a shared pass)."""
    forward, gradients = needs & set(FORWARD_STATISTICS), needs & {"gradients"}
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    if half or getattr(model, "is_gradient_checkpointing", False):
        return [forward, gradients]
    return [forward | gradients]


def compute_rankings(model, tokenizer, *, criteria, attn_units=("kv_group",), calibration: dict | None = None,
                     tokens: torch.Tensor | None = None, grams: bool = False, means: bool = False,
                     influence: bool = False) -> Rankings:
    """Score every layer's units on the (dense) `model` for each criterion and attention unit.
    `tokens`: calibration LongTensor [n, seq] (else the bundled C4 blocks `calibration` describes).
    grams: also keep the Gram matrices of every output projection's input (for plans that reconstruct);
    means: the mean of that input (for plans that compensate); influence: each layer's block influence
    (the ShortGPT baseline)."""
    criteria = list(dict.fromkeys(criteria))
    built = {name: get_criterion(name) for name in criteria}
    adapter = family_of(model.config)
    base = shapes_from_config(model.config)
    needs = frozenset().union(*(c.requires for c in built.values()))
    needs |= {name for name, on in (("gram", grams), ("moments", means), ("influence", influence)) if on}
    if grams:
        check_gram_memory(base, next(model.parameters()).device.type)
    stats: dict = {}
    given = tokens is not None
    if needs:
        if tokens is None:
            tokens = calibration_tokens(tokenizer, calibration, model=model)
        for passes in statistics_passes(model, needs):
            if passes:
                stats.update(collect_statistics(model, adapter, tokens, frozenset(passes)))
    scores: dict = {}
    for name, criterion in built.items():
        for unit in attn_units:
            scores[Rankings.key(name, "attn", unit)] = [None] * base.num_layers
        scores[Rankings.key(name, "mlp")] = [None] * base.num_layers
    for idx, (layer, shape) in enumerate(zip(adapter.layers(model), base.layers)):
        groups = {}
        if shape.num_attention_heads:
            for unit in attn_units:
                effective = attn_unit_of(unit, shape.num_attention_heads, shape.num_key_value_heads)
                groups[("attn", unit)] = attention_group(
                    adapter.attention(layer), heads=shape.num_attention_heads, kv_heads=shape.num_key_value_heads,
                    head_dim=base.head_dim, unit=effective)
        if shape.intermediate_size:
            groups[("mlp", "")] = mlp_group(adapter.mlp(layer), ffn=shape.intermediate_size)
        for name, criterion in built.items():
            for (kind, unit), group in groups.items():
                scores[Rankings.key(name, kind, unit)][idx] = score_group(criterion, group, stats).detach().cpu()
    setting = GIVEN_TOKENS if (needs and given) else resolved_calibration(calibration)
    return Rankings(scores=scores, num_layers=base.num_layers, calibration=setting,
                    meta={"criteria": criteria, "attn_units": list(attn_units),
                          "calibration_tokens": int(tokens.numel()) if tokens is not None else 0,
                          "model": str(getattr(model.config, "_name_or_path", ""))},
                    grams=_per_projection(adapter, model, stats.get("gram", {})) if grams else {},
                    means=_per_projection(adapter, model, _means(stats)) if means else {},
                    influence=[total / count for total, count in (stats["influence"][i] for i in
                                                                  range(base.num_layers))] if influence else [])


def _means(stats: dict) -> dict:
    return {m: total / stats["act_count"][m] for m, total in stats.get("act_sum", {}).items()}


def _per_projection(adapter, model, store: dict) -> dict:
    """{"attn": [per layer o_proj's value], "mlp": [... down_proj's]} from a {module: tensor} store, on the CPU."""
    out = {"attn": [], "mlp": []}
    for layer in adapter.layers(model):
        for kind, module in output_projections(adapter, layer).items():
            value = store.get(module)
            out[kind].append(None if value is None else value.cpu())
    return out


def calibration_tokens(tokenizer, calibration: dict | None = None, *, model=None) -> torch.Tensor:
    """Calibration blocks from bundled C4 (or the hub): a plan's "calibration" settings over the defaults.
    With "select" < 1 only that fraction of the documents is drawn from, those the dense `model` predicts best."""
    cfg = resolved_calibration(calibration)
    docs = texts("c4", split="train", hub=bool(cfg.get("hub", False)))
    rng = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]))
    order = torch.randperm(len(docs), generator=rng, device="cpu").tolist()
    docs = [docs[i] for i in order]
    samples, seq_len, select = int(cfg["samples"]), int(cfg["seq_len"]), float(cfg["select"])
    if select < 1:
        if model is None:
            raise ValueError("calibration select < 1 ranks the documents by the dense model's NLL: pass model=")
        docs = predictable_documents(model, tokenizer, docs, fraction=select, seq_len=seq_len)
    blocks = token_blocks(tokenizer, docs, seq_len=seq_len, count=samples)
    if blocks.shape[0] < samples:      # never silently fewer than asked for
        kept = f"calibration select {select} keeps {len(docs)} documents" if select < 1 else \
            f"the C4 calibration text ({len(docs)} documents) holds"
        raise ValueError(f"{kept}, {blocks.shape[0]} blocks of {seq_len} tokens: fewer than the {samples} samples "
                         f"asked for ({'raise select or ' if select < 1 else ''}lower samples or seq_len)")
    return blocks


def score_group(criterion, group: UnitGroup, stats: dict) -> torch.Tensor:
    """One criterion's scores for one group, with the calibration statistics it reads attached."""
    for c in group.couplings:
        if c.consumer:
            c.act_sq = stats.get("act_sq", {}).get(c.module)
            c.act_sum = stats.get("act_sum", {}).get(c.module)
            c.act_count = stats.get("act_count", {}).get(c.module)
            c.abs_mean_sq = stats.get("abs_mean_sq", {}).get(c.module)
        c.grads = stats.get("grads")
    return criterion.score(group)
