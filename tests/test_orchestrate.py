"""Ray orchestration against a real local Ray head: job submission, actor death, failures, resume, budget."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from ttft.config import load_config
from ttft.orchestrate import WORKER_NAMESPACE, run_finetunes
from ttft.registry import AdapterRegistry
from ttft.tasks import load_tasks

ROOT = Path(__file__).resolve().parents[1]
SMALL = load_tasks("arc1/evaluation", max_side=6).tasks


def cfg_for(tmp_path: Path, tiny_model_dir: Path, name: str, **over):
    overrides = {
        "name": name,
        "out_dir": str(tmp_path / "runs"),
        "registry.root": str(tmp_path / "registry"),
        "model.name": str(tiny_model_dir),
        "ttft.optim.steps": 3,
        "ttft.samples.max_per_task": 8,
        "orchestrate.workers": 2,
        "orchestrate.progress_interval_s": 1.0,
        "orchestrate.retries": 1,
    }
    overrides.update(over)
    return load_config(ROOT / "jobs/configs/smoke.yaml", overrides)


@pytest.fixture(scope="module")
def ray_client(ray_head):
    ray.init(address=ray_head["gcs"], namespace="ttft-tests")
    yield ray_head
    ray.shutdown()


@pytest.mark.slow
def test_ray_job_submit_trains_four_adapters(ray_head, tiny_model_dir, tmp_path):
    registry = tmp_path / "registry"
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "job",
        "submit",
        "--address",
        ray_head["dashboard"],
        "--working-dir",
        str(ROOT),
        "--runtime-env",
        str(ROOT / "cluster/runtime_env.yaml"),
        "--",
        sys.executable,
        "-m",
        "jobs.finetune",
        "--config",
        "jobs/configs/smoke.yaml",
        "--limit",
        "4",
        "--model",
        str(tiny_model_dir),
        "--registry",
        str(registry),
        "--workers",
        "2",
        "--set",
        "ttft.optim.steps=3",
        "--set",
        f"out_dir={tmp_path / 'runs'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    rows = AdapterRegistry(str(registry)).query(status="ok")
    assert rows.num_rows == 4
    assert "4 trained" in proc.stdout


def test_actor_killed_mid_run_requeues_its_job(ray_client, tiny_model_dir, tmp_path):
    cfg = cfg_for(tmp_path, tiny_model_dir, "kill", **{"ttft.optim.steps": 12})
    tasks = SMALL[:6]
    killed: list[str] = []

    def kill_workers(outcome) -> None:
        if killed:
            return
        for a in ray.util.list_named_actors(all_namespaces=True):
            if a["namespace"] == WORKER_NAMESPACE and a["name"].startswith("worker-kill-"):
                ray.kill(ray.get_actor(a["name"], namespace=WORKER_NAMESPACE), no_restart=True)
                killed.append(a["name"])

    out = io.StringIO()
    summary = run_finetunes(cfg, tasks, out=out, on_result=kill_workers)
    assert killed, "no worker was killed"
    assert "died" in out.getvalue()
    assert summary.counts == {"trained": 6}
    rows = AdapterRegistry(cfg.registry.root).query(run="kill")
    assert rows.num_rows == 6
    assert len(set(rows.column("key").to_pylist())) == 6


def test_failing_task_is_recorded_and_the_rest_succeed(ray_client, tiny_model_dir, tmp_path):
    # Every grid of this task is at least 15x15: no n-1 sample fits 600 tokens, a real fine-tune failure.
    big = next(
        t for t in load_tasks("arc1/evaluation").tasks if min(min(len(g), len(g[0])) for g in t.grids()) >= 15
    )
    cfg = cfg_for(tmp_path, tiny_model_dir, "fail", **{"ttft.samples.max_seq_len": 600})
    tasks = [*SMALL[:2], big]
    summary = run_finetunes(cfg, tasks, out=io.StringIO())
    assert summary.counts == {"trained": 2, "failed": 1}
    (failed,) = summary.by_status("failed")
    assert failed.task_ids == [big.id] and failed.attempts == 2
    assert "no training sample fits" in failed.error and big.id in failed.error
    rows = AdapterRegistry(cfg.registry.root).query(status="failed").to_pylist()
    assert [r["task_ids"] for r in rows] == [[big.id]]
    assert "no training sample fits" in rows[0]["error"]
    assert "1 failed" in summary.text()


def test_resubmit_reuses_every_adapter(ray_client, tiny_model_dir, tmp_path):
    cfg = cfg_for(tmp_path, tiny_model_dir, "resume")
    first = run_finetunes(cfg, SMALL[:3], out=io.StringIO())
    assert first.counts == {"trained": 3}
    out = io.StringIO()
    second = run_finetunes(cfg, SMALL[:3], out=out)
    assert second.counts == {"reused": 3}
    assert "3 found in the registry, 0 to train" in out.getvalue()
    assert AdapterRegistry(cfg.registry.root).query(run="resume").num_rows == 3


def test_group_size_trains_one_adapter_per_group(ray_client, tiny_model_dir, tmp_path):
    cfg = cfg_for(tmp_path, tiny_model_dir, "group", **{"orchestrate.group_size": 2})
    summary = run_finetunes(cfg, SMALL[:4], out=io.StringIO())
    assert summary.counts == {"trained": 2}
    assert [len(o.task_ids) for o in summary.outcomes] == [2, 2]


def test_short_budget_finishes_in_time_and_names_reduced_tasks(ray_client, tiny_model_dir, tmp_path):
    budget = 40.0
    cfg = cfg_for(
        tmp_path,
        tiny_model_dir,
        "budget",
        **{
            "ttft.optim.steps": 100000,
            "orchestrate.budget": f"{budget:g}s",
            "orchestrate.inference_share": 0.0,
            "orchestrate.min_steps": 2,
        },
    )
    t0 = time.monotonic()
    summary = run_finetunes(cfg, SMALL[:4], out=io.StringIO())
    elapsed = time.monotonic() - t0
    assert elapsed < budget + 15, elapsed
    reduced = [o for o in summary.outcomes if o.reduced]
    assert reduced, summary.text()
    for o in reduced:
        assert o.steps < o.planned_steps == 100000
        assert f"reduced: {o.task_ids[0]}" in summary.text()
    assert all(o.status in ("trained", "skipped") for o in summary.outcomes)


def test_cluster_files_parse_and_name_existing_entrypoints():
    launcher = yaml.safe_load((ROOT / "cluster/gpu-cluster.yaml").read_text())
    assert {"head", "gpu_worker"} <= set(launcher["available_node_types"])
    assert launcher["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert any("make install-gpu" in c for c in launcher["setup_commands"])
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all(".venv/bin" in c for c in starts)
    job = yaml.safe_load((ROOT / "cluster/rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"].split()
    assert entry[:3] == ["python", "-m", "jobs.eval"]
    assert (ROOT / entry[entry.index("--config") + 1]).is_file()
    env = yaml.safe_load((ROOT / "cluster/runtime_env.yaml").read_text())
    assert ".venv" in env["excludes"]
    env_vars = yaml.safe_load(job["spec"]["runtimeEnvYAML"]).get("env_vars", {})
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"} & set(env_vars)  # pods' env
    spec = job["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for pod in pods:
        assert pod["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "ttft-s3"}}]
    assert "make install-gpu" in (ROOT / "cluster/Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "install-gpu:" in makefile and ".[$(STACK),test]" in makefile
    assert "ray job submit" in makefile and "cluster/runtime_env.yaml" in makefile and "jobs.eval" in makefile
    assert "start" in (ROOT / "cluster/local_head.sh").read_text()


@pytest.mark.parametrize("module", ["jobs.finetune", "jobs.infer", "jobs.eval"])
def test_entrypoint_help_documents_options(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for opt in ("--config", "--registry", "--model", "--set"):
        assert opt in proc.stdout


def test_paths_that_a_ray_job_would_lose_are_resolved_or_refused(ray_client, tmp_path, monkeypatch):
    from ttft.config import ConfigError
    from ttft.orchestrate import check_cluster_paths

    cfg = load_config(ROOT / "jobs/configs/smoke.yaml")  # out_dir: runs, registry.root: runs/registry
    assert check_cluster_paths(cfg) == cfg  # a plain local run: relative paths are the user's own
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # as under `ray job submit`
    monkeypatch.delenv("TTFT_SUBMIT_DIR", raising=False)
    with pytest.raises(ConfigError, match="temporary working directory"):
        check_cluster_paths(cfg)
    monkeypatch.setenv("TTFT_SUBMIT_DIR", str(ROOT))  # make eval-cluster on a local head
    fixed = check_cluster_paths(cfg)
    assert fixed.out_dir == str(ROOT / "runs") and fixed.registry.root == str(ROOT / "runs/registry")
    monkeypatch.setenv("TTFT_SUBMIT_DIR", str(tmp_path))  # not a checkout this machine has: refused
    with pytest.raises(ConfigError, match="out_dir"):
        check_cluster_paths(cfg)


def finetune_job(gcs: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m jobs.finetune` on the smoke config against the test head, as a user runs it."""
    cmd = [sys.executable, "-m", "jobs.finetune", "--config", "jobs/configs/smoke.yaml", "--limit", "2"]
    return subprocess.run(
        [*cmd, *args, "--address", gcs], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )


def test_finetune_summary_json_written(ray_client, tiny_model_dir, tmp_path):
    proc = finetune_job(
        ray_client["gcs"],
        *("--model", str(tiny_model_dir), "--registry", str(tmp_path / "reg"), "--name", "cli"),
        *("--set", "ttft.optim.steps=2", "--set", f"out_dir={tmp_path}"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "cli" / "finetune.json").read_text())
    assert data["counts"] == {"trained": 2}


def test_object_store_down_exits_3_and_says_why(ray_client, tmp_path):
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "k"}
    env["AWS_SECRET_ACCESS_KEY"] = "s"
    proc = finetune_job(
        ray_client["gcs"], "--registry", "s3://ttft/down", "--set", f"out_dir={tmp_path}", env=env
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "the registry at s3://ttft/down failed" in proc.stderr and "Traceback" not in proc.stderr
