"""The Tune driver: launch a search, resume an interrupted one. It owns start-up (Ray, the experiment's
storage and MLflow server), fault tolerance (trial retries) and hands results to the experiment record."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Checkpoint Tune's experiment state at every loop step (default: at most every 10 s), so after a
# killed driver Tune's state and the Optuna DB agree exactly and resume loses no completed trial.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# every rung's tiny checkpoint forces a snapshot by design: Tune's "snapshotting too often" warning is noise
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import compress  # noqa: E402
import experiments  # noqa: E402
import objectives  # noqa: E402
import spaces  # noqa: E402
import cluster  # noqa: E402
from cluster import driver_node_ip  # noqa: E402
from search import _report, _tracking  # noqa: E402
from search._candidates import SECOND_OBJECTIVE, CandidateKeeper  # noqa: E402
from search._record import ExperimentRecord  # noqa: E402
from search._report import human_bytes  # noqa: E402
from search._shipped import Shipped  # noqa: E402
from search._storage import Storage  # noqa: E402
from search._trial import GB, TrialSetup, load_on_device, run_trial  # noqa: E402

RECONSTRUCT_AUTO_BYTES = 2 * 2**30   # space.reconstruct "auto": on up to this much of Gram matrices (FP32)


def build_setup(exp: experiments.Experiment, record: ExperimentRecord, *, teacher_cache=None) -> TrialSetup:
    source = compress.resolve_model(exp.model)
    config = compress.load_config(exp.model)
    base = compress.shapes_from_config(config)
    profile = objectives.get_profile(exp.device)
    budget = exp.budget_gb * GB if exp.budget_gb else profile.memory_budget_bytes
    runtime = exp.runtime
    if runtime == "llama.cpp" and base.model_type == "phi":
        # llama.cpp's phi2 graph reads one shape for all layers (GGUF `deci`, which holds per-layer shapes,
        # has no parallel block): search uniform shapes with whole-layer drops, as for MLC
        runtime = "mlc"
    spec = spaces.SpaceSpec(num_layers=base.num_layers, runtime=runtime, criteria=tuple(exp.space.criteria),
                            attn_unit=exp.space.attn_unit, min_keep=exp.space.min_keep,
                            allow_drop=exp.space.allow_drop, multi=exp.search.mode == "multi",
                            min_budget_use=exp.space.min_budget_use,
                            distill_steps=tuple(exp.distill.steps) if exp.distill.enabled else (),
                            distill_lr=tuple(exp.distill.lr), reconstruct=reconstructs(exp.space.reconstruct, base),
                            compensate=exp.space.compensate, calibration=tuple(sorted(exp.space.calibration.items())),
                            max_depth=0 if runtime == "mlc" else int(exp.space.depth * base.num_layers))
    ladder = objectives.parse_ladder(exp.proxy.ladder, use=exp.proxy.rungs)
    return TrialSetup(model_source=source, base_shapes=base, spec=spec,
                      profile_name=objectives.shippable_profile(exp.device), budget_bytes=float(budget),
                      rungs=len(ladder), ladder=[dataclasses.asdict(r) for r in ladder],
                      min_tokens_per_s=exp.search.min_tokens_per_s,
                      tasks=list(exp.proxy.tasks), weights=dict(exp.proxy.weights),
                      teacher_cache=teacher_cache, multi=exp.search.multi_objective if exp.search.mode == "multi"
                      else None, distill=exp.to_dict()["distill"], seed=exp.search.seed,
                      unsafe_exec=exp.proxy.unsafe_exec, top_uri=record.top.uri, top_k=exp.search.top_k,
                      **_parallel_settings(exp, record))


def reconstructs(setting, base) -> bool:
    """space.reconstruct -> on or off. "auto": on while the Gram matrices every trial receives stay small
    (a 7-8B model's are ~28-42 GB, more than a trial should copy out of the object store)."""
    if setting == "auto":
        return compress.gram_bytes(base) <= RECONSTRUCT_AUTO_BYTES
    return bool(setting)


def _parallel_settings(exp: experiments.Experiment, record: ExperimentRecord) -> dict:
    workers = exp.distill_workers() if exp.distill.enabled else 0
    if workers < 2:
        return {}
    gpus = exp.resources.gpus_per_trial
    # a Ray Train worker per GPU; the trial's CPUs are shared among its workers. Its run folders go to the
    # experiment's storage, which every node reaches
    return {"distill_workers": workers, "use_gpu": gpus > 0, "train_storage": record.storage.child("train").uri,
            "cpus_per_worker": max(0.25, exp.resources.cpus_per_trial / workers)}


def prepare_teacher(setup: TrialSetup, record: ExperimentRecord, *, baselines: bool = True) -> dict | None:
    """Once per experiment, from the dense model: the teacher's outputs (held-out C4, and its own answers to
    the ladder's proxy items), every criterion's unit rankings (trials only slice), the OWL layer scores.
    The first two are kept in the run directory (for `resume`) and reach trials through the object store;
    the dense model is loaded only when one of them is missing or the baselines are asked for."""
    dense = functools.cache(lambda: load_on_device(setup.model_source))
    ladder = objectives.Ladder(setup.ladder, tasks=setup.tasks, unsafe_exec=setup.unsafe_exec)
    if record.teacher_cache.exists():
        cache = objectives.TeacherCache.load(record.teacher_cache)
    else:
        model, tokenizer = dense()
        blocks = max(r.kl_blocks for r in ladder.rungs)
        cache = objectives.TeacherCache.build(model, tokenizer, level_blocks=sorted({*objectives.LEVEL_BLOCKS, blocks}))
        cache.proxy = ladder.teacher_credits(model, tokenizer, objectives.EvalContext(seed=setup.seed))
        cache.save(record.teacher_cache)
    if baselines:     # said once, at launch
        for rung, tasks in ladder.at_chance(cache).items():
            if tasks:
                print(f"fidelity ladder rung {rung}: the dense model is at chance on {', '.join(tasks)}: weight 0, "
                      "not scored", flush=True)
    setup.teacher_cache = Shipped.put(cache)
    rankings = attach_rankings(setup, record, dense)
    setup.spec = with_depth(setup.spec, rankings)
    if not baselines:
        return None
    model, tokenizer = dense()
    ratios = compress.layer_outlier_ratios(model, compress.calibration_tokens(tokenizer, dict(setup.spec.calibration),
                                                                              model=model))
    return baseline_points(setup, rankings, ratios)


def _within_trials(baselines: dict | None, trials: int) -> dict | None:
    """Baselines are trials of the search: with fewer trials than baselines the first ones run (uniform-L1 and
    OWL lead) and the others are named once, never left waiting in the study (Optuna keeps an enqueued trial
    that never ran as WAITING)."""
    if not baselines or len(baselines) <= trials:
        return baselines
    names = list(baselines)
    print(f"note: {trials} trials leave no room for the baselines {', '.join(names[trials:])}: not run "
          f"(--trials {len(names)} or more runs every baseline)", flush=True)
    return {name: baselines[name] for name in names[:trials]}


def with_depth(spec, rankings):
    """The space with its depth lever's order (space.depth > 0): ShortGPT's, from the rankings' block influence."""
    if not spec.max_depth:
        return spec
    return dataclasses.replace(spec, depth_order=spaces.influence_order(rankings.influence))


def baseline_points(setup: TrialSetup, rankings, outlier_ratios: list) -> dict:
    """{name: params} of every literature baseline whose criterion the space offers (spaces/_baselines.py), at
    this setup's budget: the ones that allocate by the budget (FLAP, ShortGPT) ask the memory model."""
    spec, base = setup.spec, setup.base_shapes
    memory_of = setup.memory_of()
    target = spaces.memory_target(setup.budget_bytes, 1.0, setup.profile().runtime_overhead_bytes)
    fits = lambda plan: memory_of(plan) <= target   # noqa: E731
    unit = spec.attn_unit
    # attention units per layer as the rankings score them: KV groups, or query heads (a head IS a group in MHA)
    attn_units = [s.num_key_value_heads if (unit == "kv_group" or s.num_key_value_heads == s.num_attention_heads)
                  else s.num_attention_heads for s in base.layers]
    makers = {
        "uniform-l1": lambda: spaces.uniform_l1(spec),
        "owl": lambda: spaces.owl(spec, outlier_ratios),
        "flap": lambda: spaces.flap(spec, rankings.scores[compress.Rankings.key("fluctuation", "attn", unit)],
                                    rankings.scores[compress.Rankings.key("fluctuation", "mlp")],
                                    [(a, s.intermediate_size) for a, s in zip(attn_units, base.layers)], fits),
        "llm-pruner": lambda: spaces.llm_pruner(spec),
        "shortgpt": lambda: spaces.shortgpt(spec, rankings.influence, fits, attn_units),
        "minitron": lambda: spaces.minitron(spec),
    }
    points = {}
    for name, make in makers.items():
        if name not in ("uniform-l1", "owl") and spaces.BASELINE_CRITERIA[name] not in spec.criteria:
            continue
        try:
            points[name] = make()
        except ValueError as err:     # e.g. FLAP under MLC's one shape, or a budget its single best unit exceeds
            print(f"note: baseline {name} is not run: {err}", flush=True)
    return points


def attach_rankings(setup: TrialSetup, record: ExperimentRecord, dense: Callable):
    """The dense model's unit rankings for every criterion of the space (and, when its plans reconstruct, the
    Gram matrices that needs; always the input means for bias compensation and the block influence ShortGPT
    reads), computed once and cached next to the teacher cache (`rankings.pt`); shipped to trials through the
    object store, and returned. `dense()` -> (model, tokenizer), called only when they are not cached yet."""
    calibration = dict(setup.spec.calibration)
    rankings = compress.Rankings.load(record.rankings) if record.rankings.exists() else None
    if rankings is None or (setup.spec.reconstruct and not rankings.grams) or not rankings.means or \
            not rankings.influence or rankings.calibration != compress.resolved_calibration(calibration) or \
            not set(setup.spec.criteria) <= set(rankings.meta.get("criteria", ())):   # (cached before those settings)
        model, tokenizer = dense()
        rankings = compress.compute_rankings(model, tokenizer, criteria=setup.spec.criteria, calibration=calibration,
                                             attn_units=[setup.spec.attn_unit], grams=setup.spec.reconstruct,
                                             means=True, influence=True)
        rankings.save(record.rankings)
    setup.rankings = Shipped.put(rankings)
    return rankings


# Ray Train (data-parallel distillation inside a trial): a trial's worker group may have to wait for
# GPUs another trial is releasing, and a trial's function thread needs more than Tune's default 2 s
# to wind its Train run down before the actor is reused.
WORKER_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "1800", "TUNE_FUNCTION_THREAD_TIMEOUT_S": "120"}
TRAIN_DRIVER_CPU = 0.01        # a data-parallel trial's own share: it relays reports, its workers compute


def start_ray(address: str | None):
    """Join `address` (failing fast when no Ray head answers there) or start a local cluster; every worker
    of the job gets WORKER_ENV and the address of its own cluster (cluster/_ray.py)."""
    return cluster.start_ray(address, worker_env=WORKER_ENV)


def _headline(exp: experiments.Experiment, setup: TrialSetup) -> str:
    return (f"model {exp.model}, device {exp.device}, budget {human_bytes(setup.budget_bytes)}, {exp.search.trials} "
            f"trials ({exp.search.sampler}, {exp.search.mode}), runtime {exp.runtime}, "
            f"reconstruction {'on' if setup.spec.reconstruct else 'off'}" + _calibration_note(setup.spec))


def calibration_select(spec) -> float:
    """The fraction of C4 the space's plans calibrate on (their settings over compress's defaults); a
    track-2 setup (an architecture space, no plans) reads as the default."""
    return float(compress.resolved_calibration(dict(getattr(spec, "calibration", ())))["select"])


def _calibration_note(spec) -> str:
    select = calibration_select(spec)
    return "" if select >= 1 else f", calibration from the {select:.0%} of C4 the dense model predicts best"


@dataclass(frozen=True, kw_only=True)
class TrialKind:
    """What a search's trials do. The driver (Tune, Optuna, ASHA, MLflow, progress, report, top-k) is the same
    for every kind: Track 1 prunes a model (PRUNE, below), Track 2 trains one from scratch (search/_scratch_trial.py)."""
    setup: Callable          # (exp, record) -> the setup shipped to every trial (writes nothing)
    prepare: Callable        # (setup, record) -> {baseline name: params}, enqueued first (launch)
    trainable: Callable      # Tune function trainable (config, setup)
    space: Callable          # setup -> picklable Optuna define-by-run function
    headline: Callable       # (exp, setup) -> the launch line's description
    materialise: Callable | None = None   # (row, rank, setup, record) -> top-k entry, its checkpoint saved
    keep_top: Callable | None = None      # (top rows, setup, exp, record) -> entries (all at once; else materialise)
    reload: Callable | None = None        # (setup, record) on `resume` (default: prepare, its baselines unused)
    columns: tuple = ()      # metrics kept in results.json / trials.csv beyond _report.COLUMNS
    reference: str = "uniform-l1"   # the baseline the best trial's gain is measured against


PRUNE = TrialKind(setup=build_setup, prepare=lambda setup, record: prepare_teacher(setup, record, baselines=True),
                  reload=lambda setup, record: prepare_teacher(setup, record, baselines=False),
                  trainable=run_trial, space=lambda s: _SpaceFn(s.spec), keep_top=_report.keep_top, headline=_headline)


def kind_of(exp) -> TrialKind:
    if getattr(exp, "track", "prune") == "scratch":
        from search._scratch_trial import SCRATCH
        return SCRATCH
    return PRUNE


def make_tuner(exp: experiments.Experiment, setup, record: ExperimentRecord, baselines: dict | None,
               *, restore: bool = False, kind: TrialKind = PRUNE):
    from ray import tune
    from search._asha import BaselineASHA
    from search._progress import ProgressPrinter
    from search._searcher import ConstrainedOptunaSearch, LocatedSearch, PlanKey, StudyDatabase, make_sampler
    from search._tune_state import StateSnapshot, repair

    # a trial that distils on Ray Train workers only waits for them: they hold the CPUs and GPUs
    trial_resources = {"cpu": TRAIN_DRIVER_CPU} if setup.distill_workers >= 2 else \
        {"cpu": exp.resources.cpus_per_trial, "gpu": exp.resources.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(kind.trainable, setup=setup), trial_resources)
    progress = ProgressPrinter(total=exp.search.trials)
    second = SECOND_OBJECTIVE[setup.multi] if setup.multi else None
    callbacks = [progress]
    if kind.keep_top is not None:     # its trials write their candidates into storage: keep only the best
        callbacks.append(CandidateKeeper(record.top.uri, k=exp.search.top_k, rungs=setup.rungs, second=second))
    local_tune = record.tune.local_path         # an object store writes whole objects: nothing to repair there
    if local_tune is not None:
        callbacks.append(StateSnapshot(local_tune))
    # a trial whose worker process or node dies is retried (from its last rung: run_trial's checkpoint),
    # as the same Tune trial, so Optuna and MLflow see it once
    run_config = tune.RunConfig(storage_path=record.storage.uri, name="tune", verbose=0, callbacks=callbacks,
                                failure_config=tune.FailureConfig(max_failures=exp.search.max_failures),
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    if restore:
        for name in repair(local_tune) if local_tune is not None else []:
            print(f"recovered {name} from its last good copy (the driver was killed while writing it)", flush=True)
        tuner = tune.Tuner.restore(record.tune.uri, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, param_space=None)
        _relocate(tuner, record, callbacks)
        return tuner, progress
    metric, mode = "score", "max"
    if setup.multi:
        metric, mode = [metric, second[0]], [mode, second[1]]
    searcher = ConstrainedOptunaSearch(
        space=kind.space(setup), metric=metric, mode=mode, baselines=baselines, max_t=setup.rungs,
        sampler=make_sampler(exp.search.sampler, seed=exp.search.seed, key=PlanKey(setup) if kind is PRUNE else None,
                             warm_start=(baselines or {}).get("owl")),
        storage=StudyDatabase(record.optuna_url), study_name=record.name,
        study_attrs=_study_attrs(exp, setup, record))
    # the baselines run every rung: the gains printed at the end compare rung with rung
    scheduler = BaselineASHA(time_attr="training_iteration", metric="score", mode="max", max_t=setup.rungs,
                             grace_period=1, reduction_factor=2) if setup.rungs > 1 else None
    tune_config = tune.TuneConfig(search_alg=LocatedSearch(searcher, max_concurrent=exp.search.workers),
                                  scheduler=scheduler, num_samples=exp.search.trials,
                                  # data-parallel trials run for minutes: a fresh actor costs seconds and keeps
                                  # each trial's Train run independent of the previous one's teardown
                                  reuse_actors=setup.distill_workers < 2)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), progress


def _relocate(tuner, record: ExperimentRecord, callbacks: list) -> None:
    """Tuner.restore brings back what was pickled at launch (tuner.pkl): the callbacks and the search algorithm,
    and with them the folders of the place the experiment was launched from. A copied or moved experiment
    resumes into itself: this run's callbacks, and new trials created in the experiment's storage as it is
    now (the study database is reopened by role: search/_searcher.py)."""
    internal = tuner._local_tuner
    internal.get_run_config().callbacks = callbacks
    search = internal._tune_config.search_alg
    if hasattr(search, "locate"):            # launched by a version that had LocatedSearch
        search.locate(record.storage.uri)


class _SpaceFn:
    """Picklable define-by-run function (the searcher is pickled at every checkpoint)."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, trial):
        spaces.define_space(trial, self.spec)


def _tracking_host(address: str | None) -> str:
    """Where the MLflow server listens: loopback for a local cluster, else this node's cluster address."""
    return driver_node_ip() if address else "127.0.0.1"


def launch(exp: experiments.Experiment, record: ExperimentRecord, *, storage: Storage | None,
           tracking_uri: str | None, address: str | None) -> int:
    start_ray(address)                              # a wrong --address fails here, before anything is written
    _note_shared_storage(address, storage)
    kind = kind_of(exp)
    with record.creating(storage_root=storage):     # anything failing inside removes the run directory again
        record.start_tracking(tracking_uri, host=_tracking_host(address))   # starts while the teacher runs
        experiments.save_experiment(exp, record.config)
        setup = kind.setup(exp, record)
        print(f"experiment {record.name}: {kind.headline(exp, setup)}, storage {record.storage.uri}", flush=True)
        baselines = _within_trials(kind.prepare(setup, record), exp.search.trials)
        _connect_tracking(setup, record, tags={"experiment_dir": str(record.path), "storage": record.storage.uri})
    with record.running(address=address):           # a failure from here on: status "failed" and the reason
        return _fit_and_report(exp, setup, record, baselines=baselines, restore=False)


def resume(record: ExperimentRecord, *, address: str | None) -> int:
    exp = record.experiment()
    kind = kind_of(exp)
    start_ray(address)
    with record.running(address=address):
        record.reopen_tracking(host=_tracking_host(address))
        setup = kind.setup(exp, record)
        (kind.reload or kind.prepare)(setup, record)
        _connect_tracking(setup, record, tags={"experiment_dir": str(record.path)})
        print(f"resuming experiment {record.name} from {record.tune.uri}", flush=True)
        return _fit_and_report(exp, setup, record, baselines=None, restore=True)


def _connect_tracking(setup, record: ExperimentRecord, *, tags: dict) -> None:
    exp_id, parent = record.tracking_ready(tags=tags)
    setup.tracking_uri, setup.mlflow_experiment_id, setup.parent_run_id = record.tracking_uri, exp_id, parent
    # what every trial receives, for the record (it names no path on the driver's disk)
    shipped = json.dumps({f.name: getattr(setup, f.name) for f in dataclasses.fields(setup)}, indent=2, default=repr)
    record.log_to_parent(texts={"trial_setup.json": shipped}, files=[(record.config, None)],
                         params=configuration(record.experiment(), setup))
    uri = record.tracking_uri
    url = _tracking.runs_url(uri, exp_id) if uri.startswith(("http://", "https://")) else uri
    print(f"MLflow: {url}  (experiment {record.name}, parent run {parent})", flush=True)


def configuration(exp, setup) -> dict:
    """The search's settings as the parent run's MLflow params (config.yaml beside them has the rest)."""
    proxy = exp.proxy
    return {"track": getattr(exp, "track", "prune"), "model": getattr(exp, "model", None) or "(from scratch)",
            "device": exp.device, "runtime": exp.runtime, "budget": human_bytes(setup.budget_bytes),
            "budget_bytes": int(setup.budget_bytes), "trials": exp.search.trials, "rungs": setup.rungs,
            "sampler": exp.search.sampler, "mode": exp.search.mode, "seed": exp.search.seed,
            "workers": exp.search.workers, "top_k": exp.search.top_k, "proxy_tasks": ",".join(proxy.tasks),
            "criteria": ",".join(getattr(getattr(exp, "space", None), "criteria", ()) or ()) or "-",
            "distill": bool(getattr(getattr(exp, "distill", None), "enabled", False)),
            "reconstruct": bool(getattr(getattr(setup, "spec", None), "reconstruct", False)),
            "calibration_select": calibration_select(getattr(setup, "spec", None))}


def _study_attrs(exp, setup, record: ExperimentRecord) -> dict:
    """The Optuna study's user attributes: what was searched (the experiment's name and the parent run's params).
    Optuna's SQL storage reads them back in key order, whatever order they were set in."""
    return {"experiment": record.name, **configuration(exp, setup)}


def _note_shared_storage(address: str | None, storage: Storage | None) -> None:
    from cluster import alive_nodes
    if address and storage is None and len(alive_nodes()) > 1:
        print("note: no --storage given: trials on other nodes write checkpoints to the same path on their own "
              "disks; pass --storage on a shared filesystem or a bucket (s3://...) for a multi-node cluster",
              flush=True)


def _fit_and_report(exp, setup, record, *, baselines, restore) -> int:
    from search._searcher import study_database
    kind = kind_of(exp)
    with study_database(record.optuna_url):        # what Tune unpickles reopens this experiment's optuna.db
        tuner, progress = make_tuner(exp, setup, record, baselines, restore=restore, kind=kind)
        grid = tuner.fit()
    rows = _report.collect(grid, setup, columns=kind.columns)
    summary = _report.finish(rows, exp, setup, record, kind=kind)
    record.update_state(status="finished", reason=None)
    record.stop_tracking()
    _report.print_summary(summary, stream=sys.stdout)
    _print_browse(record)
    return 0


def _print_browse(record: ExperimentRecord) -> None:
    """How to open the finished search in MLflow (its own server stops with the search)."""
    state = record.read_state()
    if state.get("tracking_managed") and state.get("mlflow_experiment_id"):
        url = _tracking.runs_url("http://127.0.0.1:5000", state["mlflow_experiment_id"])
        print(f"MLflow afterwards: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri "
              f"sqlite:///{record.mlflow_db.resolve()} --artifacts-destination {record.mlflow_artifacts.resolve()}, "
              f"then open {url}",
              flush=True)
