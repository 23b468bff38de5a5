"""Keep a last-good copy of Tune's experiment state, because Tune's own copy is not written atomically.

Tune saves its experiment state in a staging folder and then copies it into the experiment dir; a
driver killed during that copy leaves an empty experiment_state-*.json there and `resume` would start
over. A callback snapshots every readable state file (tmp + os.replace) at the start of each loop
step; `repair` puts the snapshot back in place of a damaged file before Tuner.restore.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ray.tune import Callback

from compress._atomic import atomic_file

BACKUP_SUFFIX = ".last-good"


def _readable(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


class StateSnapshot(Callback):
    def __init__(self, tune_dir: Path):
        self.tune_dir = Path(tune_dir)
        self._seen: dict[str, float] = {}

    def on_step_begin(self, iteration, trials, **info):
        for state in self.tune_dir.glob("experiment_state-*.json"):
            mtime = state.stat().st_mtime
            if self._seen.get(state.name) == mtime or not _readable(state):
                continue
            backup = state.with_name(state.name + BACKUP_SUFFIX)
            with atomic_file(backup) as tmp:
                shutil.copyfile(state, tmp)
            self._seen[state.name] = mtime


def repair(tune_dir: Path) -> list[str]:
    """Restore damaged state files from their last-good copies; returns the names repaired."""
    repaired = []
    for state in Path(tune_dir).glob("experiment_state-*.json"):
        backup = state.with_name(state.name + BACKUP_SUFFIX)
        if not _readable(state) and backup.is_file():
            with atomic_file(state) as tmp:
                shutil.copyfile(backup, tmp)
            repaired.append(state.name)
    return repaired
