"""The experiment record: the one owner of where an experiment's results live and how to reach them.

    runs/NAME/                   the run directory, on the driver's machine
      config.yaml  state.json    the resolved experiment; status, storage, MLflow run ids
      optuna.db  teacher_cache.pt  rankings.pt  results.json  trials.csv  validation-<device>.json  opencompass.*  exports/
      mlflow.db  mlartifacts/    the MLflow store a managed tracking server serves (search/_mlflow_server.py)
    STORAGE/NAME/                the experiment's storage (--storage; default: the run directory itself)
      tune/                      Tune's experiment state and trial checkpoints
      top/<candidate>/           FP16 checkpoints of the top candidates, written by the trials themselves

Every verb (launch, resume, top, validate, full-eval) opens the experiment through this class; nothing
else knows file names. The MLflow parent run belongs to it too: `log_to_parent` is the one way verbs
add to it (validate and full-eval pass the record down to cluster/ and objectives/).
"""
from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

from search._storage import Storage

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
GB = 1024**3


class ExperimentRecord:
    def __init__(self, root, name: str):
        self.root = Path(root).resolve()         # the runs folder holding every experiment's run directory
        self.name = name
        self._server = None                      # a managed MLflow server started by this process

    # ---- the run directory -----------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.root / self.name

    config = property(lambda self: self.path / "config.yaml")
    state_file = property(lambda self: self.path / "state.json")
    results = property(lambda self: self.path / "results.json")
    trials_csv = property(lambda self: self.path / "trials.csv")
    teacher_cache = property(lambda self: self.path / "teacher_cache.pt")
    rankings = property(lambda self: self.path / "rankings.pt")          # the dense model's unit rankings
    exports = property(lambda self: self.path / "exports")
    opencompass_json = property(lambda self: self.path / "opencompass.json")
    opencompass_csv = property(lambda self: self.path / "opencompass.csv")
    opencompass_dir = property(lambda self: self.path / "opencompass")
    top_cache = property(lambda self: self.path / "top-cache")     # local copies of candidates in remote storage
    mlflow_db = property(lambda self: self.path / "mlflow.db")      # the managed tracking server's store
    mlflow_artifacts = property(lambda self: self.path / "mlartifacts")
    mlflow_log = property(lambda self: self.path / "mlflow-server.log")

    @property
    def mlflow_store_uri(self) -> str:
        """The managed MLflow store, for reading it without a server (after the search)."""
        return f"sqlite:///{self.mlflow_db.resolve()}"

    def validation_file(self, device: str) -> Path:
        """One per device (emulated, adb): a phone run never overwrites an emulated one."""
        return self.path / f"validation-{device}.json"

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{(self.path / 'optuna.db').resolve()}"

    # ---- storage -------------------------------------------------------------------------------------
    @property
    def storage(self) -> Storage:
        """This experiment's storage folder; the run directory unless launched with --storage."""
        uri = self.read_state().get("storage")
        return Storage(uri) if uri else Storage(str(self.path))

    @property
    def tune(self) -> Storage:
        return self.storage.child("tune")

    @property
    def top(self) -> Storage:
        return self.storage.child("top")

    def tune_state_exists(self) -> bool:
        tune = self.tune
        if tune.local_path is not None:
            return tune.local_path.is_dir() and any(tune.local_path.glob("experiment_state-*.json"))
        import pyarrow.fs as pafs
        fs, path = tune.fs()
        try:
            infos = fs.get_file_info(pafs.FileSelector(path))
        except (FileNotFoundError, OSError):
            return False
        return any(Path(i.path).name.startswith("experiment_state-") for i in infos)

    # ---- opening and creating ----------------------------------------------------------------------
    @classmethod
    def _checked(cls, root, name: str) -> "ExperimentRecord":
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):    # fullmatch: "nl\n" is no name
            raise ValueError(f"experiment name {name!r}: use 1-100 letters, digits, '.', '_' or '-' (starting with "
                             "a letter or digit)")
        return cls(root, name)

    @classmethod
    def check_new(cls, root, name: str, *, storage: Storage | None = None) -> "ExperimentRecord":
        """The record of a new experiment; refuses an existing one (nothing is created)."""
        record = cls._checked(root, name)
        check_writable_folder(record.root, "--root")
        if record.in_use():
            raise ValueError(f"experiment {name!r} already exists in {record.root}; continue it with "
                             f"`python -m search resume --experiment {name}` or pick another --experiment")
        if storage is not None:
            if storage.local_path is not None:
                check_writable_folder(storage.local_path, "--storage")
                inside = storage.child(name).local_path.resolve()
                if inside != record.path and inside.is_relative_to(record.path):
                    raise ValueError(f"--storage {storage.uri} would put the experiment's storage inside its own run "
                                     f"directory {record.path}; leave --storage out for that")
            if storage.child(name).exists("tune"):
                raise ValueError(f"storage {storage.uri} already holds an experiment {name!r}; pick another "
                                 "--experiment")
        return record

    @classmethod
    def free_name(cls, root, base: str) -> str:
        """`base`, else base-2, base-3, ...: the first name no experiment in `root` uses."""
        name, n = base, 1
        while cls(root, name).in_use():
            n += 1
            name = f"{base}-{n}"
        return name

    def in_use(self) -> bool:
        return self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir()))

    @classmethod
    def create(cls, root, name: str) -> "ExperimentRecord":
        """A new, empty run directory (for programs that drive trials themselves: tests, benchmarks)."""
        record = cls.check_new(root, name)
        record.path.mkdir(parents=True, exist_ok=True)
        return record

    @classmethod
    def open(cls, root, name: str) -> "ExperimentRecord":
        record = cls._checked(root, name)
        if not record.config.is_file():
            raise ValueError(f"no experiment {name!r} in {record.root}")
        record.read_state()                  # a damaged state.json is one line for every verb, before any work
        return record

    @contextlib.contextmanager
    def creating(self, *, storage_root: Storage | None):
        """Create the run directory; if setting up fails before the block ends, remove it again (and stop a
        tracking server started meanwhile), so a refused launch leaves nothing behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        state = {"status": "starting"}
        if storage_root is not None and storage_root.child(self.name).uri != str(self.path):
            state["storage"] = storage_root.child(self.name).uri    # (--storage = --root is the default storage)
        self.write_state(state)
        try:
            yield self
        except BaseException:
            self.stop_tracking()
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def running(self, *, address: str | None):
        """The one place a search's outcome is recorded in state.json: "running" while inside (where a killed
        driver leaves it, for `resume`), "failed" with the reason when the block raises ("interrupted" on
        Ctrl-C); the block records "finished" itself once the results are written. The tracking server
        stops either way."""
        self.update_state(status="running", address=address, home=str(self.path), reason=None)
        try:
            yield self
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt)
            detail = str(err).strip().splitlines()
            reason = "interrupted" if interrupted else f"{type(err).__name__}: {detail[0] if detail else ''}".rstrip(": ")
            with contextlib.suppress(OSError, ValueError):     # the record must not hide the original error
                self.update_state(status="interrupted" if interrupted else "failed", reason=reason)
            raise
        finally:
            self.stop_tracking()

    # ---- state -------------------------------------------------------------------------------------
    def read_state(self) -> dict:
        """state.json (empty before the first write); a damaged one is one line, never a traceback."""
        if not self.state_file.is_file():
            return {}
        from compress import read_json
        state = read_json(self.state_file, f"experiment {self.name}: state file")
        if not isinstance(state, dict):
            raise ValueError(f"experiment {self.name}: state file {self.state_file} is damaged (not a JSON object)")
        return state

    def write_state(self, data: dict) -> None:
        self.write_json(self.state_file, data)

    def update_state(self, **changes) -> dict:
        state = {**self.read_state(), **changes}
        self.write_state(state)
        return state

    def write_json(self, path: Path, data) -> None:
        from compress._atomic import write_json
        write_json(path, data)

    @property
    def status(self) -> str | None:
        return self.read_state().get("status")

    # ---- results and candidates --------------------------------------------------------------------
    def read_results(self) -> dict:
        if not self.results.is_file():
            raise ValueError(f"experiment {self.name} has no results yet ({self.results} not found); finish it with "
                             f"`python -m search resume --experiment {self.name}`")
        from compress import read_json
        data = read_json(self.results, f"experiment {self.name}: results file")
        if not isinstance(data, dict) or not isinstance(data.get("summary"), dict) or \
                not isinstance(data.get("trials"), list) or \
                not all(isinstance(t, dict) for t in data["trials"]) or \
                not isinstance(data["summary"].get("top", []), list) or \
                not all(isinstance(t, dict) for t in data["summary"].get("top", [])):
            raise ValueError(f"experiment {self.name}: results file {self.results} is damaged (expected an object with "
                             "a 'summary' object and a 'trials' list); resume or launch the experiment again")
        return data

    def check_top(self, k: int) -> list[dict]:
        """The summary's top entries when `k` (a verb's --top) is 1..their number; one line otherwise (never a
        silent clamp: `validate --top 999` validates what there is only when asked for what there is)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"--top must be a positive integer, got {k!r}")
        if not self.results.is_file():
            raise ValueError(f"experiment {self.name} has no finished trials yet ({self.results.name} not written); "
                             f"finish it with `python -m search resume --experiment {self.name}`")
        entries = self.read_results()["summary"].get("top") or []
        if not entries:
            raise ValueError(f"experiment {self.name} has no finished candidate (no trial completed within the budget, "
                             "or search.top_k was 0)")
        if k > len(entries):
            raise ValueError(f"--top {k}: experiment {self.name} has {len(entries)} finished candidate"
                             f"{'s' if len(entries) != 1 else ''} with checkpoints; pass --top {len(entries)} or less")
        return entries

    def top_entries(self, k: int, *, require_checkpoints: bool) -> list[dict]:
        """The k best candidates of results.json, each with `dir`: a local folder holding its checkpoint
        (downloaded from remote storage once), or None when it is missing (an error if required)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"--top must be a positive integer, got {k!r}")
        entries = (self.read_results().get("summary") or {}).get("top") or []
        if not entries:
            raise ValueError(f"{self.results} lists no top-k checkpoints (search.top_k was 0?)")
        resolved = []
        for entry in entries[:k]:
            folder = self.checkpoint_dir(entry)
            if folder is None and require_checkpoints:
                raise ValueError(f"top-k checkpoint {entry.get('folder') or entry.get('dir')!r} (rank "
                                 f"{entry.get('rank')}) is missing from {self.top.uri}")
            resolved.append({**entry, "dir": str(folder) if folder else None})
        return resolved

    def numbers(self, row: dict) -> dict:
        """The memory and speed numbers of one trial (a results.json row or top entry), by kind: the search's
        `simulated` ones, and `measured-emulated` / `measured-phone` where `validate` ran it (with the device
        file they came from). objectives.preferred(numbers, quantity) picks the most real one."""
        from compress import read_json
        from objectives._provenance import QUANTITIES, SIMULATED
        out = {SIMULATED: {q: row.get(q) for q in QUANTITIES if row.get(q) is not None}}
        for path in sorted(self.path.glob("validation-*.json")):
            data = read_json(path, "validation file")
            if not isinstance(data, dict):
                raise ValueError(f"validation file {path} is damaged (not a JSON object); run validate again")
            for cand in data.get("candidates", []):
                if cand.get("trial_id") == row.get("trial_id"):
                    m = cand["measured"]
                    out[m["kind"]] = {**{q: m.get(q) for q in QUANTITIES}, "fits": m.get("fits"),
                                      "device": data.get("device"), "profile": data.get("profile"),
                                      "settings": data.get("settings"), "created": data.get("created"),
                                      "simulated_at_same_context": {q: cand["simulated"].get(q) for q in QUANTITIES}}
        return out

    def trial_row(self, trial_id: str) -> dict:
        return next((t for t in self.read_results().get("trials", []) if t.get("trial_id") == trial_id), {})

    def checkpoint_dir(self, entry: dict) -> Path | None:
        """A candidate's checkpoint as a local folder: from this experiment's storage (wherever the run
        directory has moved since), else the folder recorded when it was written."""
        folder = entry.get("folder") or (Path(entry["dir"]).name if entry.get("dir") else None)
        if folder and (self.top.is_complete(folder) or self._legacy_complete(folder)):
            return self.top.get_dir(folder, self.top_cache / folder)
        recorded = Path(entry["dir"]) if entry.get("dir") and "://" not in entry["dir"] else None
        return recorded if recorded and (recorded / "config.json").is_file() else None

    def _legacy_complete(self, folder: str) -> bool:
        local = self.top.local_path          # checkpoints written before candidate.json existed
        return local is not None and (local / folder / "config.json").is_file()

    # ---- the experiment's settings -----------------------------------------------------------------
    def experiment(self):
        import experiments
        return experiments.read_experiment(self.config)

    def profile(self, name=None, *, runtime: str | None = None):
        """A named profile (or profile file), else the experiment's own device with its budget; for `runtime`
        (default: the experiment's)."""
        from objectives import get_profile
        exp = self.experiment() if self.config.is_file() else None
        runtime = runtime or getattr(exp, "runtime", None) or "llama.cpp"
        if name is not None:
            return get_profile(name).for_runtime(runtime)
        if exp is None:
            raise ValueError(f"{self.config} not found; pass a device profile explicitly")
        resolved = get_profile(exp.device or "phone-12gb").for_runtime(runtime)
        return resolved.with_budget(float(exp.budget_gb) * GB) if exp.budget_gb else resolved

    # ---- MLflow ------------------------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str | None:
        return self._server.uri if self._server else self.read_state().get("tracking_uri")

    @property
    def parent_run_id(self) -> str | None:
        return self.read_state().get("parent_run_id")

    def start_tracking(self, user_uri: str | None, *, host: str) -> None:
        """Without --tracking-uri, start the experiment's own MLflow server and return at once (it starts while
        the driver prepares the teacher); `tracking_ready` waits for it."""
        self.update_state(tracking_managed=user_uri is None, **({"tracking_uri": user_uri} if user_uri else {}))
        if user_uri is None:
            from search._mlflow_server import TrackingServer
            self._server = TrackingServer.spawn(backend_db=self.mlflow_db, artifacts=self.mlflow_artifacts,
                                                log=self.mlflow_log, host=host)

    def tracking_ready(self, *, tags: dict | None = None) -> tuple[str, str]:
        """Wait for the server; create (launch) or reopen (resume) the MLflow experiment and parent run."""
        from search import _tracking
        if self._server is not None:
            self._server.wait_ready()
        uri = self.tracking_uri
        # a server proxies artifacts (mlflow-artifacts:/); a direct store (sqlite://) keeps them next to it
        artifacts = None if uri.startswith(("http://", "https://")) else self.mlflow_artifacts.as_uri()
        exp_id, parent = _tracking.ensure_parent(uri, self.name, tags=tags or {}, run_id=self.parent_run_id,
                                                 artifact_location=artifacts)
        self.update_state(tracking_uri=uri, mlflow_experiment_id=exp_id, parent_run_id=parent)
        return exp_id, parent

    def reopen_tracking(self, *, host: str) -> None:
        """`resume`, validate, full-eval: a managed server is started again on the experiment's store."""
        if self.read_state().get("tracking_managed") and self._server is None:
            self.start_tracking(None, host=host)

    def stop_tracking(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def log_to_parent(self, *, metrics: dict | None = None, files=(), texts: dict | None = None,
                      figures: dict | None = None, status: str | None = None, params: dict | None = None,
                      tags: dict | None = None) -> str | None:
        """Add to the experiment's MLflow parent run (starting its managed server for the call if none
        runs). files: (local path, artifact folder or None). Returns the run id, or None without one."""
        from search import _tracking
        if not self.parent_run_id or not self.read_state().get("tracking_uri"):
            return None
        started = False
        if self.read_state().get("tracking_managed") and self._server is None:
            self.reopen_tracking(host="127.0.0.1")
            self._server.wait_ready()
            started = True
        try:
            _tracking.log_parent(self.tracking_uri, self.parent_run_id, metrics=metrics or {}, files=files,
                                 texts=texts or {}, figures=figures or {}, status=status, params=params or {},
                                 tags=tags or {})
        finally:
            if started:
                self.stop_tracking()
        return self.parent_run_id


def check_writable_folder(folder: Path, flag: str) -> None:
    """A folder launch creates its experiments in: an existing directory it may write, or a path whose nearest
    existing ancestor is one (created then). A file, or a read-only place, is one line before anything starts."""
    import os
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK) or os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise ValueError(f"{flag} {folder}: {probe} is not writable")
