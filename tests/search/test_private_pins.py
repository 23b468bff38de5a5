"""The private parts of Ray Tune and Optuna the search leans on, pinned: each is read here the way search/ reads it,
so an upgrade that renames or reshapes one fails this file by name instead of a search failing halfway.

Where they are used: search/_searcher.py (ConstrainedOptunaSearch: `_ot_study`, `_ot_trials`, `_completed_trials`,
the study's `_storage` and a trial's `_trial_id`; LocatedSearch: SearchGenerator's `_experiment` and its spec's
StorageContext, `ray.train._internal.storage.get_fs_and_path`; WarmCmaEsSampler: CmaEsSampler's `_x0`,
`_restore_optimizer`, `_get_trials`) and search/_report.py (ResultGrid's `_experiment_analysis`)."""
import inspect

import optuna
import pytest


def test_optuna_search_keeps_its_study_and_trials_where_the_searcher_reads_them():
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch
    search = OptunaSearch(space={"x": tune.uniform(0.0, 1.0)}, metric="score", mode="max",
                          sampler=optuna.samplers.RandomSampler(seed=0))
    assert isinstance(search._ot_study, optuna.Study)
    assert search._ot_trials == {} and search._completed_trials == set()
    config = search.suggest("t1")
    trial = search._ot_trials["t1"]
    assert 0 <= config["x"] <= 1 and isinstance(trial, optuna.Trial) and isinstance(trial._trial_id, int)
    stored = search._ot_study._storage.get_trial(trial._trial_id)
    assert stored.state == optuna.trial.TrialState.RUNNING and not stored.state.is_finished()
    search.on_trial_complete("t1", {"score": 0.5, "training_iteration": 1})
    assert search._ot_study._storage.get_trial(trial._trial_id).state.is_finished()


def test_search_generator_holds_the_experiment_whose_storage_resume_relocates():
    from ray.train._internal.storage import StorageContext, get_fs_and_path
    from ray.tune.search.search_generator import SearchGenerator
    assert "_experiment" in inspect.getsource(SearchGenerator.__init__)
    assert list(inspect.signature(get_fs_and_path).parameters)[:2] == ["storage_path", "storage_filesystem"]
    for attr in ("storage_filesystem", "storage_fs_path"):
        assert attr in inspect.getsource(StorageContext)


def test_cmaes_sampler_keeps_the_start_point_and_restore_hooks_the_warm_start_uses():
    sampler = optuna.samplers.CmaEsSampler(seed=0)
    assert hasattr(sampler, "_x0") and sampler._x0 is None
    for name in ("_restore_optimizer", "_get_trials"):
        assert callable(getattr(sampler, name))
    study = optuna.create_study(sampler=sampler)
    assert sampler._get_trials(study) == []
    assert sampler._restore_optimizer([]) is None


@pytest.mark.parametrize("attr", ["_experiment_analysis"])
def test_result_grid_keeps_its_analysis(attr):
    from ray.tune import ResultGrid
    assert attr in inspect.getsource(ResultGrid.__init__)
