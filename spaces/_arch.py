"""Track 2 search space: an architecture and its training schedule, repaired onto the memory budget.

A trial samples (define-by-run, Optuna):
  architecture  layers, hidden (a multiple of hidden_multiple), head_dim, kv_heads, gqa (query heads per
                KV head), ffn_mult (SwiGLU width / hidden), ffn_slope (per-layer widths: a linear trend
                from the first to the last layer, mean ffn_mult; llama.cpp runs it through GGUF `deci`;
                absent for the mlc runtime, which needs one shape), tie, vocab, context
  schedule      tokens (the trial's training budget), lr (log), warmup (fraction of the steps),
                batch_size, c4_share (the rest of the mix is Alpaca-zh; only with both datasets)

Repair, as for pruning plans (spaces/_space.py): the sampled point is kept when it fits the budget; else
one global scale c in (0, 1) shrinks depth, hidden size, KV heads (query heads follow through gqa) and
every FFN width together, and c is bisected to the largest value that fits (memory is monotone in c).
Head size, GQA ratio, vocabulary, tying and context are kept; KV heads are lowered where needed so the
query heads divide the hidden size (transformers requires it). If not even the space's smallest shape fits
with this vocabulary, the repair ties the embeddings, then steps down to smaller vocabularies of the
space. So every trial trains a feasible model; `check_feasible` refuses a budget nothing in the space
fits before a search starts. The repair never goes below the ranges' lower ends.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

from compress import Arch, boolean, check_source, number

BISECTION_STEPS = 40
FFN_SLOPE = 1.0            # per-layer FFN widths span mean x (1 -/+ slope/2) from first to last layer
# Bounds of every searched value (ranges and choices), far above what a phone model needs, so a typo (0 sequences
# per batch, 5 x the steps of warm-up, 1e30 tokens) is refused before anything starts.
LIMITS = {"layers": (1, 1024), "hidden": (1, 65536), "kv_heads": (1, 4096), "ffn_mult": (0, 64), "lr": (0, 1),
          "warmup": (0, 1), "c4_share": (0, 1), "head_dim": (1, 4096), "gqa": (1, 4096), "vocab": (2, 2**23),
          "context": (2, 2**20), "tokens": (1, 10**13), "batch_size": (1, 65536)}


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    # architecture: (low, high) integer / float ranges, or tuples of choices
    layers: tuple = (1, 8)
    hidden: tuple = (32, 128)
    hidden_multiple: int = 16
    head_dim: tuple = (8, 16, 32)
    kv_heads: tuple = (1, 4)
    gqa: tuple = (1, 2, 4)
    ffn_mult: tuple = (1.0, 4.0)
    ffn_multiple: int = 4
    per_layer_ffn: bool = True
    tie: tuple = (True, False)
    vocab: tuple = (384, 512, 768)
    context: tuple = (64, 128, 256)
    # schedule
    tokens: tuple = (400_000,)
    lr: tuple = (3e-4, 1e-2)
    warmup: tuple = (0.0, 0.2)
    batch_size: tuple = (8, 16, 32)
    c4_share: tuple = (0.3, 0.9)
    datasets: tuple = ("c4", "alpaca_zh")
    runtime: str = "llama.cpp"

    def __post_init__(self):
        ranges = {"layers": int, "hidden": int, "kv_heads": int, "ffn_mult": float, "lr": float, "warmup": float,
                  "c4_share": float}
        for name, kind in ranges.items():
            lo, hi = _pair(self, name)
            if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 <= lo <= hi) or \
                    (kind is int and not (float(lo).is_integer() and float(hi).is_integer() and lo >= 1)):
                raise ValueError(f"space range {name} must be [low, high] with 0 <= low <= high"
                                 f"{' (integers >= 1)' if kind is int else ''}, got {list(getattr(self, name))}")
        for name in ("head_dim", "gqa", "vocab", "context", "tokens", "batch_size", "tie", "datasets"):
            if not getattr(self, name):
                raise ValueError(f"space choice {name} needs at least one value")
        for name, (low, high) in LIMITS.items():      # every value finite, typed and in bounds that keep work bounded
            integer = name not in ("ffn_mult", "lr", "warmup", "c4_share")
            for value in getattr(self, name):
                number(value, f"space {name}", integer=integer, low=low, high=high,
                       high_open=name == "warmup", low_open=name == "lr")
        for name in ("hidden_multiple", "ffn_multiple"):
            number(getattr(self, name), f"space {name}", integer=True, low=1, high=4096)
        boolean(self.per_layer_ffn, "space per_layer_ffn")
        for value in self.tie:
            boolean(value, "space tie")
        if self.hidden[0] < self.hidden_multiple or self.hidden[0] % self.hidden_multiple:
            raise ValueError(f"hidden's low end must be a positive multiple of hidden_multiple ({self.hidden_multiple})")
        if self.hidden_multiple % max(self.gqa):
            raise ValueError(f"hidden_multiple ({self.hidden_multiple}) must be a multiple of every gqa choice "
                             f"({list(self.gqa)}): the query heads must divide the hidden size")
        if self.lr[0] <= 0:
            raise ValueError("the learning-rate range must be positive (it is sampled on a log scale)")
        for name in self.datasets:
            check_source(name)      # C4 and Alpaca-zh only (the rules), by construction
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets listed twice: {list(self.datasets)}")
        if not self.c4_share[1] <= 1:
            raise ValueError(f"c4_share is a fraction, got {list(self.c4_share)}")

    @property
    def sample_slope(self) -> bool:
        return self.per_layer_ffn and self.runtime != "mlc"

    def param_names(self) -> list[str]:
        names = ["layers", "hidden", "head_dim", "kv_heads", "gqa", "ffn_mult"]
        names += ["ffn_slope"] if self.sample_slope else []
        names += ["tie", "vocab", "context", "tokens", "lr", "warmup", "batch_size"]
        return names + (["c4_share"] if len(self.datasets) > 1 else [])


def _pair(spec, name):
    value = tuple(getattr(spec, name))
    if len(value) != 2:
        raise ValueError(f"space range {name} must be [low, high], got {list(value)}")
    return value


def define_arch_space(trial, spec: ArchSpec) -> None:
    """Optuna define-by-run space (through ray.tune.search.optuna.OptunaSearch)."""
    trial.suggest_int("layers", *spec.layers)
    trial.suggest_int("hidden", *spec.hidden, step=spec.hidden_multiple)
    trial.suggest_categorical("head_dim", list(spec.head_dim))
    trial.suggest_int("kv_heads", *spec.kv_heads)
    trial.suggest_categorical("gqa", list(spec.gqa))
    trial.suggest_float("ffn_mult", *spec.ffn_mult)
    if spec.sample_slope:
        trial.suggest_float("ffn_slope", -FFN_SLOPE, FFN_SLOPE)
    trial.suggest_categorical("tie", list(spec.tie))
    trial.suggest_categorical("vocab", list(spec.vocab))
    trial.suggest_categorical("context", list(spec.context))
    trial.suggest_categorical("tokens", list(spec.tokens))
    trial.suggest_float("lr", *spec.lr, log=True)
    trial.suggest_float("warmup", *spec.warmup)
    trial.suggest_categorical("batch_size", list(spec.batch_size))
    if len(spec.datasets) > 1:
        trial.suggest_float("c4_share", *spec.c4_share)


def check_params(params: dict, spec: ArchSpec) -> dict:
    """A hand-written point (the baseline) must name exactly the space's parameters."""
    missing = sorted(set(spec.param_names()) - set(params))
    extra = sorted(set(params) - set(spec.param_names()))
    if missing or extra:
        raise ValueError(f"architecture parameters do not match the space: missing {missing}, unknown {extra}")
    return params


def params_to_arch(params: dict, spec: ArchSpec, *, memory_of: Callable[[Arch], float], budget_bytes: float) -> Arch:
    """The pure map trial parameters -> architecture, repaired onto the memory budget."""
    vocabs = [params["vocab"]] + sorted((v for v in spec.vocab if v < params["vocab"]), reverse=True)
    ties = [bool(params["tie"])] + ([True] if not params["tie"] and True in spec.tie else [])
    for vocab in vocabs:
        for tie in ties:
            build = lambda c: _arch_at(c, params, spec, vocab=vocab, tie=tie)  # noqa: E731
            full = build(1.0)
            if memory_of(full) <= budget_bytes:
                return full
            if memory_of(build(0.0)) > budget_bytes:
                continue            # not even the smallest shape fits with this vocabulary / tying
            lo, hi, best = 0.0, 1.0, build(0.0)
            for _ in range(BISECTION_STEPS):
                mid = (lo + hi) / 2
                arch = build(mid)
                if memory_of(arch) <= budget_bytes:
                    best, lo = arch, mid
                else:
                    hi = mid
            return best
    smallest = smallest_arch(spec)
    raise ValueError(f"no architecture of the space fits the budget of {_gib(budget_bytes)}: the smallest "
                     f"({smallest.describe()}) needs {_gib(memory_of(smallest))}")


def _arch_at(c: float, params: dict, spec: ArchSpec, *, vocab: int, tie: bool) -> Arch:
    m, fm = spec.hidden_multiple, spec.ffn_multiple
    layers = max(spec.layers[0], round(c * params["layers"]))
    hidden = max(spec.hidden[0], math.floor(c * params["hidden"] / m) * m)
    kv = max(spec.kv_heads[0], round(c * params["kv_heads"]))
    while kv > 1 and hidden % (kv * params["gqa"]):
        kv -= 1                   # transformers needs the query heads to divide the hidden size
    mean = max(c * params["ffn_mult"] * params["hidden"], spec.ffn_mult[0] * hidden)   # ffn / hidden >= its range
    slope = float(params.get("ffn_slope", 0.0)) if spec.sample_slope else 0.0
    where = [i / (layers - 1) - 0.5 if layers > 1 else 0.0 for i in range(layers)]
    ffn = tuple(max(fm, math.floor(mean * (1 + slope * w) / fm) * fm) for w in where)
    return Arch(layers=layers, hidden=hidden, heads=kv * params["gqa"], kv_heads=kv, head_dim=params["head_dim"],
                ffn=ffn, tie=tie, vocab=vocab, context=params["context"])


def smallest_arch(spec: ArchSpec) -> Arch:
    """The least memory any trial of the space can use."""
    params = {"layers": spec.layers[0], "hidden": spec.hidden[0], "kv_heads": spec.kv_heads[0], "gqa": min(spec.gqa),
              "head_dim": min(spec.head_dim), "ffn_mult": spec.ffn_mult[0], "ffn_slope": 0.0,
              "context": min(spec.context)}
    return _arch_at(0.0, params, spec, vocab=min(spec.vocab), tie=True in spec.tie)


def check_feasible(spec: ArchSpec, *, memory_of: Callable[[Arch], float], budget_bytes: float) -> Arch:
    """Refuse (ValueError) a budget that not even the space's smallest architecture fits."""
    smallest = smallest_arch(spec)
    if memory_of(smallest) > budget_bytes:
        raise ValueError(f"no architecture of the space fits the budget of {_gib(budget_bytes)}: the smallest "
                         f"({smallest.describe()}) needs {_gib(memory_of(smallest))}; raise --size-gb or "
                         "lower the space's ranges")
    return smallest


def _gib(n: float) -> str:
    return f"{n / 2**30:.4g} GiB ({int(n):,} bytes)"


def schedule_params(params: dict, spec: ArchSpec) -> dict:
    """The training part of a trial: tokens, lr, warmup fraction, batch size and the data mix."""
    if len(spec.datasets) > 1:
        share = float(params["c4_share"])
        mix = {"c4": share, "alpaca_zh": 1.0 - share}
    else:
        mix = {spec.datasets[0]: 1.0}
    return {"tokens": int(params["tokens"]), "lr": float(params["lr"]), "warmup": float(params["warmup"]),
            "batch_size": int(params["batch_size"]), "mix": mix}


def spec_from_dict(data: dict, *, runtime: str = "llama.cpp") -> ArchSpec:
    known = {f.name for f in fields(ArchSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown architecture-space keys {unknown}")
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return ArchSpec(**{**tuples, "runtime": runtime})
