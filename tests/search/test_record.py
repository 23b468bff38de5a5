"""The experiment record, the experiment's storage and the MLflow transport, without a cluster:
- validate and full-eval resolve checkpoints the same way (a moved experiment folder works for both);
- storage behind a URI (file:// takes the object-store route): folders complete only with their marker;
- a trial's MLflow updates wait in a buffer while the server is unreachable and go out later, into the run its
  first attempt opened; the driver's reconciliation leaves exactly one run per trial.
"""
import json
import pickle
import shutil

import pytest

from search import _tracking
from search._record import ExperimentRecord
from search._shipped import Shipped
from search._storage import DONE_MARKER, Storage


def _finished_experiment(root, name="exp"):
    exp = root / name
    (exp / "top" / "owl").mkdir(parents=True)
    (exp / "top" / "owl" / "config.json").write_text("{}")
    (exp / "top" / "owl" / DONE_MARKER).write_text("{}")
    (exp / "config.yaml").write_text("model: stories260k\ndevice: stories260k-tiny\n")
    top = [{"rank": 1, "trial_id": "t1", "name": "owl", "folder": "owl", "dir": str(exp / "top" / "owl"),
            "score": 1.0}, {"rank": 2, "trial_id": "t2", "name": "t2", "folder": "t2", "dir": str(exp / "top" / "t2"),
                            "score": 0.5}]
    (exp / "results.json").write_text(json.dumps({"summary": {"top": top}, "trials": []}))
    return exp


def test_moved_experiment_resolves_the_same_for_every_verb(tmp_path):
    old = _finished_experiment(tmp_path / "old")
    shutil.move(str(old.parent), str(tmp_path / "new"))            # the whole runs folder moved
    record = ExperimentRecord.open(tmp_path / "new", "exp")
    first = record.top_entries(1, require_checkpoints=True)        # what validate asks for
    assert first[0]["dir"] == str(tmp_path / "new" / "exp" / "top" / "owl")
    both = record.top_entries(2, require_checkpoints=False)       # what full-eval asks for: missing ones are None
    assert [e["dir"] for e in both] == [first[0]["dir"], None]
    with pytest.raises(ValueError, match="'t2' \\(rank 2\\) is missing"):
        record.top_entries(2, require_checkpoints=True)
    assert record.profile().name == "stories260k-tiny"


def test_storage_behind_a_uri(tmp_path):
    store = Storage.check((tmp_path / "bucket").as_uri())          # file://: the object-store code path
    assert store.local_path is None and not store.exists("x")

    def write(folder):
        (folder / "weights.bin").write_bytes(b"w" * 10)
        (folder / DONE_MARKER).write_text("{}")
    store.put_dir("cand", write)
    assert store.is_complete("cand") and store.list_dirs() == ["cand"]
    (tmp_path / "bucket" / "half").mkdir()                          # a writer killed before its marker
    (tmp_path / "bucket" / "half" / "weights.bin").write_bytes(b"w")
    assert not store.is_complete("half")
    local = store.get_dir("cand", tmp_path / "cache" / "cand")
    assert (local / "weights.bin").read_bytes() == b"w" * 10
    store.write_text("board.json", "{}")
    store.remove("board.json")
    store.remove("cand")
    assert store.list_dirs() == ["half"] and store.read_text("board.json") is None
    with pytest.raises(ValueError, match="no filesystem for nofs:// is installed"):
        Storage.check("nofs://bucket/dir")


def test_shipped_values_pickle_without_their_cached_copy():
    shipped = Shipped.put({"big": 1})           # no Ray here: holds the value itself
    assert shipped.get() == {"big": 1} and pickle.loads(pickle.dumps(shipped)).get() == {"big": 1}



class _Setup:
    def __init__(self, uri, exp_id, parent):
        self.tracking_uri, self.mlflow_experiment_id, self.parent_run_id = uri, exp_id, parent


def test_updates_wait_while_mlflow_is_unreachable_and_a_retry_continues_the_same_run(store, monkeypatch):
    uri, exp_id, parent = store
    real_apply, down = _tracking._apply, {"on": True}

    def flaky(c, run_id, op):
        if down["on"]:
            raise ConnectionError("server restarting")
        return real_apply(c, run_id, op)
    monkeypatch.setattr(_tracking, "_apply", flaky)
    monkeypatch.setattr(_tracking, "reachable", lambda u: not down["on"])
    monkeypatch.setattr(_tracking, "FLUSH_GRACE_S", 0)
    run = _tracking.TrialRun.start(_Setup(uri, exp_id, parent), "t1", {"x": 1})
    run.log_metrics({"score": 0.5}, step=0)
    assert len(run.pending) == 3                                    # tags, params, metrics: nothing lost
    down["on"] = False
    run.log_metrics({"score": 0.7}, step=1)
    assert run.pending == []
    retry = _tracking.TrialRun.start(_Setup(uri, exp_id, parent), "t1", {"x": 1})   # the same trial, retried
    retry.finish("FINISHED")
    assert retry.run_id == run.run_id
    got = _tracking.client(uri).get_run(run.run_id)
    assert got.data.params == {"x": "1"} and got.info.status == "FINISHED"
    assert [m.value for m in _tracking.client(uri).get_metric_history(run.run_id, "score")] == [0.5, 0.7]


def test_reconcile_leaves_one_run_per_trial(store):
    uri, exp_id, parent = store
    c = _tracking.client(uri)
    tags = {_tracking.PARENT_TAG: parent}
    for trial_id in ("t1", "t1", "orphan"):                         # a duplicate and a trial Tune never knew
        c.create_run(exp_id, tags={**tags, _tracking.TRIAL_TAG: trial_id})
    trials = [{"trial_id": t, "name": f"trial-{t}", "params": {"x": 1}, "tags": {"stopped_early": "false"},
               "history": [(0, {"score": 0.1}), (1, {"score": 0.2})], "status": "FINISHED"} for t in ("t1", "t2")]
    counts = _tracking.reconcile(uri, exp_id, parent, trials,
                                 artifacts=lambda t: [("text", json.dumps({"plan": 1}), "plan.json")])
    assert counts == {"created": 1, "duplicates_removed": 1, "orphans_removed": 1, "steps_filled": 4,
                      "artifacts_filled": 2}
    children = c.search_runs([exp_id], filter_string=f"tags.`{_tracking.PARENT_TAG}` = '{parent}'")
    assert sorted(r.data.tags[_tracking.TRIAL_TAG] for r in children) == ["t1", "t2"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["score"] == 0.2 for r in children)
    again = _tracking.reconcile(uri, exp_id, parent, trials, artifacts=lambda t: [])
    assert not any(again.values())                                  # nothing left to repair
