"""The search's own measurement of its fidelity ladder: rank agreement of each rung with the final one (with a
confidence interval) and the per-item agreement of cheaper proxy rungs with the final rung."""
import pytest

from search._report import rung_agreement


def _row(i, rungs, status="complete", **extra):
    return {"trial_id": f"t{i}", "status": status, **{f"score_rung{k}": v for k, v in enumerate(rungs)}, **extra}


def test_rank_and_item_agreement_over_the_trials_that_reached_the_final_rung():
    rows = [_row(0, [1.0, 2.0, 10.0], item_agreement_rung1=1.0),
            _row(1, [2.0, 1.0, 30.0], item_agreement_rung1=0.5),
            _row(2, [3.0, 3.0, 20.0], item_agreement_rung1=0.75),
            _row(3, [4.0, 4.0, 40.0]),                                  # no proxy credits compared
            _row(4, [5.0, 5.0, 50.0], item_agreement_rung1=0.25),
            _row(5, [0.0], status="stopped early", item_agreement_rung1=0.0)]   # never reached the final rung
    out = rung_agreement(rows, 3)
    assert out["trials"] == 5
    assert out["spearman"]["rung0"] == pytest.approx(0.9) and out["spearman"]["rung1"] == pytest.approx(0.7)
    low, high = out["spearman_ci95"]["rung0"]
    assert -1 < low < 0.9 < high < 1                     # five trials: a wide interval around the estimate
    assert out["item_agreement"] == {"rung1": {"mean": pytest.approx(0.625), "trials": 4}}
    assert rung_agreement(rows, 1) is None
