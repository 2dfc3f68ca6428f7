"""The cluster journeys as a user types them: `make eval-cluster` from a shell without the venv, against
the emulated multi-node cluster (ttft.emulate: a GPU-less head, two one-GPU worker nodes with private
filesystems, SeaweedFS S3), a KubeRay-shaped submission, a worker node lost mid-run, and the local head
(`make ray-head` / `make ray-stop`). Real Ray, real vLLM CPU, real S3; nothing shared but the object store.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ttft import emulate
from ttft.registry import AdapterRegistry

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
pytestmark = pytest.mark.slow
JOB_TIMEOUT = 1500


def user_env(**extra: str) -> dict[str, str]:
    """A login shell's environment: no venv on PATH, no Ray or AWS settings but those given."""
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TERM", "USER", "TMPDIR")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = JOB_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    return (proc.stdout + proc.stderr)[-n:]


@pytest.fixture(scope="module")
def cluster():
    """The emulated cluster, up for this module (its own state dir), down after: nothing left running."""
    st = ROOT / ".cache" / f"emulate-test-{os.getpid()}"
    state = emulate.up(st, workers=2, cpus=2)
    try:
        yield state
    finally:
        emulate.down(st)
        assert not emulate.marked_pids(state["marker"]), "emulate down left processes behind"
        assert not st.exists()


def client_env(state: dict) -> dict[str, str]:
    """The environment after `eval "$(bash cluster/emulate.sh up)"`."""
    exports = dict(re.findall(r"^export (\w+)=(.*)$", emulate.exports(state), re.M))
    return user_env(**{k: v.strip("'") for k, v in exports.items()})


def s3_registry(state: dict, prefix: str) -> AdapterRegistry:
    s3 = state["s3"]
    return AdapterRegistry(
        f"s3://{emulate.BUCKET}/{prefix}",
        s3_endpoint=s3["AWS_ENDPOINT_URL"],
        s3_access_key=s3["AWS_ACCESS_KEY_ID"],
        s3_secret_key=s3["AWS_SECRET_ACCESS_KEY"],
    )


def pull(state: dict, name: str, dest: Path) -> Path:
    proc = run([str(BIN / "ttft"), "runs", "pull", f"s3://ttft/runs/{name}", str(dest)], client_env(state))
    assert proc.returncode == 0, tail(proc)
    return dest


def test_emulated_nodes_see_private_filesystems(cluster):
    """Each worker's scratch, HOME (caches) and Ray working dir are its own: invisible to the other nodes."""
    code = (
        "import os, ray, tempfile; ray.init(logging_level='ERROR', log_to_driver=False)\n"
        "@ray.remote(num_gpus=1)\n"
        "def write():\n"
        "    paths = [tempfile.mkdtemp(), os.path.join(os.path.expanduser('~'), '.cache', 'probe')]\n"
        "    os.makedirs(paths[1], exist_ok=True)\n"
        "    return os.environ.get('TTFT_EMULATED_NODE'), paths\n"
        "@ray.remote(num_gpus=1)\n"
        "def look(paths): return os.environ.get('TTFT_EMULATED_NODE'), [os.path.exists(p) for p in paths]\n"
        "node, paths = ray.get(write.remote())\n"
        "others = ray.get([look.options(scheduling_strategy='SPREAD').remote(paths) for _ in range(4)])\n"
        "print(repr((node, paths, others, [os.path.exists(p) for p in paths])))"
    )
    env = {**client_env(cluster), "RAY_ADDRESS": cluster["gcs"]}
    proc = run([str(BIN / "python"), "-c", code], env, timeout=300)
    assert proc.returncode == 0, tail(proc)
    node, paths, others, on_client = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert node in ("worker-1", "worker-2") and on_client == [False, False]
    assert any(n != node for n, _ in others), others  # the other node was asked too
    for n, seen in others:
        assert seen == ([True, True] if n == node else [False, False]), others


def test_make_eval_cluster_journey_scores_like_a_local_run(cluster, tmp_path):
    name = "ct-journey"
    args = f"--limit 6 --set name={name} --set registry.root=s3://ttft/registry/ct"
    proc = run(
        ["make", "eval-cluster", "CONFIG=jobs/configs/cluster_smoke.yaml", f"ARGS={args}"],
        client_env(cluster),
    )
    out = tail(proc, 20000)
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower() and f"s3://ttft/runs/{name}/report.md" in out
    run_dir = pull(cluster, name, tmp_path / "cluster")
    results = pq.read_table(run_dir / "results.parquet").to_pylist()
    assert len({r["task_id"] for r in results}) == 6
    # Placement: every fine-tune and every inference shard ran on a worker node, none on the GPU-less head.
    assert all(r["finetune_node"].startswith("worker-") for r in results), results
    assert all(r["inference_node"].startswith("worker-") for r in results), results
    assert len({r["inference_node"] for r in results}) == 2  # one engine per (emulated) GPU
    assert "## Placement" in (run_dir / "report.md").read_text()
    cluster_summary = json.loads((run_dir / "summary.json").read_text())
    score = run(
        [
            str(BIN / "ttft"),
            "score",
            "--submission",
            f"s3://ttft/runs/{name}/submission.json",
            "--solutions",
            "arc1/evaluation",
            "--only-submitted",
        ],
        client_env(cluster),
    )
    assert "score:" in score.stdout, tail(score)

    # The same config run locally (local Ray, no GPUs, a registry prefix of its own): same adapter keys
    # (the model identity and keys do not depend on where things ran) and the same score.
    local = run(
        [
            str(BIN / "python"),
            "-m",
            "jobs.eval",
            "--config",
            "jobs/configs/cluster_smoke.yaml",
            "--limit",
            "6",
            "--num-cpus",
            "2",
            "--set",
            "name=ct-local",
            "--set",
            f"out_dir={tmp_path / 'local'}",
            "--set",
            "registry.root=s3://ttft/registry/ct-local",
            "--set",
            "orchestrate.gpus_per_worker=0",
            "--set",
            "orchestrate.max_workers=2",
        ],
        {**client_env(cluster), "RAY_ADDRESS": ""},
    )
    assert local.returncode == 0, tail(local)
    local_summary = json.loads((tmp_path / "local" / "ct-local" / "summary.json").read_text())
    assert local_summary["accuracy"] == cluster_summary["accuracy"]
    keys = {r["key"] for r in s3_registry(cluster, "registry/ct").query(status="ok").to_pylist()}
    local_keys = {r["key"] for r in s3_registry(cluster, "registry/ct-local").query(status="ok").to_pylist()}
    assert len(keys) == 6 and keys == local_keys


def test_kuberay_shaped_submission_with_env_vars_runs(cluster, tmp_path):
    """rayjob.yaml sets env_vars in the job's runtime_env: the driver must not re-pass its own env."""
    runtime_env = {
        "working_dir": str(ROOT),
        "excludes": [".venv", "runs", ".cache", ".git", "bench/results", "**/__pycache__"],
        "env_vars": {
            "TOKENIZERS_PARALLELISM": "false",
            "AWS_ENDPOINT_URL": cluster["s3"]["AWS_ENDPOINT_URL"],
        },
    }
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        cluster["dashboard"],
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        *(
            "python -m jobs.eval --config jobs/configs/cluster_smoke.yaml --limit 2 --set name=ct-kuberay "
            "--set registry.root=s3://ttft/registry/ct"
        ).split(),
    ]
    proc = run(cmd, client_env(cluster))
    assert proc.returncode == 0, tail(proc)
    assert "succeeded" in tail(proc).lower()
    summary = json.loads((pull(cluster, "ct-kuberay", tmp_path) / "summary.json").read_text())
    assert summary["tasks"] == 2


def test_worker_node_lost_mid_run_requeues_and_registers_each_adapter_once(cluster, tmp_path):
    name, prefix = "ct-kill", "registry/ct-kill"
    env = client_env(cluster)
    submit = run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--no-wait",
            "--address",
            cluster["dashboard"],
            "--working-dir",
            str(ROOT),
            "--runtime-env",
            str(ROOT / "cluster/runtime_env.yaml"),
            "--",
            *(
                f"python -m jobs.eval --config jobs/configs/cluster_smoke.yaml --limit 8 --set name={name} "
                f"--set registry.root=s3://ttft/{prefix} --set ttft.optim.steps=96"
            ).split(),
        ],
        env,
        timeout=300,
    )
    assert submit.returncode == 0, tail(submit)
    job_id = re.search(r"raysubmit_\w+", submit.stdout + submit.stderr).group(0)

    def logs() -> str:
        return run(
            [str(BIN / "ray"), "job", "logs", "--address", cluster["dashboard"], job_id], env, 120
        ).stdout

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:  # lose worker-1 once both nodes' workers are busy
        text = logs()
        if re.search(r"running=[34] .*workers=4/4", text):
            break
        assert "Traceback" not in text, text[-3000:]
        time.sleep(2)
    else:
        pytest.fail("the pool never had 4 busy workers:\n" + logs()[-3000:])
    assert emulate.kill_node(1, cluster["dir"]) > 0
    status = run(
        [str(BIN / "ray"), "job", "logs", "--follow", "--address", cluster["dashboard"], job_id], env
    )
    final = run([str(BIN / "ray"), "job", "status", "--address", cluster["dashboard"], job_id], env, 120)
    assert "succeeded" in (final.stdout + final.stderr).lower(), tail(status) + tail(final)
    assert "requeued" in status.stdout
    rows = s3_registry(cluster, prefix).raw_rows().to_pylist()
    ok = [r["key"] for r in rows if r["status"] == "ok"]
    assert len(ok) == 8 and len(set(ok)) == 8, rows  # every adapter exactly once
    report = (pull(cluster, name, tmp_path) / "report.md").read_text()
    assert "requeued" in report


def test_local_head_journey_without_the_venv(tmp_path):
    """`make ray-head`, `make eval-cluster CONFIG=jobs/configs/smoke.yaml`, `make ray-stop`, as typed."""
    from tests.ray_cluster import free_port

    secret = f"planted-secret-{os.getpid()}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="th-", dir="/tmp"))  # short: Ray's socket paths
    port, dash = free_port(), free_port()
    name = f"lh-test-{os.getpid()}"
    env = user_env(
        RAY_PORT=str(port),
        RAY_DASHBOARD_PORT=str(dash),
        RAY_TEMP_DIR=str(ray_tmp),
        RAY_NUM_CPUS="2",
        TTFT_HEAD_DIR=str(tmp_path / "head"),
        AWS_SECRET_ACCESS_KEY=secret,
        HF_TOKEN=secret,
    )
    try:
        up = run(["make", "ray-head"], env, timeout=600)
        assert up.returncode == 0, tail(up)
        # Token auth is on: a client without the token is refused (Ray binds every interface).
        probe = run(
            [str(BIN / "python"), "-c", f"import ray; ray.init(address='127.0.0.1:{port}')"],
            {**env, "RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token")},
            timeout=300,
        )
        assert probe.returncode != 0 and "token" in tail(probe).lower(), tail(probe)
        job = run(
            [
                "make",
                "eval-cluster",
                f"RAY_ADDRESS=http://127.0.0.1:{dash}",
                "CONFIG=jobs/configs/smoke.yaml",
                f"ARGS=--limit 3 --set name={name}",
            ],
            env,
        )
        assert job.returncode == 0, tail(job)
        # The job's relative out_dir resolved against this checkout, not the job's temporary copy.
        summary = json.loads((ROOT / "runs" / name / "summary.json").read_text())
        assert summary["tasks"] == 3
        leaked = [p for p in [*ray_tmp.rglob("*"), *(ROOT / "runs" / name).rglob("*")] if _holds(p, secret)]
        assert not leaked, f"the planted secret reached {leaked}"
    finally:
        stop = run(["make", "ray-stop"], env, timeout=300)
        shutil.rmtree(ROOT / "runs" / name, ignore_errors=True)
    assert stop.returncode == 0, tail(stop)
    left = subprocess.run(["pgrep", "-f", str(ray_tmp)], capture_output=True, text=True).stdout.split()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"processes left after make ray-stop: {left}"


def _holds(path: Path, needle: str) -> bool:
    try:
        return path.is_file() and needle.encode() in path.read_bytes()
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
