"""Proxy objective, composite score and evaluate_all: aggregate = unweighted task mean, item counts,
named-thing errors, and a describe() entry for every metric returned."""
import math

import pytest

from objectives._base import OBJECTIVES, Candidate, EvalContext
from objectives._composite import ProxyWeights, composite_score
from objectives._evaluate import describe, evaluate_all
from objectives._fidelity import TeacherCache
from objectives._proxy import DEFAULT_TASKS, ProxyAccuracyObjective


@pytest.fixture(scope="module")
def candidate(tiny_lm):
    model, tok = tiny_lm
    return Candidate(shapes=None, model=model, tokenizer=tok)


def test_aggregate_is_the_unweighted_mean_with_item_counts(candidate):
    objective = ProxyAccuracyObjective(tasks=("csqa", "chid", "truthfulqa"))
    result = objective.evaluate(candidate, EvalContext(), fidelity=0)
    assert set(result) == {m.name for m in objective.metrics()}
    accuracies = [result[f"{t}_accuracy"] for t in objective.tasks]
    assert result["proxy_accuracy"] == pytest.approx(sum(accuracies) / 3)
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert [result[f"{t}_items"] for t in objective.tasks] == [8.0, 8.0, 8.0]
    again = objective.evaluate(candidate, EvalContext(), fidelity=0)
    assert again == result   # fixed subsets, greedy scoring: deterministic


def test_generation_tasks_and_level_sizes(candidate):
    objective = ProxyAccuracyObjective(tasks=("gsm8k", "humaneval", "bbh"), max_new_tokens=(8, 16, 32))
    result = objective.evaluate(candidate, EvalContext(), fidelity=0)
    assert (result["gsm8k_items"], result["humaneval_items"], result["bbh_items"]) == (8.0, 8.0, 27.0)
    assert result["humaneval_accuracy"] == 0.0     # 8 random tokens never pass the tests


def test_unknown_task_and_bad_settings():
    with pytest.raises(ValueError, match="did you mean 'truthfulqa'"):
        ProxyAccuracyObjective(tasks=("truthfulq",))
    with pytest.raises(ValueError, match="max_new_tokens"):
        ProxyAccuracyObjective(max_new_tokens=(8, 16))
    with pytest.raises(ValueError, match="at least one task"):
        ProxyAccuracyObjective(tasks=())
    with pytest.raises(ValueError, match="fidelity"):
        ProxyAccuracyObjective(tasks="csqa").evaluate(Candidate(shapes=None), EvalContext(), fidelity=3)
    with pytest.raises(ValueError, match="loaded model"):
        ProxyAccuracyObjective(tasks="csqa").evaluate(Candidate(shapes=None), EvalContext(), fidelity=0)


def test_composite_score():
    metrics = {"proxy_accuracy": 0.4, "kl_to_teacher": 0.25, "perplexity": 20.0, "teacher_perplexity": 10.0}
    weights = ProxyWeights(accuracy=2.0, kl=1.0, log_ppl_ratio=0.5)
    assert composite_score(metrics, weights) == pytest.approx(0.8 - 0.25 - 0.5 * math.log(2))
    assert composite_score({"kl_to_teacher": 0.1}, ProxyWeights(accuracy=0, kl=1, log_ppl_ratio=0)) == -0.1
    with pytest.raises(ValueError, match="needs proxy_accuracy"):
        composite_score({"kl_to_teacher": 0.1, "perplexity": 2.0, "teacher_perplexity": 2.0})
    with pytest.raises(ValueError, match=">= 0"):
        ProxyWeights(kl=-1)
    with pytest.raises(ValueError, match="unknown composite weights"):
        ProxyWeights.from_dict({"acc": 1})


def test_evaluate_all_is_flat_and_described(candidate, tiny_lm):
    model, tok = tiny_lm
    cache = TeacherCache.build(model, tok, level_blocks=(1, 2, 2), seq_len=64)
    context = EvalContext(teacher_cache=cache)
    objectives = [ProxyAccuracyObjective(tasks=("csqa", "chid")), "fidelity"]
    result = evaluate_all(candidate, context, objectives=objectives, fidelity=0)
    info = describe(objectives)
    assert set(result) == set(info)
    assert info["kl_to_teacher"] == {"unit": "nats", "higher_is_better": False, "objective": "fidelity"}
    assert info["composite_score"]["higher_is_better"] and info["csqa_items"]["unit"] == "count"
    assert result["kl_to_teacher"] == pytest.approx(0.0, abs=1e-5)
    assert result["composite_score"] == pytest.approx(composite_score(result))
    without = evaluate_all(candidate, context, objectives=["fidelity"], fidelity=5)   # clamped to its top level
    assert "composite_score" not in without and set(without) == {"kl_to_teacher", "perplexity", "teacher_perplexity",
                                                                  "kl_to_teacher_se", "log_ppl_ratio_se"}
    with pytest.raises(ValueError, match="did you mean 'proxy'"):
        evaluate_all(candidate, context, objectives=["proxi"])
    with pytest.raises(ValueError, match="listed twice"):
        describe(["fidelity", "fidelity"])


def test_registry_names():
    assert {"proxy", "fidelity"} <= set(OBJECTIVES.names())
    assert DEFAULT_TASKS == ("csqa", "bbh", "gsm8k", "humaneval", "truthfulqa", "chid")
