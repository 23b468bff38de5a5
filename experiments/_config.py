"""Experiment configs: YAML files in this folder (one per model) plus command-line overrides.

The resolved config is written next to the results (config.yaml), so every run can be repeated.
Unknown keys are errors (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).parent
SAMPLERS = ("tpe", "nsga2", "gp", "random")
MODES = ("single", "multi")
RUNTIMES = ("llama.cpp", "mlc")
MULTI_SECOND = ("memory", "tokens_per_s")


@dataclass(kw_only=True)
class SearchSettings:
    trials: int = 30
    sampler: str = "tpe"
    mode: str = "single"
    multi_objective: str = "memory"    # second objective in multi mode: memory | tokens_per_s
    workers: int = 2
    seed: int = 0
    top_k: int = 3


@dataclass(kw_only=True)
class SpaceSettings:
    criteria: list = field(default_factory=lambda: ["l1", "l2", "activation", "taylor"])
    attn_unit: str = "kv_group"
    min_keep: float = 0.15
    allow_drop: bool = True
    min_budget_use: float = 0.5        # multi mode: smallest fraction of the budget a trial may target


@dataclass(kw_only=True)
class DistillSettings:
    enabled: bool = False
    steps: list = field(default_factory=lambda: [50, 100, 200])
    lr: list = field(default_factory=lambda: [1e-4, 3e-3])
    seq_len: int = 128
    batch_size: int = 8
    zero_stage: int = 0
    precision: str = "fp32"


@dataclass(kw_only=True)
class ProxySettings:
    rungs: int = 2
    tasks: list = field(default_factory=lambda: ["csqa", "bbh", "gsm8k", "humaneval", "truthfulqa", "chid"])
    weights: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class Resources:
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0


@dataclass(kw_only=True)
class Experiment:
    model: str
    name: str = ""
    device: str = "phone-12gb"
    runtime: str = "llama.cpp"
    budget_gb: float | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    space: SpaceSettings = field(default_factory=SpaceSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    resources: Resources = field(default_factory=Resources)

    def validate(self) -> "Experiment":
        validate_common(self)
        if not 0 <= self.space.min_keep < 1:
            raise ValueError(f"space.min_keep must be in [0, 1), got {self.space.min_keep}")
        if not self.space.criteria:
            raise ValueError("space.criteria needs at least one criterion")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate_common(exp) -> None:
    """Checks every track's experiment shares (search settings, runtime, budget, rungs)."""
    _choice("search.sampler", exp.search.sampler, SAMPLERS)
    _choice("search.mode", exp.search.mode, MODES)
    _choice("search.multi_objective", exp.search.multi_objective, MULTI_SECOND)
    _choice("runtime", exp.runtime, RUNTIMES)
    if exp.search.trials < 1 or exp.search.workers < 1 or exp.search.top_k < 0:
        raise ValueError("search.trials and search.workers must be >= 1, top_k >= 0")
    if exp.budget_gb is not None and exp.budget_gb <= 0:
        raise ValueError(f"budget_gb must be positive, got {exp.budget_gb}")
    if exp.proxy.rungs < 1:
        raise ValueError("proxy.rungs must be >= 1")


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


_SECTIONS = {"search": SearchSettings, "space": SpaceSettings, "distill": DistillSettings,
             "proxy": ProxySettings, "resources": Resources}


def from_dict(data: dict):
    """An Experiment (track 1, `track: prune` or no track key) or a ScratchExperiment (`track: scratch`)."""
    data = dict(data or {})
    track = data.pop("track", "prune")
    if track == "scratch":
        from ._scratch_config import scratch_from_dict
        return scratch_from_dict(data)
    if track != "prune":
        raise ValueError(f"track must be prune (track 1: compress a model) or scratch (track 2), got {track!r}")
    unknown = set(data) - {f.name for f in dataclasses.fields(Experiment)}
    if unknown:
        raise ValueError(f"unknown experiment keys {sorted(unknown)}")
    parse_sections(data, _SECTIONS)
    if "model" not in data:
        raise ValueError("an experiment needs a model")
    return Experiment(**data).validate()


def parse_sections(data: dict, sections: dict) -> None:
    """Replace each section's mapping in `data` by its settings object; unknown keys are errors."""
    for key, cls in sections.items():
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise ValueError(f"experiment section {key!r} must be a mapping")
        bad = set(section) - {f.name for f in dataclasses.fields(cls)}
        if bad:
            raise ValueError(f"unknown keys in {key!r}: {sorted(bad)}")
        data[key] = cls(**section)


def config_path_for(model_or_path: str) -> Path:
    """experiments/<model>.yaml when it exists, else the generic phone profile template."""
    path = Path(model_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"experiment file not found: {path}")
        return path
    own = HERE / f"{model_or_path}.yaml"
    return own if own.is_file() else HERE / "qwen-7b.yaml"


def load_experiment(*, model: str | None, config: str | None = None, overrides: dict | None = None) -> Experiment:
    """Pick the YAML (explicit config, else the model's own, else a phone template), apply overrides."""
    path = config_path_for(config or model or "stories260k")
    data = yaml.safe_load(path.read_text()) or {}
    if model:
        data["model"] = model
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        target = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    return from_dict(data)


def save_experiment(experiment: Experiment, path: Path) -> None:
    import os
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(experiment.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def read_experiment(path: Path) -> Experiment:
    return from_dict(yaml.safe_load(Path(path).read_text()))
