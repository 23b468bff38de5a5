"""Baselines run to the final rung, and every printed gain compares the best trial and a baseline at the same
rung (same KL blocks, same proxy items), with each one's parameter count."""
import io
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search import _report
from search._asha import BaselineASHA


def _trial(trial_id, baseline=""):
    return SimpleNamespace(trial_id=trial_id, config={"baseline": baseline, "attn_share_0": 0.5})


def _decisions(scheduler_cls):
    """Six trials report rung 1 of 2, the baselines worst: what the scheduler says to each."""
    scheduler = scheduler_cls(time_attr="training_iteration", metric="score", mode="max", max_t=2, grace_period=1,
                              reduction_factor=2)
    trials = [_trial("base-a", "uniform-l1"), _trial("base-b", "owl")] + [_trial(f"t{i}") for i in range(4)]
    scores = {"base-a": -3.0, "base-b": -2.5, "t0": -1.0, "t1": -0.9, "t2": -1.1, "t3": -2.0}
    for t in trials:
        scheduler.on_trial_add(None, t)
    # better trials report first, so the baselines fall below the rung's cutoff
    order = sorted(trials, key=lambda t: -scores[t.trial_id])
    return {t.trial_id: scheduler.on_trial_result(None, t, {"training_iteration": 1, "score": scores[t.trial_id]})
            for t in order}


def test_asha_never_stops_a_baseline_before_the_final_rung():
    stock, ours = _decisions(ASHAScheduler), _decisions(BaselineASHA)
    assert stock["base-a"] == stock["base-b"] == TrialScheduler.STOP     # what the stock scheduler does to them
    assert ours["base-a"] == ours["base-b"] == TrialScheduler.CONTINUE
    assert {k: v for k, v in ours.items() if not k.startswith("base")} == \
        {k: v for k, v in stock.items() if not k.startswith("base")}     # every other trial as before


def test_gain_compares_the_same_rung_and_says_each_parameter_count():
    best = {"score": -0.81, "rung": 1, "score_rung0": -0.95, "score_rung1": -0.81, "params": 175360}
    stopped = {"score": -1.65, "rung": 0, "score_rung0": -1.65, "params": 167872}
    c = _report.compare(best, stopped)            # a baseline that only reached rung 0: compared at rung 0
    assert c["rung"] == 0 and abs(c["gain"] - 0.70) < 1e-9
    line = _report.gain_line("uniform-l1", c, 2)
    assert "rung 0, the highest both reached" in line and "+0.7000" in line and "175,360 vs 167,872" in line
    final = {"score": -1.63, "rung": 1, "score_rung0": -1.65, "score_rung1": -1.63, "params": 175360}
    c = _report.compare(best, final)
    assert c["rung"] == 1 and abs(c["gain"] - 0.82) < 1e-9
    line = _report.gain_line("uniform-l1", c, 2)
    assert "the final rung" in line and "both 175,360 parameters" in line
    assert _report.compare(best, {"rung": None, "score": None}) is None


def test_summary_table_shows_each_rows_rung_and_parameters():
    best = {"name": "t5", "score": -0.81, "rung": 1, "params": 175360, "peak_memory_bytes": 3458944}
    base = {"name": "uniform-l1", "score": -1.63, "rung": 1, "params": 167872, "peak_memory_bytes": 3459456}
    summary = {"trials": 3, "complete": 3, "stopped_early": 0, "failed": [], "rungs": 2, "best": best,
               "baselines": {"uniform-l1": base}, "gains": {"uniform-l1": _report.compare(best, base)}, "top": []}
    out = io.StringIO()
    _report.print_summary(summary, stream=out)
    lines = out.getvalue().splitlines()
    row = next(line for line in lines if line.startswith("uniform-l1"))
    assert "final" in row and "167,872" in row
    assert any("gain over uniform-L1 baseline at the same memory budget, both scored at the final rung" in line
               and "175,360 vs 167,872" in line for line in lines)
