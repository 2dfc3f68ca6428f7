"""A real local Ray head for the tests: `ray start --head` on loopback with free ports, stopped at the end."""

from __future__ import annotations

import os
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


def _ray(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], capture_output=True, text=True,
                          **kw)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[dict[str, str]]:
    """Start one Ray head for the session; yields its GCS address and dashboard (job API) URL."""
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                "--disable-usage-stats", env=env, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start --head failed:\n{proc.stdout}\n{proc.stderr}")
    info = {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}"}
    deadline = time.monotonic() + 60
    while _ray("job", "list", "--address", info["dashboard"], env=env, timeout=60).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("Ray job API did not come up")
        time.sleep(1)
    prev = os.environ.pop("RAY_ADDRESS", None)
    try:
        yield info
    finally:
        _ray("stop", "--force", env=env, timeout=120)
        if prev is not None:
            os.environ["RAY_ADDRESS"] = prev
