"""How a trial's MLflow run ends (TrialRun.finishing, shared by Track 1 and Track 2 trials)."""
import pytest

from search._tracking import TrialRun


class Recorded(TrialRun):
    def finish(self, status, *, reason=""):
        self.ended = (status, reason)


@pytest.mark.parametrize("raised, expected", [
    (None, ("FINISHED", "")),
    (SystemExit(0), ("FINISHED", "")),                      # stopped by ASHA inside tune.report
    (SystemExit(3), ("FAILED", "SystemExit(3)")),
    (FloatingPointError("proxy score is nan"), ("FAILED", "FloatingPointError: proxy score is nan")),
])
def test_finishing_ends_the_run_by_how_the_trial_ended(raised, expected):
    run = Recorded(None)
    if raised is None:
        with run.finishing():
            pass
    else:
        with pytest.raises(type(raised)), run.finishing():
            raise raised
    assert run.ended == expected
