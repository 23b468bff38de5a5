"""MLflow, the one module that logs to it: one parent run per experiment, one nested run per trial.

Trials log over HTTP to the experiment's tracking server (search/_mlflow_server.py) from whichever node
they run on. What they cannot deliver (the server is restarting, the network blinks) waits in a buffer
and goes out with the next call; a trial that ends before the server is back leaves the rest to the
driver, which at the end of the search makes MLflow agree with Tune's results (`reconcile`): every trial
exactly one run, with every rung's metrics, its plan, and its final status. A retried or resumed trial
finds its run by its Tune trial id instead of opening a second one.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")   # no "View run" line per trial
# A dead server must fail a call in seconds, not after MLflow's default minutes of retries: the buffer retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
FLUSH_GRACE_S = 90          # a finishing trial waits this long for the server before leaving the rest to the driver
FLUSH_RETRY_S = 3
TRIAL_TAG, PARENT_TAG = "tune_trial_id", "mlflow.parentRunId"
# MLflow 3 opens an experiment on its GenAI (traces) view; the experiment-kind tag (what the UI's selector
# writes) says it is model training, but MLflow 3.17 still opens the overview, so the URLs printed go straight
# to the runs table (runs_url)
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# The runs table shows no metric by default (its default columns are Source, Models, Dataset). A view saved
# as an experiment tag (the UI's "share view" writes the same tag) and named in the URL opens it with these
# columns, sorted by score: what a user compares trials by.
VIEW_KEY = "edgeprune"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
VIEW_METRICS = ("score", "kl_to_teacher", "simulated/peak_memory_bytes", "param_count", "proxy_accuracy")
VIEW_PARAMS = ("kept_fraction", "criterion")
VIEW_TAGS = ("outcome", "baseline")
# how MLflow names what a trial reports (the trial's own names stay in Tune, results.json and trials.csv)
RENAMED = {"params": "param_count"}             # a metric called "params" reads like MLflow's Parameters tab
DROPPED = {"composite_score"}                  # the same number as "score"
REALISED, REALISED_PREFIXES = {"kept_fraction"}, ("kept_attn_L", "kept_mlp_L")   # params, not metrics
# a trial ASHA stopped did what it should (its rungs were scored): FINISHED, told apart by its outcome tag;
# only failures read as failures
OUTCOME_STATUS = {"complete": "FINISHED", "stopped early": "FINISHED", "failed": "FAILED"}


def mlflow_metrics(report: dict) -> dict:
    """A trial's report as MLflow metrics: numbers only, labelled by kind (simulated/peak_memory_bytes),
    no duplicates, no name that reads like MLflow's own Parameters."""
    from objectives._provenance import label
    out = {}
    for key, value in report.items():
        if key in DROPPED or key in REALISED or key.startswith(REALISED_PREFIXES) or \
            not isinstance(value, (int, float)) or isinstance(value, bool):     # realised keeps are params
            continue
        out[label(RENAMED.get(key, key))] = value
    return out


def realised_params(report: dict) -> dict:
    """What a trial's plan kept (kept_fraction of the parameters, kept_attn_Lii / kept_mlp_Lii per layer), as
    params: the sampled shares alone do not say it (the repair scales them onto the budget)."""
    return {k: round(float(v), 4) for k, v in report.items() if k in REALISED or k.startswith(REALISED_PREFIXES)}


def runs_view() -> str:
    """The runs-table view (columns, order) that runs_url opens, as MLflow's UI stores a shared view."""
    column = lambda kind, key: f"{kind}.`{key}`"  # noqa: E731 - MLflow's canonical column key
    columns = ([column("metrics", k) for k in VIEW_METRICS] + [column("params", k) for k in VIEW_PARAMS]
               + [column("tags", k) for k in VIEW_TAGS] + [column("attributes", "Duration")])
    return json.dumps({"orderByKey": column("metrics", "score"), "orderByAsc": False, "selectedColumns": columns})


def runs_url(uri: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's UI with runs_view's columns (a server URI; a file or sqlite
    store has no UI of its own: `mlflow ui` serves it)."""
    return (f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def mlflow_params(params: dict) -> dict:
    """Sampled parameters as MLflow params, under the names Optuna and results.json use (per-layer pruning
    shares are named attn_share_i / mlp_share_i: a share of 0.86 may keep 0.64, since the plan scales every share
    onto the budget; the realised keep fractions are params of their own, kept_*)."""
    return dict(params)


def trial_tags(*, baseline: str = "", outcome: str | None = None, reason: str | None = None) -> dict:
    """Tags of a trial run: its baseline name only when it is one, its outcome (complete / stopped early by
    ASHA / failed) once the driver knows it, and stopped_early only on trials that were."""
    tags = {"baseline": baseline} if baseline else {}
    if outcome is not None:
        tags["outcome"] = outcome
        if outcome == "stopped early":
            tags["stopped_early"] = "true"
    if reason:
        tags["failure_reason"] = reason[:5000]
    return tags


def client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def reachable(uri: str) -> bool:
    if not uri.startswith(("http://", "https://")):
        return True
    from search._mlflow_server import health
    return health(uri.rstrip("/"))


def wait_reachable(uri: str, timeout: float = FLUSH_GRACE_S * 2) -> bool:
    """The driver, before it writes: a managed server being restarted by its supervisor is back in seconds."""
    deadline = time.time() + timeout
    while not reachable(uri):
        if time.time() > deadline:
            return False
        time.sleep(FLUSH_RETRY_S)
    return True


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def check_uri(uri: str) -> None:
    """A --tracking-uri MLflow can use: http(s)://HOST:PORT of a server, or a store URI (sqlite:///PATH, ...).
    One line otherwise, before anything starts (MLflow would raise deep inside the first trial)."""
    from urllib.parse import urlsplit
    parts = urlsplit(uri)
    if parts.scheme not in TRACKING_SCHEMES:
        raise ValueError(f"--tracking-uri {uri!r}: expected http(s)://HOST:PORT of an MLflow server or a store URI "
                         f"({', '.join(s + '://' for s in TRACKING_SCHEMES[2:])})")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise ValueError(f"--tracking-uri {uri!r}: no host in it (expected http://HOST:PORT)")
    if parts.scheme in ("http", "https"):
        try:
            parts.port                              # a port that is not a number
        except ValueError:
            raise ValueError(f"--tracking-uri {uri!r}: the port is not a number") from None


def check_reachable(uri: str) -> None:
    """A user's --tracking-uri must answer before anything is written: one-line ValueError otherwise."""
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
    old = os.environ.get(MLFLOW_HTTP_REQUEST_MAX_RETRIES.name)
    os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - refused, timed out, 403, 500, not MLflow: all the same to the user
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"--tracking-uri {uri}: the MLflow server refuses ({detail})") from None
    finally:
        if old is None:
            os.environ.pop(MLFLOW_HTTP_REQUEST_MAX_RETRIES.name, None)
        else:
            os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = old


def ensure_parent(uri: str, experiment_name: str, *, tags: dict, run_id: str | None = None,
                  artifact_location: str | None = None):
    """(experiment id, parent run id). Reuses `run_id` (resume) when given, marking it RUNNING again."""
    c = client(uri)
    if run_id:       # the run's own experiment, whatever the folder is called now (a renamed copy)
        exp_id = c.get_run(run_id).info.experiment_id
    else:
        exp = c.get_experiment_by_name(experiment_name)
        exp_id = exp.experiment_id if exp else c.create_experiment(
            experiment_name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    c.set_experiment_tag(exp_id, VIEW_TAG, runs_view())     # (again on resume: a newer version's columns)
    if not run_id:
        return exp_id, c.create_run(exp_id, run_name=experiment_name, tags=tags).info.run_id
    c.update_run(run_id, status="RUNNING")
    for key, value in tags.items():       # e.g. where the experiment's folder is now (a moved experiment)
        c.set_tag(run_id, key, value)
    return exp_id, run_id


def log_parent(uri: str, run_id: str, *, metrics: dict, files=(), texts: dict, figures: dict,
               status: str | None = None, params: dict | None = None, tags: dict | None = None) -> None:
    from mlflow.entities import Metric
    c = client(uri)
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float))]
    for i in range(0, len(batch), 900):      # MLflow caps a batch at 1000 metrics
        c.log_batch(run_id, metrics=batch[i:i + 900])
    if params:
        logged = c.get_run(run_id).data.params   # a param is written once: resume logs only new keys
        _apply(c, run_id, ("params", {k: v for k, v in params.items() if k not in logged}))
    if tags:
        _apply(c, run_id, ("tags", tags))
    for name, fig in figures.items():
        c.log_figure(run_id, fig, name)
    for name, text in texts.items():
        c.log_text(run_id, text, name)
    for path, folder in files:
        c.log_artifact(run_id, str(path), artifact_path=folder)
    if status:
        c.set_terminated(run_id, status=status)


def _run_filter(trial_id: str, parent_id: str) -> str:
    return f"tags.{TRIAL_TAG} = '{trial_id}' and tags.`{PARENT_TAG}` = '{parent_id}'"


@dataclass
class TrialRun:
    """The nested MLflow run of one trial, logged from the trial's worker, buffered while unreachable.
    Without a tracking URI it does nothing."""
    uri: str | None
    experiment_id: str | None = None
    parent_id: str | None = None
    trial_id: str = ""
    name: str = ""
    run_id: str | None = None
    pending: list = field(default_factory=list)
    delayed: int = 0                      # updates that had to wait for the server (reported with each rung)
    _warned: bool = False

    @classmethod
    def start(cls, setup, trial_id: str, params: dict, *, baseline: str = "") -> "TrialRun":
        run = cls(setup.tracking_uri, setup.mlflow_experiment_id, setup.parent_run_id, trial_id,
                  f"{baseline or 'trial'}-{trial_id}")
        run._do(("tags", trial_tags(baseline=baseline)), ("params", mlflow_params(params)))
        return run

    def log_plan(self, plan, result, realised: dict) -> None:
        """plan.json, the kept-ratio plot and the realised keep fractions (`realised`: the trial's report keys)."""
        from search._plots import kept_ratio_figure
        record = {"plan": plan.to_dict(), "realised": result.summary()}
        figure = kept_ratio_figure(result.realised, result.base_shapes, result.params / result.base_params)
        self._do(("params", realised_params(realised)), ("text", json.dumps(record, indent=2), "plan.json"),
                 ("figure", figure, "kept_ratio.png"))

    def log_record(self, record: dict, name: str) -> None:
        """A JSON artifact of the trial (e.g. a Track 2 architecture and schedule)."""
        self._do(("text", json.dumps(record, indent=2), name))

    def log_metrics(self, metrics: dict, *, step: int) -> None:
        self._do(("metrics", mlflow_metrics(metrics), step))

    @contextlib.contextmanager
    def finishing(self):
        """The trial's body inside: its run ends FINISHED when the body returns or the scheduler stopped it
        (Tune ends such a trial with sys.exit(0) inside report()), else FAILED with the reason; re-raises."""
        try:
            yield self
        except SystemExit as stop:
            if stop.code in (0, None):    # after the last rung or stopped early: the driver's table tags which
                self.finish("FINISHED")
            else:
                self.finish("FAILED", reason=f"SystemExit({stop.code})")
            raise
        except BaseException as err:
            self.finish("FAILED", reason=f"{type(err).__name__}: {err}")
            raise
        self.finish("FINISHED")

    def finish(self, status: str, *, reason: str = "") -> None:
        """The trial's own end; the driver sets the outcome (complete / stopped early / failed) afterwards."""
        self._do(("tags", trial_tags(reason=reason)), ("end", status))
        deadline = time.time() + FLUSH_GRACE_S
        while self.pending and time.time() < deadline:
            time.sleep(FLUSH_RETRY_S)
            self.flush()
        if self.pending:
            print(f"MLflow unreachable: trial {self.trial_id} leaves {len(self.pending)} updates to the driver's "
                  "reconciliation", file=sys.stderr, flush=True)

    # ---- the buffer --------------------------------------------------------------------------------
    def _do(self, *ops) -> None:
        if not self.uri:
            return
        self.pending.extend(ops)
        if not self.flush():
            self.delayed += len(ops)

    def flush(self) -> bool:
        """Send what is pending, in order; keep the rest when the server cannot be reached."""
        if not self.uri:
            return True
        try:
            c = client(self.uri)
            if self.run_id is None:
                self.run_id = _find_or_create(c, self.experiment_id, self.parent_id, self.trial_id, self.name)
            while self.pending:
                try:
                    _apply(c, self.run_id, self.pending[0])
                except Exception:
                    if not reachable(self.uri):
                        raise
                    # the server answered and refused this one update (not a connectivity problem): drop it
                    print(f"MLflow refused an update of trial {self.trial_id}: {sys.exc_info()[1]}",
                          file=sys.stderr, flush=True)
                self.pending.pop(0)
            return True
        except Exception as err:  # noqa: BLE001 - connection refused / reset / timed out: keep it for later
            if not self._warned:
                print(f"MLflow unreachable ({type(err).__name__}); trial {self.trial_id} buffers its updates",
                      file=sys.stderr, flush=True)
                self._warned = True
            return False


def _find_or_create(c, experiment_id: str, parent_id: str, trial_id: str, name: str) -> str:
    """A retried or resumed trial continues the run its first attempt opened."""
    found = c.search_runs([experiment_id], filter_string=_run_filter(trial_id, parent_id),
                          order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    return c.create_run(experiment_id, run_name=name, tags={PARENT_TAG: parent_id, TRIAL_TAG: trial_id}).info.run_id


def _apply(c, run_id: str, op) -> None:
    from mlflow.entities import Metric, Param, RunTag
    kind = op[0]
    if kind == "params":
        flat = [Param(k, str(v)[:500]) for k, v in sorted(op[1].items())]
        for i in range(0, len(flat), 90):     # MLflow caps a batch at 100 params
            c.log_batch(run_id, params=flat[i:i + 90])
    elif kind == "tags":
        if op[1]:
            c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in op[1].items()])
    elif kind == "metrics":
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, op[2]) for k, v in op[1].items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        c.log_batch(run_id, metrics=batch)
    elif kind == "text":
        c.log_text(run_id, op[1], op[2])
    elif kind == "figure":
        c.log_figure(run_id, op[1], op[2])
    elif kind == "end":
        c.set_terminated(run_id, status=op[1])
    else:
        raise ValueError(f"unknown MLflow update {kind!r}")


def reconcile(uri: str, experiment_id: str, parent_id: str, trials: list[dict], *, artifacts=None) -> dict:
    """Make the parent's nested runs match the trial table: one run per trial id (duplicates and runs of
    trials Tune never recorded are deleted), every step of `history` logged, params and plan artifacts
    present, final status set. trials: {trial_id, name, params, tags, history: [(step, metrics)], status}.
    artifacts(trial) -> [op] for a run that lacks plan.json. Returns counts of what it had to repair."""
    c = client(uri)
    counts = dict(created=0, duplicates_removed=0, orphans_removed=0, steps_filled=0, artifacts_filled=0)
    children = c.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                             max_results=50000, order_by=["attributes.start_time ASC"])
    by_trial: dict[str, list] = {}
    for run in children:
        by_trial.setdefault(run.data.tags.get(TRIAL_TAG), []).append(run)
    wanted = {t["trial_id"] for t in trials}
    for tid, runs in by_trial.items():
        if tid not in wanted:                 # asked by a killed driver after Tune's last snapshot: never a trial
            for run in runs:
                c.delete_run(run.info.run_id)
                counts["orphans_removed"] += 1
    for trial in trials:
        runs = sorted(by_trial.get(trial["trial_id"], []), key=lambda r: -len(r.data.metrics))
        for extra in runs[1:]:
            c.delete_run(extra.info.run_id)
            counts["duplicates_removed"] += 1
        if runs:
            run_id, params = runs[0].info.run_id, runs[0].data.params
        else:
            run_id = c.create_run(experiment_id, run_name=trial["name"], start_time=_ms(trial.get("started")),
                                  tags={PARENT_TAG: parent_id, TRIAL_TAG: trial["trial_id"]}).info.run_id
            params = {}
            counts["created"] += 1
        wanted_params = {**mlflow_params(trial["params"]), **realised_params(dict(trial["history"][-1][1]) if
                                                                              trial["history"] else {})}
        missing = {k: v for k, v in wanted_params.items() if k not in params}
        if missing:
            _apply(c, run_id, ("params", missing))
        logged = {m.step for m in c.get_metric_history(run_id, "score")} if runs else set()
        for step, metrics in trial["history"]:
            if step not in logged:
                _apply(c, run_id, ("metrics", mlflow_metrics(metrics), step))
                counts["steps_filled"] += 1
        if artifacts is not None and "plan.json" not in {a.path for a in c.list_artifacts(run_id)}:
            for op in artifacts(trial):
                _apply(c, run_id, op)
            counts["artifacts_filled"] += 1
        _apply(c, run_id, ("tags", trial.get("tags") or {}))
        info = c.get_run(run_id).info
        if info.status != trial["status"] or not info.end_time:   # the trial's own end time stays its end time
            c.set_terminated(run_id, status=trial["status"], end_time=info.end_time or _ms(trial.get("ended")))
    return counts


def _ms(seconds: float | None) -> int | None:
    return int(seconds * 1000) if seconds else None
