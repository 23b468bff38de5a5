"""OptunaSearch with the fixes a real search needs (see shared notes on Ray Tune + Optuna):

- a constraint reaches Optuna for real (Trial.set_constraint before tell; the stock searcher never sets user
  attrs, so a constraints_func would be silently ignored). Only what the space's repair cannot guarantee is
  a constraint: the memory budget always holds (every plan is repaired onto it), a throughput floor
  (search.min_tokens_per_s) may not, so trials report `constraint` only when one is set;
- ASHA-stopped trials are told PRUNED at their last rung instead of COMPLETE;
- baselines are enqueued once as named trials (user attr "baseline"), and their name reaches the config;
- resume: results for trials the DB already finished are ignored, the sampler RNG is reseeded (so it does
  not replay the same points), and trials left RUNNING in the DB by a killed driver are failed.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)
CONSTRAINT_KEY = "constraint"   # reported by trials with a throughput floor: relative shortfall (> 0 = infeasible)


NSGA2_POPULATION = 8   # small generations: a search here runs tens of trials, not thousands
CMA_SIGMA0 = 0.15      # initial step of CMA-ES in share units (shares of the warm start normalised to mean 0.5)


def make_sampler(name: str, *, seed: int, key=None, warm_start: dict | None = None):
    """key: params -> hashable, equal for trials that realise the same plan (the evolution never repeats one).
    warm_start: the parameters CMA-ES starts from (the OWL baseline's shares; default: uniform)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=8)
    if name == "evolution":
        from search._evolution import EvolutionSampler
        return EvolutionSampler(seed=seed, key=key)
    if name == "cmaes":
        return _cmaes(seed, warm_start)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; known: tpe, evolution, cmaes, nsga2, gp, random")


def _cmaes(seed: int, warm_start: dict | None):
    """Optuna's CMA-ES over the continuous shares (the criterion and other categoricals by TPE), its mean
    started at the best trial finished when it first samples (the enqueued baselines: the best of them, so the
    search starts from the best literature allocation), else at `warm_start`, else at uniform shares."""
    import warnings
    with warnings.catch_warnings():   # x0 / sigma0 are deprecated in Optuna 5 (removal planned for 6; pinned 5.0)
        warnings.simplefilter("ignore")
        return WarmCmaEsSampler(
            x0=_x0(warm_start) if warm_start else None, sigma0=CMA_SIGMA0, seed=seed, n_startup_trials=0,
            consider_pruned_trials=True, independent_sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=8),
            warn_independent_sampling=False)


def _x0(params: dict, keys=None) -> dict:
    """A CMA-ES start from a point: its continuous parameters, shares rescaled to mean 0.5 (the repair is
    scale-invariant) so CMA-ES can move them both ways."""
    from search._evolution import SHARE, normalised
    x0 = {k: v for k, v in params.items() if isinstance(v, float) and (keys is None or k in keys)}
    x0.update(normalised({k: v for k, v in x0.items() if SHARE.match(k)}))
    return x0


class WarmCmaEsSampler(optuna.samplers.CmaEsSampler):
    """CMA-ES whose mean is set, when its optimizer is first created, to the best trial finished by then."""

    def sample_relative(self, study, trial, search_space):
        if search_space and self._restore_optimizer(self._get_trials(study)) is None:
            from search._evolution import best_trial
            best = best_trial(study)
            if best is not None and set(search_space) <= set(best.params):
                self._x0 = _x0(best.params, set(search_space))
        return super().sample_relative(study, trial, search_space)


class PlanKey:
    """params -> the realised plan (criterion and integer shapes): two trials with equal keys are one candidate.
    Picklable and light (the searcher is pickled at every checkpoint): holds a setup without its rankings."""

    def __init__(self, setup):
        import dataclasses
        # only what realising a plan reads: no object references, no location of the experiment
        self.setup = dataclasses.replace(setup, rankings=None, teacher_cache=None, top_uri=None, train_storage=None,
                                         tracking_uri=None, mlflow_experiment_id=None, parent_run_id=None)

    def __call__(self, params: dict):
        from search._trial import plan_for
        plan = plan_for(params, self.setup)
        return plan.importance, tuple(plan.realise(self.setup.base_shapes))


# ---- the study database, pickled by role instead of by path ----------------------------------------------
# Tune pickles the searcher, and the Optuna study and storage inside it, into the experiment (tuner.pkl at
# launch, searcher-state-*.pkl at every step). A plain RDBStorage pickles its absolute sqlite URL, and
# unpickling one connects to that database (and creates tables in it): a copied experiment would resume into
# the original's optuna.db. StudyDatabase pickles as "the optuna.db of the experiment being run", and
# `study_database(url)` says which file that is while the driver launches or resumes: wherever the
# experiment's folder is now.
_BOUND_URL: list[str] = []


class StudyDatabase(RDBStorage):
    def __reduce__(self):
        return (_reopen, ())


def _reopen() -> StudyDatabase:
    if not _BOUND_URL:
        raise RuntimeError("a pickled study database is reopened only inside study_database(url)")
    return StudyDatabase(_BOUND_URL[-1])


@contextlib.contextmanager
def study_database(url: str):
    """While inside, a pickled StudyDatabase (in Tune's tuner.pkl or searcher state) reopens `url`."""
    _BOUND_URL.append(url)
    try:
        yield
    finally:
        _BOUND_URL.pop()


class LocatedSearch(SearchGenerator):
    """Tune's own wrapper around a searcher (SearchGenerator over a ConcurrencyLimiter), which on resume brings
    back the Experiment pickled at launch, and with it the storage the experiment was launched in: new trials
    would be created there. `locate(uri)` names the experiment's storage as it is now; restored trials Tune
    moves itself."""
    storage_uri: str | None = None

    def __init__(self, searcher, *, max_concurrent: int):
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))

    def locate(self, uri: str) -> None:
        self.storage_uri = uri

    def set_state(self, state: dict):
        super().set_state(state)
        experiment = self._experiment
        if self.storage_uri is None or experiment is None or experiment.spec.get("storage") is None:
            return
        import copy
        from pathlib import Path
        from ray.train._internal.storage import get_fs_and_path
        storage = copy.copy(experiment.spec["storage"])
        storage.storage_filesystem, fs_path = get_fs_and_path(self.storage_uri, None)
        storage.storage_fs_path = Path(fs_path).as_posix()
        experiment.storage = experiment.spec["storage"] = storage


REALISED_ATTRS = {"kept_attn_L": "realised_attn_keep", "kept_mlp_L": "realised_mlp_keep"}


class ConstrainedOptunaSearch(OptunaSearch):
    def __init__(self, *args, baselines: dict | None = None, max_t: int = 1, study_attrs: dict | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        # what was searched (model, device, budget, experiment, ...): optuna-dashboard shows the study's user
        # attributes, so the study says it without the run directory
        for key, value in (study_attrs or {}).items():
            if key not in self._ot_study.user_attrs:
                self._ot_study.set_user_attr(key, value)
        # optuna-dashboard and study.trials_dataframe() name the objectives instead of "Objective 0"
        names = [self.metric] if isinstance(self.metric, str) else list(self.metric or [])
        if names and self._ot_study.metric_names is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(names)
        if baselines and not self._ot_study.trials:   # a fresh study: baselines first, once
            for name, params in baselines.items():
                self._ot_study.enqueue_trial(params, user_attrs={"baseline": name})

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if config is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        config["baseline"] = ot_trial.user_attrs.get("baseline", "")
        return config

    def _finished_in_db(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return True
        return self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict):
        if self._finished_in_db(trial_id):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self._finished_in_db(trial_id):
            self._completed_trials.add(trial_id)
            return
        ot_trial = self._ot_trials[trial_id]
        if result and CONSTRAINT_KEY in result:
            ot_trial.set_constraint(CONSTRAINT_KEY, float(result[CONSTRAINT_KEY]))
        for key, value in realised_plan(result or {}).items():
            ot_trial.set_user_attr(key, value)
        iteration = (result or {}).get("training_iteration", 0)
        stopped_early = result and not error and isinstance(self.metric, str) and iteration < self._max_t \
            and result.get(self.metric) is not None
        if stopped_early:  # ASHA stopped it at a lower rung: that is a pruned trial, not a complete one
            ot_trial.report(float(result[self.metric]), iteration)
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        reseed = getattr(self._ot_study.sampler, "reseed_rng", None)
        if reseed:
            reseed()
        known = {t._trial_id for t in self._ot_trials.values()}
        storage = self._ot_study._storage
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen._trial_id not in known:  # asked after the last checkpoint by a killed driver
                storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)
                log.info("failed orphan trial %d left RUNNING by an interrupted driver", frozen.number)


def realised_plan(result: dict) -> dict:
    """The trial's realised plan as Optuna user attributes: per-layer kept fractions and the parameter share."""
    attrs = {}
    for prefix, name in REALISED_ATTRS.items():
        values = [result[k] for k in sorted(k for k in result if k.startswith(prefix))]
        if values:
            attrs[name] = [round(float(v), 4) for v in values]
    if result.get("kept_fraction") is not None:
        attrs["kept_fraction"] = round(float(result["kept_fraction"]), 6)
    return attrs
