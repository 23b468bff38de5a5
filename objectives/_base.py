"""The objective interface: every score a trial gets is a declared metric with a unit and a direction."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from compress import Registry


@dataclass(frozen=True, kw_only=True)
class Metric:
    name: str
    unit: str                 # "bytes", "tokens/s", "nats", "fraction", "count", ...
    higher_is_better: bool
    kind: str | None = None   # where the number comes from: "simulated" (a model of the device), or measured


@dataclass(kw_only=True)
class Candidate:
    """What objectives score: a model (loaded lazily by the caller) plus its config-derived shapes."""
    shapes: Any                        # compress.ModelShapes
    model: Any = None                  # torch.nn.Module, None for shape-only objectives
    tokenizer: Any = None
    path: str | None = None
    # results kept between evaluations of this candidate's unchanged weights (a search trial's rungs re-use the
    # KL of the blocks a cheaper rung scored); None: every evaluation starts afresh (weights that train between)
    reuse: dict | None = None


@dataclass(kw_only=True)
class EvalContext:
    """Per-experiment state shared by trials: device profile, teacher cache, data locations."""
    profile: Any = None                # objectives.DeviceProfile
    teacher_cache: Any = None
    data_dir: str | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)


class Objective(ABC):
    """One or more metrics computed from a candidate at a fidelity level (0 = cheapest)."""

    name: str = ""
    max_fidelity: int = 0              # highest level this objective distinguishes

    @abstractmethod
    def metrics(self) -> list[Metric]:
        """The metrics `evaluate` returns, with unit and direction."""

    @abstractmethod
    def evaluate(self, candidate: Candidate, context: EvalContext, fidelity: int = 0) -> dict[str, float]:
        """Metric name -> value, for every metric in `metrics()`."""


OBJECTIVES: Registry[type[Objective]] = Registry("objective")
