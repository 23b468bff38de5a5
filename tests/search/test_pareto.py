"""The Pareto front a multi-objective search prints and keeps: no member dominated, every other trial dominated."""
import random

import pytest

from search import _candidates


def dominates(a: dict, b: dict, second: str, mode: str) -> bool:
    sign = 1 if mode == "max" else -1
    at_least = a["score"] >= b["score"] and sign * a[second] >= sign * b[second]
    return at_least and (a["score"] > b["score"] or sign * a[second] > sign * b[second])


def check_front(front: list[dict], rows: list[dict], second: str, mode: str) -> None:
    """What every test of a front checks (the e2e multi-objective search too): rows have distinct trial ids."""
    assert front, "a non-empty set has a non-empty front"
    for f in front:
        assert not any(dominates(o, f, second, mode) for o in rows), f    # no front member is dominated
    names = {f["trial_id"] for f in front}
    for r in rows:
        assert r["trial_id"] in names or any(dominates(f, r, second, mode) for f in front), r   # the rest all are
    assert [f["score"] for f in front] == sorted((f["score"] for f in front), reverse=True)


@pytest.mark.parametrize("second, mode", [("peak_memory_bytes", "min"), ("decode_tokens_per_s", "max")])
def test_front_is_exactly_the_non_dominated_trials(second, mode):
    rng = random.Random(0)
    for trial in range(20):
        rows = [{"trial_id": f"t{i}", "score": round(rng.uniform(-2, 0), 1), second: rng.randint(1, 8)}
                for i in range(rng.randint(1, 30))]
        check_front(_candidates.pareto_front(rows, second, mode), rows, second, mode)


def test_a_trial_better_on_both_objectives_leaves_the_other_off_the_front():
    rows = [{"trial_id": "a", "score": -1.0, "peak_memory_bytes": 10}, {"trial_id": "b", "score": -0.5,
            "peak_memory_bytes": 8}, {"trial_id": "c", "score": -0.2, "peak_memory_bytes": 12},
            {"trial_id": "d", "score": -0.5, "peak_memory_bytes": 8}]          # a tie is not a domination
    front = _candidates.pareto_front(rows, "peak_memory_bytes", "min")
    assert [r["trial_id"] for r in front] == ["c", "b", "d"]
