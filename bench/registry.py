"""Adapter registry at 10,000 rows: puts/s (alone, 8 concurrent writers), `exists` for 400 keys, a filtered
query, against listing the object store; on a local directory and on a real SeaweedFS S3 server (loopback).

Real puts (each: the adapter's files, a manifest, a size check, a one-row Parquet file) are timed for
`--puts` adapters by one writer and `--puts` more by `--writers` concurrent writer processes. The rest of the
10k rows are bulk-created the way tests/test_registry.py does it: their rows in one compacted Parquet file
(`_write_meta`), and their adapter objects (config, weights, manifest) written straight to the store so that
listing the store sees 10k adapters. Reads are then timed on fresh `AdapterRegistry` objects (cold: nothing
cached) and again on the same object (warm), before and after compaction of the real puts' row files.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import RESULTS, CpuMonitor, machine, verdict, write_json

TARGET_EXISTS_S = 1.0
N_PROBE = 400
WEIGHTS_BYTES = 16 << 10  # a tiny LoRA's safetensors (the tiny model's rank-8 adapters are ~100 KiB)


def make_adapter(where: Path, tag: str) -> Path:
    """A small fake PEFT adapter dir: adapter_config.json + adapter_model.safetensors (random bytes)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "tag": tag}))
    (where / "adapter_model.safetensors").write_bytes(random.Random(tag).randbytes(WEIGHTS_BYTES))
    return where


def key_of(i: int | str) -> str:
    from ttft.registry import adapter_key

    return adapter_key("bench-base", {"lr": 1e-3}, [f"task-{i}"], 0)


def row_of(i: int, run: str) -> dict[str, Any]:
    return {
        "run": run,
        "task_ids": [f"t{i:05d}"],
        "base_model": "bench-base",
        "config_hash": "cfg0",
        "train_loss": 0.5,
        "steps": 16,
        "tokens": 4096,
        "seconds": 1.0,
    }


def open_registry(backend: dict[str, Any], cache: str | Path, **kwargs):
    from ttft.registry import AdapterRegistry

    return AdapterRegistry(backend["root"], cache_dir=cache, **backend.get("kwargs", {}), **kwargs)


def _writer(backend: dict[str, Any], indices: list[int], run: str, barrier, results) -> None:
    """A concurrent writer process: set up, wait for the others, put its adapters, report its timings."""
    with tempfile.TemporaryDirectory(prefix="bench-reg-w-") as tmp:
        reg = open_registry(backend, Path(tmp) / "cache")
        adapter = make_adapter(Path(tmp) / "a", f"w{indices[0]}")
        barrier.wait()
        t0 = time.time()
        for i in indices:
            reg.put(key_of(i), adapter, row_of(i, run))
        results.put({"start": t0, "end": time.time(), "puts": len(indices)})


def concurrent_puts(backend: dict[str, Any], indices: list[int], writers: int, run: str) -> dict[str, Any]:
    """`writers` processes put `indices` between them (interleaved); puts/s over the common window."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(writers + 1), ctx.Queue()
    shares = [indices[w::writers] for w in range(writers)]
    procs = [ctx.Process(target=_writer, args=(backend, s, run, barrier, results)) for s in shares if s]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)  # every writer has imported pyarrow and opened its registry
    t0 = time.time()
    got = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"registry writer process exited with {p.exitcode}")
    wall = max(g["end"] for g in got) - t0
    n = sum(g["puts"] for g in got)
    return {"puts": n, "writers": len(procs), "wall_s": round(wall, 3), "puts_per_s": round(n / wall, 1)}


def bulk_create(backend: dict[str, Any], start: int, stop: int, run: str, cache: Path) -> dict[str, Any]:
    """Rows start..stop-1 in one compacted row file; their adapter objects written straight to the store."""
    import pyarrow as pa

    from ttft.registry import SCHEMA, canonical_json

    reg = open_registry(backend, cache, auto_compact=None)
    blob = random.Random("bulk").randbytes(WEIGHTS_BYTES)
    cfg = json.dumps({"r": 8, "lora_alpha": 16}).encode()
    now = pa.scalar(time.time_ns() // 1000, pa.timestamp("us", tz="UTC")).as_py()
    rows = []

    def write_one(i: int) -> None:
        key, put_id = key_of(i), uuid.uuid4().hex
        prefix = reg._adapter_dir(key, put_id)
        from ttft import objstore

        objstore.write_bytes(reg.fs, f"{prefix}/files/adapter_config.json", cfg, atomic=False)
        objstore.write_bytes(reg.fs, f"{prefix}/files/adapter_model.safetensors", blob, atomic=False)
        objstore.write_bytes(
            reg.fs,
            f"{prefix}/manifest.json",
            canonical_json({"key": key, "put_id": put_id}).encode(),
            atomic=False,
        )
        rows.append(
            {
                **row_of(i, run),
                "key": key,
                "status": "ok",
                "created_at": now,
                "put_id": put_id,
                "adapter_uri": reg._uri("adapters", key, put_id, "files"),
                "size_bytes": WEIGHTS_BYTES,
            }
        )

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(write_one, range(start, stop)))
    objects_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reg._write_meta(pa.Table.from_pylist(rows, schema=SCHEMA), f"compact-20000101T000000-bulk-{run}.parquet")
    return {
        "rows": stop - start,
        "objects": 3 * (stop - start),
        "objects_s": round(objects_s, 3),
        "meta_s": round(time.perf_counter() - t0, 3),
    }


def _timed(f, *args, **kwargs) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = f(*args, **kwargs)
    return time.perf_counter() - t0, value


def list_store(backend: dict[str, Any], cache: Path, probe: list[str]) -> dict[str, Any]:
    """The alternative to the registry: list adapters/ in the object store to find which keys exist."""
    from pyarrow import fs as pafs

    reg = open_registry(backend, cache)
    prefix = reg._path("adapters")
    wanted = set(probe)

    def shallow() -> set[str]:  # one "directory" per key (S3: common prefixes, 1000 per page)
        infos = reg.fs.get_file_info(pafs.FileSelector(prefix, recursive=False, allow_not_found=True))
        return {i.base_name for i in infos} & wanted

    def deep() -> set[str]:  # every object: needed to tell a complete adapter (manifest) from a partial one
        infos = reg.fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        n = len(prefix) + 1
        return {i.path[n:].split("/", 1)[0] for i in infos if i.path.endswith("/manifest.json")} & wanted

    shallow_s, found_shallow = _timed(shallow)
    deep_s, found_deep = _timed(deep)
    return {
        "list_keys_s": round(shallow_s, 4),
        "list_all_objects_s": round(deep_s, 4),
        "found_shallow": len(found_shallow),
        "found_deep": len(found_deep),
    }


def bench_backend(backend: dict[str, Any], rows: int, puts: int, writers: int, work: Path) -> dict[str, Any]:
    """Every measurement on one backend (a fresh root)."""
    out: dict[str, Any] = {"root": backend["root"], "rows": rows}
    cache = work / "cache"
    puts = min(puts, rows // 2)
    # 1) one writer
    reg = open_registry(backend, cache)
    adapter = make_adapter(work / "adapter", "seq")
    t0 = time.perf_counter()
    for i in range(puts):
        reg.put(key_of(i), adapter, row_of(i, "seq"))
    wall = time.perf_counter() - t0
    out["puts_alone"] = {"puts": puts, "wall_s": round(wall, 3), "puts_per_s": round(puts / wall, 1)}
    # 2) concurrent writers
    out["puts_concurrent"] = concurrent_puts(backend, list(range(puts, 2 * puts)), writers, "conc")
    # 3) the rest of the rows in bulk
    out["bulk"] = bulk_create(backend, 2 * puts, rows, "bulk", cache)
    out["bulk"]["note"] = (
        f"{rows - 2 * puts} of the {rows} rows bulk-created (rows in one compacted "
        "Parquet file, adapter objects written directly), not through put()"
    )
    # probe: N_PROBE keys, 300 present (spread over every kind of row), the rest absent
    rng = random.Random(0)
    present = rng.sample(range(rows), min(N_PROBE - 100, rows))
    probe = [key_of(i) for i in present] + [key_of(f"absent-{i}") for i in range(N_PROBE - len(present))]
    expected = {key_of(i) for i in present}
    # 4) reads before compaction: the real puts' row files are still one file each
    fresh = open_registry(backend, cache, auto_compact=None)
    cold_s, found = _timed(fresh.exists, probe, verify=False)
    assert found == expected, f"exists found {len(found)} of {len(expected)}"
    out["meta_files_before_compaction"] = len(fresh._known)
    out["exists_cold_uncompacted_s"] = round(cold_s, 4)
    out["compact_s"] = round(_timed(fresh.compact)[0], 3)
    # 5) reads after compaction (the steady state: auto-compaction runs once 256 row files pile up)
    fresh = open_registry(backend, cache)
    cold_s, found = _timed(fresh.exists, probe, verify=False)
    assert found == expected
    warm = [_timed(fresh.exists, probe, verify=False)[0] for _ in range(5)]
    out["exists_cold_s"] = round(cold_s, 4)
    out["exists_warm_s"] = round(statistics.median(warm), 4)
    out["rows_seen"] = len(fresh)
    q = open_registry(backend, cache)
    task = row_of(present[0], "")["task_ids"][0]
    qcold, table = _timed(q.query, task_id=task, status="ok")
    assert table.num_rows == 1
    qwarm = statistics.median(_timed(q.query, run="bulk", status="ok")[0] for _ in range(5))
    out["query_cold_s"] = round(qcold, 4)
    out["query_warm_s"] = round(qwarm, 4)
    out["query"] = f"query(task_id={task!r}, status='ok') cold; query(run='bulk', status='ok') warm"
    # 6) the alternative: listing the object store
    out["listing"] = list_store(backend, cache, probe)
    out["exists_vs_listing"] = round(out["listing"]["list_keys_s"] / out["exists_cold_s"], 2)
    out["exists_target"] = {
        "target_s": TARGET_EXISTS_S,
        "value_s": out["exists_cold_s"],
        "verdict": verdict(out["exists_cold_s"], TARGET_EXISTS_S, lower_is_better=True),
    }
    return out


def run(
    rows: int = 10_000,
    puts: int = 500,
    writers: int = 8,
    backends: str = "local,s3",
    out: Path | None = RESULTS / "registry.json",
) -> dict[str, Any]:
    """Run the registry benchmark on each backend, print a table, write the JSON result."""
    info, monitor = machine(), CpuMonitor()
    result: dict[str, Any] = {
        "benchmark": "registry",
        "machine": info,
        "rows": rows,
        "real_puts": 2 * puts,
        "writers": writers,
        "probe_keys": N_PROBE,
        "backends": {},
    }
    for name in [b.strip() for b in backends.split(",") if b.strip()]:
        with tempfile.TemporaryDirectory(prefix=f"bench-reg-{name}-") as tmp:
            work = Path(tmp)
            if name == "local":
                result["backends"]["local"] = bench_backend(
                    {"root": str(work / "registry")}, rows, puts, writers, work
                )
            elif name == "s3":
                from ttft.localstore import S3Server

                t0 = time.perf_counter()
                with S3Server() as server:
                    start_s = time.perf_counter() - t0
                    backend = {
                        "root": f"s3://{server.bucket}/bench-{uuid.uuid4().hex[:8]}",
                        "kwargs": {
                            "s3_endpoint": server.endpoint,
                            "s3_access_key": server.access_key,
                            "s3_secret_key": server.secret_key,
                        },
                    }
                    r = bench_backend(backend, rows, puts, writers, work)
                    r["server"] = f"SeaweedFS (weed server -s3) on loopback, started in {start_s:.1f}s"
                    result["backends"]["s3"] = r
            else:
                raise ValueError(f"unknown backend {name!r} (local, s3)")
            print(text_backend(name, result["backends"][name]), flush=True)
    b = result["backends"]
    result["registry_exists_400_s"] = max((v["exists_cold_s"] for v in b.values()), default=None)
    for name, v in b.items():
        result[f"registry_exists_400_s_{name}"] = v["exists_cold_s"]
    result["target"] = {
        "target_s": TARGET_EXISTS_S,
        "value_s": result["registry_exists_400_s"],
        "verdict": verdict(result["registry_exists_400_s"], TARGET_EXISTS_S, True),
    }
    result.update(monitor.load_fields(info["loadavg"]))
    print(
        f"registry: exists({N_PROBE} keys) at {rows} rows, worst backend cold: "
        f"{result['registry_exists_400_s']}s (target < {TARGET_EXISTS_S}s: {result['target']['verdict']})"
    )
    if out is not None:
        write_json(out, result)
    return result


def text_backend(name: str, v: dict[str, Any]) -> str:
    """A readable summary of one backend's measurements."""
    lst = v["listing"]
    return "\n".join(
        [
            f"registry [{name}] {v['rows_seen']} rows:",
            f"  put: {v['puts_alone']['puts_per_s']}/s alone, {v['puts_concurrent']['puts_per_s']}/s with "
            f"{v['puts_concurrent']['writers']} writers "
            f"({v['puts_alone']['puts']} + {v['puts_concurrent']['puts']} "
            f"real puts; {v['bulk']['rows']} rows bulk-created in {v['bulk']['objects_s']}s)",
            f"  exists({N_PROBE}): cold {v['exists_cold_s']}s, warm {v['exists_warm_s']}s; before compaction "
            f"({v['meta_files_before_compaction']} row files) cold {v['exists_cold_uncompacted_s']}s; "
            f"compact {v['compact_s']}s",
            f"  query: cold {v['query_cold_s']}s, warm {v['query_warm_s']}s",
            f"  listing adapters/: keys {lst['list_keys_s']}s, all objects {lst['list_all_objects_s']}s "
            f"(listing the keys takes {v['exists_vs_listing']}x the time of a cold exists)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--puts", type=int, default=500, help="real puts by one writer, and again by --writers")
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--backends", default="local,s3")
    p.add_argument("--out", default=str(RESULTS / "registry.json"))
    args = p.parse_args(argv)
    run(args.rows, args.puts, args.writers, args.backends, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
