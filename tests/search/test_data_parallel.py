"""A distilling trial runs data-parallel on Ray Train workers (2 gloo workers on CPU here; one GPU each
on a GPU experiment), and its rung reports reach Tune: a scheduler's stop included, which must end the
Train run and free its workers for the next trial."""
import experiments
from search import _driver
from search._record import ExperimentRecord
from search._trial import run_trial

SETTINGS = {"distill.enabled": True, "distill.workers": 2, "distill.steps": [4], "distill.seq_len": 64,
            "distill.zero_stage": 3,   # the 7B YAMLs': scoring a partitioned student is a collective on every rank
            "distill.batch_size": 2, "proxy.rungs": 2, "proxy.tasks": ["csqa"], "search.workers": 1}


class StopFirstTrialAfterOneRung:
    """What ASHA decides, made deterministic: the first trial is stopped after its first report."""

    def __init__(self):
        self.first = None

    def __call__(self, trial_id, result):
        self.first = self.first or trial_id
        return trial_id == self.first and result["training_iteration"] >= 1


def test_distillation_on_two_train_workers_reports_every_rung_and_stops_cleanly(tmp_path):
    import ray
    from ray import tune
    exp = experiments.load_experiment(model="stories260k", overrides=SETTINGS)
    paths = ExperimentRecord.create(tmp_path, "dp")
    setup = _driver.build_setup(exp, paths)
    assert setup.distill_workers == 2 and not setup.use_gpu
    # two trials are enough (the first is stopped, the second runs once its workers left): uniform-L1 and OWL
    # of the baselines prepare_teacher offers
    baselines = {name: params for name, params in _driver.prepare_teacher(setup, paths).items()
                 if name in ("uniform-l1", "owl")}
    assert len(baselines) == 2
    # each trial's config: a baseline's parameters plus its name, as the searcher hands them out
    space = {"baseline": tune.grid_search(list(baselines))}
    for key in baselines["owl"]:
        space[key] = tune.sample_from(lambda spec, key=key: baselines[spec.config["baseline"]][key])
    _driver.start_ray(None)
    try:
        grid = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"cpu": _driver.TRAIN_DRIVER_CPU}),
            param_space=space, tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=False),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="tune", verbose=0,
                                      stop=StopFirstTrialAfterOneRung())).fit()
    finally:
        ray.shutdown()
    results = {r.config["baseline"]: r for r in grid}
    assert all(r.error is None for r in results.values()), [str(r.error)[-500:] for r in results.values()]
    first, second = results["uniform-l1"].metrics, results["owl"].metrics
    assert first["training_iteration"] == 1 and first["distill_step"] == 2      # stopped after its first rung
    assert second["training_iteration"] == 2 and second["distill_step"] == 4    # started once those workers left
    for metrics in (first, second):
        assert metrics["distill_world"] == 2 and metrics["kl_to_teacher"] > 0 and metrics["rungs"] == 2
