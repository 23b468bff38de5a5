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
    the experiment's storage (top_uri, train_storage) and to MLflow over HTTP."""
    model_source: str
    base_shapes: compress.ModelShapes     # the dense model's shapes (read once from its config)
    spec: spaces.SpaceSpec
    profile_name: Any                     # a registered profile's name, or the DeviceProfile of a profile file
    budget_bytes: float
    rungs: int                            # = len(ladder): one report per rung
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
    ladder: list = field(default_factory=list)   # the fidelity ladder's rungs (objectives.Rung mappings)
    rankings: Any = None                  # the dense model's compress.Rankings (a Shipped reference), computed once
    min_tokens_per_s: float | None = None # throughput floor: the constraint the sampler sees (repair cannot ensure it)
    # data-parallel distillation: >= 2 runs it on that many Ray Train workers (one GPU each when use_gpu)
    distill_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    train_storage: str | None = None      # Ray Train run folders (None: Ray's default, ~/ray_results)
    top_uri: str | None = None            # the experiment's storage top/ folder: trials save candidates there
    top_k: int = 0

    def profile(self):
        """The device running the search's runtime (its fixed memory and per-token cost), at the budget."""
        return objectives.get_profile(self.profile_name).for_runtime(self.spec.runtime).with_budget(int(self.budget_bytes))

    def memory_of(self):
        profile, base = self.profile(), self.base_shapes
        return lambda plan: objectives.estimate_memory(plan.realised_shapes(base), profile).total_bytes


def plan_for(params: dict, setup: TrialSetup) -> compress.Plan:
    return spaces.params_to_plan(params, setup.spec, memory_of=setup.memory_of(), budget_bytes=setup.budget_bytes,
                                 shapes=setup.base_shapes,
                                 fixed_bytes=setup.profile().runtime_overhead_bytes)


device = compress.accelerator
load_on_device = compress.load_on_device


def build_candidate(params: dict, setup: TrialSetup, plan: compress.Plan | None = None):
    """The pruned model for these parameters."""
    plan = plan or plan_for(params, setup)
    model, tokenizer = load_on_device(setup.model_source)
    result = compress.prune(model, tokenizer, plan, rankings=_value(setup.rankings))
    return plan, result, model, tokenizer


def _value(shipped):
    """What the driver computed once: a Shipped object-store reference resolves here, a plain value passes."""
    return shipped.get() if hasattr(shipped, "get") else shipped


def schedule_for(params: dict, setup: TrialSetup) -> compress.DistillSchedule | None:
    """The trial's distillation schedule (None when distillation is off). Reports split it into
    `rungs` equal parts, so ASHA compares trials after the same share of their training."""
    sampled = spaces.distill_schedule_params(params)
    if sampled is None:
        return None
    steps = int(sampled["steps"])
    fixed = {k: setup.distill[k] for k in ("seq_len", "batch_size", "gradient_accumulation", "zero_stage", "precision",
                                           "activation_checkpointing") if k in setup.distill}
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
    trial_id = tune.get_context().get_trial_id()
    with _tracking.TrialRun.start(setup, trial_id, params, baseline=baseline).finishing() as run:
        if setup.distill_workers >= 2 and schedule_for(params, setup) is not None:
            from search import _data_parallel
            _data_parallel.run(params, setup, run, baseline=baseline, trial_id=trial_id)
        else:
            # a retried (its worker or node died) or resumed trial goes on after its last reported rung
            trial_body(params, setup, run, baseline=baseline, report=report_with_rung, skip=restored_rungs(),
                       trial_id=trial_id)


def _tune_report(metrics: dict) -> bool:
    from ray import tune
    tune.report(metrics)   # ASHA may stop the trial here (SystemExit(0))
    return False


RUNG_FILE = "rung.json"


def restored_rungs() -> int:
    """How many rungs this trial reported before it was interrupted (0 for a fresh trial)."""
    from ray import tune
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        return int(json.loads((Path(folder) / RUNG_FILE).read_text())["rungs_done"])


def report_with_rung(metrics: dict) -> bool:
    """tune.report with a checkpoint of a few bytes: the rungs done. The model is not checkpointed: pruning
    is deterministic, so a retried trial re-prunes and goes on from the next rung."""
    from ray import tune
    with tempfile.TemporaryDirectory(prefix="edgeprune-rung-") as folder:
        (Path(folder) / RUNG_FILE).write_text(json.dumps({"rungs_done": int(metrics["rung"]) + 1}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))   # ASHA may stop it here
    return False


def ray_node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


class Evaluation:
    """One trial's candidate and its fidelity ladder, without Ray: `report()` scores the next rung.
    trial_body reports each to Tune; bench/search_quality.py drives the same object in-process."""

    def __init__(self, params: dict, setup: TrialSetup, plan: compress.Plan | None = None, *, trains: bool = False):
        self.start = time.perf_counter()
        self.setup = setup
        self.plan, self.result, self.model, self.tokenizer = build_candidate(params, setup, plan)
        self.ladder = objectives.Ladder(setup.ladder, tasks=setup.tasks, unsafe_exec=setup.unsafe_exec,
                                        weights=objectives.ProxyWeights.from_dict(setup.weights))
        self.context = objectives.EvalContext(profile=setup.profile(), teacher_cache=_value(setup.teacher_cache),
                                              seed=setup.seed, extra={"tasks": setup.tasks})
        # without training between rungs, a rung re-uses the KL blocks the cheaper rungs scored
        self.candidate = objectives.Candidate(shapes=self.result.shapes, model=self.model, tokenizer=self.tokenizer,
                                              reuse=None if trains else {})
        self.kept = kept_metrics(self.result)
        self.scores: list = []           # score at each rung so far, None if skipped (rank agreement reads them)

    def report(self, extra: dict | None = None) -> dict:
        rung = len(self.scores)
        was_training = self.model.training
        self.model.eval()
        metrics = self.ladder.evaluate(self.candidate, self.context, min(rung, len(self.ladder) - 1))
        self.model.train(was_training)
        report = score_report(metrics, self.setup, seconds=time.perf_counter() - self.start)
        self.scores.append(report["score"])
        # how often each cheaper proxy rung gave this candidate's items the same credit as this rung
        report.update({f"item_agreement_rung{j}": a for j, a in self.ladder.item_agreement(rung).items()})
        report.update(rung=rung, rungs=self.setup.rungs, kept_fraction=self.result.params / self.result.base_params,
                      **{f"score_rung{k}": v for k, v in enumerate(self.scores) if v is not None},
                      **self.kept, **(extra or {}))
        return report

    def skip(self) -> None:
        """Pass over the next rung without scoring it (reported before the trial was interrupted)."""
        self.scores.append(None)


def trial_body(params: dict, setup: TrialSetup, run, *, baseline: str, report, rank: int = 0, world: int = 1,
               skip: int = 0, trial_id: str = ""):
    """Prune (and distil) the candidate for `params`, scoring it once per fidelity rung; returns
    (plan, prune result, model). `report(metrics) -> stop?` gets rank 0's scores. In a data-parallel
    distillation every rank runs this; only rank 0 logs and reports (under ZeRO-3 every rank also runs
    the scoring forwards, which are collectives there). `skip`: rungs a retried trial already reported."""
    plan = plan_for(params, setup)
    schedule = schedule_for(params, setup)
    if schedule is not None:
        check_distill_memory(plan, schedule, setup, gpus=world)
    trial = Evaluation(params, setup, plan, trains=schedule is not None)
    if rank == 0:
        kept = trial.result.params / trial.result.base_params
        run.log_plan(plan, trial.result, {**trial.kept, "kept_fraction": kept})

    def offer(row: dict, model) -> None:
        _candidates.offer(setup, row, lambda folder: compress.save_pruned(
            model, trial.tokenizer, folder, plan=plan, summary=trial.result.summary(), force=True))

    last_row: list = []        # a distilling trial's last-rung row, offered once its student has come back

    def evaluate_and_report(extra: dict | None = None) -> bool:
        if len(trial.scores) < skip:       # reported before the trial was interrupted
            trial.skip()
            return False
        scores = trial.report({"baseline": baseline, "node_id": ray_node_id(), **(extra or {})})
        if rank != 0:
            return False
        run.log_metrics(scores, step=scores["rung"])
        scores["mlflow_delayed"] = run.delayed      # updates that waited out an MLflow outage so far
        # the last rung: a top-k candidate is saved by the trial that made it, a distilled one after distill()
        # returned its student (mid-training a ZeRO-3 student's parameters are partitioned); a data-parallel
        # trial's student is spread over its workers: those candidates are rebuilt by a Ray task
        if len(trial.scores) == setup.rungs and world == 1:
            row = {**scores, "trial_id": trial_id, "name": baseline or trial_id, "params": params}
            if schedule is None:
                offer(row, trial.model)
            else:
                last_row.append(row)
        return bool(report(scores))

    model = trial.model
    if schedule is None:
        for _ in range(setup.rungs):
            if evaluate_and_report():
                break
    else:  # the fidelity ladder follows distillation: one report per share of the steps
        model = recover(model, trial.tokenizer, trial.result, schedule, setup, on_report=lambda step, m:
                        evaluate_and_report({"distill_step": step, "distill_loss": m["loss"], "distill_world": world}))
        if last_row:           # the whole student (FP32, CPU): what its last rung scored, the final step's weights
            offer(last_row[-1], model)
    return plan, trial.result, model


KEPT_PREFIXES = ("kept_attn_L", "kept_mlp_L")


def kept_metrics(result) -> dict:
    """The realised plan, per layer: the fraction of attention heads and of MLP channels kept (the sampled
    parameters are shares; these are what the plan kept once scaled onto the budget)."""
    from search._plots import kept_ratios
    attn, mlp = kept_ratios(result.realised, result.base_shapes)
    return {**{f"{KEPT_PREFIXES[0]}{i:02d}": a for i, a in enumerate(attn)},
            **{f"{KEPT_PREFIXES[1]}{i:02d}": m for i, m in enumerate(mlp)}}


def score_report(metrics: dict, setup: TrialSetup, *, seconds: float) -> dict:
    """The trial's report. `constraint` (> 0 = infeasible) is only what the budget repair cannot guarantee:
    the memory budget always holds (spaces.params_to_plan), a throughput floor may not."""
    score = metrics[objectives.COMPOSITE]
    if not math.isfinite(score):
        raise FloatingPointError(f"proxy score is {score} (kl={metrics.get('kl_to_teacher')})")
    report = {**{k: float(v) for k, v in metrics.items()}, "score": float(score), "trial_seconds": seconds}
    if setup.min_tokens_per_s:
        report["constraint"] = (setup.min_tokens_per_s - metrics["decode_tokens_per_s"]) / setup.min_tokens_per_s
    return report
