"""Track 2 trials: parameters -> architecture (repaired onto the budget) -> a model trained from scratch,
scored after each 1/rungs of its token budget.

Each rung reports, like a Track 1 trial, memory and throughput (shape models), the proxy accuracy (the six
competition tasks at fidelity level 0, the cheap mode) and, instead of teacher KL, the model's own held-out
loss on C4 and Alpaca-zh (objectives/_heldout.py). The Track 2 composite (no teacher, so no KL):

    score = accuracy x proxy_accuracy - nats_per_byte x heldout_nats_per_byte      (defaults 1 and 1)

held-out loss per UTF-8 byte, not perplexity per token, because trials differ in vocabulary. A trial that
finishes its budget saves its FP16 checkpoint (with its tokenizer) under trials/<trial id>; the top-k
are moved to top/ (re-trained, deterministically, if a checkpoint is missing).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compress
import objectives
import spaces
from search import _tracking
from search._trial import GB, score_report

TOKENIZERS = "tokenizers"
TRIALS = "trials"
REFERENCE = "hand-picked"
DEFAULT_WEIGHTS = {"accuracy": 1.0, "kl": 0.0, "log_ppl_ratio": 0.0, "nats_per_byte": 1.0}
COLUMNS = ("heldout_nats_per_byte", "c4_nats_per_byte", "alpaca_zh_nats_per_byte", "c4_perplexity",
           "alpaca_zh_perplexity", "train_tokens", "train_loss", "trial_seconds", "arch")


@dataclass(kw_only=True)
class ScratchSetup:
    """Everything a Track 2 trial needs, computed once by the driver and shipped to workers."""
    spec: spaces.ArchSpec
    profile_name: Any                     # a registered profile's name, or the DeviceProfile of a profile file
    budget_bytes: float
    dtype: str                            # saved weights (float16 / float32); sizes weights in the memory model
    rungs: int
    tasks: list
    weights: dict
    tokenizers: dict                      # vocabulary size -> tokenizer directory
    train: dict                           # fixed engine settings (hub, zero_stage, precision, ...)
    trials_dir: str
    baseline: dict = field(default_factory=dict)
    unsafe_exec: bool = False             # HumanEval without a sandbox (the user passed --unsafe-exec)
    # data-parallel training: >= 2 Ray Train workers per trial (one GPU each when use_gpu), as Track 1's
    # distillation (the driver reads these names for both tracks); 0: training runs in the trial's process
    distill_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    train_storage: str | None = None
    multi: str | None = None
    tracking_uri: str | None = None
    mlflow_experiment_id: str | None = None
    parent_run_id: str | None = None
    seed: int = 0
    min_tokens_per_s: float | None = None # throughput floor: the constraint the sampler sees (as in Track 1)

    def profile(self):
        base = objectives.get_profile(self.profile_name).for_runtime(self.spec.runtime).with_budget(int(self.budget_bytes))
        return dataclasses.replace(base, bytes_per_weight=compress.check_dtype(self.dtype).itemsize)

    def memory_of(self):
        profile = self.profile()
        return lambda arch: objectives.estimate_memory(arch.shapes(), profile).total_bytes


def build_setup(exp, paths, *, tracking_uri: str | None = None) -> ScratchSetup:
    """Validates everything (ValueError on bad input) without writing anything."""
    compress.check_dtype(exp.dtype)                         # quantized dtypes are refused here
    profile = objectives.get_profile(exp.device)
    budget = exp.budget_gb * GB if exp.budget_gb else profile.memory_budget_bytes
    train = exp.train
    spec = spaces.spec_from_dict({**exp.arch, "tokens": tuple(train.tokens), "lr": tuple(train.lr),
                                  "warmup": tuple(train.warmup), "batch_size": tuple(train.batch_size),
                                  "c4_share": tuple(train.c4_share), "datasets": tuple(train.datasets)},
                                 runtime=exp.runtime)
    weights = {**DEFAULT_WEIGHTS, **exp.proxy.weights}
    objectives.ProxyWeights.from_dict(weights)
    objectives.ProxyAccuracyObjective(tasks=tuple(exp.proxy.tasks), unsafe_exec=exp.proxy.unsafe_exec)  # names, sandbox
    root = Path(paths.path) if paths is not None else Path(".")
    setup = ScratchSetup(spec=spec, profile_name=objectives.shippable_profile(exp.device), budget_bytes=float(budget),
                         dtype=exp.dtype,
                         rungs=exp.proxy.rungs or 2,   # unset: 2 (pruning searches take theirs from the ladder)
                         tasks=list(exp.proxy.tasks), weights=weights,
                         tokenizers={v: str(root / TOKENIZERS / f"bpe-{v}") for v in spec.vocab},
                         train={k: getattr(train, k) for k in ("hub", "zero_stage", "precision",
                                                               "gradient_accumulation", "weight_decay")},
                         trials_dir=str(root / TRIALS), baseline=baseline_params(exp.baseline, spec),
                         unsafe_exec=exp.proxy.unsafe_exec, min_tokens_per_s=exp.search.min_tokens_per_s,
                         multi=exp.search.multi_objective if exp.search.mode == "multi" else None,
                         tracking_uri=tracking_uri, seed=exp.search.seed, **_parallel(exp.resources))
    spaces.check_feasible(spec, memory_of=setup.memory_of(), budget_bytes=setup.budget_bytes)
    if setup.baseline:
        spaces.check_params(setup.baseline, spec)
        arch_for(setup.baseline, setup)
        schedule_for(setup.baseline, arch_for(setup.baseline, setup), setup)
    return setup


def _parallel(resources) -> dict:
    """resources.gpus_per_trial >= 2: each trial trains data-parallel on that many Ray Train workers."""
    gpus = resources.gpus_per_trial
    if gpus < 2:
        return {}
    return {"distill_workers": int(gpus), "use_gpu": True, "cpus_per_worker": max(0.25, resources.cpus_per_trial / gpus)}


def baseline_params(baseline: dict, spec: spaces.ArchSpec) -> dict:
    """The hand-picked point, trained with the experiment's token budget (the largest when several are
    searched; --tokens N sets it) and, with one dataset, without a mix to pick."""
    if not baseline:
        return {}
    out = dict(baseline)
    if out.get("tokens") not in spec.tokens:
        out["tokens"] = max(spec.tokens)
    if len(spec.datasets) == 1:
        out.pop("c4_share", None)
    return out


def prepare(setup: ScratchSetup, paths) -> dict:
    """Once per experiment: one tokenizer per vocabulary size of the space, trained on the allowed data."""
    for vocab, directory in setup.tokenizers.items():
        if not (Path(directory) / "tokenizer.json").is_file():
            compress.train_tokenizer(int(vocab), directory, sources=setup.spec.datasets, hub=setup.train["hub"])
    return {REFERENCE: dict(setup.baseline)} if setup.baseline else {}


def arch_for(params: dict, setup: ScratchSetup) -> compress.Arch:
    return spaces.params_to_arch(params, setup.spec, memory_of=setup.memory_of(), budget_bytes=setup.budget_bytes)


def schedule_for(params: dict, arch: compress.Arch, setup: ScratchSetup, *, world: int = 1) -> compress.ScratchSchedule:
    """The trial's schedule; the token budget counts every data-parallel rank's tokens."""
    sampled = spaces.schedule_params(params, setup.spec)
    return compress.ScratchSchedule.for_tokens(
        sampled["tokens"], seq_len=arch.context, batch_size=sampled["batch_size"], lr=sampled["lr"],
        warmup=sampled["warmup"], rungs=setup.rungs, world_size=world, mix=sampled["mix"], seed=setup.seed,
        **setup.train)


def build_candidate(params: dict, setup: ScratchSetup, *, world: int = 1):
    arch = arch_for(params, setup)
    schedule = schedule_for(params, arch, setup, world=world)
    tokenizer = compress.load_tokenizer(setup.tokenizers[arch.vocab])
    model = compress.build_scratch_model(arch, tokenizer=tokenizer, seed=setup.seed)
    return arch, schedule, model, tokenizer


def record_of(arch: compress.Arch, schedule: compress.ScratchSchedule, setup: ScratchSetup) -> dict:
    """What plan.json records for a scratch checkpoint (and MLflow for the trial)."""
    keep = ("tokens", "steps", "lr", "warmup_steps", "batch_size", "seq_len", "mix", "zero_stage", "precision", "seed")
    return {"track": "scratch", "arch": arch.to_dict(), "params": arch.params(),
            "schedule": {k: getattr(schedule, k) for k in keep}, "tokenizer": Path(setup.tokenizers[arch.vocab]).name,
            "layers": arch.shapes().to_list()}


def run_scratch_trial(config: dict, setup: ScratchSetup) -> None:
    """Ray Tune function trainable. Reports once per rung; ASHA may stop it between rungs."""
    from ray import tune
    from search._trial import _tune_report

    trial_id = tune.get_context().get_trial_id()
    params = {k: v for k, v in config.items() if k != "baseline"}
    baseline = config.get("baseline", "")
    with _tracking.TrialRun.start(setup, trial_id, params, baseline=baseline).finishing() as run:
        if setup.distill_workers >= 2:
            from search import _data_parallel
            _data_parallel.run(params, setup, run, baseline=baseline, trial_id=trial_id,
                               body=functools.partial(scratch_body, trial_id=trial_id))
        else:
            scratch_body(params, setup, run, baseline=baseline, report=_tune_report, trial_id=trial_id)


def scratch_body(params: dict, setup: ScratchSetup, run, *, baseline: str, report, trial_id: str, rank: int = 0,
                 world: int = 1):
    """Build, train and score the trial's model; `report(scores) -> stop?` gets rank 0's scores once per rung.

    The shape of search/_trial.trial_body, so a Ray Train launcher (search/_data_parallel.py) can run it on
    every worker: train_scratch takes rank / world from the environment, rank 0 logs, reports and saves."""
    start = time.perf_counter()
    arch, schedule, model, tokenizer = build_candidate(params, setup, world=world)
    record = record_of(arch, schedule, setup)
    if rank == 0:
        run.log_record(record, "arch.json")
    context = objectives.EvalContext(profile=setup.profile(), seed=setup.seed)
    candidate = objectives.Candidate(shapes=arch.shapes(), model=model, tokenizer=tokenizer)
    judges = ["memory", "throughput", objectives.HeldoutObjective(sources=setup.spec.datasets),
              objectives.ProxyAccuracyObjective(tasks=tuple(setup.tasks), unsafe_exec=setup.unsafe_exec)]
    weights = objectives.ProxyWeights.from_dict(setup.weights)
    rung, last, history = 0, {}, []

    def scored(train: dict) -> dict | None:
        nonlocal rung
        metrics = objectives.evaluate_all(candidate, context, objectives=judges, fidelity=0, weights=weights)
        rung += 1
        if rank != 0:
            return None
        scores = score_report(metrics, setup, seconds=time.perf_counter() - start)
        history.append(scores["score"])          # every rung's score: gains compare trials rung with rung
        scores.update({f"score_rung{k}": v for k, v in enumerate(history)})
        scores.update(rung=rung - 1, rungs=setup.rungs, baseline=baseline, arch=arch.describe(), world=world,
                      train_tokens=train["tokens"], train_loss=train["loss"], lr=train["lr"])
        run.log_metrics(scores, step=rung - 1)
        return scores

    def on_report(step: int, train: dict) -> bool:
        if step == schedule.steps:      # the last rung is scored on the final weights, after training
            last.update(train)
            return False
        scores = scored(train)
        return bool(report(scores)) if scores is not None else False

    candidate.model, _ = compress.train_scratch(model, tokenizer, schedule, on_report=on_report)
    if rank != 0:
        return arch, candidate.model
    candidate.model.to(compress.accelerator())     # train_scratch hands back a CPU model; score where it trained
    scores = scored(last)
    compress.save_pruned(candidate.model, tokenizer, Path(setup.trials_dir) / trial_id, summary=record, force=True,
                         dtype=compress.check_dtype(setup.dtype))
    report(scores)
    return arch, candidate.model


def materialise(row: dict, rank: int, setup: ScratchSetup, paths) -> dict:
    """Move the trial's checkpoint to top/rank<k>-<name>; re-train it (deterministic) when it is missing."""
    from compress._atomic import replace_dir
    params = json.loads(row["params_json"])
    arch = arch_for(params, setup)
    out = paths.top.local_path / f"rank{rank}-{row['name'] or row['trial_id']}"   # paths: the experiment record
    saved = Path(setup.trials_dir) / row["trial_id"]
    if (saved / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(saved, out)
    elif not (out / "config.json").is_file():
        arch, schedule, model, tokenizer = build_candidate(params, setup)
        model, _ = compress.train_scratch(model, tokenizer, schedule)
        compress.save_pruned(model, tokenizer, out, summary=record_of(arch, schedule, setup), force=True,
                             dtype=compress.check_dtype(setup.dtype))
    return {"rank": rank, "trial_id": row["trial_id"], "name": row["name"], "score": row["score"],
            "proxy_accuracy": row.get("proxy_accuracy"), "peak_memory_bytes": row.get("peak_memory_bytes"),
            "params": arch.params(), "dir": str(out), "arch": arch.to_dict(), "plan": None}


class _ArchSpaceFn:
    """Picklable define-by-run function (the searcher is pickled at every checkpoint)."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, trial):
        spaces.define_arch_space(trial, self.spec)


def headline(exp, setup: ScratchSetup) -> str:
    from search._report import human_bytes
    return (f"track 2 (from scratch), device {exp.device}, budget {human_bytes(setup.budget_bytes)}, "
            f"{exp.search.trials} trials ({exp.search.sampler}, {exp.search.mode}), runtime {exp.runtime}, "
            f"tokens/trial {', '.join(f'{t:,}' for t in setup.spec.tokens)}, data {'+'.join(setup.spec.datasets)}")


def _kind():
    from search._driver import TrialKind
    return TrialKind(setup=build_setup, prepare=prepare, trainable=run_scratch_trial,
                     space=lambda s: _ArchSpaceFn(s.spec), materialise=materialise, headline=headline,
                     columns=COLUMNS, reference=REFERENCE)


SCRATCH = _kind()
