"""The progress line counts every running trial (a line printed only at completions showed one fewer)."""
import io
from types import SimpleNamespace

from search._progress import ProgressPrinter


def _trial(trial_id, status, **config):
    return SimpleNamespace(trial_id=trial_id, status=status, last_result={}, config=config)


def test_progress_line_counts_two_running_trials():
    stream = io.StringIO()
    progress = ProgressPrinter(total=3, stream=stream)
    a, b = _trial("a", "RUNNING", baseline="uniform-l1"), _trial("b", "PENDING")
    progress.on_trial_start(0, [a, b], b)            # Tune still shows the starting trial as PENDING
    assert "b started" in stream.getvalue() and "done 0/3  running 2" in stream.getvalue().splitlines()[-1]
    b.status = "RUNNING"
    a.last_result = {"score": 0.5, "rung": 1, "training_iteration": 2, "rungs": 2, "constraint": 0.0,
                     "baseline": "uniform-l1"}
    progress.on_trial_complete(0, [a, b], a)         # ... and the finished one as RUNNING
    last = stream.getvalue().splitlines()[-1]
    assert "uniform-l1 rung 1" in last and "done 1/3  running 1" in last
    assert "best final-rung score 0.5000 (uniform-l1)" in last


def test_best_score_is_read_at_the_final_rung_only():
    """A trial stopped at rung 0 may score higher there (another KL sample, other items): not the best."""
    stream = io.StringIO()
    progress = ProgressPrinter(total=3, stream=stream)
    a, b = _trial("a", "TERMINATED"), _trial("b", "RUNNING")
    a.last_result = {"score": -1.0, "rung": 1, "rungs": 2, "training_iteration": 2}
    b.last_result = {"score": -0.5, "rung": 0, "rungs": 2, "training_iteration": 1}
    progress.on_trial_complete(0, [a, b], b)
    assert "best final-rung score -1.0000 (a)" in stream.getvalue().splitlines()[-1]
