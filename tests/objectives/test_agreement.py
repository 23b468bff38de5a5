"""The proxy's two modes behind one API (what the search's fidelity ladder calls), per-item agreement between
two scorings, Spearman with its confidence interval, and the chance check full-eval reports."""
import json
import math

import pytest

from objectives import ProxyAccuracyObjective, item_agreement, spearman, spearman_interval
from objectives._agreement import at_chance, describe_rho
from objectives._base import Candidate, EvalContext
from objectives._oc_report import bbh_chance_percent, chance_tasks

FEW = {"csqa": 3, "bbh": 4, "gsm8k": 2, "humaneval": 2, "truthfulqa": 3, "chid": 3}


@pytest.fixture(scope="module")
def candidate(lm):
    model, tok, _ = lm
    return Candidate(shapes=None, model=model, tokenizer=tok)


def test_both_modes_record_credits_and_texts_per_item(candidate):
    cheap = ProxyAccuracyObjective(items=FEW, max_new_tokens=(8, 8, 8))
    faithful = ProxyAccuracyObjective(mode="faithful", items=FEW, max_out_len=12)
    results = {o.mode: o.evaluate(candidate, EvalContext()) for o in (cheap, faithful)}
    for objective in (cheap, faithful):
        assert {t: len(c) for t, c in objective.last_credits.items()} == FEW
        assert {t: len(c) for t, c in objective.last_texts.items()} == FEW
        result = results[objective.mode]
        for task, credits in objective.last_credits.items():
            assert all(c in (0.0, 1.0) or 0 < c < 1 for c in credits)
            assert result[f"{task}_items"] == FEW[task]
            if task != "truthfulqa":   # faithful TruthfulQA averages over non-blank answers, as OpenCompass does
                assert result[f"{task}_accuracy"] == pytest.approx(sum(credits) / len(credits))
    # loglik: multiple choice has no text; faithful: every item is generated
    assert cheap.last_texts["csqa"] == [None] * 3 and all(isinstance(t, str) for t in cheap.last_texts["gsm8k"])
    assert all(isinstance(t, str) for texts in faithful.last_texts.values() for t in texts)
    agreement = item_agreement(cheap.last_credits, faithful.last_credits)
    assert set(agreement) == set(FEW) and all(a["n"] == FEW[t] for t, a in agreement.items())
    again = ProxyAccuracyObjective(mode="faithful", items=FEW, max_out_len=12)
    assert again.evaluate(candidate, EvalContext()) == results["faithful"]      # greedy: deterministic
    assert all(a["agreement"] == 1.0 for a in item_agreement(faithful.last_credits, again.last_credits).values())


def test_faithful_items_are_the_task_order_prefix(candidate):
    objective = ProxyAccuracyObjective(tasks=("chid",), mode="faithful", max_out_len=4)
    objective.evaluate(candidate, EvalContext(), fidelity=0)
    assert len(objective.last_credits["chid"]) == 8                             # level 0, as in loglik mode
    assert [x["id"] for x in objective.items_for("chid", None, 0)] == \
        [x["id"] for x in ProxyAccuracyObjective(tasks=("chid",), items={"chid": 8}).items_for("chid", None, 0)]


def test_bad_settings_and_missing_data_fail_with_one_line(candidate, tmp_path):
    with pytest.raises(ValueError, match="proxy mode must be one of"):
        ProxyAccuracyObjective(mode="fast")
    with pytest.raises(ValueError, match="does not score"):
        ProxyAccuracyObjective(tasks=("csqa",), items={"gsm8k": 3})
    with pytest.raises(ValueError, match="positive integer"):
        ProxyAccuracyObjective(items={"csqa": 0})
    with pytest.raises(ValueError, match="max_out_len"):
        ProxyAccuracyObjective(mode="faithful", max_out_len=0)
    with pytest.raises(ValueError, match=r"500 gsm8k items asked for, the shipped subset .* has 100"):
        ProxyAccuracyObjective(tasks=("gsm8k",), items={"gsm8k": 500}).evaluate(candidate, EvalContext())
    # TruthfulQA from mc_task.json alone has no generation references: faithful mode says what is missing
    (tmp_path / "truthfulqa").mkdir()
    (tmp_path / "truthfulqa" / "mc_task.json").write_text(json.dumps(
        [{"question": "Why?", "mc1_targets": {"Because.": 1, "No.": 0}}]))
    objective = ProxyAccuracyObjective(tasks=("truthfulqa",), mode="faithful", data_dir=tmp_path)
    with pytest.raises(ValueError, match="generation references.*TruthfulQA.csv"):
        objective.evaluate(candidate, EvalContext())
    with pytest.raises(ValueError, match="chat template"):
        ProxyAccuracyObjective(tasks=("chid",), mode="faithful", hf_type="chat").evaluate(candidate, EvalContext())


def test_item_agreement():
    a = {"csqa": [1.0, 0.0, 1.0, 0.0], "gsm8k": [0.0, 0.0], "bbh": [1.0]}
    b = {"csqa": [1.0, 1.0, 1.0, 0.0], "gsm8k": [0.0, 0.0], "chid": [0.0]}
    assert item_agreement(a, b) == {"csqa": {"agreement": 0.75, "n": 4}, "gsm8k": {"agreement": 1.0, "n": 2}}
    assert item_agreement({"x": []}, {"x": []}) == {"x": {"agreement": None, "n": 0}}
    with pytest.raises(ValueError, match="same items"):
        item_agreement({"csqa": [1.0]}, {"csqa": [1.0, 0.0]})


def test_spearman_interval_matches_fisher_z_and_widens_with_few_pairs():
    from scipy.stats import spearmanr
    x, y = [0.1, 0.4, 0.4, 0.9, 0.3, 0.7, 0.2, 0.8], [2.0, 5.0, 1.0, 9.0, 5.0, 8.0, 3.0, 6.0]
    rho = spearman(x, y)
    assert rho == pytest.approx(spearmanr(x, y).statistic)
    low, high = spearman_interval(rho, len(x))
    half = 1.959964 * math.sqrt((1 + rho ** 2 / 2) / (len(x) - 3))
    assert (low, high) == pytest.approx((math.tanh(math.atanh(rho) - half), math.tanh(math.atanh(rho) + half)))
    assert low < rho < high
    wide = spearman_interval(rho, 5)
    assert wide[0] < low and wide[1] > high
    assert spearman_interval(1.0, 6)[1] < 1.0 and spearman_interval(0.5, 3) is None
    assert "no confidence interval below 4" in describe_rho(1.0, 3) and "95% CI" in describe_rho(rho, 8)


def test_at_chance_and_the_full_eval_check():
    assert at_chance(20.0, 20.0, 50) and at_chance(28.0, 20.0, 50) and not at_chance(40.0, 20.0, 50)
    assert at_chance(0.0, 0.0, 10) and not at_chance(10.0, 0.0, 10)
    assert 0 < bbh_chance_percent() < 50
    assert bbh_chance_percent(["word_sorting"]) == 0.0 and bbh_chance_percent(["navigate"]) == 50.0
    assert bbh_chance_percent(["date_understanding"]) == pytest.approx(100 / 6, rel=0.15)
    scores = {"CommonsenseQA": 25.0, "GSM8K": 0.0, "HumanEval": 12.5, "CHID": 14.0, "TruthfulQA": 0.0}
    items = {"CommonsenseQA": 8, "GSM8K": 8, "HumanEval": 8, "CHID": 16, "TruthfulQA": None}
    assert chance_tasks(scores, items) == ["CommonsenseQA", "GSM8K", "CHID"]


def test_full_eval_says_when_every_candidate_is_at_chance(tmp_path, monkeypatch):
    from objectives import _oc_report
    from search._record import ExperimentRecord
    record = ExperimentRecord(tmp_path, "exp")
    exp = record.path
    (exp / "top").mkdir(parents=True)
    top = [{"rank": i + 1, "trial_id": f"t{i}", "name": f"c{i}", "dir": str(exp / "top" / f"r{i}"), "score": s}
           for i, s in enumerate([0.9, 0.5, 0.7, 0.6])]
    (exp / "results.json").write_text(json.dumps({"summary": {"top": top}, "trials": []}))
    for i in range(4):            # the candidates' checkpoints (OpenCompass itself is replaced below)
        (exp / "top" / f"r{i}").mkdir()
        (exp / "top" / f"r{i}" / "config.json").write_text("{}")

    def at_chance_run(model_dir, **kwargs):
        scores = {"CommonsenseQA": 20.0, "BIG-Bench-Hard": bbh_chance_percent() - 3, "GSM8K": 0.0, "HumanEval": 0.0, "CHID": 12.5,
                  "TruthfulQA": 30.0 + int(model_dir[-1])}
        items = {"CommonsenseQA": 8, "BIG-Bench-Hard": 54, "GSM8K": 8, "HumanEval": 8, "CHID": 16, "TruthfulQA": None}
        return {"scores": scores, "average": sum(scores.values()) / 6, "model_class": "X", "output_dir": "o",
                "errors": {}, "items": items}

    monkeypatch.setattr(_oc_report, "run_opencompass", at_chance_run)
    with pytest.raises(ValueError, match="needs more than the shipped subsets"):   # refused before any candidate
        _oc_report.full_eval_top(record, 4, limit=None, echo=lambda *_: None)
    assert not (exp / "opencompass.json").exists()
    lines = []
    report = _oc_report.full_eval_top(record, 4, limit=8, echo=lines.append)
    assert report["all_at_chance"] and report["spearman_ci95"] and len(report["spearman_ci95"]) == 2
    assert any("95% CI" in line for line in lines)
    assert any("indistinguishable from guessing" in line for line in lines)
    saved = json.loads((exp / "opencompass.json").read_text())
    assert saved["candidates"][0]["at_chance"] == ["CommonsenseQA", "BIG-Bench-Hard", "GSM8K", "HumanEval", "CHID"]
