"""AdapterRegistry on a real local directory and a real S3 server (SeaweedFS on loopback); no mocks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyarrow import fs as pafs

from tests.s3_server import s3_server  # noqa: F401  (session fixture)
from ttft import objstore
from ttft.registry import (
    PAUSE_ENV,
    SCHEMA,
    AdapterNotFound,
    AdapterRegistry,
    IntegrityError,
    adapter_key,
    dedup,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Root:
    """Where a test's registry lives and how to reach it (also from another process)."""

    kind: str
    root: str
    kwargs: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def open(self, cache_dir: Path, **kwargs) -> AdapterRegistry:
        return AdapterRegistry(self.root, cache_dir=cache_dir, **self.kwargs, **kwargs)


@pytest.fixture(params=["local", "s3"])
def registry_root(request, tmp_path) -> Root:
    """A fresh registry root: a local directory, or a fresh prefix in the SeaweedFS bucket."""
    if request.param == "local":
        return Root("local", str(tmp_path / "registry"))
    server = request.getfixturevalue("s3_server")
    return Root(
        "s3",
        f"s3://{server.bucket}/t-{uuid.uuid4().hex[:12]}",
        {
            "s3_endpoint": server.endpoint,
            "s3_access_key": server.access_key,
            "s3_secret_key": server.secret_key,
        },
        server.env(),
    )


@pytest.fixture
def reg(registry_root, tmp_path) -> AdapterRegistry:
    return registry_root.open(tmp_path / "cache")


def make_adapter(where: Path, tag: str, size: int = 64) -> Path:
    """A fake adapter dir: a config, a 'weights' blob and a nested file, contents depending on tag."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "adapter_config.json").write_text(f'{{"r": 8, "tag": "{tag}"}}')
    (where / "adapter_model.safetensors").write_bytes((tag.encode() * size)[:size] or b"x")
    (where / "sub").mkdir(exist_ok=True)
    (where / "sub" / "notes.txt").write_text(f"notes {tag}\n")
    return where


def row(run: str = "r1", tasks=("t1",), **extra) -> dict:
    return {"run": run, "task_ids": list(tasks), "base_model": "tiny@abc", "config_hash": "cfg1", **extra}


def key_of(i: int | str) -> str:
    return adapter_key("tiny@abc", {"lr": 1e-4}, [f"task-{i}"], 0)


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def stored_files(reg: AdapterRegistry, under: str = "adapters") -> list[str]:
    return sorted(i.path for i in objstore.list_files(reg.fs, f"{reg.base}/{under}"))


# ---- round trip ----------------------------------------------------------------------------------
def test_put_get_exists_query_roundtrip(reg, registry_root, tmp_path):
    k1, k2, k3 = key_of(1), key_of(2), key_of(3)
    a1 = make_adapter(tmp_path / "a1", "one")
    a2 = make_adapter(tmp_path / "a2", "two", size=3000)
    reg.put(k1, a1, row("r1", ["t1"], train_loss=0.5, steps=10, reduced=True, attempt=1))
    reg.put(k2, a2, row("r2", ["t2", "t3"], config_hash="cfg2", val_loss_after=0.25))

    assert reg.exists([k1, k2, k3]) == {k1, k2}
    assert len(reg) == 2
    got = reg.get(k1)
    assert tree(got) == tree(a1)
    assert tree(reg.get(k2)) == tree(a2)

    r1 = reg.row(k1)
    assert r1["status"] == "ok" and r1["error"] is None
    assert r1["size_bytes"] == sum(len(b) for b in tree(a1).values())
    assert len(r1["sha256"]) == 64 and r1["host"] and r1["ttft_version"]
    assert r1["created_at"].tzinfo is not None
    assert r1["adapter_uri"].startswith(
        registry_root.root.rstrip("/") if registry_root.kind == "s3" else reg.uri
    )
    assert r1["train_loss"] == 0.5 and r1["steps"] == 10 and r1["reduced"] is True and r1["attempt"] == 1
    assert r1["val_loss_before"] is None and r1["tokens"] is None and r1["seconds"] is None  # missing -> null

    assert reg.query(run="r2")["key"].to_pylist() == [k2]
    assert reg.query(task_id="t3")["key"].to_pylist() == [k2]
    assert sorted(reg.query(task_id=["t1", "t2"])["key"].to_pylist()) == sorted([k1, k2])
    assert reg.query(task_id="nope").num_rows == 0
    assert reg.query(config_hash="cfg1", base_model="tiny@abc")["key"].to_pylist() == [k1]
    assert reg.query(status="failed").num_rows == 0
    assert reg.query().schema == SCHEMA
    with pytest.raises(ValueError, match="unknown query filter"):
        reg.query(colour="red")

    # a second registry object (another process in real life) sees the same state
    other = registry_root.open(tmp_path / "cache2")
    assert other.exists([k1, k2, k3]) == {k1, k2}
    assert tree(other.get(k2)) == tree(a2)
    with pytest.raises(AdapterNotFound, match=k3):
        other.get(k3)
    info = other.describe()
    assert info["rows"] == 2 and info["ok"] == 2 and info["runs"] == {"r1": 1, "r2": 1}


def test_empty_registry(reg):
    k = key_of("none")
    assert len(reg) == 0 and reg.exists([k]) == set() and reg.exists([]) == set()
    assert reg.query(task_id="t1").num_rows == 0 and reg.query(run=["a", "b"]).schema == SCHEMA
    assert reg.compact() == 0 and reg.gc(min_age_s=0) == 0
    assert reg.describe()["rows"] == 0
    with pytest.raises(AdapterNotFound, match="no row"):
        reg.get(k)


def test_objstore_dir_roundtrip(registry_root, tmp_path):
    src = make_adapter(tmp_path / "src", "objstore", size=5000)
    fs, base = objstore.filesystem_from_uri(
        registry_root.root,
        endpoint=registry_root.kwargs.get("s3_endpoint"),
        access_key=registry_root.kwargs.get("s3_access_key"),
        secret_key=registry_root.kwargs.get("s3_secret_key"),
    )
    up = objstore.upload_dir(src, fs, f"{base}/model")
    down = objstore.download_dir(fs, f"{base}/model", tmp_path / "dst")
    assert up == down and [u[0] for u in up] == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "sub/notes.txt",
    ]
    assert tree(tmp_path / "dst") == tree(src)
    assert objstore.download_dir(fs, f"{base}/absent", tmp_path / "none") == []


def test_s3_settings_and_uris():
    local = objstore.s3_settings("http://127.0.0.1:9000", "a", "b")
    assert (local.endpoint, local.scheme) == ("127.0.0.1:9000", "http")
    assert objstore.s3_settings("localhost:9000", "a", "b").scheme == "http"
    assert objstore.s3_settings("minio.example:9000", "a", "b").scheme == "https"
    assert "b" not in repr(objstore.s3_settings("http://h:1", "a", "b-secret"))
    with pytest.raises(ValueError, match="http or https"):
        objstore.s3_settings("ftp://h:1")
    for bad in ("s3://", "s3://bucket/../x", "s3://bucket//x", "gs://bucket/x"):
        with pytest.raises(ValueError):
            objstore.filesystem_from_uri(bad, endpoint="http://127.0.0.1:1", access_key="a", secret_key="b")
    with pytest.raises(ValueError, match="both"):
        objstore.filesystem_from_uri("s3://b/x", endpoint="http://127.0.0.1:1", access_key="a", secret_key="")


def test_get_detects_corrupt_store_and_repairs_corrupt_cache(reg, registry_root, tmp_path):
    k = key_of("c")
    src = make_adapter(tmp_path / "a", "corrupt-me", size=500)
    reg.put(k, src, row())
    cached = reg.get(k)
    # a corrupt cache copy is noticed and fetched again
    (cached / "adapter_model.safetensors").write_bytes(b"garbage")
    (cached / "stray.bin").write_bytes(b"x")
    assert tree(reg.get(k)) == tree(src)

    # corrupt the stored weights (same size, different bytes): a fresh cache must refuse them
    weights = [p for p in stored_files(reg) if p.endswith("adapter_model.safetensors")]
    assert len(weights) == 1
    with reg.fs.open_output_stream(weights[0]) as out:
        out.write(b"Z" * 500)
    fresh = registry_root.open(tmp_path / "cache-fresh")
    with pytest.raises(IntegrityError, match=f"adapter {k}: file adapter_model.safetensors .* corrupt"):
        fresh.get(k)
    assert not (tmp_path / "cache-fresh" / k).exists()  # nothing half-verified left in the cache

    # a stored file that vanished is an integrity error too
    reg.fs.delete_file(weights[0])
    with pytest.raises(IntegrityError, match="missing"):
        registry_root.open(tmp_path / "cache-3").get(k)


# ---- concurrency ---------------------------------------------------------------------------------
def _put_many(root: Root, worker: int, n: int, cache_dir: str, adapter_dir: str) -> list[str]:
    """Child process: n puts of small adapters under distinct keys."""
    reg = root.open(Path(cache_dir))
    keys = []
    for j in range(n):
        key = key_of(f"{worker}-{j}")
        reg.put(key, adapter_dir, row(f"w{worker}", [f"task-{worker}-{j}"], steps=j))
        keys.append(key)
    return keys


def test_concurrent_puts_lose_nothing(reg, registry_root, tmp_path):
    adapter = make_adapter(tmp_path / "a", "conc", size=32)
    workers, per_worker = 8, 50
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        results = pool.starmap(
            _put_many,
            [(registry_root, w, per_worker, str(tmp_path / "cache"), str(adapter)) for w in range(workers)],
        )
    written = {k for keys in results for k in keys}
    assert len(written) == workers * per_worker
    assert reg.exists(written) == written
    raw = reg.raw_rows()
    assert raw.num_rows == workers * per_worker  # none lost, none duplicated
    assert len(set(raw["key"].to_pylist())) == workers * per_worker
    assert sorted(reg.query(run="w3")["steps"].to_pylist()) == list(range(per_worker))
    assert tree(reg.get(key_of("7-49"))) == tree(adapter)


def test_killed_writer_leaves_no_row_and_gc_removes_its_files(reg, registry_root, tmp_path):
    survivor = key_of("kept")
    reg.put(survivor, make_adapter(tmp_path / "kept", "kept"), row())
    victim = key_of("victim")
    adapter = make_adapter(tmp_path / "victim", "victim")
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from tests.test_registry import Root
        root = Root({registry_root.kind!r}, {registry_root.root!r}, {registry_root.kwargs!r})
        root.open(Path({str(tmp_path / "cache-victim")!r})).put({victim!r}, {str(adapter)!r}, {{"run": "r1"}})
        """
    )
    env = {**os.environ, PAUSE_ENV: "60", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 30
        while not any(p.endswith("manifest.json") and f"/{victim}/" in p for p in stored_files(reg)):
            assert proc.poll() is None, "writer exited before its files were stored"
            assert time.monotonic() < deadline, "writer never stored its files"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    assert any(f"/{victim}/" in p for p in stored_files(reg))  # files are there ...
    assert reg.exists([victim, survivor]) == {survivor}  # ... but no row
    assert reg.query(key=victim).num_rows == 0
    with pytest.raises(AdapterNotFound):
        reg.get(victim)
    assert reg.gc() == 0  # default grace period keeps possibly in-flight puts
    assert reg.gc(min_age_s=0) == 0  # ... and so does the floor, whatever min_age_s says
    reg.gc_floor_s = 0  # the writer is dead: no put in flight
    assert reg.gc(min_age_s=0) == 1
    assert not any(f"/{victim}/" in p for p in stored_files(reg))
    assert tree(reg.get(survivor)) == tree(tmp_path / "kept")  # referenced adapters untouched
    assert reg.gc(min_age_s=0) == 0


# ---- duplicates, failures ------------------------------------------------------------------------
def test_duplicate_put_gives_one_row_and_failed_rows(reg, tmp_path):
    k, kf = key_of("dup"), key_of("failed")
    first = make_adapter(tmp_path / "first", "first")
    second = make_adapter(tmp_path / "second", "second")
    reg.put(k, first, row(train_loss=1.0))
    reg.put(k, second, row(train_loss=2.0))  # a retry race: both committed
    assert reg.raw_rows().num_rows == 2
    assert len(reg) == 1 and reg.query(key=k).num_rows == 1
    assert reg.row(k)["train_loss"] == 2.0  # latest ok wins
    assert tree(reg.get(k)) == tree(second)
    reg.put_failed(k, row(attempt=3), "late failure of a losing retry")
    assert reg.row(k)["status"] == "ok"  # an ok row beats a later failure

    reg.put_failed(kf, row(attempt=1), "RuntimeError: CUDA out of memory\ntraceback ...")
    assert reg.exists([k, kf]) == {k}  # only ok rows by default
    assert reg.exists([k, kf], status="failed") == {kf}
    assert reg.exists([k, kf], status=None) == {k, kf}
    failed = reg.query(status="failed").to_pylist()
    assert [r["key"] for r in failed] == [kf]
    assert failed[0]["error"].startswith("RuntimeError: CUDA out of memory")
    assert failed[0]["adapter_uri"] is None and failed[0]["sha256"] is None
    with pytest.raises(AdapterNotFound, match="failed"):
        reg.get(kf)
    # a later successful retry replaces the failure
    reg.put(kf, first, row(attempt=2))
    assert reg.exists([kf]) == {kf} and reg.row(kf)["attempt"] == 2


def test_bad_keys_and_rows_are_rejected(reg, tmp_path):
    a = make_adapter(tmp_path / "a", "a")
    k = key_of("x")
    for bad in ("../../x", "ABCDEF0123456789", "abc", "g" * 32, ""):
        with pytest.raises(ValueError, match="invalid adapter key"):
            reg.put(bad, a, row())
    with pytest.raises(ValueError, match="unknown row field"):
        reg.put(k, a, row(colour="red"))
    with pytest.raises(ValueError, match="set by the registry"):
        reg.put(k, a, row(sha256="0" * 64))
    with pytest.raises(ValueError, match="'task_ids' must be a list of strings"):
        reg.put(k, a, {"task_ids": "t1"})
    with pytest.raises(ValueError, match="row field 'steps'"):
        reg.put(k, a, {"steps": "many"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        reg.put(k, tmp_path / "empty", row())
    assert len(reg) == 0 and stored_files(reg) == []


def test_hostile_task_ids_never_become_paths(reg, registry_root, tmp_path):
    k = key_of("hostile")
    hostile = ["../../x", "/etc/passwd", "..\\..\\y", "a/../../../z"]
    reg.put(k, make_adapter(tmp_path / "a", "h"), row(run="../../run", tasks=hostile))
    reg.put_failed(key_of("hostile2"), row(run="../../run", tasks=hostile), "boom")
    assert reg.query(task_id="../../x", status="ok")["key"].to_pylist() == [k]
    assert reg.query(task_id="../../x").num_rows == 2
    assert reg.query(task_id="/etc/passwd", status="ok")["task_ids"].to_pylist() == [hostile]
    if registry_root.kind == "local":
        root = Path(reg.base)
        outside = [
            p for p in tmp_path.rglob("*") if not (p.is_relative_to(root) or p.is_relative_to(tmp_path / "a"))
        ]
        assert all(p.is_relative_to(tmp_path / "cache") for p in outside), outside
        assert not (tmp_path.parent / "x").exists() and not Path("x").exists()
    else:
        bucket = reg.base.split("/")[0]
        everything = reg.fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
        prefixes = {
            i.path.split("/")[1] for i in everything if i.type == pafs.FileType.File and "/" in i.path
        }
        # other test modules share the bucket (their own prefixes); nothing here may come from a hostile id
        assert prefixes.isdisjoint({"x", "etc", "run", "..", ".", "passwd"}), prefixes
    files = (
        stored_files(reg, "") if registry_root.kind == "s3" else [str(p) for p in Path(reg.base).rglob("*")]
    )
    assert not any(".." in f or "passwd" in f for f in files)


# ---- compaction, scale ---------------------------------------------------------------------------
def test_compact_merges_files_and_keeps_rows(reg, registry_root, tmp_path):
    a = make_adapter(tmp_path / "a", "c")
    keys = [key_of(f"cmp-{i}") for i in range(6)]
    for k in keys[:5]:
        reg.put(k, a, row())
    reg.put(keys[0], a, row(train_loss=9.0))  # duplicate
    reg.put_failed(keys[5], row(), "boom")
    before = reg.rows().sort_by("key")
    assert len(reg.raw_rows()["key"]) == 7

    assert reg.compact() == 7
    meta = stored_files(reg, "meta")
    assert len(meta) == 1 and "compact-" in meta[0]
    fresh = registry_root.open(tmp_path / "cache2")
    after = fresh.rows().sort_by("key")
    assert after.equals(before)
    assert fresh.raw_rows().num_rows == 6  # duplicates merged away
    assert fresh.exists(keys) == set(keys[:5])
    assert tree(fresh.get(keys[0])) == tree(a)
    reg.gc_floor_s = 0  # no put in flight
    assert reg.gc(min_age_s=0) == 1  # the losing duplicate's files are no longer referenced
    assert tree(registry_root.open(tmp_path / "cache3").get(keys[0])) == tree(a)
    assert reg.compact() == 0  # a single compacted file: nothing to do


def test_reads_auto_compact_many_row_files(registry_root, tmp_path):
    a = make_adapter(tmp_path / "a", "auto", size=16)
    writer = registry_root.open(tmp_path / "cache-w", auto_compact=None)
    keys = [key_of(f"auto-{i}") for i in range(6)]
    for k in keys:
        writer.put(k, a, row())
    assert len(writer) == 6 and len(stored_files(writer, "meta")) == 6  # None: never compacts
    reader = registry_root.open(tmp_path / "cache-r", auto_compact=6)
    assert reader.exists(keys) == set(keys)
    meta = stored_files(reader, "meta")
    assert len(meta) == 1 and "compact-" in meta[0]
    writer.put(key_of("auto-late"), a, row())
    assert reader.exists([*keys, key_of("auto-late")]) == {*keys, key_of("auto-late")}
    assert len(stored_files(reader, "meta")) == 2  # below the threshold again


def test_compact_during_concurrent_puts_loses_nothing(reg, registry_root, tmp_path):
    a = make_adapter(tmp_path / "a", "cc", size=16)
    keys = [key_of(f"cc-{i}") for i in range(40)]
    writer = registry_root.open(tmp_path / "cache-w")
    errors: list[BaseException] = []

    def put_all():
        try:
            for k in keys:
                writer.put(k, a, row())
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=put_all)
    t.start()
    compactions = 0
    while t.is_alive():
        compactions += reg.compact() > 0
        time.sleep(0.01)
    t.join()
    assert not errors, errors
    assert compactions >= 1
    reg.compact()
    fresh = registry_root.open(tmp_path / "cache2")
    assert fresh.exists(keys) == set(keys)
    assert len(stored_files(fresh, "meta")) == 1


def test_exists_is_fast_at_10k_rows(reg, registry_root, tmp_path):
    n = 10_000
    now = pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py()
    keys = [key_of(f"big-{i}") for i in range(n)]
    synthetic = [
        {
            "key": k,
            "run": "big",
            "task_ids": [f"t{i}"],
            "status": "ok",
            "created_at": now,
            "put_id": uuid.uuid4().hex,
        }
        for i, k in enumerate(keys)
    ]
    # 10k rows as a compacted file would hold them (files are irrelevant to exists), plus live puts beside it
    reg._write_meta(pa.Table.from_pylist(synthetic, schema=SCHEMA), "compact-20000101T000000-big.parquet")
    a = make_adapter(tmp_path / "a", "f")
    live = [key_of(f"live-{i}") for i in range(5)]
    for k in live:
        reg.put(k, a, row())
    probe = keys[::50][:395] + live + [key_of(f"absent-{i}") for i in range(100)]

    fresh = registry_root.open(tmp_path / "cache2")
    t0 = time.perf_counter()
    found = fresh.exists(probe, verify=False)  # the metadata index alone (synthetic rows have no files)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert fresh.exists(probe, verify=False) == found
    warm = time.perf_counter() - t0
    assert found == set(keys[::50][:395]) | set(live)
    assert len(fresh) == n + 5
    print(f"\n[{registry_root.kind}] exists(500 keys), {n + 5} rows: cold {cold:.3f} s, warm {warm:.3f} s")
    assert cold < 1.0 and warm < 0.5
    t0 = time.perf_counter()
    assert fresh.query(task_id="t77")["key"].to_pylist() == [keys[77]]
    assert time.perf_counter() - t0 < 0.5


# ---- s3 settings from the environment ------------------------------------------------------------
def test_s3_credentials_from_aws_environment(s3_server, monkeypatch, tmp_path):  # noqa: F811
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    root = f"s3://{s3_server.bucket}/env-{uuid.uuid4().hex[:8]}"
    reg = AdapterRegistry(root, cache_dir=tmp_path / "cache")
    k = key_of("env")
    reg.put(k, make_adapter(tmp_path / "a", "env"), row())
    assert AdapterRegistry(root, cache_dir=tmp_path / "c2").exists([k]) == {k}
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(OSError, match="(?i)signature|denied|forbidden"):
        AdapterRegistry(root, cache_dir=tmp_path / "c3").exists([k])


# ---- keys ----------------------------------------------------------------------------------------
def test_adapter_key_is_deterministic_and_sensitive():
    cfg = {"lr": 8e-5, "steps": 300, "lora": {"r": 128, "alpha": 64}, "n_minus": 1}
    base = adapter_key("Qwen/Qwen2.5-0.5B@rev1", cfg, ["h1", "h2"], 0)
    assert len(base) == 32 and int(base, 16) >= 0
    assert (
        adapter_key(
            "Qwen/Qwen2.5-0.5B@rev1",
            {"n_minus": 1, "lora": {"alpha": 64, "r": 128}, "steps": 300, "lr": 8e-5},
            ("h1", "h2"),
            0,
        )
        == base
    )
    variants = [
        adapter_key("Qwen/Qwen2.5-0.5B@rev2", cfg, ["h1", "h2"], 0),
        adapter_key("Qwen/Qwen2.5-0.5B@rev1", {**cfg, "lr": 8.1e-5}, ["h1", "h2"], 0),
        adapter_key("Qwen/Qwen2.5-0.5B@rev1", {**cfg, "lora": {"r": 64, "alpha": 64}}, ["h1", "h2"], 0),
        adapter_key("Qwen/Qwen2.5-0.5B@rev1", cfg, ["h1", "h3"], 0),
        adapter_key("Qwen/Qwen2.5-0.5B@rev1", cfg, ["h2", "h1"], 0),
        adapter_key("Qwen/Qwen2.5-0.5B@rev1", cfg, ["h1"], 0),
        adapter_key("Qwen/Qwen2.5-0.5B@rev1", cfg, ["h1", "h2"], 1),
    ]
    assert len({base, *variants}) == len(variants) + 1
    with pytest.raises(TypeError, match="single string"):
        adapter_key("m", cfg, "h1", 0)
    with pytest.raises(TypeError, match="serializable"):
        adapter_key("m", {"path": Path("/x")}, ["h1"], 0)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(cfg=st.dictionaries(st.text(max_size=8), json_values, max_size=6), seed=st.integers(0, 2**31))
def test_adapter_key_ignores_dict_order_only(cfg, seed):
    reordered = dict(reversed(list(cfg.items())))
    k = adapter_key("m", cfg, ["h"], seed)
    assert adapter_key("m", reordered, ["h"], seed) == k
    assert adapter_key("m", cfg, ["h"], seed + 1) != k
    assert adapter_key("m", {**cfg, "__extra__": 1}, ["h"], seed) != k


def test_dedup_prefers_ok_then_latest():
    ts = [pa.scalar(i, pa.timestamp("us", tz="UTC")).as_py() for i in range(3)]
    rows = [
        {"key": "a" * 32, "status": "ok", "created_at": ts[0], "put_id": "1" * 32, "steps": 1},
        {"key": "a" * 32, "status": "failed", "created_at": ts[2], "put_id": "2" * 32, "steps": 2},
        {"key": "a" * 32, "status": "ok", "created_at": ts[1], "put_id": "3" * 32, "steps": 3},
        {"key": "b" * 32, "status": "failed", "created_at": ts[0], "put_id": "4" * 32, "steps": 4},
        {"key": "b" * 32, "status": "failed", "created_at": ts[1], "put_id": "5" * 32, "steps": 5},
    ]
    out = dedup(pa.Table.from_pylist(rows, schema=SCHEMA))
    assert out["steps"].to_pylist() == [3, 5]
