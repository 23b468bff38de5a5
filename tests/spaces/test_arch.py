"""Track 2 space: every sampled architecture is repaired onto the budget (and only shrunk when it must be),
runtime rules hold, and budgets or datasets the rules / the space cannot meet are refused."""
import dataclasses

import optuna
import pytest

import objectives
import spaces
from compress import Arch
from spaces._arch import _arch_at

PROFILE = objectives.get_profile("stories260k-tiny")
BUDGET = PROFILE.memory_budget_bytes
SPEC = spaces.ArchSpec()          # the bundled-scale ranges (experiments/scratch-tiny.yaml is close to them)


def memory(arch: Arch) -> int:
    return objectives.estimate_memory(arch.shapes(), PROFILE).total_bytes


def sample(spec, n, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        spaces.define_arch_space(trial, spec)
        yield trial.params


def test_every_sample_is_repaired_onto_the_budget_and_shrunk_only_when_needed():
    repaired = 0
    for params in sample(SPEC, 150):
        arch = spaces.params_to_arch(params, SPEC, memory_of=memory, budget_bytes=BUDGET)
        assert memory(arch) <= BUDGET
        assert arch.hidden % arch.heads == 0 and arch.heads == arch.kv_heads * params["gqa"]
        assert arch.head_dim == params["head_dim"] and arch.context == params["context"]
        unrepaired = spaces.params_to_arch(params, SPEC, memory_of=memory, budget_bytes=float("inf"))
        if memory(unrepaired) <= BUDGET:
            assert arch == unrepaired          # a point that fits is trained as sampled
        else:
            repaired += 1
            assert arch.params() < unrepaired.params()
            # bisection finds the largest scale that fits: no point of the scaling path that fits uses more
            path = [_arch_at(i / 200, params, SPEC, vocab=arch.vocab, tie=arch.tie) for i in range(201)]
            assert memory(arch) >= max(m for m in map(memory, path) if m <= BUDGET)
    assert repaired > 30, "the bundled ranges are meant to overshoot the budget often"


def test_the_repair_falls_back_to_tied_embeddings_and_smaller_vocabularies():
    params = next(sample(SPEC, 1))
    params.update(vocab=768, tie=False, layers=1, hidden=32, kv_heads=1, gqa=1, head_dim=8, ffn_mult=1.0, ffn_slope=0.0)
    small = memory(spaces.smallest_arch(dataclasses.replace(SPEC, vocab=(768,))))    # vocab 768, tied, at least
    arch = spaces.params_to_arch(params, SPEC, memory_of=memory, budget_bytes=small)
    assert arch.vocab == 768 and arch.tie and memory(arch) <= small             # untied would not fit
    arch = spaces.params_to_arch(params, SPEC, memory_of=memory, budget_bytes=small * 0.9)
    assert arch.vocab < 768 and memory(arch) <= small * 0.9


def test_per_layer_ffn_for_llama_cpp_one_shape_for_mlc():
    llama = [spaces.params_to_arch(p, SPEC, memory_of=memory, budget_bytes=BUDGET) for p in sample(SPEC, 30)]
    assert any(not a.uniform for a in llama)
    mlc = dataclasses.replace(SPEC, runtime="mlc")
    for params in sample(mlc, 30):
        assert "ffn_slope" not in params
        assert spaces.params_to_arch(params, mlc, memory_of=memory, budget_bytes=BUDGET).uniform


def test_budgets_nothing_fits_and_foreign_datasets_are_refused():
    smallest = spaces.smallest_arch(SPEC)
    assert spaces.check_feasible(SPEC, memory_of=memory, budget_bytes=memory(smallest)) == smallest
    with pytest.raises(ValueError, match="no architecture of the space fits"):
        spaces.check_feasible(SPEC, memory_of=memory, budget_bytes=memory(smallest) - 1)
    with pytest.raises(ValueError, match="no architecture of the space fits"):
        spaces.params_to_arch(next(sample(SPEC, 1)), SPEC, memory_of=memory, budget_bytes=memory(smallest) - 1)
    with pytest.raises(ValueError, match="'wikitext' is not allowed"):
        spaces.ArchSpec(datasets=("c4", "wikitext"))
    with pytest.raises(ValueError, match="hidden_multiple"):
        spaces.ArchSpec(hidden=(24, 96), hidden_multiple=12, gqa=(8,))


def test_schedule_mix_and_baseline_parameters():
    params = next(sample(SPEC, 1))
    sched = spaces.schedule_params(params, SPEC)
    assert sched["mix"] == {"c4": params["c4_share"], "alpaca_zh": pytest.approx(1 - params["c4_share"])}
    only_c4 = dataclasses.replace(SPEC, datasets=("c4",))
    assert "c4_share" not in only_c4.param_names()
    assert spaces.schedule_params({**params}, only_c4)["mix"] == {"c4": 1.0}
    with pytest.raises(ValueError, match="missing \\['lr'\\]"):
        spaces.check_params({k: v for k, v in params.items() if k != "lr"}, SPEC)
