"""ASHA that never stops a baseline: the baselines are what every printed gain is measured against, so they
run every rung, and the best trial (final rung) and each baseline are compared on the same rung's fitness
(the same KL blocks and proxy items). Their scores still enter each rung's cutoff like any other trial's.
"""
from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class BaselineASHA(ASHAScheduler):
    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        last = result.get(self._time_attr, 0) >= self._max_t
        if action == TrialScheduler.STOP and not last and is_baseline(trial.config):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action


def is_baseline(config: dict | None) -> bool:
    return bool((config or {}).get("baseline"))
