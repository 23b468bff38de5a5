"""The pruning plan: the one thing `spaces` hands `compress`.

JSON form (every key but `layers` optional):

    {"importance": "l1",            # criterion name, see compress.criteria()
     "attn_unit": "kv_group",       # "kv_group": remove whole KV groups (K/V head + its query heads)
                                    # "head": remove query heads inside every KV group, equally per group
     "mlp_multiple": 1,             # round kept MLP widths to a multiple of this (e.g. 64 for kernels)
     "calibration": {"samples": 64, "seq_len": 128, "seed": 0,   # C4 blocks for the criteria / reconstruction
                     "select": 1.0},  # draw them from this fraction of C4, what the dense model predicts best
     "reconstruct": false,          # refit each cut output projection on its kept units (least squares
                                    # on the calibration activations, compress/_reconstruct.py)
     "compensate": false,           # FLAP's bias compensation: every kept output projection gets a bias that
                                    # restores the removed units' mean contribution (with reconstruct: the
                                    # least-squares refit gets an intercept); adds hidden_size parameters each
     "layers": [{"attn_keep": 0.5, "mlp_keep": 0.75}, ...]}   # one entry per layer of the base model

A keep fraction of 0 removes that sub-block; a layer with both at 0 is dropped. Fractions are turned
into integer unit counts by `realise` (rounded to nearest, at least one unit when the fraction is > 0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ._inputs import boolean, number, read_json
from ._shapes import LayerShape, ModelShapes

ATTN_UNITS = ("kv_group", "head")
CALIBRATION_KEYS = ("samples", "seq_len", "seed", "select", "hub")
# Calibration is a few hundred blocks of a few hundred tokens in the literature (Wanda / FLAP / SlimGPT: 128 x 2048
# = 262K tokens); these caps keep a typo (1e9 samples) from running for hours or streaming the hub without end.
MAX_CALIBRATION_SAMPLES = 4096
MAX_CALIBRATION_SEQ_LEN = 32768
MAX_CALIBRATION_TOKENS = 2**21
MAX_SEED = 2**32 - 1                 # what numpy / torch generators take
DEFAULT_SAMPLES, DEFAULT_SEQ_LEN = 64, 128     # (compress/_rankings.py CALIBRATION_DEFAULTS)


@dataclass(frozen=True, kw_only=True)
class LayerPlan:
    attn_keep: float = 1.0
    mlp_keep: float = 1.0

    def __post_init__(self):
        for name in ("attn_keep", "mlp_keep"):
            number(getattr(self, name), name, low=0, high=1)

    @property
    def dropped(self) -> bool:
        return self.attn_keep == 0 and self.mlp_keep == 0


@dataclass(frozen=True, kw_only=True)
class Plan:
    layers: tuple[LayerPlan, ...]
    importance: str = "l1"
    attn_unit: str = "kv_group"
    mlp_multiple: int = 1
    calibration: dict = field(default_factory=dict)
    reconstruct: bool = False
    compensate: bool = False

    def __post_init__(self):
        from ._criteria import CRITERIA  # late: criteria import groups, which need torch
        if not isinstance(self.importance, str):
            raise ValueError(f"importance must be a criterion name (a string), got {self.importance!r}")
        CRITERIA.get(self.importance)   # unknown names fail here, before any model is loaded
        if not isinstance(self.attn_unit, str) or self.attn_unit not in ATTN_UNITS:
            raise ValueError(f"attn_unit must be one of {ATTN_UNITS}, got {self.attn_unit!r}")
        number(self.mlp_multiple, "mlp_multiple", integer=True, low=1, noun="a positive integer", show_range=False)
        check_calibration(self.calibration)
        for key in ("reconstruct", "compensate"):
            boolean(getattr(self, key), key)
        if not self.layers:
            raise ValueError("a plan needs at least one layer entry")
        if all(layer.dropped for layer in self.layers):
            raise ValueError("a plan cannot drop every layer")

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def uniform(cls, num_layers: int, *, attn_keep: float, mlp_keep: float, **kwargs) -> "Plan":
        return cls(layers=tuple(LayerPlan(attn_keep=attn_keep, mlp_keep=mlp_keep) for _ in range(num_layers)),
                   **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or "layers" not in data:
            raise ValueError('a plan is a JSON object with a "layers" list')
        known = {"layers", "importance", "attn_unit", "mlp_multiple", "calibration", "reconstruct", "compensate",
                 "realised"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown plan keys {unknown}; known: {sorted(known - {'realised'})}")
        layers = data["layers"]
        if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
            raise ValueError('"layers" must be a list of {"attn_keep": f, "mlp_keep": f} objects')
        for entry in layers:
            extra = set(entry) - {"attn_keep", "mlp_keep"}
            if extra:
                raise ValueError(f"unknown layer keys {sorted(extra)}; known: attn_keep, mlp_keep")
        kwargs = {k: data[k] for k in ("importance", "attn_unit", "mlp_multiple", "calibration", "reconstruct",
                                       "compensate") if k in data}
        return cls(layers=tuple(LayerPlan(**entry) for entry in layers), **kwargs)

    @classmethod
    def load(cls, path) -> "Plan":
        return cls.from_dict(read_json(path, "plan file"))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = [asdict(layer) for layer in self.layers]
        return data

    # ---- realisation ---------------------------------------------------------------------
    def check_fits(self, shapes: ModelShapes) -> None:
        if len(self.layers) != shapes.num_layers:
            raise ValueError(f"plan has {len(self.layers)} layer entries but the model has {shapes.num_layers} layers")
        widths = [s.intermediate_size for s in shapes.layers if s.intermediate_size]
        if self.mlp_multiple > 1 and widths and self.mlp_multiple > min(widths):
            raise ValueError(f"mlp_multiple {self.mlp_multiple} is larger than the model's MLP width ({min(widths)}): "
                             "every mlp_keep would be ignored")

    def realise(self, shapes: ModelShapes) -> list[LayerShape]:
        """Integer shapes per base layer (dropped layers included, as all-zero shapes)."""
        self.check_fits(shapes)
        return [self._realise_layer(lp, base) for lp, base in zip(self.layers, shapes.layers)]

    def realised_shapes(self, shapes: ModelShapes) -> ModelShapes:
        """The pruned model's shapes, without loading it (dropped layers removed)."""
        kept = tuple(s for s in self.realise(shapes) if s.has_attention or s.has_mlp)
        return replace(shapes, layers=kept, output_bias=shapes.output_bias or self.adds_bias(shapes))

    def adds_bias(self, shapes: ModelShapes) -> bool:
        """Whether the cut adds biases to output projections that the family has none on (compensation)."""
        from ._families import family_of
        family = family_of(shapes)
        return self.compensate and not (family.o_bias and family.mlp_bias)

    def attn_unit_for(self, base: LayerShape) -> str:
        """Multi-head attention (one query head per KV head): a query head IS a KV group."""
        if base.num_key_value_heads == base.num_attention_heads:
            return "kv_group"
        return self.attn_unit

    def _realise_layer(self, lp: LayerPlan, base: LayerShape) -> LayerShape:
        heads, kv = base.num_attention_heads, base.num_key_value_heads
        if lp.attn_keep == 0 or heads == 0:
            heads = kv = 0
        elif self.attn_unit_for(base) == "kv_group":
            kv_kept = _count(lp.attn_keep, kv)
            heads, kv = kv_kept * (heads // kv), kv_kept
        else:
            heads = kv * _count(lp.attn_keep, heads // kv)
        ffn = base.intermediate_size
        ffn = 0 if (lp.mlp_keep == 0 or ffn == 0) else _count_multiple(lp.mlp_keep, ffn, self.mlp_multiple)
        return LayerShape(heads, kv, ffn)


def check_calibration(calibration, name: str = "calibration") -> None:
    """A plan's (or an experiment's space.) "calibration" settings: known keys, sane values (one-line errors)."""
    if not isinstance(calibration, dict):
        raise ValueError(f"{name} must be a mapping of {', '.join(CALIBRATION_KEYS)}, got {calibration!r}")
    unknown = sorted(set(calibration) - set(CALIBRATION_KEYS))
    if unknown:
        raise ValueError(f"unknown {name} keys {unknown}; known: {', '.join(CALIBRATION_KEYS)}")
    for key, least, most in (("samples", 1, MAX_CALIBRATION_SAMPLES), ("seq_len", 2, MAX_CALIBRATION_SEQ_LEN),
                             ("seed", 0, MAX_SEED)):
        number(calibration.get(key, least), f"{name}.{key}", integer=True, low=least, high=most)
    samples, seq_len = calibration.get("samples", DEFAULT_SAMPLES), calibration.get("seq_len", DEFAULT_SEQ_LEN)
    if samples * seq_len > MAX_CALIBRATION_TOKENS:
        raise ValueError(f"{name}: samples x seq_len = {samples * seq_len:,} tokens, more than the "
                         f"{MAX_CALIBRATION_TOKENS:,} calibration may read")
    number(calibration.get("select", 1.0), f"{name}.select", low=0, high=1, low_open=True, noun="a fraction")
    boolean(calibration.get("hub", False), f"{name}.hub")


def _count(keep: float, total: int) -> int:
    return min(total, max(1, round(keep * total)))


def _count_multiple(keep: float, total: int, multiple: int) -> int:
    if multiple >= total:
        return total
    units = max(1, round(keep * total / multiple))
    return min(total, units * multiple)
