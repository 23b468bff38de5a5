"""Top candidates: written into the experiment's storage (top/<name>/) by the trials that produced them,
at their last rung, while the model is still in memory, so nothing is pruned a second time. (A distilling
trial saves once distillation has returned its whole student, not mid-training, when a ZeRO-3 student's
parameters are partitioned; a data-parallel one's student is spread over its workers: theirs are rebuilt.)

A 7B checkpoint is ~15 GB, so not every trial keeps one: the driver publishes the score a new candidate
must beat (top/board.json: the k-th best so far) and a trial below it saves nothing; when a trial ends,
the driver deletes the folders that fell out of the top k (CandidateKeeper). At most k + the number of
running trials are ever stored. A top candidate without a folder (its trial predates this, or saved
nothing because the board was stale the other way) is rebuilt by a Ray task with the trial's resources on
the cluster (`materialise_missing`), never on the driver.
"""
from __future__ import annotations

import json
import math
import sys

from ray.tune import Callback

from search._storage import DONE_MARKER, Storage

BOARD_FILE = "board.json"
# multi-objective mode: the second objective (result key, direction) next to the proxy score
SECOND_OBJECTIVE = {"memory": ("peak_memory_bytes", "min"), "tokens_per_s": ("decode_tokens_per_s", "max")}


def folder_name(row: dict) -> str:
    return row.get("name") or row["trial_id"]


def feasible(row: dict) -> bool:
    score = row.get("score")
    return score is not None and math.isfinite(score) and (row.get("constraint") or 0) <= 0


def pareto_front(rows: list[dict], second: str, second_mode: str) -> list[dict]:
    sign = 1 if second_mode == "max" else -1
    front = [r for r in rows if not any(
        o["score"] >= r["score"] and sign * o[second] >= sign * r[second] and
        (o["score"] > r["score"] or sign * o[second] > sign * r[second]) for o in rows)]
    return sorted(front, key=lambda r: -r["score"])


def selection(rows: list[dict], *, k: int, second: tuple | None) -> list[dict]:
    """The top k of complete, feasible rows: by score, or the Pareto front (score vs `second`) in multi mode."""
    ranked = sorted((r for r in rows if r.get("status") == "complete" and feasible(r)), key=lambda r: -r["score"])
    chosen = pareto_front(ranked, *second) if second else ranked
    return chosen[:k]


# ---- the trial's side -----------------------------------------------------------------------------
def offer(setup, row: dict, save) -> bool:
    """Called by a trial at its last rung: save(folder) writes its checkpoint into a local folder; it is
    stored as top/<name>/ unless the board shows it cannot make the top k. Returns whether it was saved."""
    if not setup.top_uri or setup.top_k < 1 or not feasible(row):
        return False
    top = Storage(setup.top_uri)
    try:
        board = json.loads(top.read_text(BOARD_FILE) or "{}")
        threshold = board.get("threshold")
        if threshold is not None and row["score"] <= threshold:
            return False

        def write(folder):
            save(folder)
            (folder / DONE_MARKER).write_text(json.dumps(row, indent=2, default=str))
        top.put_dir(folder_name(row), write)
        return True
    except (OSError, ValueError) as err:   # storage trouble costs the trial nothing: the driver rebuilds it
        print(f"could not store candidate {folder_name(row)} ({type(err).__name__}: {err}); the driver will "
              "rebuild it if it makes the top k", file=sys.stderr, flush=True)
        return False


# ---- the driver's side ----------------------------------------------------------------------------
def row_of(trial, rungs: int) -> dict:
    result = trial.last_result or {}
    status = "complete" if result.get("training_iteration", 0) >= rungs and trial.status != "ERROR" else "other"
    return {**{k: result.get(k) for k in ("score", "constraint", "peak_memory_bytes", "decode_tokens_per_s")},
            "trial_id": trial.trial_id, "name": (trial.config or {}).get("baseline") or trial.trial_id,
            "status": status}


def prune_folders(top: Storage, *, keep: set, finished: set) -> list[str]:
    """Delete the candidate folders of finished trials that are not kept; never a running trial's."""
    gone = [name for name in top.list_dirs() if name in finished and name not in keep]
    for name in gone:
        top.remove(name)
    return gone


class CandidateKeeper(Callback):
    def __init__(self, top_uri: str, *, k: int, rungs: int, second: tuple | None):
        self.top_uri, self.k, self.rungs, self.second = top_uri, k, rungs, second

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trials, trial, failed=True)

    def _update(self, trials, ending, *, failed: bool = False) -> None:
        # callbacks run before Tune marks `ending` finished: it counts as finished here
        top = Storage(self.top_uri)
        rows = [row_of(t, self.rungs) if not (failed and t is ending) else {**row_of(t, self.rungs), "status": "failed"}
                for t in trials]
        chosen = selection(rows, k=self.k, second=self.second)
        finished = {folder_name(r) for r, t in zip(rows, trials) if t is ending or t.status in ("TERMINATED", "ERROR")}
        threshold = chosen[-1]["score"] if not self.second and len(chosen) >= self.k else None
        top.write_text(BOARD_FILE, json.dumps({"k": self.k, "threshold": threshold}))
        prune_folders(top, keep={folder_name(r) for r in chosen}, finished=finished)


def materialise_missing(rows: list[dict], setup, exp) -> None:
    """Rebuild the top candidates that have no folder, as Ray tasks with a trial's resources."""
    import ray
    top = Storage(setup.top_uri)
    missing = [r for r in rows if not top.is_complete(folder_name(r))]
    if not missing:
        return
    task = ray.remote(_rebuild).options(num_cpus=exp.resources.cpus_per_trial, num_gpus=exp.resources.gpus_per_trial,
                                        max_retries=2)
    ray.get([task.remote(r, setup) for r in missing])


def _rebuild(row: dict, setup) -> None:
    import compress
    from search._trial import build_candidate, plan_for, recover, schedule_for
    params = json.loads(row["params_json"])
    plan = plan_for(params, setup)
    schedule = schedule_for(params, setup)
    plan, result, model, tokenizer = build_candidate(params, setup, plan)    # with the rankings the trial used
    if schedule is not None:          # what the trial scored was the recovered student: save that
        model = recover(model, tokenizer, result, schedule, setup)
    row = {k: v for k, v in row.items() if k != "params_json"}

    def write(folder):
        compress.save_pruned(model, tokenizer, folder, plan=plan, summary=result.summary(), force=True)
        (folder / DONE_MARKER).write_text(json.dumps({**row, "rebuilt": True}, indent=2, default=str))
    Storage(setup.top_uri).put_dir(folder_name(row), write)
