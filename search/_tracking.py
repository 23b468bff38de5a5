"""MLflow: one parent run per experiment (created by the driver), one nested run per trial.

The default store is a SQLite file with an absolute URI, created on the driver before any trial
starts (two processes initialising a fresh SQLite store at once race on its migrations).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def ensure_parent(uri: str, experiment_name: str, artifact_root: Path, *, tags: dict, run_id: str | None = None):
    """(experiment id, parent run id). Reuses `run_id` (resume) when given."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        exp_id = c.create_experiment(experiment_name, artifact_location=Path(artifact_root).resolve().as_uri())
    else:
        exp_id = exp.experiment_id
    if run_id:
        c.update_run(run_id, status="RUNNING")
        return exp_id, run_id
    run = c.create_run(exp_id, run_name=experiment_name, tags=tags)
    return exp_id, run.info.run_id


@dataclass
class TrialRun:
    """A nested MLflow run for one trial. Without a tracking URI it does nothing."""
    uri: str | None
    run_id: str | None

    @classmethod
    def start(cls, setup, trial_id: str, params: dict, *, baseline: str = "") -> "TrialRun":
        if not setup.tracking_uri:
            return cls(None, None)
        from mlflow.entities import Param
        c = client(setup.tracking_uri)
        name = f"{baseline or 'trial'}-{trial_id}"
        run = c.create_run(setup.mlflow_experiment_id, run_name=name,
                           tags={"mlflow.parentRunId": setup.parent_run_id, "tune_trial_id": trial_id,
                                 "baseline": baseline})
        flat = [Param(k, str(v)[:500]) for k, v in sorted(params.items())]
        for i in range(0, len(flat), 90):   # MLflow caps a batch at 100 params
            c.log_batch(run.info.run_id, params=flat[i:i + 90])
        return cls(setup.tracking_uri, run.info.run_id)

    def log_plan(self, plan, result) -> None:
        if not self.uri:
            return
        c = client(self.uri)
        record = {"plan": plan.to_dict(), "realised": result.summary()}
        c.log_text(self.run_id, json.dumps(record, indent=2), "plan.json")
        c.log_figure(self.run_id, kept_ratio_figure(result), "kept_ratio.png")

    def log_record(self, record: dict, name: str) -> None:
        """A JSON artifact of the trial (e.g. a Track 2 architecture and schedule)."""
        if not self.uri:
            return
        client(self.uri).log_text(self.run_id, json.dumps(record, indent=2), name)

    def log_metrics(self, metrics: dict, *, step: int) -> None:
        if not self.uri:
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        client(self.uri).log_batch(self.run_id, metrics=batch)

    def finish(self, status: str, *, reason: str = "", tag: tuple | None = None) -> None:
        if not self.uri:
            return
        c = client(self.uri)
        if tag:
            c.set_tag(self.run_id, *tag)
        if reason:
            c.set_tag(self.run_id, "failure_reason", reason[:5000])
        c.set_terminated(self.run_id, status=status)


def kept_ratio_figure(result):
    """Per base layer: fraction of attention heads and MLP channels kept (0 = removed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    heads0 = result.base_shapes.layers[0].num_attention_heads
    ffn0 = result.base_shapes.layers[0].intermediate_size
    layers = range(len(result.realised))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([i - 0.2 for i in layers], [s.num_attention_heads / heads0 for s in result.realised], 0.4, label="attention")
    ax.bar([i + 0.2 for i in layers], [s.intermediate_size / ffn0 for s in result.realised], 0.4, label="MLP")
    ax.set_xlabel("layer"), ax.set_ylabel("kept fraction"), ax.set_ylim(0, 1.05), ax.legend()
    ax.set_title(f"kept {result.params / result.base_params:.1%} of parameters")
    plt.close(fig)
    return fig
