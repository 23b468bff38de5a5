"""An experiment is a self-contained folder (issue 23), without a cluster:
- the study database is pickled into Tune's state by role: no absolute path in the pickle, and unpickling opens
  the database of the experiment being resumed, wherever it is now;
- the search algorithm Tune restores creates new trials in the experiment's storage as it is now;
- a copy that shares its original's --storage or MLflow run, or whose Tune state names another folder's study
  database (an older version's pickles), is refused before anything is written;
- a search that fails is recorded as such (status "failed" and the reason), never left "running".
"""
import json
import pickle
import shutil
from pathlib import Path

import optuna
import pytest

from search._integrity import check_resumable
from search._record import ExperimentRecord
from search._searcher import (ConstrainedOptunaSearch, LocatedSearch, StudyDatabase, make_sampler,
                              study_database)


def _space(trial):
    trial.suggest_float("x", 0, 1)


def _searcher(url: str) -> ConstrainedOptunaSearch:
    return ConstrainedOptunaSearch(space=_space, metric="score", mode="max", storage=StudyDatabase(url),
                                   study_name="exp", sampler=make_sampler("tpe", seed=0))


def test_the_study_database_is_pickled_by_role_not_by_path(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    searcher = _searcher(f"sqlite:///{first / 'optuna.db'}")
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"score": 1.0, "training_iteration": 1})
    blob = pickle.dumps(searcher)
    assert str(first).encode() not in blob and b"sqlite" not in blob
    with pytest.raises(RuntimeError, match="only inside study_database"):
        pickle.loads(blob)
    shutil.copytree(first, second)                     # the copied experiment
    with study_database(f"sqlite:///{second / 'optuna.db'}"):
        restored = pickle.loads(blob)
    backend = getattr(restored._ot_study._storage, "_backend", restored._ot_study._storage)   # (Optuna caches it)
    assert backend.url == f"sqlite:///{second / 'optuna.db'}"
    restored.suggest("t2")                             # writes into the copy, never into the original
    trials = lambda folder: optuna.load_study(study_name="exp", storage=f"sqlite:///{folder / 'optuna.db'}").trials
    assert len(trials(second)) == 2 and len(trials(first)) == 1


def test_restored_search_creates_new_trials_where_the_experiment_is_now(tmp_path):
    from ray.tune.experiment import Experiment
    search = LocatedSearch(_searcher(f"sqlite:///{tmp_path / 'optuna.db'}"), max_concurrent=2)
    launched = Experiment("tune", run=lambda config: None, storage_path=str(tmp_path / "launched"))
    search.set_state({"counter": 3, "total_samples": 6, "finished": False, "experiment": launched})
    assert search._experiment.spec["storage"].storage_fs_path == str(tmp_path / "launched")   # not located: as is
    search.locate(str(tmp_path / "moved"))
    search.set_state({"counter": 3, "total_samples": 6, "finished": False, "experiment": launched})
    storage = search._experiment.spec["storage"]
    assert storage.storage_fs_path == str(tmp_path / "moved") and storage.experiment_dir_name == "tune"
    assert search._experiment.storage is storage and search._counter == 3


def _interrupted(root, name, state: dict) -> ExperimentRecord:
    """A run directory check_resumable accepts as far as its databases go (one trial, t1, everywhere)."""
    import sqlite3
    folder = root / name
    tune = Path(state.get("storage") or folder) / "tune"       # Tune's state lives in the experiment's storage
    tune.mkdir(parents=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("model: stories260k\ndevice: stories260k-tiny\n")
    (folder / "state.json").write_text(json.dumps(state))
    (tune / "experiment_state-x.json").write_text(json.dumps({"trial_data": [[json.dumps({"trial_id": "t1"}), "{}"]]}))
    con = sqlite3.connect(folder / "optuna.db")
    con.executescript("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT);"
                      "CREATE TABLE trials (trial_id INTEGER PRIMARY KEY, number INTEGER, study_id INTEGER);"
                      "CREATE TABLE trial_user_attributes (trial_user_attribute_id INTEGER PRIMARY KEY, trial_id INTEGER,"
                      " key TEXT, value_json TEXT); INSERT INTO studies VALUES (1, 'x');"
                      "INSERT INTO trials VALUES (1, 0, 1); INSERT INTO trial_user_attributes VALUES "
                      "(1, 1, 'tune_trial_id', '\"t1\"');")
    con.commit()
    con.close()
    return ExperimentRecord.open(root, name)


def test_a_copy_sharing_its_originals_storage_or_mlflow_run_is_refused_a_moved_one_resumes(tmp_path):
    original = _interrupted(tmp_path / "a", "exp", {"status": "running", "storage": str(tmp_path / "bucket" / "exp"),
                                                    "home": str(tmp_path / "a" / "exp")})
    check_resumable(original)                          # in place: fine
    shutil.copytree(original.path, tmp_path / "b" / "copy")
    with pytest.raises(ValueError, match="is a copy of .* whose storage .* it shares"):
        check_resumable(ExperimentRecord.open(tmp_path / "b", "copy"))
    shutil.rmtree(original.path)                       # the original is gone: the folder was moved, not copied
    check_resumable(ExperimentRecord.open(tmp_path / "b", "copy"))
    tracked = _interrupted(tmp_path / "c", "exp", {"status": "running", "tracking_uri": "http://mlflow:5000",
                                                   "tracking_managed": False, "home": str(tmp_path / "c" / "exp")})
    shutil.copytree(tracked.path, tmp_path / "d" / "exp")
    with pytest.raises(ValueError, match="whose MLflow run on http://mlflow:5000 it shares"):
        check_resumable(ExperimentRecord.open(tmp_path / "d", "exp"))
    managed = _interrupted(tmp_path / "e", "exp", {"status": "running", "tracking_uri": "http://127.0.0.1:1",
                                                   "tracking_managed": True, "home": str(tmp_path / "e" / "exp")})
    shutil.copytree(managed.path, tmp_path / "f" / "exp")
    check_resumable(ExperimentRecord.open(tmp_path / "f", "exp"))   # its own MLflow store is in the folder


def test_an_older_versions_copy_whose_tune_state_names_another_database_is_refused(tmp_path):
    record = _interrupted(tmp_path, "exp", {"status": "running"})
    other = tmp_path / "elsewhere" / "exp" / "optuna.db"
    (record.path / "tune" / "searcher-state-x.pkl").write_bytes(b"\x80\x05junk" + f"sqlite:///{other}".encode() +
                                                                b"\x94\x00more")
    with pytest.raises(ValueError, match=r"launched by an older version at .*/elsewhere/exp"):
        check_resumable(record)
    (record.path / "tune" / "searcher-state-x.pkl").write_bytes(f"sqlite:///{record.path / 'optuna.db'}".encode())
    check_resumable(record)                            # its own database: resumes where it was launched


def test_a_failed_search_is_recorded_as_failed_with_its_reason(tmp_path):
    record = ExperimentRecord.create(tmp_path, "exp")
    with pytest.raises(RuntimeError):
        with record.running(address=None):
            assert record.status == "running"
            raise RuntimeError("TuneError: trials did not complete\nmore lines")
    state = record.read_state()
    assert state["status"] == "failed" and state["reason"] == "RuntimeError: TuneError: trials did not complete"
    assert state["home"] == str(record.path)
    with pytest.raises(KeyboardInterrupt):
        with record.running(address=None):
            raise KeyboardInterrupt
    assert record.read_state()["status"] == "interrupted"
