"""One search trial: parameters -> plan -> pruned (and distilled) model -> scores at each fidelity rung.

Lives in an importable module (not __main__) so Ray workers import it, and a resumed search runs
the current code rather than a pickled copy.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import compress
import objectives
import spaces
from search import _tracking

GB = 1024**3


@dataclass(kw_only=True)
class TrialSetup:
    """Everything a trial needs, computed once by the driver and shipped to workers."""
    model_source: str
    base_shapes: compress.ModelShapes     # the dense model's shapes (read once from its config)
    spec: spaces.SpaceSpec
    profile_name: str
    budget_bytes: float
    rungs: int
    tasks: list
    weights: dict
    teacher_cache: str
    multi: str | None = None              # None (single objective) | "memory" | "tokens_per_s"
    tracking_uri: str | None = None
    mlflow_experiment_id: str | None = None
    parent_run_id: str | None = None
    distill: dict = field(default_factory=dict)
    seed: int = 0
    unsafe_exec: bool = False             # HumanEval without a sandbox (the user passed --unsafe-exec)
    # data-parallel distillation: >= 2 runs it on that many Ray Train workers (one GPU each when use_gpu)
    distill_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    train_storage: str | None = None      # Ray Train run folders (None: Ray's default, ~/ray_results)

    def profile(self):
        return objectives.get_profile(self.profile_name).with_budget(int(self.budget_bytes))

    def memory_of(self):
        profile, base = self.profile(), self.base_shapes
        return lambda plan: objectives.estimate_memory(plan.realised_shapes(base), profile).total_bytes


def plan_for(params: dict, setup: TrialSetup) -> compress.Plan:
    return spaces.params_to_plan(params, setup.spec, memory_of=setup.memory_of(), budget_bytes=setup.budget_bytes)


device = compress.accelerator
load_on_device = compress.load_on_device


def build_candidate(params: dict, setup: TrialSetup, plan: compress.Plan | None = None):
    """The pruned model for these parameters."""
    plan = plan or plan_for(params, setup)
    model, tokenizer = load_on_device(setup.model_source)
    result = compress.prune(model, tokenizer, plan)
    return plan, result, model, tokenizer


def schedule_for(params: dict, setup: TrialSetup) -> compress.DistillSchedule | None:
    """The trial's distillation schedule (None when distillation is off). Reports split it into
    `rungs` equal parts, so ASHA compares trials after the same share of their training."""
    sampled = spaces.distill_schedule_params(params)
    if sampled is None:
        return None
    steps = int(sampled["steps"])
    fixed = {k: setup.distill[k] for k in ("seq_len", "batch_size", "zero_stage", "precision") if k in setup.distill}
    return compress.DistillSchedule(
        steps=steps, lr=float(sampled["lr"]), warmup_steps=int(sampled["warmup"] * steps),
        temperature=float(sampled["temperature"]), kd_weight=float(sampled["kd_weight"]),
        hidden_weight=float(sampled["hidden_weight"]), report_every=max(1, -(-steps // setup.rungs)),
        seed=setup.seed, **fixed)


def check_distill_memory(plan: compress.Plan, schedule, setup: TrialSetup, *, gpus: int) -> dict:
    """Before anything is loaded: the distillation's per-device memory, from shapes alone, against what
    this device has free now. A trial that cannot fit fails at once with the breakdown, not after minutes
    of loading (or with an allocator error halfway through a step)."""
    import torch
    where = device()
    student = plan.realised_shapes(setup.base_shapes)
    estimate = compress.estimate_for_shapes(student, setup.base_shapes, schedule, gpus=gpus, device_type=where.type)
    free = int(torch.cuda.mem_get_info(where)[0]) if where.type == "cuda" else compress.available_memory("cpu")
    compress.check_fits(estimate, free)
    return estimate


def recover(model, tokenizer, result, schedule, setup: TrialSetup, on_report=None):
    """Distil the pruned `model` from the dense teacher (loaded 16-bit on a GPU, frozen); returns the student."""
    teacher, _ = load_on_device(setup.model_source)
    student, _ = compress.distill(model, teacher, tokenizer, schedule, layer_map=result.layer_map, on_report=on_report)
    return student


def run_trial(config: dict, setup: TrialSetup) -> None:
    """Ray Tune function trainable. Reports once per fidelity rung; ASHA may stop it between rungs.

    With `setup.distill_workers` >= 2 a distilling trial runs on that many Ray Train workers (search/
    _data_parallel.py) and relays their reports; otherwise everything runs in this process."""
    from ray import tune

    params = {k: v for k, v in config.items() if k != "baseline"}
    baseline = config.get("baseline", "")
    run = _tracking.TrialRun.start(setup, tune.get_context().get_trial_id(), params, baseline=baseline)
    try:
        if setup.distill_workers >= 2 and schedule_for(params, setup) is not None:
            from search import _data_parallel
            _data_parallel.run(params, setup, run, baseline=baseline, trial_id=tune.get_context().get_trial_id())
        else:
            trial_body(params, setup, run, baseline=baseline, report=_tune_report)
        run.finish("FINISHED")
    except SystemExit as stop:  # Tune ends a trial the scheduler stopped with sys.exit(0) inside report()
        if stop.code in (0, None):
            run.finish("FINISHED", tag=("stopped_early", "true"))
        else:
            run.finish("FAILED", reason=f"SystemExit({stop.code})")
        raise
    except BaseException as err:
        run.finish("FAILED", reason=f"{type(err).__name__}: {err}")
        raise


def _tune_report(metrics: dict) -> bool:
    from ray import tune
    tune.report(metrics)   # ASHA may stop the trial here (SystemExit(0))
    return False


def trial_body(params: dict, setup: TrialSetup, run, *, baseline: str, report, rank: int = 0, world: int = 1):
    """Prune (and distil) the candidate for `params`, scoring it once per fidelity rung; returns
    (plan, prune result, model). `report(metrics) -> stop?` gets rank 0's scores. In a data-parallel
    distillation every rank runs this; only rank 0 logs and reports (under ZeRO-3 every rank also runs
    the scoring forwards, which are collectives there)."""
    start = time.perf_counter()
    plan = plan_for(params, setup)
    schedule = schedule_for(params, setup)
    if schedule is not None:
        check_distill_memory(plan, schedule, setup, gpus=world)
    plan, result, model, tokenizer = build_candidate(params, setup, plan)
    if rank == 0:
        run.log_plan(plan, result)
    context = objectives.EvalContext(profile=setup.profile(), teacher_cache=setup.teacher_cache, seed=setup.seed,
                                     extra={"tasks": setup.tasks})
    candidate = objectives.Candidate(shapes=result.shapes, model=model, tokenizer=tokenizer)
    judges = trial_objectives(setup)
    weights = objectives.ProxyWeights.from_dict(setup.weights)
    rung = 0

    def evaluate_and_report(extra: dict | None = None) -> bool:
        nonlocal rung
        was_training = model.training
        model.eval()
        metrics = objectives.evaluate_all(candidate, context, objectives=judges, fidelity=rung, weights=weights)
        model.train(was_training)
        rung += 1
        if rank != 0:
            return False
        scores = score_report(metrics, setup, seconds=time.perf_counter() - start)
        scores.update(rung=rung - 1, rungs=setup.rungs, baseline=baseline,
                      kept_fraction=result.params / result.base_params, **(extra or {}))
        run.log_metrics(scores, step=rung - 1)
        return bool(report(scores))

    if schedule is None:
        for _ in range(setup.rungs):
            if evaluate_and_report():
                break
    else:  # the fidelity ladder follows distillation: one report per share of the steps
        model = recover(model, tokenizer, result, schedule, setup, on_report=lambda step, m: evaluate_and_report(
            {"distill_step": step, "distill_loss": m["loss"], "distill_world": world}))
    return plan, result, model


def trial_objectives(setup: TrialSetup) -> list:
    proxy = objectives.ProxyAccuracyObjective(tasks=tuple(setup.tasks), unsafe_exec=setup.unsafe_exec)
    return ["memory", "throughput", "fidelity", proxy]


def score_report(metrics: dict, setup: TrialSetup, *, seconds: float) -> dict:
    score = metrics[objectives.COMPOSITE]
    if not math.isfinite(score):
        raise FloatingPointError(f"proxy score is {score} (kl={metrics.get('kl_to_teacher')})")
    constraint_gb = (metrics["peak_memory_bytes"] - setup.budget_bytes) / GB
    return {**{k: float(v) for k, v in metrics.items()}, "score": float(score),
            "constraint": constraint_gb, "trial_seconds": seconds}
