"""Track 2 experiments (`track: scratch`): search an architecture and schedule, train it from scratch.

Sections: search / proxy / resources as in Track 1; `arch` (architecture ranges, the fields of
spaces.ArchSpec, validated there), `train` (schedule ranges, datasets and engine settings) and `baseline`
(a hand-picked point of the space, trained first as the trial named "hand-picked"). There is no model
and no distillation section: Track 2 forbids pre-trained models and teachers, and says so.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ._config import ProxySettings, Resources, SearchSettings, parse_sections, validate_common

PRECISIONS = ("auto", "fp32", "bf16")
NO_TEACHER = ("Track 2 trains from scratch: distillation from a teacher or a pre-trained model is not allowed "
              "(remove {key!r})")


@dataclass(kw_only=True)
class TrainSettings:
    # schedule ranges, searched (a one-element list fixes a value)
    tokens: list = field(default_factory=lambda: [400_000])      # training tokens per trial
    lr: list = field(default_factory=lambda: [3e-4, 1e-2])
    warmup: list = field(default_factory=lambda: [0.0, 0.2])     # fraction of the steps
    batch_size: list = field(default_factory=lambda: [8, 16, 32])
    c4_share: list = field(default_factory=lambda: [0.3, 0.9])   # the rest of the mix is Alpaca-zh
    datasets: list = field(default_factory=lambda: ["c4", "alpaca_zh"])
    # engine (fixed)
    hub: bool = False                  # stream C4 / Alpaca-zh with `datasets` (connected machines)
    zero_stage: int = 0
    precision: str = "auto"            # auto: bf16 on GPU, fp32 on CPU
    gradient_accumulation: int = 1
    weight_decay: float = 0.0


@dataclass(kw_only=True)
class ScratchExperiment:
    track: str = "scratch"
    name: str = ""
    device: str = "stories260k-tiny"
    runtime: str = "llama.cpp"
    budget_gb: float | None = None     # peak inference memory budget, GiB (null: the device profile's)
    dtype: str = "float16"             # saved weights: float16 or float32 (the rules forbid quantization)
    search: SearchSettings = field(default_factory=SearchSettings)
    arch: dict = field(default_factory=dict)
    train: TrainSettings = field(default_factory=TrainSettings)
    baseline: dict = field(default_factory=dict)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    resources: Resources = field(default_factory=Resources)
    origin: str = ""                   # which YAML the settings came from

    def validate(self) -> "ScratchExperiment":
        validate_common(self)
        if self.track != "scratch":
            raise ValueError(f"a scratch experiment has track: scratch, got {self.track!r}")
        if self.train.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {self.train.precision!r}")
        if self.train.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"train.zero_stage must be 0, 1, 2 or 3, got {self.train.zero_stage!r}")
        for key in ("kl", "log_ppl_ratio"):
            if self.proxy.weights.get(key):
                raise ValueError(f"proxy.weights.{key} needs a teacher; Track 2 has none (set it to 0)")
        if not isinstance(self.arch, dict) or not isinstance(self.baseline, dict):
            raise ValueError("experiment sections 'arch' and 'baseline' must be mappings")
        for name in ("tokens", "lr", "warmup", "batch_size", "c4_share", "datasets"):   # ranges / choices: lists
            if not isinstance(getattr(self.train, name), list):
                raise ValueError(f"train.{name} must be a list (a range [low, high] or choices), got "
                                 f"{getattr(self.train, name)!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"search": SearchSettings, "train": TrainSettings, "proxy": ProxySettings, "resources": Resources}


def scratch_from_dict(data: dict) -> ScratchExperiment:
    data = dict(data or {})
    for key in ("model", "teacher", "distill"):
        if data.get(key) not in (None, {}, {"enabled": False}):
            raise ValueError(NO_TEACHER.format(key=key))
        data.pop(key, None)
    unknown = set(data) - {f.name for f in dataclasses.fields(ScratchExperiment)}
    if unknown:
        raise ValueError(f"unknown scratch experiment keys {sorted(unknown)}")
    parse_sections(data, _SECTIONS)
    data["arch"] = data.get("arch") or {}
    data["baseline"] = data.get("baseline") or {}
    return ScratchExperiment(**data).validate()
