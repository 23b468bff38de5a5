"""The Tune driver: launch a search, resume an interrupted one. Results land in the experiment dir."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Checkpoint Tune's experiment state at every loop step (default: at most every 10 s), so after a
# killed driver Tune's state and the Optuna DB agree exactly and resume loses no completed trial.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import compress  # noqa: E402
import experiments  # noqa: E402
import objectives  # noqa: E402
import spaces  # noqa: E402
from search import _report, _tracking  # noqa: E402
from search._report import human_bytes  # noqa: E402
from search._paths import ExperimentDir  # noqa: E402
from search._trial import GB, TrialSetup, load_on_device, run_trial  # noqa: E402

SECOND_OBJECTIVE = {"memory": ("peak_memory_bytes", "min"), "tokens_per_s": ("decode_tokens_per_s", "max")}


def build_setup(exp: experiments.Experiment, paths: ExperimentDir, *, tracking_uri: str) -> TrialSetup:
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
                            distill_lr=tuple(exp.distill.lr))
    return TrialSetup(model_source=source, base_shapes=base, spec=spec, profile_name=exp.device, budget_bytes=float(budget),
                      rungs=exp.proxy.rungs, tasks=list(exp.proxy.tasks), weights=dict(exp.proxy.weights),
                      teacher_cache=str(paths.teacher_cache), multi=exp.search.multi_objective
                      if exp.search.mode == "multi" else None, tracking_uri=tracking_uri,
                      distill=exp.to_dict()["distill"], seed=exp.search.seed, unsafe_exec=exp.proxy.unsafe_exec,
                      **_parallel_settings(exp))


def _parallel_settings(exp: experiments.Experiment) -> dict:
    workers = exp.distill_workers() if exp.distill.enabled else 0
    if workers < 2:
        return {}
    gpus = exp.resources.gpus_per_trial
    # a Ray Train worker per GPU; the trial's CPUs are shared among its workers
    return {"distill_workers": workers, "use_gpu": gpus > 0,
            "cpus_per_worker": max(0.25, exp.resources.cpus_per_trial / workers)}


def prepare_teacher(setup: TrialSetup, paths: ExperimentDir) -> dict:
    """Once per experiment: the teacher's outputs on held-out C4 and the OWL baseline's layer scores."""
    model, tokenizer = load_on_device(setup.model_source)
    if not paths.teacher_cache.exists():
        objectives.TeacherCache.build(model, tokenizer).save(paths.teacher_cache)
    ratios = compress.layer_outlier_ratios(model, compress.calibration_tokens(tokenizer))
    return {"uniform-l1": spaces.uniform_l1(setup.spec), "owl": spaces.owl(setup.spec, ratios)}


DEFAULT_DASHBOARD_PORT = 8265
TRAIN_DRIVER_CPU = 0.01        # a data-parallel trial's own share: it relays reports, its workers compute
# Ray Train (data-parallel distillation inside a trial): a trial's worker group may have to wait for
# GPUs another trial is releasing, and a trial's function thread needs more than Tune's default 2 s
# to wind its Train run down before the actor is reused.
WORKER_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "1800", "TUNE_FUNCTION_THREAD_TIMEOUT_S": "120"}


def _free_port(preferred: int) -> int:
    import socket
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port for the Ray dashboard")


def start_ray(address: str | None):
    """Join `address` or start a local cluster. Every Ray worker of the job is told which cluster is
    ours (RAY_ADDRESS / RAY_API_SERVER_ADDRESS): Ray Train's placement-group cleaner asks the State API
    whether its controller is alive, and with two clusters on one machine its auto-detection can ask
    the other one, hear "dead" and remove a live trial's GPUs."""
    import ray
    env = dict(WORKER_ENV)
    if address:
        env["RAY_ADDRESS"] = address
        ctx = ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env})
        print(f"joined Ray cluster at {address}", flush=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local, loopback-only dashboard
        port = _free_port(DEFAULT_DASHBOARD_PORT)
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ctx = ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=port, log_to_driver=False, runtime_env={"env_vars": env})
    url = getattr(ctx, "dashboard_url", None)
    print(f"Ray dashboard: http://{url}" if url else "Ray dashboard: not available", flush=True)
    return ray


def make_tuner(exp: experiments.Experiment, setup: TrialSetup, paths: ExperimentDir, baselines: dict | None,
               *, restore: bool = False):
    from optuna.storages import RDBStorage
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from search._progress import ProgressPrinter
    from search._searcher import ConstrainedOptunaSearch, make_sampler
    from search._tune_state import StateSnapshot, repair

    # a trial that distils on Ray Train workers only waits for them: they hold the CPUs and GPUs
    trial_resources = {"cpu": TRAIN_DRIVER_CPU} if setup.distill_workers >= 2 else \
        {"cpu": exp.resources.cpus_per_trial, "gpu": exp.resources.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), trial_resources)
    progress = ProgressPrinter(total=exp.search.trials)
    callbacks = [progress, StateSnapshot(paths.tune)]
    run_config = tune.RunConfig(storage_path=str(paths.path), name="tune", verbose=0, callbacks=callbacks,
                                failure_config=tune.FailureConfig(max_failures=0))
    if restore:
        for name in repair(paths.tune):
            print(f"recovered {name} from its last good copy (the driver was killed while writing it)", flush=True)
        return tune.Tuner.restore(str(paths.tune), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False, param_space=None), progress
    metric, mode = "score", "max"
    if setup.multi:
        second, second_mode = SECOND_OBJECTIVE[setup.multi]
        metric, mode = [metric, second], [mode, second_mode]
    searcher = ConstrainedOptunaSearch(
        space=_SpaceFn(setup.spec), metric=metric, mode=mode, baselines=baselines, max_t=setup.rungs,
        sampler=make_sampler(exp.search.sampler, seed=exp.search.seed),
        storage=RDBStorage(paths.optuna_url), study_name=paths.name)
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="score", mode="max", max_t=setup.rungs,
                              grace_period=1, reduction_factor=2) if setup.rungs > 1 else None
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=exp.search.trials,
                                  max_concurrent_trials=exp.search.workers,
                                  # data-parallel trials run for minutes: a fresh actor costs seconds and keeps
                                  # each trial's Train run independent of the previous one's teardown
                                  reuse_actors=setup.distill_workers < 2)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), progress


class _SpaceFn:
    """Picklable define-by-run function (the searcher is pickled at every checkpoint)."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, trial):
        spaces.define_space(trial, self.spec)


def launch(exp: experiments.Experiment, *, name: str, root: Path, tracking_uri: str | None, address: str | None,
           full_eval_top: int = 0) -> int:
    paths = ExperimentDir.create(root, name)   # refuses an existing experiment: nothing is overwritten
    uri = tracking_uri or _tracking.default_tracking_uri(root)
    experiments.save_experiment(exp, paths.config)
    setup = build_setup(exp, paths, tracking_uri=uri)
    print(f"experiment {name}: model {exp.model}, device {exp.device}, budget {human_bytes(setup.budget_bytes)}, "
          f"{exp.search.trials} trials ({exp.search.sampler}, {exp.search.mode}), runtime {exp.runtime}", flush=True)
    baselines = prepare_teacher(setup, paths)
    exp_id, parent = _tracking.ensure_parent(uri, name, root / "mlartifacts", tags={"experiment_dir": str(paths.path)})
    setup.mlflow_experiment_id, setup.parent_run_id = exp_id, parent
    paths.write_state({"tracking_uri": uri, "mlflow_experiment_id": exp_id, "parent_run_id": parent,
                       "status": "running", "address": address})
    print(f"MLflow: mlflow ui --backend-store-uri {uri}  (parent run {parent})", flush=True)
    return _fit_and_report(exp, setup, paths, baselines=baselines, address=address, restore=False)


def resume(*, name: str, root: Path, address: str | None) -> int:
    paths = ExperimentDir.open(root, name)
    exp = experiments.read_experiment(paths.config)
    state = paths.read_state()
    setup = build_setup(exp, paths, tracking_uri=state["tracking_uri"])
    exp_id, parent = _tracking.ensure_parent(state["tracking_uri"], name, root / "mlartifacts", tags={},
                                             run_id=state["parent_run_id"])
    setup.mlflow_experiment_id, setup.parent_run_id = exp_id, parent
    if not paths.tune_state_exists():
        raise ValueError(f"experiment {name} has no Tune state to resume (it stopped before its first trial)")
    print(f"resuming experiment {name} from {paths.path}", flush=True)
    return _fit_and_report(exp, setup, paths, baselines=None, address=address, restore=True)


def _fit_and_report(exp, setup, paths, *, baselines, address, restore) -> int:
    start_ray(address)
    tuner, progress = make_tuner(exp, setup, paths, baselines, restore=restore)
    grid = tuner.fit()
    table = _report.collect(grid, setup, paths)
    summary = _report.finish(table, exp, setup, paths)
    paths.write_state({**paths.read_state(), "status": "finished"})
    _report.print_summary(summary, stream=sys.stdout)
    return 0
