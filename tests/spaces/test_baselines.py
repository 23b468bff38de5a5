"""The literature baselines allocate as their papers do, and every one lands on the search's parameter budget
(the repair grows as well as shrinks)."""
import pytest

import spaces
from tests.spaces.test_space import BASE, DENSE, weight_bytes

SPEC = spaces.SpaceSpec(num_layers=5, criteria=("l1", "activation", "taylor", "fluctuation", "minitron"))
FITS = lambda budget: (lambda plan: weight_bytes(plan) <= budget)   # noqa: E731


def plan_of(params, budget, spec=SPEC):
    return spaces.params_to_plan(params, spec, memory_of=weight_bytes, budget_bytes=budget, shapes=BASE)


def test_shortgpt_removes_exactly_the_lowest_influence_layers():
    influence = [0.30, 0.05, 0.20, 0.01, 0.10]            # ascending: layers 3, 1, 4, 2, 0
    for budget, attention in ((0.55 * DENSE, 0.0), (0.62 * DENSE, 0.5)):
        plan = plan_of(spaces.shortgpt(SPEC, influence, FITS(budget), [4] * 5), budget)
        dropped = [i for i, layer in enumerate(plan.layers) if layer.dropped]
        kept = [i for i, layer in enumerate(plan.layers) if layer.attn_keep == 1 and layer.mlp_keep == 1]
        assert dropped == [1, 3] and kept == [0, 2]                         # the two lowest go whole
        # the next in line keeps what the budget leaves: MLP channels, and attention only where the MLP is too small
        assert plan.layers[4].attn_keep == attention and 0 < plan.layers[4].mlp_keep < 1
        assert 0.998 * budget <= weight_bytes(plan) <= budget
    # higher influence elsewhere: other layers go
    other = plan_of(spaces.shortgpt(SPEC, [0.01, 0.3, 0.02, 0.2, 0.1], FITS(budget), [4] * 5), budget)
    assert [i for i, layer in enumerate(other.layers) if layer.dropped] == [0, 2]


def test_flap_keeps_the_globally_highest_standardized_units():
    attn = [[2.0, 1.9, -1.0, -1.5]] + [[-2.0, -2.1, -2.2, -2.3]] * 4     # 4 KV groups per layer
    mlp = [[0.5] * 172, [1.0] * 172, [-1.0] * 172, [0.0] * 172, [0.2] * 172]
    sizes = [(4, 172)] * 5
    budget = 0.55 * DENSE
    plan = plan_of(spaces.flap(SPEC, attn, mlp, sizes, FITS(budget)), budget)
    shapes = plan.realise(BASE)
    assert plan.importance == "fluctuation"
    assert [s.num_key_value_heads for s in shapes] == [2, 0, 0, 0, 0]          # only layer 0's top two groups
    ffn = [s.intermediate_size for s in shapes]
    assert ffn[1] == 172 and ffn[2] == 0 and ffn[0] == 172 and ffn[4] == 172   # by score: 1 > 0.5 > 0.2 > 0 > -1
    assert 0 < ffn[3] < 172                                                    # the threshold falls in layer 3
    assert 0.998 * budget <= weight_bytes(plan) <= budget


def test_llm_pruner_keeps_first_and_last_layers_and_prunes_the_rest_uniformly():
    spec = spaces.SpaceSpec(num_layers=32, criteria=("l1", "taylor"))
    point = spaces.llm_pruner(spec)
    assert point["criterion"] == "taylor"
    assert [point[f"mlp_share_{i}"] == point["attn_share_0"] for i in range(32)] == [i < 4 or i >= 30 for i in range(32)]
    plan = plan_of(spaces.llm_pruner(SPEC), 0.7 * DENSE)
    keeps = [(layer.attn_keep, layer.mlp_keep) for layer in plan.layers]
    assert keeps[0] == keeps[4] == (1.0, 1.0)
    assert len({k[0] for k in keeps[1:4]}) == 1 and max(k[1] for k in keeps[1:4]) - min(k[1] for k in keeps[1:4]) \
        <= 2 / 172                                                              # uniform up to the last channels


@pytest.mark.parametrize("fraction", [0.8, 0.65, 0.5])
def test_every_baseline_lands_on_the_parameter_budget(fraction):
    budget = fraction * DENSE
    fits = FITS(budget)
    points = {"uniform-l1": spaces.uniform_l1(SPEC), "owl": spaces.owl(SPEC, [0.01, 0.05, 0.02, 0.03, 0.04]),
              "llm-pruner": spaces.llm_pruner(SPEC), "minitron": spaces.minitron(SPEC),
              "shortgpt": spaces.shortgpt(SPEC, [0.3, 0.05, 0.2, 0.01, 0.1], fits, [4] * 5),
              "flap": spaces.flap(SPEC, [[1.0, 0.5, -0.5, -1.0]] * 5, [[(i % 7) / 7 - 0.4 for i in range(172)]] * 5,
                                  [(4, 172)] * 5, fits)}
    for name, params in points.items():
        used = weight_bytes(plan_of(params, budget))
        assert 0.998 * budget <= used <= budget, (name, used / budget)
    assert spaces.minitron(SPEC)["criterion"] == "minitron" and spaces.uniform_l1(SPEC)["criterion"] == "l1"


def test_the_depth_lever_removes_layers_in_block_influence_order():
    order = spaces.influence_order([0.3, 0.05, 0.2, 0.01, 0.1])
    assert order == (3, 1, 4, 2, 0)
    spec = spaces.SpaceSpec(num_layers=5, criteria=("l1", "activation"), depth_order=order, max_depth=2)
    params = {**spaces.uniform_l1(spec), "depth": 2}
    assert spaces.uniform_l1(spec)["depth"] == 0
    plan = plan_of(params, 0.6 * DENSE, spec)
    assert [i for i, layer in enumerate(plan.layers) if layer.dropped] == [1, 3]
    assert all(layer.attn_keep > 0 and layer.mlp_keep > 0 for i, layer in enumerate(plan.layers) if i not in (1, 3))
    # ShortGPT's point expresses its whole-layer removals through the lever
    point = spaces.shortgpt(spec, [0.3, 0.05, 0.2, 0.01, 0.1], FITS(0.55 * DENSE), [4] * 5)
    assert point["depth"] == 2


def test_evolution_moves_the_depth_lever_one_step_at_a_time():
    import optuna
    from search._evolution import EvolutionSampler
    dists = {"attn_share_0": optuna.distributions.FloatDistribution(0, 1), "mlp_share_0": optuna.distributions.FloatDistribution(0, 1),
             "attn_share_1": optuna.distributions.FloatDistribution(0, 1), "mlp_share_1": optuna.distributions.FloatDistribution(0, 1),
             "depth": optuna.distributions.IntDistribution(0, 4)}
    sampler = EvolutionSampler(seed=0)
    parent = {"attn_share_0": 0.5, "mlp_share_0": 0.5, "attn_share_1": 0.5, "mlp_share_1": 0.5, "depth": 2}
    moves = [sampler.mutate(parent, dists)["depth"] - 2 for _ in range(200)]
    assert set(moves) == {-1, 0, 1} and 0.1 < sum(m != 0 for m in moves) / 200 < 0.4
