"""Experiment configs: YAML files in this folder (one per model) plus command-line overrides.

A model without a YAML of its own gets a generic experiment whose resources follow its size
(GENERIC_SIZES) and says so in `origin`; it never inherits another model's settings.
The resolved config is written next to the results (config.yaml), so every run can be repeated.
Unknown keys are errors (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).parent
SAMPLERS = ("tpe", "evolution", "cmaes", "nsga2", "gp", "random")
SINGLE_OBJECTIVE_SAMPLERS = ("evolution", "cmaes")
# The fidelity ladder (objectives/_ladder.py), one mapping per ASHA rung, cheapest first: KL on 8 held-out
# blocks of 256 tokens, then KL on 32 plus the task proxy's level-0 items (the tasks the dense model beats
# chance on). bench/search_quality.py measured the choice (README "The search").
DEFAULT_LADDER = ({"kl_blocks": 8}, {"kl_blocks": 32, "proxy": "loglik", "proxy_level": 0})
MODES = ("single", "multi")
ATTN_UNITS = ("kv_group", "head")
DISTILL_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Upper bounds that keep a search bounded (a typo of a few zeros must not start a week-long run) and values
# Optuna / Ray accept: seeds fit numpy's 32-bit generators.
MAX_TRIALS = 100_000
MAX_WORKERS = 4096
MAX_RESOURCES = 4096
MAX_SEED = 2**32 - 1
MAX_DISTILL_STEPS = 10_000_000
RUNTIMES = ("llama.cpp", "mlc")
MULTI_SECOND = ("memory", "tokens_per_s")
# Generic experiments (models without a YAML), by parameter count: the shipped YAMLs' choices for
# models of that size. (up to N params, cpus_per_trial, gpus_per_trial, concurrent trials, ZeRO stage, precision)
GENERIC_SIZES = (
    (1e9, 1, 0, 2, 0, "fp32"),                 # small: CPU trials, two at a time (like the bundled model)
    (4e9, 8, 1, 1, 2, "bf16"),                 # Phi-2 class: one GPU per trial, ZeRO-2
    (float("inf"), 8, 2, 1, 3, "bf16"),        # 7-8B: two GPUs per trial, ZeRO-3
)


@dataclass(kw_only=True)
class SearchSettings:
    trials: int = 30
    sampler: str = "tpe"
    mode: str = "single"
    multi_objective: str = "memory"    # second objective in multi mode: memory | tokens_per_s
    workers: int = 2
    seed: int = 0
    top_k: int = 3
    max_failures: int = 3              # retries of a trial whose worker or node died (Tune FailureConfig)
    min_tokens_per_s: float | None = None   # decode throughput floor (the device profile's tok/s): a constraint


@dataclass(kw_only=True)
class SpaceSettings:
    # what trials may sample; a literature baseline is enqueued when its criterion is here (spaces.BASELINES)
    criteria: list = field(default_factory=lambda: ["l1", "l2", "activation", "taylor", "fluctuation", "minitron"])
    attn_unit: str = "kv_group"
    min_keep: float = 0.15
    allow_drop: bool = True
    min_budget_use: float = 0.5        # multi mode: smallest fraction of the budget a trial may target
    # refit every cut output projection by least squares on calibration activations (compress/_reconstruct.py).
    # "auto": on when the dense model's Gram matrices (collected once, shipped to every trial) take at most
    # RECONSTRUCT_AUTO_BYTES; true / false force it
    reconstruct: bool | str = "auto"
    # FLAP's bias compensation on every cut (compress/_reconstruct.py): adds a bias to each kept o_proj / down_proj
    compensate: bool = False
    # the depth lever: a trial may remove up to this fraction of the layers whole, lowest block influence first
    # (ShortGPT's order), before its shares allocate the rest (0: off; llama.cpp runtime only)
    depth: float = 0.0
    # every plan's calibration (compress/_plan.py: samples, seq_len, seed, select, hub) over compress's defaults:
    # the C4 blocks the criteria, OWL's outlier ratios and reconstruction read, once per experiment
    calibration: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class DistillSettings:
    enabled: bool = False
    steps: list = field(default_factory=lambda: [50, 100, 200])
    lr: list = field(default_factory=lambda: [1e-4, 3e-3])
    seq_len: int = 128
    batch_size: int = 8                # sequences per GPU and micro step
    gradient_accumulation: int = 1     # micro steps per optimizer step
    activation_checkpointing: bool = False   # recompute layers in backward (7B students: ~14 GB less per GPU)
    zero_stage: int = 0
    precision: str = "fp32"
    # data-parallel workers per distilling trial (Ray Train, one GPU each on a GPU experiment);
    # null: resources.gpus_per_trial when it is >= 2, else the trial distils in its own process
    workers: int | None = None


@dataclass(kw_only=True)
class ProxySettings:
    ladder: list = field(default_factory=lambda: [dict(r) for r in DEFAULT_LADDER])
    rungs: int | None = None           # use the ladder's last N rungs (None: all of them)
    tasks: list = field(default_factory=lambda: ["csqa", "bbh", "gsm8k", "humaneval", "truthfulqa", "chid"])
    weights: dict = field(default_factory=dict)
    unsafe_exec: bool = False          # run HumanEval programs unisolated where no sandbox exists (--unsafe-exec)


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
    origin: str = ""                   # which YAML (or which generic sizing) the settings came from

    def validate(self) -> "Experiment":
        from compress._inputs import boolean, number     # (late: compress imports torch; `--help` stays fast)
        validate_common(self)
        _text(self.model, "model")
        space = self.space
        number(space.min_keep, "space.min_keep", low=0, high=1, high_open=True)
        number(space.min_budget_use, "space.min_budget_use", low=0, high=1, low_open=True)
        boolean(space.allow_drop, "space.allow_drop")
        if not isinstance(space.criteria, list) or not space.criteria or \
                not all(isinstance(c, str) for c in space.criteria):
            raise ValueError(f"space.criteria needs a list of at least one criterion name, got {space.criteria!r}")
        _choice("space.attn_unit", space.attn_unit, ATTN_UNITS)
        from compress._plan import check_calibration     # (late: compress imports torch)
        check_calibration(space.calibration, "space.calibration")
        if space.reconstruct not in (True, False, "auto") or isinstance(space.reconstruct, int) and \
                not isinstance(space.reconstruct, bool):
            raise ValueError(f"space.reconstruct must be true, false or auto, got {space.reconstruct!r}")
        _check_distill(self.distill)
        number(space.depth, "space.depth", low=0, high=1, high_open=True)
        boolean(space.compensate, "space.compensate")
        workers = self.distill.workers
        gpus = self.resources.gpus_per_trial
        if workers and workers >= 2 and gpus and gpus != workers:
            raise ValueError(f"distill.workers ({workers}) must equal resources.gpus_per_trial ({gpus}): "
                             "each data-parallel worker drives one GPU")
        return self

    def distill_workers(self) -> int:
        """Ray Train workers per distilling trial; 0 or 1: the trial distils in its own process."""
        if self.distill.workers is not None:
            return self.distill.workers
        gpus = self.resources.gpus_per_trial
        return int(gpus) if gpus >= 2 else 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate_common(exp) -> None:
    """Checks every track's experiment shares: each setting's type, finiteness and range (search, runtime,
    budget, proxy, resources), so a bad value is refused before anything starts."""
    from compress._inputs import boolean, number
    search = exp.search
    _choice("search.sampler", search.sampler, SAMPLERS)
    _choice("search.mode", search.mode, MODES)
    _choice("search.multi_objective", search.multi_objective, MULTI_SECOND)
    _choice("runtime", exp.runtime, RUNTIMES)
    _text(exp.device, "device")
    _text(exp.name, "name")
    _text(exp.origin, "origin")
    for key, least, most in (("trials", 1, MAX_TRIALS), ("workers", 1, MAX_WORKERS), ("top_k", 0, MAX_TRIALS),
                             ("max_failures", -1, MAX_TRIALS), ("seed", 0, MAX_SEED)):
        flag = f" (--{key.replace('_', '-')})" if key != "seed" else ""
        number(getattr(search, key), f"search.{key}{flag}", integer=True, low=least, high=most)
    if exp.budget_gb is not None:
        number(exp.budget_gb, "budget_gb", low=0, low_open=True, noun="positive (GiB)", show_range=False)
    if exp.search.mode == "multi" and exp.search.sampler in SINGLE_OBJECTIVE_SAMPLERS:
        raise ValueError(f"sampler {exp.search.sampler} is single-objective; multi mode needs one of "
                         f"{', '.join(s for s in SAMPLERS if s not in SINGLE_OBJECTIVE_SAMPLERS)}")
    if search.min_tokens_per_s is not None:
        number(search.min_tokens_per_s, "search.min_tokens_per_s", low=0, low_open=True,
               noun="a positive number", show_range=False)
    proxy = exp.proxy
    if proxy.rungs is not None:
        number(proxy.rungs, "proxy.rungs (--rungs)", integer=True, low=1)
    if not isinstance(proxy.tasks, list) or not all(isinstance(t, str) for t in proxy.tasks):
        raise ValueError(f"proxy.tasks must be a list of task names, got {proxy.tasks!r}")
    if not isinstance(proxy.weights, dict):
        raise ValueError(f"proxy.weights must be a mapping of term: weight, got {proxy.weights!r}")
    boolean(proxy.unsafe_exec, "proxy.unsafe_exec (--unsafe-exec)")
    # Ray takes fractional CPUs and GPUs; a trial needs some CPU to run at all
    number(exp.resources.cpus_per_trial, "resources.cpus_per_trial", low=0, low_open=True, high=MAX_RESOURCES)
    number(exp.resources.gpus_per_trial, "resources.gpus_per_trial", low=0, high=MAX_RESOURCES)


def _check_distill(d) -> None:
    from compress._inputs import boolean, number
    boolean(d.enabled, "distill.enabled (--distill)")
    if not isinstance(d.steps, list) or not d.steps:
        raise ValueError(f"distill.steps must be a list of step counts, got {d.steps!r}")
    for step in d.steps:
        number(step, "distill.steps", integer=True, low=1, high=MAX_DISTILL_STEPS)
    if not isinstance(d.lr, list) or len(d.lr) != 2:
        raise ValueError(f"distill.lr must be a [low, high] range, got {d.lr!r}")
    for lr in d.lr:
        number(lr, "distill.lr", low=0, low_open=True, high=1)
    if d.lr[0] > d.lr[1]:
        raise ValueError(f"distill.lr must be [low, high] with low <= high, got {d.lr!r}")
    for key, most in (("seq_len", 2**20), ("batch_size", 2**16), ("gradient_accumulation", 2**16)):
        number(getattr(d, key), f"distill.{key}", integer=True, low=1, high=most)
    boolean(d.activation_checkpointing, "distill.activation_checkpointing")
    if isinstance(d.zero_stage, bool) or d.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"distill.zero_stage must be 0, 1, 2 or 3, got {d.zero_stage!r}")
    _choice("distill.precision", d.precision, DISTILL_PRECISIONS)
    if d.workers is not None:
        number(d.workers, "distill.workers", integer=True, low=0, high=MAX_RESOURCES, noun="an integer (or null)")


def _text(value, name: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")


def _choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


_SECTIONS = {"search": SearchSettings, "space": SpaceSettings, "distill": DistillSettings,
             "proxy": ProxySettings, "resources": Resources}


def from_dict(data: dict):
    """An Experiment (track 1, `track: prune` or no track key) or a ScratchExperiment (`track: scratch`)."""
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"an experiment is a mapping of settings (model: ..., search: {{...}}), got "
                         f"{type(data).__name__} {str(data)[:60]!r}")
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


def config_path_for(model_or_path: str) -> Path | None:
    """A .yaml path, else experiments/<model>.yaml when it exists, else None (a generic experiment)."""
    path = Path(model_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"experiment file not found: {path}")
        return path
    own = HERE / f"{model_or_path}.yaml"
    return own if own.is_file() else None


def generic_experiment(model: str, params: int | None) -> dict:
    """Settings for a model without a YAML: defaults, with resources sized by its parameter count."""
    _, cpus, gpus, workers, zero, precision = next(s for s in GENERIC_SIZES if (params or 0) <= s[0])
    size = "unknown-size" if not params else f"{params / 1e9:.1f}B-parameter" if params >= 1e8 else \
        f"{params / 1e6:.2f}M-parameter"
    origin = (f"generic experiment for a {size} model (no experiments/*.yaml for {model}): {cpus} CPU / {gpus} GPU per "
              f"trial, {workers} concurrent trial{'s' if workers > 1 else ''}, distillation ZeRO-{zero} {precision}")
    return {"model": model, "origin": origin, "search": {"workers": workers},
            "resources": {"cpus_per_trial": cpus, "gpus_per_trial": gpus},
            "distill": {"zero_stage": zero, "precision": precision}}


def load_experiment(*, model: str | None, config: str | None = None, overrides: dict | None = None,
                    model_params=None) -> Experiment:
    """Pick the settings (explicit config, else the model's own YAML, else a generic experiment sized by
    `model_params(model)`, a parameter count), then apply overrides."""
    path = config_path_for(config or model or "stories260k")
    if path is None:
        data = generic_experiment(model, model_params(model) if model_params else None)
    else:
        data = _read_config(path, "experiment file")
        data["origin"] = str(path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path)
    if model:
        data["model"] = model
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        target = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if target.get(key) is None:
                target[key] = {}
            target = target[key]
            if not isinstance(target, dict):
                raise ValueError(f"cannot set {dotted}: {key!r} is not a section")
        target[leaf] = value
    return from_dict(data)


def save_experiment(experiment: Experiment, path: Path) -> None:
    from compress._atomic import write_text
    write_text(path, yaml.safe_dump(experiment.to_dict(), sort_keys=False))


def read_experiment(path: Path) -> Experiment:
    """A saved experiment (runs/NAME/config.yaml), as it ran: one saved before `space.reconstruct` existed
    cut without reconstruction, so it resumes without it (its finished trials' scores stay comparable)."""
    data = _read_config(path, "experiment record")
    space = data.get("space")
    if isinstance(space, dict) and data.get("track", "prune") == "prune" and "reconstruct" not in space:
        space["reconstruct"] = False
    return from_dict(data)


def _read_config(path, what: str) -> dict:
    """A YAML experiment: a mapping, or one line saying what is wrong with the file (syntax, tabs, a list)."""
    from compress._inputs import read_yaml
    data = read_yaml(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must be a mapping of settings (model: ..., search: {{...}}), got a "
                         f"{type(data).__name__}")
    return data
