"""Console progress while a search runs: a line when a trial starts, finishes or fails, with trials
done / running / failed and the best final-rung score so far.

Counts are read from Tune's trial list at every event, so a resumed search shows the trials it
restored as well as the new ones.
"""
from __future__ import annotations

import sys
import time

from ray.tune import Callback


class ProgressPrinter(Callback):
    def __init__(self, *, total: int, metric: str = "score", stream=None):
        self.total, self.metric = total, metric
        self.stream = stream
        self.started = time.time()

    def _best(self, trials):
        """The best score at the final rung: a cheaper rung's score (fewer KL blocks, other items) is not
        comparable with it, so trials still climbing the ladder or stopped below it are not counted."""
        best = None
        for t in trials:
            r = t.last_result or {}
            value = r.get(self.metric)
            final = r.get("rung", 0) == r.get("rungs", 1) - 1
            if value is not None and final and r.get("constraint", 0) <= 0 and (best is None or value > best[0]):
                best = (value, r.get("baseline") or t.trial_id)
        return best

    def _line(self, event: str, trials, finished=None, failed=None, started=None) -> None:
        # callbacks run before Tune updates the reported trial's status (a starting one is still PENDING,
        # a finished one still RUNNING); a line printed only at completions would always show one
        # trial fewer than run between them, so starts get a line too
        status = ["TERMINATED" if t is finished else "ERROR" if t is failed else "RUNNING" if t is started
                  else t.status for t in trials]
        done = status.count("TERMINATED")
        stopped = sum(1 for t, st in zip(trials, status) if st == "TERMINATED"
                      and (t.last_result or {}).get("training_iteration", 0) < (t.last_result or {}).get("rungs", 0))
        best = self._best(trials)
        best_text = f"best final-rung {self.metric} {best[0]:.4f} ({best[1]})" if best else "best -"
        print(f"[{time.time() - self.started:6.0f}s] {event:<30} done {done}/{self.total}  running "
              f"{status.count('RUNNING')}  failed {status.count('ERROR')}  stopped early {stopped}  {best_text}",
              file=self.stream or sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        tag = (trial.config or {}).get("baseline") or trial.trial_id
        self._line(f"{tag} started", trials, started=trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        tag = result.get("baseline") or trial.trial_id
        self._line(f"{tag} rung {result.get('rung', 0)} {result.get(self.metric, float('nan')):.4f}", trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(f"{trial.trial_id} FAILED", trials, failed=trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        # its worker process or node died: Tune retries it (FailureConfig) from its last rung
        self._line(f"{trial.trial_id} retried (failure {trial.num_failures})", trials)
