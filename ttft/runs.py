"""Run directories: `<out_dir>/<name>/` on a local disk or in an object store (s3://), and pulling them back.

A job writes its files into a local directory; with an object-store `out_dir` that directory is a
temporary one and `RunDir.publish` uploads it, so results outlive the job's working directory (a Ray
job's temporary copy, a KubeRay pod). `pull` brings a published run back to a local directory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ttft import objstore


def join_uri(base: str, *parts: str) -> str:
    """`base/part/...` for a local path or an s3:// URI."""
    return "/".join([base.rstrip("/"), *parts])


class RunDir:
    """Where a run's files are written (`local`) and where they end up (`uri`)."""

    def __init__(self, out_dir: str, name: str):
        self.uri = join_uri(out_dir, name)
        self.remote = objstore.is_s3(out_dir)
        if self.remote:
            self.local = Path(tempfile.mkdtemp(prefix=f"ttft-run-{name}-"))
        else:
            self.local = Path(out_dir) / name
            self.local.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> str:
        """Where file `name` of the run ends up (for messages)."""
        return join_uri(self.uri, name)

    def publish(self) -> str:
        """Upload the local files to the object store (a no-op for a local out_dir); returns the run's URI."""
        if self.remote:
            fs, path = objstore.filesystem_from_uri(self.uri)
            objstore.upload_dir(self.local, fs, path)
        return self.uri

    def cleanup(self) -> None:
        """Remove the temporary local copy of a published run."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


def pull(uri: str, dest: str | Path) -> list[str]:
    """Copy every file of the run at `uri` (s3:// or local) into `dest`; returns the relative paths copied."""
    fs, path = objstore.filesystem_from_uri(uri)
    copied = [rel for rel, _, _ in objstore.download_dir(fs, path.rstrip("/"), dest)]
    if not copied:
        raise FileNotFoundError(f"no run files under {uri}")
    return copied


def fetch_file(uri: str) -> Path:
    """A local path for `uri`: the file itself when local, else a downloaded temporary copy."""
    if not objstore.is_s3(uri):
        return Path(uri)
    fs, path = objstore.filesystem_from_uri(uri)
    local = Path(tempfile.mkdtemp(prefix="ttft-fetch-")) / Path(path).name
    try:
        objstore.download_file(fs, path, local)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such object") from None
    return local
