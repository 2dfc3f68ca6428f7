"""The `s3_server` pytest fixture: one real SeaweedFS S3 server (ttft.localstore.S3Server) per session.

Use it from a test module with `from tests.s3_server import s3_server  # noqa: F401` or list
`tests.s3_server` in a conftest's `pytest_plugins`.
"""

from __future__ import annotations

import time

import pytest

from ttft.localstore import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server, S3ServerError, weed_binary

__all__ = ["ACCESS_KEY", "BUCKET", "SECRET_KEY", "S3Server", "S3ServerError", "s3_server", "weed_binary"]

_shared: S3Server | None = None
_users = 0


@pytest.fixture(scope="session")
def s3_server():
    """A running SeaweedFS S3 server for the whole test session (endpoint, access_key, secret_key, bucket).

    One server per process even if several modules import this fixture (each import is its own fixture
    definition to pytest): the first user starts it, the last one to finish stops it.
    """
    global _shared, _users
    if _shared is None:
        try:
            _shared = S3Server().start()
        except S3ServerError as e:
            pytest.fail(f"could not start the SeaweedFS S3 test server: {e}")
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0 and _shared is not None:
            _shared.stop()
            _shared = None


if __name__ == "__main__":  # manual check: python -m tests.s3_server
    t0 = time.monotonic()
    with S3Server() as srv:
        print(f"ready in {time.monotonic() - t0:.1f}s at {srv.endpoint} bucket={srv.bucket}")
        print(" ".join(srv.command))
