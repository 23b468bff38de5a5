"""One number per trial for searchers that want a scalar: higher is better.

    score = accuracy * proxy_accuracy
            - kl * kl_to_teacher
            - log_ppl_ratio * log(perplexity / teacher_perplexity)
            - nats_per_byte * heldout_nats_per_byte

Track 1 (pruning) uses the first three terms (nats_per_byte = 0). Track 2 (training from scratch) has no
teacher, so kl = log_ppl_ratio = 0 and the held-out term is the model's own C4 / Alpaca-zh loss per UTF-8
byte (objectives/_heldout.py): per byte, not per token, because Track 2 trials differ in vocabulary.

proxy_accuracy is a fraction (0..1) and the other two are in nats, so the weights trade "one point of
accuracy" against "one nat of divergence". The defaults keep accuracy at weight 1 but let the two
teacher-distance terms carry the ranking whenever accuracies sit near chance (the bundled 260K-param
model, or any heavily pruned one): on a level-0 proxy each task has 8-27 items, so accuracy moves in
steps of 0.02-0.05 of the aggregate and differences under ~0.05 are noise, whereas KL and the
perplexity ratio change smoothly with every unit pruned. A term whose weight is 0 may be absent from
`metrics`; a term with a non-zero weight must be present.

Noise weighting. Each term is a difference from the dense teacher measured on a sample (tokens, items),
and where its standard error was measured (`<metric>_se`) it enters the score shrunk toward "no change" by
that noise, positive-part James-Stein style:

    reliable(x, se) = x * max(0, 1 - se^2 / x^2)

so a term's effective weight is its nominal weight times max(0, 1 - (se/x)^2): a change within one standard
error of zero counts for nothing, one of k standard errors for (1 - 1/k^2) of its value. In a search the
accuracy term is the paired change against the teacher's own answers to the same items
(`proxy_accuracy_delta`, its se from the per-item credit differences: objectives/_ladder.py), so on a model
whose accuracies sit at chance (the bundled one) it is mostly noise and weighs ~0, while KL, whose se over
hundreds of tokens is a few % of its value, keeps its full weight. Without teacher answers (`evaluate`) the
accuracy term is the plain proxy_accuracy.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

COMPOSITE = "composite_score"
TERMS = {"accuracy": ("proxy_accuracy",), "kl": ("kl_to_teacher",),
         "log_ppl_ratio": ("perplexity", "teacher_perplexity"), "nats_per_byte": ("heldout_nats_per_byte",)}


@dataclass(frozen=True, kw_only=True)
class ProxyWeights:
    accuracy: float = 1.0          # per unit of proxy_accuracy (fraction)
    kl: float = 1.0                # per nat of KL(teacher || candidate)
    log_ppl_ratio: float = 1.0     # per nat of log(perplexity / teacher_perplexity)
    nats_per_byte: float = 0.0     # per nat of held-out loss per byte (Track 2; no teacher)

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"weight {name} must be a finite number >= 0, got {value!r}")
        if not any(asdict(self).values()):
            raise ValueError("at least one composite weight must be positive")

    @classmethod
    def from_dict(cls, data: dict) -> "ProxyWeights":
        unknown = sorted(set(data) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown composite weights {unknown}; known: {', '.join(TERMS)}")
        return cls(**data)

    def needs(self) -> list[str]:
        """The metric names the non-zero terms read."""
        return [m for term, metrics in TERMS.items() if getattr(self, term) for m in metrics]


def reliable(value: float, se: float | None) -> float:
    """`value` shrunk toward 0 by its standard error (positive-part James-Stein); unchanged without an se."""
    if se is None or not value:
        return value
    return value * max(0.0, 1.0 - (se / value) ** 2)


def composite_score(metrics: dict, weights: ProxyWeights | None = None) -> float:
    weights = weights or ProxyWeights()
    missing = [m for m in weights.needs() if m not in metrics]
    if missing:
        raise ValueError(f"composite score needs {', '.join(missing)} (run the objectives that produce them, "
                         "or set their weight to 0)")
    score = 0.0
    se = lambda name: float(metrics[name]) if name in metrics else None  # noqa: E731
    if weights.accuracy:
        accuracy = reliable(float(metrics["proxy_accuracy_delta"]), se("proxy_accuracy_delta_se")) \
            if "proxy_accuracy_delta" in metrics else float(metrics["proxy_accuracy"])
        score += weights.accuracy * accuracy
    if weights.kl:
        score -= weights.kl * reliable(float(metrics["kl_to_teacher"]), se("kl_to_teacher_se"))
    if weights.log_ppl_ratio:
        ppl, ref = float(metrics["perplexity"]), float(metrics["teacher_perplexity"])
        if ppl <= 0 or ref <= 0:
            raise ValueError(f"perplexities must be positive, got {ppl} and {ref}")
        score -= weights.log_ppl_ratio * reliable(math.log(ppl / ref), se("log_ppl_ratio_se"))
    if weights.nats_per_byte:
        score -= weights.nats_per_byte * float(metrics["heldout_nats_per_byte"])
    return score
