"""Samplers (EvoPress-style evolution, CMA-ES) and the constraint that reaches them."""
import math

import optuna
import pytest

import spaces
from search._evolution import STEP, EvolutionSampler, best_trial, normalised
from search._searcher import make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPEC = spaces.SpaceSpec(num_layers=5, criteria=("l1", "activation"))
SHARES = [spaces.share_name(kind, i) for i in range(5) for kind in ("attn", "mlp")]
# a toy fitness with the shape of the real one: what matters is where the budget goes (scale-invariant)
TARGET = [0.9, 0.2, 0.5, 0.8, 0.3, 0.6, 0.7, 0.1, 0.4, 1.0]


def toy(params) -> float:
    total = sum(params[n] for n in SHARES) or 1.0
    return -sum((params[n] / total - t / sum(TARGET)) ** 2 for n, t in zip(SHARES, TARGET)) * 1e3 \
        - (params["criterion"] != "activation")


def optimise(sampler, trials=60, baselines=None) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for name, params in (baselines or {}).items():
        study.enqueue_trial(params, user_attrs={"baseline": name})
    for _ in range(trials):
        trial = study.ask()
        spaces.define_space(trial, SPEC)
        study.tell(trial, toy(trial.params))
    return study


def test_level_switches_keep_the_budget_and_start_from_the_best_baseline():
    uniform = spaces.uniform_l1(SPEC)
    owl = spaces.owl(SPEC, [0.1, 0.5, 0.3, 0.2, 0.4])
    study = optuna.create_study(direction="maximize", sampler=EvolutionSampler(seed=0))
    for name, params in (("uniform-l1", uniform), ("owl", owl)):
        study.enqueue_trial(params, user_attrs={"baseline": name})
        trial = study.ask()
        spaces.define_space(trial, SPEC)
        study.tell(trial, 1.0 if name == "owl" else 0.0)      # OWL is the better warm start
    parent = normalised({n: owl[n] for n in SHARES})
    for _ in range(20):
        trial = study.ask()
        spaces.define_space(trial, SPEC)
        child = trial.params
        moved = [round(child[n] - parent[n], 6) for n in SHARES]
        assert math.isclose(sum(child[n] for n in SHARES), sum(parent.values()), abs_tol=1e-6)   # sum kept
        assert 1 <= sum(m != 0 for m in moved) <= 6 and all(abs(m / STEP - round(m / STEP)) < 1e-6 for m in moved)
        study.tell(trial, 0.5)                                 # worse than OWL: the parent stays OWL


def test_evolution_beats_random_search_on_a_budget_allocation_problem():
    uniform = {"uniform-l1": spaces.uniform_l1(SPEC)}
    for seed in range(3):
        evolved = optimise(EvolutionSampler(seed=seed), baselines=uniform).best_value
        random = optimise(optuna.samplers.RandomSampler(seed=seed), baselines=uniform).best_value
        assert evolved > random, (seed, evolved, random)


def test_evolution_never_repeats_a_candidate():
    coarse = lambda p: tuple(round(p[n] * 8) for n in SHARES) + (p["criterion"],)  # noqa: E731 - a coarse "plan"
    study = optimise(EvolutionSampler(seed=1, key=coarse), trials=40, baselines={"u": spaces.uniform_l1(SPEC)})
    keys = [coarse(t.params) for t in study.trials]
    assert len(set(keys)) == len(keys)


def test_feasible_trials_are_preferred_as_parents():
    study = optuna.create_study(direction="maximize")
    for value, constraint in ((3.0, 0.2), (1.0, -0.1)):
        trial = study.ask()
        trial.suggest_float("attn_share_0", 0, 1)
        trial.set_constraint("constraint", constraint)
        study.tell(trial, value)
    assert best_trial(study).value == 1.0


def test_cmaes_warm_starts_from_owl_and_stays_in_bounds():
    owl = spaces.owl(SPEC, [0.1, 0.5, 0.3, 0.2, 0.4])
    study = optimise(make_sampler("cmaes", seed=0, warm_start=owl), trials=30, baselines={"owl": owl})
    assert all(0 <= t.params[n] <= 1 for t in study.trials for n in SHARES)
    assert any("cma:generation" in t.system_attrs for t in study.trials)     # CMA-ES itself proposed them
    assert study.best_value > toy(owl)


@pytest.mark.parametrize("floor, expected", [(None, None), (1e12, 1.0)])
def test_only_a_throughput_floor_reaches_the_sampler_as_a_constraint(floor, expected):
    from search._driver import _SpaceFn
    from search._searcher import ConstrainedOptunaSearch
    from search._trial import TrialSetup, score_report
    setup = TrialSetup(model_source="", base_shapes=None, spec=SPEC, profile_name="stories260k-tiny",
                       budget_bytes=1.0, rungs=1, tasks=[], weights={}, teacher_cache="", min_tokens_per_s=floor)
    metrics = {"composite_score": -1.0, "peak_memory_bytes": 2.0, "decode_tokens_per_s": 0.0}
    report = score_report(metrics, setup, seconds=0.1)          # peak memory above the budget is not a constraint
    searcher = ConstrainedOptunaSearch(space=_SpaceFn(SPEC), metric="score", mode="max",
                                       sampler=make_sampler("tpe", seed=0))
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {**report, "training_iteration": 1})
    constraints = searcher._ot_study.trials[0].constraints
    assert constraints == ({} if expected is None else {"constraint": expected})


def test_cmaes_starts_from_the_best_finished_baseline_not_from_owl():
    """The search starts from the best literature baseline (its mean = that point's normalised shares), whatever
    `warm_start` was given: with OWL worse than a far-off baseline, CMA-ES's first samples centre on the latter."""
    owl = spaces.owl(SPEC, [0.1, 0.5, 0.3, 0.2, 0.4])
    better = {**owl, **{n: t for n, t in zip(SHARES, TARGET)}}
    study = optuna.create_study(direction="maximize", sampler=make_sampler("cmaes", seed=0, warm_start=owl))
    for name, params, value in (("owl", owl, -1.0), ("better", better, 1.0)):
        study.enqueue_trial(params, user_attrs={"baseline": name})
        trial = study.ask()
        spaces.define_space(trial, SPEC)
        study.tell(trial, value)
    first = []
    for _ in range(8):
        trial = study.ask()
        spaces.define_space(trial, SPEC)
        first.append(trial.params)
        study.tell(trial, -5.0)
    centre = {n: sum(p[n] for p in first) / len(first) for n in SHARES}
    target, start = normalised({n: better[n] for n in SHARES}), normalised({n: owl[n] for n in SHARES})
    near = sum((centre[n] - target[n]) ** 2 for n in SHARES)
    assert near < sum((centre[n] - start[n]) ** 2 for n in SHARES) and near < 0.1
