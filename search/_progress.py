"""Console progress while a search runs: trials done / running / failed, best score so far."""
from __future__ import annotations

import sys
import time

from ray.tune import Callback


class ProgressPrinter(Callback):
    def __init__(self, *, total: int, mode: str = "max", metric: str = "score", stream=sys.stdout):
        self.total, self.mode, self.metric, self.stream = total, mode, metric, stream
        self.running: set = set()
        self.done = self.failed = self.stopped = 0
        self.best: tuple[float, str] | None = None
        self.started = time.time()

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[0] if self.mode == "max" else value < self.best[0]

    def _line(self, event: str) -> None:
        best = f"best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else "best -"
        elapsed = time.time() - self.started
        print(f"[{elapsed:6.0f}s] {event:<28} done {self.done}/{self.total}  running {len(self.running)}  "
              f"failed {self.failed}  stopped early {self.stopped}  {best}", file=self.stream, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        feasible = result.get("constraint", 0) <= 0
        if value is not None and feasible and self._better(value):
            name = result.get("baseline") or trial.trial_id
            self.best = (value, name)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        result = trial.last_result or {}
        rung = result.get("rung", 0)
        if "rung" in result and result.get("training_iteration", 0) < result.get("rungs", 0):
            self.stopped += 1
        tag = result.get("baseline") or trial.trial_id
        self._line(f"{tag} rung {rung} {result.get(self.metric, float('nan')):.4f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._line(f"{trial.trial_id} FAILED")
