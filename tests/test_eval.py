"""The main job end to end (real Ray, real vLLM CPU) on a few tiny tasks; compare; a Ray Tune sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ttft.scoring import read_submission, score_submission, solutions_of, validate_submission
from ttft.tasks import load_tasks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """Two finished runs on the same 3 smoke tasks: the seed's baseline and n-1 + geometric + color."""
    out = tmp_path_factory.mktemp("runs")
    common = [
        "--limit",
        "3",
        "--model",
        str(tiny_model_dir),
        "--registry",
        str(out / "registry"),
        "--set",
        f"out_dir={out}",
        "--set",
        "ttft.optim.steps=6",
        "--set",
        "inference.d8=[identity,rot90]",
        "--num-cpus",
        "2",
    ]
    procs = {
        "baseline": run(["-m", "jobs.eval", "--config", "jobs/configs/baseline.yaml", *common]),
        "n-1_geometric_color": run(
            ["-m", "jobs.eval", "--config", "jobs/configs/n-1_geometric_color.yaml", *common]
            + ["--set", "tracking.backend=mlflow", "--set", f"tracking.uri={out / 'mlruns'}"]
        ),
    }
    return out, procs


def test_eval_writes_every_artifact_and_scores_consistently(runs):
    out, procs = runs
    run_dir = out / "n-1_geometric_color"
    tasks = load_tasks("arc1/evaluation", max_side=6, limit=3).tasks
    for name in (
        "config.yaml",
        "submission.json",
        "predictions.parquet",
        "results.parquet",
        "report.md",
        "summary.json",
        "losses.png",
    ):
        assert (run_dir / name).is_file(), name
    sub = read_submission(run_dir / "submission.json")
    assert validate_submission(sub, tasks) == []
    rescored = score_submission(sub, solutions_of(tasks))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(rescored.mean_score)
    assert f"accuracy (pass@2): {100 * rescored.mean_score:.1f}%" in procs["n-1_geometric_color"].stdout
    results = pq.read_table(run_dir / "results.parquet").to_pylist()
    assert {r["task_id"] for r in results} == {t.id for t in tasks}
    by_key = {(r["task_id"], r["test_index"]): r["solved"] for r in rescored.table.to_pylist()}
    assert {(r["task_id"], r["test_index"]): r["solved"] for r in results} == by_key
    assert all(r["finetune"] == "trained" for r in results)
    preds = pq.read_table(run_dir / "predictions.parquet")
    assert preds.num_rows == sum(len(t.test_inputs) for t in tasks) * 2  # x 2 augmentations
    report = (run_dir / "report.md").read_text()
    for t in tasks:
        assert t.id in report
    assert "val loss before TTFT" in report and "adapters trained | 3" in report
    assert summary["val_loss_after"] < summary["val_loss_before"]


def test_eval_logs_the_run_to_mlflow_when_configured(runs, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens its file store only with this
    out, procs = runs
    assert "tracked: mlflow run" in procs["n-1_geometric_color"].stdout
    assert "tracked:" not in procs["baseline"].stdout  # off by default
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (mrun,) = client.search_runs([client.get_experiment_by_name("ttft").experiment_id])
    summary = json.loads((out / "n-1_geometric_color" / "summary.json").read_text())
    assert mrun.info.run_name == "n-1_geometric_color" and mrun.info.status == "FINISHED"
    assert mrun.data.metrics["accuracy"] == pytest.approx(summary["accuracy"])
    assert mrun.data.metrics["val_loss_after"] == pytest.approx(summary["val_loss_after"])
    assert mrun.data.params["ttft.optim.steps"] == "6" and mrun.data.params["tracking.backend"] == "mlflow"
    curves = [k for k in mrun.data.metrics if k.startswith("train_loss/")]
    assert len(curves) == 3
    assert len(client.get_metric_history(mrun.info.run_id, curves[0])) == 6  # one point per step
    artifacts = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"submission.json", "report.md", "results.parquet", "losses.png"} <= artifacts


def test_baseline_runs_without_adapters(runs):
    out, _ = runs
    results = pq.read_table(out / "baseline" / "results.parquet").to_pylist()
    assert results and all(r["finetune"] == "none" and r["fallback"] for r in results)
    assert all(r["val_loss_before"] > 0 and r["val_loss_after"] is None for r in results)
    tuned = {
        r["task_id"]: r["val_loss_before"]
        for r in pq.read_table(out / "n-1_geometric_color" / "results.parquet").to_pylist()
    }
    for r in results:  # same base model, same val samples: the baseline val loss is the "before TTFT" loss
        assert r["val_loss_before"] == pytest.approx(tuned[r["task_id"]], rel=1e-4)


def test_rerun_reuses_adapters(runs, tiny_model_dir):
    out, _ = runs
    proc = run(
        [
            "-m",
            "jobs.finetune",
            "--config",
            "jobs/configs/n-1_geometric_color.yaml",
            "--limit",
            "3",
            "--model",
            str(tiny_model_dir),
            "--registry",
            str(out / "registry"),
            "--set",
            f"out_dir={out}",
            "--set",
            "ttft.optim.steps=6",
            "--num-cpus",
            "2",
        ]
    )
    assert "3 reused" in proc.stdout


def test_compare_prints_the_seed_table(runs):
    out, _ = runs
    proc = run(["-m", "ttft.cli", "compare", str(out / "baseline"), str(out / "n-1_geometric_color")])
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| experiment | val loss | val accuracy |")
    assert any(line.startswith("| baseline |") for line in lines)
    assert any(line.startswith("| n-1\\_geometric\\_color |") for line in lines)  # markdown-escaped
    assert (out / "compare.png").stat().st_size > 1000


def test_tune_sweep_of_two_trials(tiny_model_dir, tmp_path, monkeypatch):
    proc = run(
        [
            "-m",
            "jobs.sweep",
            "--config",
            "jobs/configs/smoke.yaml",
            "--limit",
            "2",
            "--model",
            str(tiny_model_dir),
            "--set",
            f"out_dir={tmp_path}",
            "--trials",
            "2",
            "--num-cpus",
            "2",
            "--space",
            json.dumps({"ttft.optim.lr": ["loguniform", 1e-4, 1e-2], "ttft.optim.steps": ["choice", [2, 3]]}),
            "--set",
            "tracking.backend=mlflow",
            "--set",
            f"tracking.uri={tmp_path / 'mlruns'}",
        ]
    )
    assert "Best config" in proc.stdout and "Held out (1 tasks, not used to select)" in proc.stdout
    table = (tmp_path / "smoke-sweep" / "sweep.md").read_text()
    assert table.count("\n| ") >= 3  # header + 2 trials
    best = json.loads((tmp_path / "smoke-sweep" / "best.json").read_text())
    assert best["metrics"]["val_loss"] > 0
    # selected on one task, reported on the other: disjoint, and the held-out numbers are its own
    assert len(best["select_tasks"]) == len(best["report_tasks"]) == 1
    assert set(best["select_tasks"]).isdisjoint(best["report_tasks"])
    assert best["held_out"]["val_loss"] > 0 and 0 <= best["held_out"]["accuracy"] <= 1
    from mlflow.tracking import MlflowClient  # tracking on: one MLflow run per trial, with its metric

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    tracked = client.search_runs([client.get_experiment_by_name("ttft-sweep").experiment_id])
    assert len(tracked) == 2 and all(r.data.metrics["val_loss"] > 0 for r in tracked)
    assert {r.data.params["ttft.optim.steps"] for r in tracked} <= {"2", "3"}


def test_kaggle_challenges_without_solutions_finish_with_a_submission(tiny_model_dir, tmp_path):
    """The Kaggle journey: a challenges file with no test outputs runs to the end, exit 0, a valid submission
    for every task, and a report that says nothing was scored."""
    tasks = load_tasks("arc1/evaluation", max_side=6, limit=2).tasks
    challenges = tmp_path / "challenges.json"
    challenges.write_text(json.dumps({t.id: t.with_test_outputs(None).to_json() for t in tasks}))
    proc = run(
        [
            *("-m", "jobs.eval", "--config", "jobs/configs/smoke.yaml", "--data", str(challenges)),
            *("--model", str(tiny_model_dir), "--registry", str(tmp_path / "registry"), "--name", "kaggle"),
            *(
                "--set",
                f"out_dir={tmp_path}",
                "--set",
                "ttft.optim.steps=2",
                "--set",
                "inference.d8=[identity]",
            ),
            *("--num-cpus", "2"),
        ]
    )
    run_dir = tmp_path / "kaggle"
    sub = read_submission(run_dir / "submission.json")
    assert validate_submission(sub, tasks) == [] and set(sub) == {t.id for t in tasks}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["accuracy"] is None and summary["scored_tasks"] == 0
    assert "No solutions: not scored" in (run_dir / "report.md").read_text()
    assert "No solutions: not scored" in proc.stdout and "accuracy" not in proc.stdout
    assert pq.read_table(run_dir / "predictions.parquet").num_rows == sum(len(t.test_inputs) for t in tasks)


def test_sweep_split_is_stable_disjoint_and_never_empty():
    from jobs.sweep import split_tasks

    tasks = load_tasks("arc1/evaluation", max_side=6, limit=9).tasks
    select, report = split_tasks(tasks, 0.5)
    assert len(select) == 4 and len(report) == 5
    assert {t.id for t in select}.isdisjoint(t.id for t in report) and len(select) + len(report) == 9
    assert split_tasks(tasks[::-1], 0.5) == (select, report)  # by content, not by order
    assert [len(x) for x in split_tasks(tasks[:2], 0.9)] == [1, 1]
    with pytest.raises(ValueError, match="at least 2 tasks"):
        split_tasks(tasks[:1], 0.5)
