"""Before `resume` writes anything: is this folder one coherent experiment that resumes into itself?

An experiment's records must agree and be intact: state.json, config.yaml, Tune's experiment state, the
Optuna study (optuna.db) and results.json. A damaged file (a truncated optuna.db, state.json `[]`) or records
that disagree (Tune knows trials the study database does not: a database from another experiment or an older
copy) are refused with one line, before Ray starts or anything is rewritten.

A copied or moved folder resumes into itself: nothing it holds decides where it writes (search/_searcher.py
pickles the study database by role). What lives outside the folder cannot be copied with it: an experiment
launched with --storage or --tracking-uri shares that storage / MLflow run with the folder it was copied
from, so such a copy is refused while the original still exists (a moved folder is fine). Folders written by
an older edgeprune name their own optuna.db in Tune's pickles; one resumed from elsewhere is refused too.
"""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from search._record import ExperimentRecord

# the sqlite URL an older edgeprune pickled into Tune's state (RDBStorage by path)
_PICKLED_DB = re.compile(rb"sqlite:///([^\x00-\x1f\x7f-\xff]+?optuna\.db)")


def check_resumable(record: ExperimentRecord) -> None:
    """One-line ValueError unless `record` can be resumed into itself; reads, never writes."""
    name = record.name
    state = record.read_state()                      # not a JSON object: one line
    if state.get("status") == "finished":
        raise ValueError(f"experiment {name} has finished; see `python -m search top --experiment {name}`, or launch "
                         "a new one")
    record.experiment()                              # config.yaml damaged: one line
    if not record.tune_state_exists():
        raise ValueError(f"experiment {name} has no Tune state to resume (it stopped before its first trial); "
                         "launch it again under a new --experiment")
    _check_not_a_shared_copy(record, state)
    tune_ids = _tune_trial_ids(record)
    study_ids = _study_trial_ids(record)
    missing = sorted(tune_ids - study_ids)
    if missing:
        raise ValueError(f"experiment {name}: Tune's state lists {len(missing)} trial(s) its study database "
                         f"{record.path / 'optuna.db'} does not have (e.g. {missing[0]}): the records disagree "
                         "(a database from another or an older copy of the experiment?); nothing was changed")
    if record.results.is_file():
        listed = {t.get("trial_id") for t in record.read_results()["trials"]}
        missing = sorted(str(t) for t in listed - study_ids)
        if missing:
            raise ValueError(f"experiment {name}: results.json lists {len(missing)} trial(s) its study database does "
                             f"not have (e.g. {missing[0]}): the records disagree; nothing was changed")


def _check_not_a_shared_copy(record: ExperimentRecord, state: dict) -> None:
    home = state.get("home")
    here = str(record.path)
    copied = home is not None and home != here and (Path(home) / "config.yaml").is_file()
    if copied and state.get("storage"):
        raise ValueError(f"experiment {record.name} is a copy of {home}, whose storage {state['storage']} it shares: "
                         "resuming it would write into the original's storage; resume the original instead")
    if copied and state.get("tracking_uri") and not state.get("tracking_managed"):
        raise ValueError(f"experiment {record.name} is a copy of {home}, whose MLflow run on {state['tracking_uri']} "
                         "it shares: resuming it would log into the original's run; resume the original instead")
    tune = record.tune.local_path
    if tune is None:
        return
    own = (record.path / "optuna.db").resolve()
    for pickle in sorted(tune.glob("searcher-state-*.pkl")) + sorted(tune.glob("tuner.pkl")):
        try:
            found = _PICKLED_DB.search(pickle.read_bytes())
        except OSError:
            continue
        if found and Path(found.group(1).decode(errors="replace")).resolve() != own:
            raise ValueError(f"experiment {record.name} was launched by an older version at "
                             f"{found.group(1).decode(errors='replace').rsplit('/', 1)[0]} and its Tune state names "
                             "that folder's study database: resume it there, or launch a new experiment")


def _tune_trial_ids(record: ExperimentRecord) -> set[str]:
    """The trial ids of Tune's newest experiment state (or of its last good copy, which resume restores)."""
    from search._tune_state import BACKUP_SUFFIX
    tune = record.tune
    names = _listing(tune)
    states = sorted(n for n in names if re.fullmatch(r"experiment_state-.*\.json", n))
    if not states:
        raise ValueError(f"experiment {record.name} has no Tune state to resume in {tune.uri}")
    newest = states[-1]
    for candidate in (newest, newest + BACKUP_SUFFIX):
        text = tune.read_text(candidate)
        try:
            data = json.loads(text) if text else None
            return {json.loads(entry[0])["trial_id"] for entry in data["trial_data"]}
        except (ValueError, TypeError, KeyError, IndexError, RecursionError):
            continue
    raise ValueError(f"experiment {record.name}: Tune's state {newest} in {tune.uri} is damaged and has no readable "
                     "last-good copy; nothing was changed")


def _listing(storage) -> set[str]:
    local = storage.local_path
    if local is not None:
        return {p.name for p in local.iterdir()} if local.is_dir() else set()
    import pyarrow.fs as pafs
    fs, path = storage.fs()
    try:
        return {Path(i.path).name for i in fs.get_file_info(pafs.FileSelector(path))}
    except (FileNotFoundError, OSError):
        return set()


def _study_trial_ids(record: ExperimentRecord) -> set[str]:
    """Tune's trial ids of the study's trials, read from optuna.db without writing it (read-only sqlite; Optuna's
    own storage would create tables in a damaged or foreign file)."""
    db = record.path / "optuna.db"
    where = f"experiment {record.name}: study database {db}"
    if not db.is_file() or db.stat().st_size == 0:
        raise ValueError(f"{where} is missing or empty; nothing was changed")
    # a hot journal (a driver killed mid-transaction) is rolled back by a read-write open, as any resume would
    mode = "rw" if db.with_name(db.name + "-journal").exists() else "ro"
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode={mode}", uri=True)
        try:
            if con.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            studies = con.execute("SELECT study_id FROM studies").fetchall()
            if len(studies) != 1:
                raise ValueError(f"{where} holds {len(studies)} studies, not this experiment's one; nothing was changed")
            rows = con.execute("SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = "
                               "t.trial_id AND a.key = 'tune_trial_id' WHERE t.study_id = ?", studies[0]).fetchall()
        finally:
            con.close()
    except sqlite3.Error as err:
        raise ValueError(f"{where} is damaged ({err}); nothing was changed") from None
    try:
        return {json.loads(value) for (value,) in rows}
    except ValueError:
        raise ValueError(f"{where} is damaged (unreadable trial attributes); nothing was changed") from None
