"""Optional experiment tracking: a finished run's config, metrics, loss curves and files to MLflow or W&B.

Off by default (``tracking.backend: null``) and never required: nothing here is imported unless a config
turns it on. ``check_backend`` runs before any work, so a configured backend that is not installed is a
config error up front (``pip install 'ttft[tracking]'``). Logging happens once the run's files are on
disk, and a tracker that fails (server down, no credentials) only prints a warning: the run is kept.

What is logged: the resolved config as parameters (flattened ``a.b.c`` keys); the run's headline numbers
(accuracy, solved, oracle, val loss before/after, stage seconds, fine-tune counts) as metrics; each
fine-tune's train loss curve as ``train_loss/<task>`` (step = optimizer step); and every file of
``runs/<name>/`` (config, submission, predictions, results, report, plots) as artifacts.

- MLflow: experiment ``tracking.project``, tracking URI ``tracking.uri`` (else $MLFLOW_TRACKING_URI / MLflow's
  default). A local path or ``file:`` URI uses MLflow's file store.
- W&B: project ``tracking.project``; mode, entity and key from the usual WANDB_* variables
  (``WANDB_MODE=offline`` writes the run under ``tracking.uri`` or ./wandb, for ``wandb sync`` later).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttft.config import ConfigError, RunConfig, TrackingConfig, flatten

PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}  # backend -> the module it needs


@dataclass
class TrackedRun:
    """Everything one run sends to a tracker."""

    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # metric name -> value per step
    files: Path | None = None  # a directory: every file in it becomes an artifact


def check_backend(cfg: TrackingConfig) -> None:
    """Raise ConfigError when a tracking backend is configured but its package is not installed."""
    if cfg.backend is None:
        return
    module = PACKAGES[cfg.backend]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"tracking.backend: {cfg.backend} is configured but the {module!r} package is not installed "
            "(pip install 'ttft[tracking]', or set tracking.backend to null)"
        )


def tracked_run(
    cfg: RunConfig, summary: dict[str, Any], run_dir: Path, curves: dict[str, list[float]]
) -> TrackedRun:
    """The payload of one finished run: config params, summary metrics, train loss curves, run files."""
    metrics: dict[str, float] = {}
    for key in (
        "tasks",
        "accuracy",
        "solved",
        "oracle",
        "val_loss_before",
        "val_loss_after",
        "finetune_seconds",
    ):
        value = summary.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            metrics[key] = float(value)
    for stage, seconds in summary.get("stage_seconds", {}).items():
        metrics[f"seconds/{stage.replace(' ', '_')}"] = float(seconds)
    for status, n in summary.get("finetune_counts", {}).items():
        metrics[f"finetune/{status}"] = float(n)
    metrics["invalid_tasks"] = float(len(summary.get("invalid_tasks", [])))
    return TrackedRun(
        name=cfg.name,
        params={k: str(v) for k, v in flatten(cfg.to_dict()).items()},
        metrics=metrics,
        curves={f"train_loss/{_metric_name(k)}": v for k, v in curves.items() if v},
        files=run_dir,
    )


def _metric_name(text: str) -> str:
    """Characters both MLflow and W&B accept in a metric name (task ids of a group: a+b -> a_b)."""
    return re.sub(r"[^\w\-.:/ ]", "_", text)


def log_run(cfg: TrackingConfig, run: TrackedRun) -> str | None:
    """Send `run` to the configured tracker; return where it went, or None when tracking is off.

    A tracker error is printed as a warning and returns None: tracking never fails a run."""
    if cfg.backend is None:
        return None
    try:
        return _LOGGERS[cfg.backend](cfg, run)
    except Exception as e:  # a tracker outage must not lose a finished run
        print(f"[ttft] warning: tracking to {cfg.backend} failed, run kept on disk: {e}", file=sys.stderr)
        return None


def _artifact_files(run: TrackedRun) -> list[Path]:
    if run.files is None:
        return []
    return sorted(p for p in run.files.rglob("*") if p.is_file())


def mlflow_uri(cfg: TrackingConfig) -> str | None:
    """The MLflow tracking URI of `cfg` (a plain path becomes a file: URI, MLflow's file store, which
    MLflow 3 only opens with MLFLOW_ALLOW_FILE_STORE: set here, as the config asked for it)."""
    uri = cfg.uri
    if uri and "://" not in uri and not uri.startswith("file:"):
        uri = Path(uri).resolve().as_uri()
    if uri and uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def _log_mlflow(cfg: TrackingConfig, run: TrackedRun) -> str:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(cfg))
    exp = client.get_experiment_by_name(cfg.project)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.project)
    mrun = client.create_run(exp_id, run_name=run.name)
    rid = mrun.info.run_id
    try:
        now = int(1000 * time.time())
        params = [Param(k, v[:6000]) for k, v in run.params.items()]
        metrics = [Metric(k, v, now, 0) for k, v in run.metrics.items()]
        metrics += [
            Metric(k, float(v), now, step) for k, vs in run.curves.items() for step, v in enumerate(vs)
        ]
        for i in range(0, len(params), 100):  # MLflow's log_batch limits: 100 params, 1000 metrics a call
            client.log_batch(rid, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i : i + 1000])
        for path in _artifact_files(run):
            rel = path.parent.relative_to(run.files).as_posix() if run.files else ""
            client.log_artifact(rid, str(path), artifact_path=None if rel == "." else rel)
    except BaseException:
        client.set_terminated(rid, status="FAILED")
        raise
    client.set_terminated(rid)
    return f"mlflow run {rid} in experiment {cfg.project!r} at {client.tracking_uri}"


def _log_wandb(cfg: TrackingConfig, run: TrackedRun) -> str:
    import wandb

    kwargs: dict[str, Any] = {
        "project": cfg.project,
        "name": run.name,
        "config": run.params,
        "reinit": "finish_previous",
    }
    if cfg.uri:
        Path(cfg.uri).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = cfg.uri
    wrun = wandb.init(**kwargs)
    try:
        steps = max((len(v) for v in run.curves.values()), default=0)
        for step in range(steps):
            wrun.log({k: vs[step] for k, vs in run.curves.items() if step < len(vs)}, step=step)
        for k, v in run.metrics.items():
            wrun.summary[k] = v
        for path in _artifact_files(run):
            wrun.save(str(path), base_path=str(run.files), policy="now")
        where = f"wandb run {wrun.id} in project {cfg.project!r} ({wrun.dir})"
    except BaseException:
        wrun.finish(exit_code=1)
        raise
    wrun.finish()
    return where


_LOGGERS = {"mlflow": _log_mlflow, "wandb": _log_wandb}
