"""One search trial: parameters -> plan -> pruned (and distilled) model -> scores at each fidelity rung.

Lives in an importable module (not __main__) so Ray workers import it, and a resumed search runs
the current code rather than a pickled copy.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compress
import objectives
import spaces
from search import _candidates, _tracking

GB = 1024**3


@dataclass(kw_only=True)
class TrialSetup:
    """Everything a trial needs, computed once by the driver and shipped to workers. Nothing in it is a
    path on the driver's disk: values computed once travel as `Shipped` object references, results go to
    the experiment's storage (top_uri) and to MLflow over HTTP."""
    model_source: str
    base_shapes: compress.ModelShapes     # the dense model's shapes (read once from its config)
    spec: spaces.SpaceSpec
    profile_name: str
    budget_bytes: float
    rungs: int
    tasks: list
    weights: dict
    teacher_cache: Any                    # a search._shipped.Shipped TeacherCache (or a TeacherCache / path)
    multi: str | None = None              # None (single objective) | "memory" | "tokens_per_s"
    tracking_uri: str | None = None
    mlflow_experiment_id: str | None = None
    parent_run_id: str | None = None
    distill: dict = field(default_factory=dict)
    seed: int = 0
    unsafe_exec: bool = False             # HumanEval without a sandbox (the user passed --unsafe-exec)
    top_uri: str | None = None            # the experiment's storage top/ folder: trials save candidates there
    top_k: int = 0

    def profile(self):
        return objectives.get_profile(self.profile_name).with_budget(int(self.budget_bytes))

    def memory_of(self):
        profile, base = self.profile(), self.base_shapes
        return lambda plan: objectives.estimate_memory(plan.realised_shapes(base), profile).total_bytes


def plan_for(params: dict, setup: TrialSetup) -> compress.Plan:
    return spaces.params_to_plan(params, setup.spec, memory_of=setup.memory_of(), budget_bytes=setup.budget_bytes)


def load_on_device(source: str, *, training: bool = False):
    """On a GPU worker (Ray sets CUDA_VISIBLE_DEVICES from gpus_per_trial): FP16 for scoring, FP32 master
    weights when it will be trained (DeepSpeed then computes in bf16); on CPU always FP32."""
    import torch
    cuda = torch.cuda.is_available()
    model, tokenizer = compress.load_model(source, dtype="float16" if cuda and not training else "float32")
    return model.to("cuda" if cuda else "cpu"), tokenizer


def build_candidate(params: dict, setup: TrialSetup):
    """The pruned model for these parameters."""
    plan = plan_for(params, setup)
    model, tokenizer = load_on_device(setup.model_source, training=spaces.distill_schedule_params(params) is not None)
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


def recover(model, tokenizer, result, schedule, setup: TrialSetup, on_report=None):
    """Distil the pruned `model` from the dense teacher; returns the recovered student."""
    teacher, _ = load_on_device(setup.model_source, training=True)
    student, _ = compress.distill(model, teacher, tokenizer, schedule, layer_map=result.layer_map, on_report=on_report)
    return student


def run_trial(config: dict, setup: TrialSetup) -> None:
    """Ray Tune function trainable. Reports once per fidelity rung; ASHA may stop it between rungs."""
    from ray import tune

    params = {k: v for k, v in config.items() if k != "baseline"}
    trial_id = tune.get_context().get_trial_id()
    run = _tracking.TrialRun.start(setup, trial_id, params, baseline=config.get("baseline", ""))
    done = restored_rungs()       # a retried (worker or node lost) or resumed trial goes on after its last rung
    try:
        start = time.perf_counter()
        plan, result, model, tokenizer = build_candidate(params, setup)
        run.log_plan(plan, result)
        profile = setup.profile()
        cache = setup.teacher_cache.get() if hasattr(setup.teacher_cache, "get") else setup.teacher_cache
        context = objectives.EvalContext(profile=profile, teacher_cache=cache, seed=setup.seed,
                                         extra={"tasks": setup.tasks})
        candidate = objectives.Candidate(shapes=result.shapes, model=model, tokenizer=tokenizer)
        judges = trial_objectives(setup)
        weights = objectives.ProxyWeights.from_dict(setup.weights)
        rung = 0

        def evaluate_and_report(extra: dict | None = None) -> None:
            nonlocal rung
            if rung < done:       # reported before the trial was interrupted
                rung += 1
                return
            was_training = model.training
            model.eval()
            metrics = objectives.evaluate_all(candidate, context, objectives=judges, fidelity=rung, weights=weights)
            model.train(was_training)
            report = score_report(metrics, setup, seconds=time.perf_counter() - start)
            report.update(rung=rung, rungs=setup.rungs, baseline=config.get("baseline", ""),
                          kept_fraction=result.params / result.base_params, **(extra or {}))
            report["node_id"] = ray_node_id()
            run.log_metrics(report, step=rung)
            report["mlflow_delayed"] = run.delayed      # updates that waited out an MLflow outage so far
            # the last rung: a top-k candidate is saved by the trial that made it (not mid-distillation: a
            # ZeRO-3 student's parameters are partitioned; those candidates are rebuilt by a Ray task)
            if rung == setup.rungs - 1 and schedule is None:
                row = {**report, "trial_id": trial_id, "name": config.get("baseline") or trial_id, "params": params}
                _candidates.offer(setup, row, lambda folder: compress.save_pruned(
                    model, tokenizer, folder, plan=plan, summary=result.summary(), force=True))
            rung += 1
            report_with_rung(report, rung)  # ASHA may stop the trial here (SystemExit(0))

        schedule = schedule_for(params, setup)
        if schedule is None:
            for _ in range(setup.rungs):
                evaluate_and_report()
        else:  # the fidelity ladder follows distillation: one report per share of the steps
            recover(model, tokenizer, result, schedule, setup, on_report=lambda step, m: evaluate_and_report(
                {"distill_step": step, "distill_loss": m["loss"]}) or False)
        run.finish("FINISHED")
    except SystemExit as stop:  # Tune ends a trial the scheduler stopped with sys.exit(0) inside report()
        if stop.code in (0, None):    # after the last rung or stopped early: the driver's table tags which
            run.finish("FINISHED")
        else:
            run.finish("FAILED", reason=f"SystemExit({stop.code})")
        raise
    except BaseException as err:
        run.finish("FAILED", reason=f"{type(err).__name__}: {err}")
        raise


RUNG_FILE = "rung.json"


def restored_rungs() -> int:
    """How many rungs this trial reported before it was interrupted (0 for a fresh trial)."""
    from ray import tune
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        return int(json.loads((Path(folder) / RUNG_FILE).read_text())["rungs_done"])


def report_with_rung(report: dict, rungs_done: int) -> None:
    """tune.report with a checkpoint of a few bytes: the rung reached. The model is not checkpointed: pruning
    is deterministic, so a retried trial re-prunes and goes on from the next rung."""
    from ray import tune
    with tempfile.TemporaryDirectory(prefix="edgeprune-rung-") as folder:
        (Path(folder) / RUNG_FILE).write_text(json.dumps({"rungs_done": rungs_done}))
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))


def ray_node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


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
