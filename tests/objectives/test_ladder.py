"""The fidelity ladder: cheap KL rungs first, the proxy later, each term weighted by its measured noise."""
import copy

import pytest
import torch

import compress
import objectives
from objectives._composite import reliable
from objectives._fidelity import batch_means_se
from objectives._ladder import above_chance

LADDER = [{"kl_blocks": 1}, {"kl_blocks": 4, "proxy": "loglik", "proxy_level": 0}]


def test_reliable_shrinks_a_term_by_its_noise():
    assert reliable(0.5, None) == 0.5                       # no measured noise: the value itself
    assert reliable(0.5, 0.0) == 0.5
    assert reliable(0.02, 0.04) == 0.0                      # within its standard error: no evidence of a change
    assert reliable(-0.3, 0.1) == pytest.approx(-0.3 * (1 - 1 / 9))   # 3 standard errors: 8/9 of it counts
    weights = objectives.ProxyWeights()
    noisy = {"proxy_accuracy": 0.3, "proxy_accuracy_delta": -0.02, "proxy_accuracy_delta_se": 0.05,
             "kl_to_teacher": 1.0, "kl_to_teacher_se": 0.01, "perplexity": 2.0, "teacher_perplexity": 1.0}
    assert objectives.composite_score(noisy, weights) == pytest.approx(-0.9999 - 0.6931471805599453, abs=1e-6)
    plain = {k: v for k, v in noisy.items() if not k.endswith("_se") and k != "proxy_accuracy_delta"}
    assert objectives.composite_score(plain, weights) == pytest.approx(0.3 - 1.0 - 0.6931471805599453)


def test_accuracy_change_is_paired_by_item():
    teacher = {"a": [1.0, 0.0, 1.0, 0.0], "b": [1.0, 1.0]}
    assert objectives.accuracy_change(teacher, teacher) == (0.0, 0.0)
    delta, se = objectives.accuracy_change({"a": [0.0, 0.0, 1.0, 0.0], "b": [1.0, 0.0]}, teacher)
    assert delta == pytest.approx((-0.25 - 0.5) / 2)
    # var of diffs a: [-1, 0, 0, 0] -> 0.25, /4; b: [0, -1] -> 0.5, /2; se = sqrt(0.0625 + 0.25) / 2
    assert se == pytest.approx((0.0625 + 0.25) ** 0.5 / 2)


def test_rank_agreement_and_ladder_parsing():
    histories = [[1.0, 10.0], [2.0, 30.0], [3.0, 20.0], [4.0, 40.0]]
    assert objectives.rank_agreement(histories) == [pytest.approx(0.8)]
    assert objectives.rank_agreement(histories[:2]) == [None]          # too few trials to say
    rungs = objectives.parse_ladder(LADDER, use=1)
    assert len(rungs) == 1 and rungs[0].proxy == "loglik"              # fewer rungs keep the final fitness
    for bad, message in (([{"kl_blocks": 0}], "kl_blocks"), ([{"kl_blocks": 1, "proxy": "exact"}], "proxy must be"),
                         ([{"kl_blocks": 1, "tokens": 5}], "unknown ladder rung keys"), ([], "at least one rung")):
        with pytest.raises(ValueError, match=message):
            objectives.parse_ladder(bad)
    with pytest.raises(ValueError, match="must be 1..2"):
        objectives.parse_ladder(LADDER, use=3)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    model, tokenizer = compress.load_model("stories260k")
    ladder = objectives.Ladder(LADDER, tasks=("csqa", "truthfulqa"))
    cache = objectives.TeacherCache.build(model, tokenizer)
    cache.proxy = ladder.teacher_credits(model, tokenizer, objectives.EvalContext())
    path = cache.save(tmp_path_factory.mktemp("teacher") / "teacher_cache.pt")
    return model, tokenizer, path


def score(model, tokenizer, cache, rung, ladder=LADDER):
    result = compress.prune(model, tokenizer, compress.Plan.uniform(5, attn_keep=0.5, mlp_keep=0.5))
    context = objectives.EvalContext(profile=objectives.get_profile("stories260k-tiny"), teacher_cache=cache)
    candidate = objectives.Candidate(shapes=result.shapes, model=model, tokenizer=tokenizer)
    return objectives.Ladder(ladder, tasks=("csqa", "truthfulqa")).evaluate(candidate, context, rung)


def test_ladder_rungs_on_the_bundled_model(bundled):
    model, tokenizer, path = bundled
    loaded = objectives.TeacherCache.load(path)
    assert set(loaded.proxy) == {"loglik/0"} and len(loaded.proxy["loglik/0"]["csqa"]) == 8   # teacher credits kept
    # the dense 260K model is at chance on both tasks: the proxy rung scores KL alone, the proxy is not run
    assert objectives.Ladder(LADDER, tasks=("csqa", "truthfulqa")).at_chance(loaded) == {1: ["csqa", "truthfulqa"]}
    cheap, full = score(copy.deepcopy(model), tokenizer, str(path), 0), score(copy.deepcopy(model), tokenizer, loaded, 1)
    assert "proxy_accuracy" not in cheap and "proxy_accuracy" not in full
    ungated = score(copy.deepcopy(model), tokenizer, loaded, 1, [LADDER[0], {**LADDER[1], "chance_z": None}])
    assert 0 <= ungated["proxy_accuracy"] <= 1 and "proxy_accuracy_delta" in ungated    # chance_z null: scored
    assert 0 < cheap["kl_to_teacher_se"] < 0.2 * cheap["kl_to_teacher"]      # KL is far above its noise
    assert full["kl_to_teacher_se"] < cheap["kl_to_teacher_se"]             # more tokens, less noise
    assert cheap["composite_score"] == pytest.approx(-reliable(cheap["kl_to_teacher"], cheap["kl_to_teacher_se"]) -
                                                     reliable(torch.tensor(cheap["perplexity"] /
                                                                           cheap["teacher_perplexity"]).log().item(),
                                                              cheap["log_ppl_ratio_se"]))
    # a teacher that answers every item right is far above chance: its tasks are scored, paired item by item
    perfect = copy.copy(loaded)
    perfect.proxy = {"loglik/0": {t: [1.0] * len(c) for t, c in loaded.proxy["loglik/0"].items()}}
    scored = score(copy.deepcopy(model), tokenizer, perfect, 1)
    assert scored["proxy_accuracy_delta"] == pytest.approx(scored["proxy_accuracy"] - 1.0)
    assert scored["proxy_accuracy_delta_se"] > 0 and scored["teacher_proxy_accuracy"] == pytest.approx(1.0)
    assert scored["composite_score"] < full["composite_score"]             # the accuracy drop counts against it


def test_chance_test():
    assert not above_chance([0.25] * 8, [0.25] * 8)                        # exactly chance
    assert not above_chance([1, 0, 0, 1, 0, 0, 0, 0], [0.25] * 8)          # 2/8 right on 4 options
    assert above_chance([1, 1, 1, 1, 1, 0, 1, 0], [0.25] * 8)              # 6/8
    assert above_chance([0, 1, 0, 0], [0.0] * 4) and not above_chance([0] * 4, [0.0] * 4)   # generated answers


def test_batch_means_standard_error():
    assert batch_means_se(torch.ones(2, 64)) == 0.0
    values = torch.arange(64.0).reshape(1, 64)       # two windows of 32: means 15.5 and 47.5
    assert batch_means_se(values) == pytest.approx(torch.tensor([15.5, 47.5]).std().item() / 2 ** 0.5)


def test_item_agreement_of_a_cheap_rung_with_a_later_one(bundled):
    """Rungs scoring more items share their leading items (stratified order): the same scoring of the same
    candidate agrees on every shared item; a changed credit shows up as exactly one disagreement."""
    model, tokenizer, path = bundled
    rungs = [{"kl_blocks": 1}, {"kl_blocks": 1, "proxy": "loglik", "proxy_level": 0, "chance_z": None},
             {"kl_blocks": 1, "proxy": "loglik", "proxy_level": 1, "chance_z": None}]
    ladder = objectives.Ladder(rungs, tasks=("csqa", "truthfulqa"))
    pruned = copy.deepcopy(model)
    result = compress.prune(pruned, tokenizer, compress.Plan.uniform(5, attn_keep=0.5, mlp_keep=0.5))
    context = objectives.EvalContext(profile=objectives.get_profile("stories260k-tiny"), teacher_cache=str(path))
    candidate = objectives.Candidate(shapes=result.shapes, model=pruned, tokenizer=tokenizer)
    for rung in range(3):
        ladder.evaluate(candidate, context, rung)
    assert ladder.item_agreement(0) == {} and ladder.item_agreement(1) == {}
    assert len(ladder.credits[1]["csqa"]) == 8 and len(ladder.credits[2]["csqa"]) == 24
    assert ladder.item_agreement(2) == {1: 1.0}
    ladder.credits[1]["csqa"][0] = 1.0 - ladder.credits[1]["csqa"][0]
    assert ladder.item_agreement(2) == {1: pytest.approx(15 / 16)}     # 8 csqa + 8 truthfulqa items compared
