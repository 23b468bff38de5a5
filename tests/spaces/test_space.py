"""The space lands every trial on the memory target, respects runtime rules, and is a pure map."""
import optuna
import pytest
from transformers import LlamaConfig

import compress
import spaces

CFG = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=5, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=512, tie_word_embeddings=True)
BASE = compress.shapes_from_config(CFG)
DENSE = 2 * BASE.param_count()


def weight_bytes(plan):
    return 2 * plan.realised_shapes(BASE).param_count()


def sample(spec, n, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        spaces.define_space(trial, spec)
        yield trial.params


@pytest.mark.parametrize("runtime", ["llama.cpp", "mlc"])
def test_every_sample_lands_on_the_budget(runtime):
    spec = spaces.SpaceSpec(num_layers=5, runtime=runtime, criteria=("l1", "taylor"))
    budget = 0.6 * DENSE
    for params in sample(spec, 25):
        plan = spaces.params_to_plan(params, spec, memory_of=weight_bytes, budget_bytes=budget)
        used = weight_bytes(plan)
        assert used <= budget
        kept_whole = all(l.attn_keep == 1 and l.mlp_keep == 1 for l in plan.layers if not l.dropped)
        assert used >= 0.85 * budget or kept_whole, "the repair should use the budget, not waste it"
        assert plan.importance == params["criterion"]


def test_mlc_shapes_are_uniform_and_llama_cpp_ones_vary():
    budget = 0.6 * DENSE
    mlc = spaces.SpaceSpec(num_layers=5, runtime="mlc")
    for params in sample(mlc, 15):
        shapes = spaces.params_to_plan(params, mlc, memory_of=weight_bytes, budget_bytes=budget).realised_shapes(BASE)
        assert len(set(shapes.layers)) == 1 and shapes.layers[0].has_attention and shapes.layers[0].has_mlp
    free = spaces.SpaceSpec(num_layers=5, runtime="llama.cpp")
    varied = [len(set(spaces.params_to_plan(p, free, memory_of=weight_bytes, budget_bytes=budget)
                      .realised_shapes(BASE).layers)) > 1 for p in sample(free, 10)]
    assert any(varied)


def test_params_to_plan_is_pure():
    spec = spaces.SpaceSpec(num_layers=5)
    params = next(sample(spec, 1, seed=3))
    a = spaces.params_to_plan(params, spec, memory_of=weight_bytes, budget_bytes=0.5 * DENSE)
    b = spaces.params_to_plan(dict(params), spec, memory_of=weight_bytes, budget_bytes=0.5 * DENSE)
    assert a == b


def test_baselines():
    spec = spaces.SpaceSpec(num_layers=5, criteria=("l1", "activation"))
    uniform = spaces.params_to_plan(spaces.uniform_l1(spec), spec, memory_of=weight_bytes, budget_bytes=0.6 * DENSE)
    assert uniform.importance == "l1" and len({(l.attn_keep, l.mlp_keep) for l in uniform.layers}) == 1
    owl = spaces.params_to_plan(spaces.owl(spec, [0.01, 0.05, 0.02, 0.03, 0.04]), spec,
                                memory_of=weight_bytes, budget_bytes=0.6 * DENSE)
    keeps = [layer.mlp_keep for layer in owl.layers]
    assert owl.importance == "activation" and keeps[1] == max(keeps) and keeps[0] == min(keeps)


def test_model_that_already_fits_is_left_whole():
    spec = spaces.SpaceSpec(num_layers=5)
    plan = spaces.params_to_plan(spaces.uniform_l1(spec), spec, memory_of=weight_bytes, budget_bytes=2 * DENSE)
    assert all(layer.attn_keep == 1 and layer.mlp_keep == 1 for layer in plan.layers)


def test_impossible_budget_is_a_clear_error():
    spec = spaces.SpaceSpec(num_layers=5)
    with pytest.raises(ValueError, match="no plan of this shape fits"):
        spaces.params_to_plan(spaces.uniform_l1(spec), spec, memory_of=weight_bytes, budget_bytes=1000)


def test_multi_and_distill_parameters():
    spec = spaces.SpaceSpec(num_layers=5, multi=True, distill_steps=(10, 20))
    params = next(sample(spec, 1))
    assert 0.5 <= params["budget_use"] <= 1.0
    schedule = spaces.distill_schedule_params(params)
    assert schedule["steps"] in (10, 20) and set(schedule) >= {"lr", "temperature", "kd_weight", "hidden_weight"}
    half = spaces.params_to_plan({**params, "budget_use": 0.5}, spec, memory_of=weight_bytes, budget_bytes=DENSE)
    assert weight_bytes(half) <= 0.5 * DENSE
    assert spaces.distill_schedule_params(next(sample(spaces.SpaceSpec(num_layers=5), 1))) is None


def test_the_space_passes_reconstruction_to_every_plan():
    for reconstruct in (False, True):
        spec = spaces.SpaceSpec(num_layers=5, reconstruct=reconstruct)
        for params in sample(spec, 3):
            plan = spaces.params_to_plan(params, spec, memory_of=weight_bytes, budget_bytes=0.6 * DENSE)
            assert plan.reconstruct is reconstruct
        assert all(p.reconstruct is reconstruct for p in spaces.smallest_plans(spec))


def test_one_set_of_parameter_names_and_old_searches_read_under_them():
    """Optuna, MLflow and results.json share these names: shares say they are shares, the criterion is not
    called "importance" (Optuna's dashboard has a chart of that name); a search saved before the renaming
    resumes with the same plans."""
    spec = spaces.SpaceSpec(num_layers=5, criteria=("l1", "taylor"))
    params = next(sample(spec, 1))
    assert set(params) == {f"{k}_share_{i}" for i in range(5) for k in ("attn", "mlp")} | {"criterion"}
    old = {("importance" if k == "criterion" else k.replace("_share", "")): v for k, v in params.items()}
    assert spaces.params_to_plan(old, spec, memory_of=weight_bytes, budget_bytes=0.6 * DENSE) == \
        spaces.params_to_plan(params, spec, memory_of=weight_bytes, budget_bytes=0.6 * DENSE)
    mlc = spaces.SpaceSpec(num_layers=5, runtime="mlc")
    assert {"attn_share", "mlp_share", "criterion"} <= set(next(sample(mlc, 1)))
    assert set(spaces.uniform_l1(spec)) == set(params)


def test_the_repair_grows_back_what_rounding_left_under_the_budget():
    """Uniform KV groups flip together, so the bisection alone left a uniform plan up to ~5 % under the budget;
    the repair spends that on MLP channels, so every plan lands within one channel of it."""
    spec = spaces.SpaceSpec(num_layers=5, criteria=("l1",))
    channel = 2 * 3 * 64                        # bytes of one MLP channel (gate, up, down columns)
    for budget in (0.47 * DENSE, 0.6 * DENSE, 0.83 * DENSE):
        for params in [spaces.uniform_l1(spec)] + list(sample(spec, 8)):
            shrunk = spaces.params_to_plan(params, spec, memory_of=weight_bytes, budget_bytes=budget)
            grown = spaces.params_to_plan(params, spec, memory_of=weight_bytes, budget_bytes=budget, shapes=BASE)
            whole = all(layer.mlp_keep in (0, 1) and layer.attn_keep in (0, 1) for layer in grown.layers)
            assert budget - channel < weight_bytes(grown) <= budget or whole
            assert weight_bytes(grown) >= weight_bytes(shrunk)
            assert [s.num_key_value_heads for s in grown.realise(BASE)] == \
                [s.num_key_value_heads for s in shrunk.realise(BASE)]          # only MLP channels were added
