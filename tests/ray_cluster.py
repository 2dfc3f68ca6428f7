"""A real local Ray head for the tests: `ray start --head --block` on loopback with free ports.

The head runs in its own process group and is stopped by signalling that group, so other Ray
clusters on the machine (a developer's, another test run's) are left alone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_api_up(dashboard: str, env: dict[str, str]) -> bool:
    """True once the head accepts a job (its dashboard agent is up, not only the HTTP API)."""
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "job",
        "submit",
        "--no-wait",
        "--address",
        dashboard,
        "--",
        "true",
    ]
    try:
        return subprocess.run(cmd, capture_output=True, env=env, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start one Ray head for the session; yields its GCS address and dashboard (job API) URL."""
    port, dash, client, agent = free_port(), free_port(), free_port(), free_port()
    # Loopback-only test cluster: no token auth (Ray 2.60 enables it by default for `ray start --head`).
    # Ray and job settings that earlier tests left in this process's environment stay out of the head's.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TTFT_"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",  # the default 52365 clashes with other heads here
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info = {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}"}
    prev = os.environ.pop("RAY_ADDRESS", None)
    try:
        deadline = time.monotonic() + 300
        while not _job_api_up(info["dashboard"], env):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray head did not come up; see {log.name}")
            time.sleep(2)
        yield info
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        if prev is not None:
            os.environ["RAY_ADDRESS"] = prev
