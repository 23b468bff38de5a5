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
    assert "uniform-l1 rung 1" in last and "done 1/3  running 1" in last and "best score 0.5000 (uniform-l1)" in last
