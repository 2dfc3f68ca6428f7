"""Optional experiment tracking (ttft.tracking): config checks, a real MLflow file store read back with
MLflow's client, a real W&B offline run, and a tracker outage that must not fail the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttft import tracking
from ttft.config import ConfigError, TrackingConfig, config_from_dict, load_config
from ttft.tracking import TrackedRun, check_backend, log_run, tracked_run

SUMMARY = {
    "name": "demo",
    "tasks": 3,
    "accuracy": 1 / 3,
    "solved": 1.0,
    "oracle": 0.5,
    "val_loss_before": 3.25,
    "val_loss_after": 1.5,
    "finetune_counts": {"trained": 2, "failed": 1},
    "stage_seconds": {"setup": 1.5, "fine-tune": 10.0, "val loss": 2.0},
    "finetune_seconds": 9.0,
    "invalid_tasks": ["bad.json: task bad: train[0].input: ragged grid"],
}


def _run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runs" / "demo"
    (d / "plots").mkdir(parents=True)
    (d / "report.md").write_text("# demo\n")
    (d / "submission.json").write_text("{}")
    (d / "plots" / "losses.png").write_bytes(b"\x89PNG fake bytes")
    return d


def _payload(tmp_path: Path, cfg=None) -> TrackedRun:
    cfg = cfg or config_from_dict({"name": "demo"})
    curves = {"t1": [2.0, 1.5, 1.0], "t2+t3": [3.0, 2.0], "t4": []}
    return tracked_run(cfg, SUMMARY, _run_dir(tmp_path), curves)


def test_tracking_is_off_by_default_and_validated():
    cfg = load_config("jobs/configs/smoke.yaml")
    assert cfg.tracking.backend is None
    assert log_run(cfg.tracking, TrackedRun("x", {}, {})) is None  # off: nothing is imported or written
    with pytest.raises(ConfigError, match=r"tracking\.backend: 'neptune' is not one of"):
        config_from_dict({"tracking": {"backend": "neptune"}})
    with pytest.raises(ConfigError, match=r"tracking\.project: expected str"):
        config_from_dict({"tracking": {"backend": "mlflow", "project": 3}})
    with pytest.raises(ConfigError, match=r"tracking\.server: unknown key"):
        config_from_dict({"tracking": {"server": "x"}})


def test_a_configured_backend_that_is_not_installed_is_a_config_error(monkeypatch):
    check_backend(TrackingConfig(backend="mlflow"))  # installed with the test extra
    monkeypatch.setitem(tracking.PACKAGES, "mlflow", "no_such_tracking_package")
    with pytest.raises(ConfigError, match=r"tracking\.backend: mlflow .* not installed .*ttft\[tracking\]"):
        check_backend(TrackingConfig(backend="mlflow"))


def test_payload_flattens_the_config_and_keeps_finite_numbers(tmp_path):
    cfg = config_from_dict({"name": "demo", "ttft": {"optim": {"lr": 0.001}}})
    run = _payload(tmp_path, cfg)
    assert run.params["ttft.optim.lr"] == "0.001" and run.params["tracking.backend"] == "None"
    assert run.metrics["accuracy"] == pytest.approx(1 / 3)
    assert run.metrics["seconds/val_loss"] == 2.0 and run.metrics["finetune/failed"] == 1.0
    assert run.metrics["invalid_tasks"] == 1.0
    assert set(run.curves) == {"train_loss/t1", "train_loss/t2_t3"}  # empty curves are dropped
    nan = tracked_run(cfg, {**SUMMARY, "accuracy": None, "oracle": float("nan")}, tmp_path, {})
    assert "accuracy" not in nan.metrics and "oracle" not in nan.metrics


def test_mlflow_file_store_gets_params_metrics_curves_and_files(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # log_run sets it for a path uri

    store = tmp_path / "mlruns"
    where = log_run(TrackingConfig(backend="mlflow", project="canary", uri=str(store)), _payload(tmp_path))
    assert where and where.startswith("mlflow run ")
    client = MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("canary").experiment_id])
    assert run.info.run_name == "demo" and run.info.status == "FINISHED"
    assert run.data.params["ttft.optim.steps"] == str(config_from_dict({}).ttft.optim.steps)
    assert run.data.metrics["val_loss_after"] == 1.5 and run.data.metrics["finetune/trained"] == 2.0
    history = client.get_metric_history(run.info.run_id, "train_loss/t1")
    points = sorted((m.step, m.value) for m in history)
    assert points == [(0, 2.0), (1, 1.5), (2, 1.0)]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "submission.json", "plots"} <= top
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/losses.png"]


def test_wandb_offline_run_holds_the_metrics_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wdir = tmp_path / "wandb-runs"
    where = log_run(TrackingConfig(backend="wandb", uri=str(wdir)), _payload(tmp_path))
    assert where and where.startswith("wandb run ")
    (run_dir,) = (wdir / "wandb").glob("offline-run-*")
    assert (run_dir / "files" / "report.md").read_text() == "# demo\n"
    assert (run_dir / "files" / "plots" / "losses.png").is_file()
    (record,) = run_dir.glob("run-*.wandb")  # the binary run log `wandb sync` uploads
    data = record.read_bytes()
    for key in (b"val_loss_after", b"train_loss/t2_t3", b"ttft.optim.lr", b"demo"):
        assert key in data, key


def test_a_tracker_outage_warns_and_keeps_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = TrackingConfig(backend="mlflow", uri="http://127.0.0.1:9")  # nothing listens on the discard port
    assert log_run(cfg, _payload(tmp_path)) is None
    err = capsys.readouterr().err
    assert "warning: tracking to mlflow failed, run kept on disk" in err
    assert (tmp_path / "runs" / "demo" / "report.md").is_file()
