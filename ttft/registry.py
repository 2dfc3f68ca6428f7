"""Adapter registry: LoRA adapter files in an object store (pyarrow.fs) plus Parquet metadata rows.

Layout under the root (a local directory or `s3://bucket/prefix`)::

    adapters/<key>/<put_id>/files/...          the adapter's files, as in the local adapter directory
    adapters/<key>/<put_id>/manifest.json      [{path, size, sha256}] per file + the adapter's sha256
    meta/<key>-<put_id>.parquet                one row, written by one put (or put_failed)
    meta/compact-<time>-<uuid>.parquet         many rows, written by compact()

Commit protocol: `put` uploads the files and the manifest under a fresh `put_id`, checks the stored sizes,
and only then writes its metadata row as its own small Parquet file with a unique name. A row therefore
exists only for a complete adapter, and concurrent writers never read-modify-write a shared file, so none
loses a row. Two puts of one key (a retry race) both land; readers keep one row per key (status "ok" first,
then the latest). `compact` merges row files into one and deletes the merged ones only after the merged
file is written; `gc` removes adapter files that no row references (a writer killed between the phases).

An adapter's sha256 is the sha256 of the canonical JSON of its manifest's file list (sorted relative paths
with size and per-file sha256): independent of where and when it was stored. `get` verifies every file.
`exists` (what resume asks) means present and intact: the manifest matches the row's checksum and every
stored file has its manifest size (one listing and one manifest read per key, in parallel).
Task ids are data only: paths are built from validated hex keys and registry-made put ids.

Damage never stops a reader: a row file that does not parse or has the wrong schema is skipped with a
warning (`doctor` lists it and moves it to `quarantine/`). Put ids start with their creation time
(UUIDv7 layout); a put that would commit later than `put_deadline_s` after it started aborts, and `gc`
never deletes a put folder younger than `gc_floor_s` (> the deadline), whatever `min_age_s` says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from ttft import __version__, objstore
from ttft.safetext import terminal

KEY_RE = re.compile(r"^[0-9a-f]{16,64}$")
PUT_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# test hook: seconds `put` sleeps after the adapter files are stored and before its row is written
PAUSE_ENV = "TTFT_REGISTRY_PAUSE_BEFORE_COMMIT_S"
# a put that would commit its row later than this after it started aborts (its files are left to gc) ...
PUT_DEADLINE_S = 3000.0
# ... so gc, which never deletes a put folder younger than this floor, cannot race a live put
# (the 10 minutes between the two absorb clock skew between hosts)
GC_FLOOR_S = 3600.0
QUARANTINE = "quarantine"
VERIFY_THREADS = 16

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("run", pa.string()),
        ("task_ids", pa.list_(pa.string())),
        ("base_model", pa.string()),
        ("base_revision", pa.string()),
        ("config_hash", pa.string()),
        ("config_json", pa.string()),
        ("adapter_uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("sha256", pa.string()),
        ("train_loss", pa.float64()),
        ("val_loss_before", pa.float64()),
        ("val_loss_after", pa.float64()),
        ("steps", pa.int64()),
        ("tokens", pa.int64()),
        ("seconds", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("host", pa.string()),
        ("ttft_version", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("reduced", pa.bool_()),
        ("attempt", pa.int64()),
        ("extra_json", pa.string()),
        ("put_id", pa.string()),
    ]
)
# fields the registry fills itself; a caller's row may not set them
RESERVED_FIELDS = frozenset(
    {"key", "status", "adapter_uri", "size_bytes", "sha256", "created_at", "ttft_version", "put_id", "error"}
)
USER_FIELDS = frozenset(SCHEMA.names) - RESERVED_FIELDS
FILTERS = ("key", "run", "task_id", "base_model", "config_hash", "status")
STATUSES = ("ok", "failed")


class RegistryError(RuntimeError):
    """A registry operation failed (unreadable metadata, storage error)."""


class IntegrityError(RegistryError):
    """Stored adapter bytes do not match their recorded checksum or size."""


class RegistryWarning(UserWarning):
    """Damage a reader skipped (an unreadable row file, an adapter that is not intact)."""


class AdapterNotFound(RegistryError, KeyError):
    """No row with status ok for the requested key."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, ASCII, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def adapter_key(base_model: str, train_config: dict, task_hashes: Sequence[str], seed: int) -> str:
    """Key of an adapter: sha256 hex[:32] of the canonical JSON of (base model, config, task hashes, seed).

    Same inputs give the same key; changing any of them (task order included) gives a new one.
    `base_model` should be `model.model_identity(...)`; `train_config` holds only training-relevant settings.
    """
    if isinstance(task_hashes, str | bytes):
        raise TypeError("adapter_key: task_hashes must be a sequence of strings, not a single string")
    if not isinstance(base_model, str) or not base_model:
        raise TypeError("adapter_key: base_model must be a non-empty string")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"adapter_key: seed must be an int, got {seed!r}")
    try:
        payload = canonical_json(
            {
                "base_model": base_model,
                "train_config": train_config,
                "task_hashes": list(task_hashes),
                "seed": seed,
            }
        )
    except (TypeError, ValueError) as e:
        raise TypeError(f"adapter_key: inputs are not canonical-JSON serializable: {e}") from e
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def config_hash(train_config: dict) -> str:
    """sha256 hex[:16] of the canonical JSON of a config (for the row's config_hash field)."""
    return hashlib.sha256(canonical_json(train_config).encode()).hexdigest()[:16]


def manifest_sha256(files: Sequence[dict]) -> str:
    """The adapter checksum: sha256 of the canonical JSON of [{path, size, sha256}] sorted by path."""
    entries = sorted(
        ({"path": f["path"], "size": f["size"], "sha256": f["sha256"]} for f in files),
        key=lambda f: f["path"],
    )
    return hashlib.sha256(canonical_json(entries).encode()).hexdigest()


def new_put_id(now_s: float | None = None) -> str:
    """A fresh put id: 32 hex digits in the UUIDv7 layout (48-bit Unix milliseconds first, then random)."""
    ms = int((time.time() if now_s is None else now_s) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return f"{value:032x}"


def put_id_time(put_id: str) -> float | None:
    """Creation time (Unix seconds) of a put id made by `new_put_id`; None for an older random (v4) id."""
    if not PUT_ID_RE.match(put_id or "") or put_id[12] != "7":
        return None
    return int(put_id[:12], 16) / 1000


def check_key(key: str) -> str:
    """Return key if it is a lowercase hex string of 16..64 chars, else raise ValueError."""
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise ValueError(f"invalid adapter key {key!r}: expected 16-64 lowercase hex characters")
    return key


def _coerce_row(row: dict, key: str) -> dict:
    """Validate a caller's row against the schema; return every user field (None where absent)."""
    if not isinstance(row, dict):
        raise TypeError(f"adapter {key}: row must be a dict, got {type(row).__name__}")
    unknown = sorted(set(row) - set(SCHEMA.names))
    if unknown:
        raise ValueError(f"adapter {key}: unknown row field(s) {unknown}; known: {sorted(USER_FIELDS)}")
    reserved = sorted(f for f in set(row) & RESERVED_FIELDS if not (f == "key" and row[f] == key))
    if reserved:
        raise ValueError(f"adapter {key}: row field(s) {reserved} are set by the registry")
    out = {}
    for name in USER_FIELDS:
        value = row.get(name)
        if name == "task_ids" and value is not None:
            if isinstance(value, str | bytes) or not all(isinstance(t, str) for t in value):
                raise ValueError(
                    f"adapter {key}: row field 'task_ids' must be a list of strings, got {value!r}"
                )
            value = list(value)
        if name in ("config_json", "extra_json") and value is not None and not isinstance(value, str):
            value = canonical_json(value)
        if value is not None:
            try:
                pa.array([value], SCHEMA.field(name).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
                raise ValueError(
                    f"adapter {key}: row field {name!r}: {value!r} is not a valid "
                    f"{SCHEMA.field(name).type}: {e}"
                ) from e
        out[name] = value
    if out["host"] is None:
        out["host"] = socket.gethostname()
    return out


def dedup(table: pa.Table) -> pa.Table:
    """One row per key: status "ok" first, then the latest created_at, then the largest put_id."""
    if table.num_rows == 0:
        return table
    rank = pc.if_else(pc.equal(table["status"], "ok"), 0, 1)
    t = table.append_column("_rank", rank)
    t = t.sort_by(
        [("key", "ascending"), ("_rank", "ascending"), ("created_at", "descending"), ("put_id", "descending")]
    )
    keys = t["key"].to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return t.filter(pa.array(first)).drop_columns(["_rank"])


class AdapterRegistry:
    """Adapter files + metadata rows under a local directory or an `s3://bucket/prefix` root.

    S3 endpoint and credentials come from the arguments or AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY. `cache_dir` (default $TTFT_CACHE_DIR or ~/.cache/ttft, then /adapters) holds
    the verified local copies `get` returns. Metadata files already read are cached in memory: repeated
    `exists` / `query` calls only list the meta folder and read files that are new since the last call.
    Reading thousands of one-row files is slow on a cold start (about 1 ms each locally, more on S3), so
    once a read finds `auto_compact` or more uncompacted row files it compacts them (None: never; a
    failure, e.g. read-only credentials, only turns auto-compaction off for this object, with a warning).
    `put_deadline_s` / `gc_floor_s`: see the module docstring (tests lower the floor; nothing else should).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        s3_endpoint: str | None = None,
        s3_access_key: str | None = None,
        s3_secret_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        auto_compact: int | None = 256,
        put_deadline_s: float = PUT_DEADLINE_S,
        gc_floor_s: float = GC_FLOOR_S,
    ):
        self.fs, self.base = objstore.filesystem_from_uri(
            root, endpoint=s3_endpoint, access_key=s3_access_key, secret_key=s3_secret_key
        )
        self.uri = f"s3://{self.base}" if objstore.is_s3(str(root)) else self.base
        if cache_dir is None:
            cache_dir = Path(os.environ.get("TTFT_CACHE_DIR") or Path.home() / ".cache" / "ttft") / "adapters"
        self.cache_dir = Path(cache_dir)
        self._known: set[str] = set()  # meta files whose rows are in self._raw
        self._raw = self._empty_raw()
        self._view: pa.Table | None = None  # dedup(self._raw) without _file, rebuilt when _raw changes
        self.auto_compact = auto_compact
        self._compacting = False
        self._lock = threading.RLock()  # one object may be shared by threads
        self._bad: dict[str, str] = {}  # meta files skipped as unreadable / wrong schema -> reason
        self.put_deadline_s = put_deadline_s
        self.gc_floor_s = gc_floor_s

    def __repr__(self) -> str:
        return f"AdapterRegistry({self.uri!r})"

    # ---- paths ---------------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _uri(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def _adapter_dir(self, key: str, put_id: str) -> str:
        check_key(key)
        if not PUT_ID_RE.match(put_id or ""):
            raise RegistryError(f"adapter {key}: invalid put_id {put_id!r} in its metadata row")
        return self._path("adapters", key, put_id)

    # ---- writing -------------------------------------------------------------------------------------
    def put(self, key: str, adapter_dir: str | os.PathLike, row: dict) -> None:
        """Store the files of adapter_dir under key, then commit its metadata row (status "ok").

        `row` holds the caller's fields (run, task_ids, base_model, config_hash, losses, ...); key, status,
        adapter_uri, size_bytes, sha256, created_at, host (unless given), ttft_version are filled here.
        Raises ValueError for a bad key/row or an empty adapter_dir, IntegrityError if the stored sizes
        differ from the uploaded ones (no row is written then).
        """
        check_key(key)
        fields = _coerce_row(row, key)
        rels = objstore.local_files(adapter_dir)
        if not rels:
            raise ValueError(f"adapter {key}: no files in {adapter_dir}")
        started = time.time()
        put_id = new_put_id(started)
        prefix = self._adapter_dir(key, put_id)
        files = []
        try:
            for rel in rels:
                size, sha = objstore.upload_file(Path(adapter_dir) / rel, self.fs, f"{prefix}/files/{rel}")
                files.append({"path": rel, "size": size, "sha256": sha})
            digest = manifest_sha256(files)
            manifest = {"format": 1, "key": key, "put_id": put_id, "sha256": digest, "files": files}
            objstore.write_bytes(self.fs, f"{prefix}/manifest.json", canonical_json(manifest).encode())
            pause = float(os.environ.get(PAUSE_ENV) or 0)
            if pause > 0:
                time.sleep(pause)
            # right before the commit: nothing was deleted meanwhile
            self._verify_stored_sizes(key, prefix, files)
            elapsed = time.time() - started
            if elapsed > self.put_deadline_s:
                raise RegistryError(
                    f"adapter {key}: put took {elapsed:.0f} s, more than the {self.put_deadline_s:g} s "
                    f"deadline after which gc may collect its files; not committed (retry the put)"
                )
        except BaseException:
            try:  # best effort; gc() collects what is left
                self.fs.delete_dir(prefix)
            except Exception:
                pass
            raise
        fields.update(
            key=key,
            status="ok",
            error=None,
            adapter_uri=self._uri("adapters", key, put_id, "files"),
            size_bytes=sum(f["size"] for f in files),
            sha256=digest,
        )
        self._commit(fields, put_id)

    def put_failed(self, key: str, row: dict, error: str) -> None:
        """Record a failed fine-tune for key (status "failed", the error text, no adapter files)."""
        check_key(key)
        fields = _coerce_row(row, key)
        fields.update(
            key=key, status="failed", error=str(error), adapter_uri=None, size_bytes=None, sha256=None
        )
        self._commit(fields, new_put_id())

    def _verify_stored_sizes(self, key: str, prefix: str, files: list[dict]) -> None:
        listed = {i.path[len(prefix) + 1 :]: i.size for i in objstore.list_files(self.fs, prefix)}
        if "manifest.json" not in listed:
            raise IntegrityError(
                f"adapter {key}: manifest vanished before the commit ({self._uri('adapters', key)})"
            )
        stored = {rel[len("files/") :]: size for rel, size in listed.items() if rel.startswith("files/")}
        for f in files:
            if stored.get(f["path"]) != f["size"]:
                raise IntegrityError(
                    f"adapter {key}: stored file {f['path']} has size {stored.get(f['path'])}, "
                    f"uploaded {f['size']} bytes ({self._uri('adapters', key)})"
                )

    def _commit(self, fields: dict, put_id: str) -> None:
        fields.update(
            put_id=put_id,
            created_at=dt.datetime.now(dt.UTC),
            ttft_version=__version__,
        )
        table = pa.Table.from_pylist([fields], schema=SCHEMA)
        self._write_meta(table, f"{fields['key']}-{put_id}.parquet")

    def _write_meta(self, table: pa.Table, name: str) -> str:
        """Write rows as meta/<name> (atomically: S3 PUT, or temp file + rename locally)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table.select(SCHEMA.names).cast(SCHEMA), sink, compression="zstd")
        path = self._path("meta", name)
        objstore.write_bytes(self.fs, path, sink.getvalue().to_pybytes())
        return path

    # ---- reading metadata ----------------------------------------------------------------------------
    @staticmethod
    def _empty_raw() -> pa.Table:
        return SCHEMA.append(pa.field("_file", pa.string())).empty_table()

    def _list_meta(self) -> dict[str, pafs.FileInfo]:
        infos = self.fs.get_file_info(pafs.FileSelector(self._path("meta"), allow_not_found=True))
        return {
            i.path: i
            for i in infos
            if i.type == pafs.FileType.File
            and i.path.endswith(".parquet")
            and not i.base_name.startswith((".", "_"))
        }

    def _scan_meta_files(self, infos: list[pafs.FileInfo]) -> pa.Table:
        """All rows of these files in one threaded scan (raises if any file does not parse)."""
        fmt = ds.ParquetFileFormat()
        frags = [fmt.make_fragment(i.path, self.fs, file_size=i.size) for i in infos]
        dataset = ds.FileSystemDataset(frags, schema=SCHEMA, format=fmt, filesystem=self.fs)
        parts = []
        for tagged in dataset.scanner(use_threads=True).scan_batches():
            batch = tagged.record_batch
            if batch.num_rows:
                t = pa.Table.from_batches([batch], schema=SCHEMA)
                parts.append(
                    t.append_column("_file", pa.array([tagged.fragment.path] * batch.num_rows, pa.string()))
                )
        return pa.concat_tables(parts) if parts else self._empty_raw()

    def _read_meta_file(self, info: pafs.FileInfo) -> pa.Table | str | None:
        """One file's rows; a reason (str) if it does not parse or lacks a column; None if it is gone.

        Storage errors (an outage) raise: only bytes that were read and do not make a row file are bad."""
        try:
            data = objstore.read_bytes(self.fs, info.path)
        except FileNotFoundError:
            return None
        try:
            t = pq.read_table(pa.BufferReader(data))
            missing = [n for n in SCHEMA.names if n not in t.column_names]
            if missing:
                return f"not a registry row file: missing column(s) {missing[:4]}"
            t = t.select(SCHEMA.names).cast(SCHEMA)
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
            return f"unreadable: {' '.join(str(e).split())[:300]}"
        return t.append_column("_file", pa.array([info.path] * t.num_rows, pa.string()))

    @staticmethod
    def _invalid_rows(table: pa.Table) -> np.ndarray:
        """Mask of rows a registry never writes: bad key / put_id / status, or no created_at."""
        if table.num_rows == 0:
            return np.zeros(0, dtype=bool)
        key_ok = pc.fill_null(pc.match_substring_regex(table["key"], KEY_RE.pattern), False)
        put_ok = pc.fill_null(pc.match_substring_regex(table["put_id"], PUT_ID_RE.pattern), False)
        status_ok = pc.fill_null(pc.is_in(table["status"], pa.array(STATUSES, pa.string())), False)
        ok = pc.and_(pc.and_(key_ok, put_ok), pc.and_(status_ok, pc.is_valid(table["created_at"])))
        return ~ok.to_numpy(zero_copy_only=False)

    def _read_meta_files(self, infos: list[pafs.FileInfo]) -> tuple[pa.Table, dict[str, str], set[str]]:
        """(rows, bad files -> reason, files gone meanwhile) of these meta files."""
        if not infos:
            return self._empty_raw(), {}, set()
        bad: dict[str, str] = {}
        gone: set[str] = set()
        try:
            table = self._scan_meta_files(infos)
        except (OSError, pa.ArrowException):  # find the culprits file by file (or relist: a compaction)
            parts = []
            for info in infos:
                t = self._read_meta_file(info)
                if t is None:
                    gone.add(info.path)
                elif isinstance(t, str):
                    bad[info.path] = t
                else:
                    parts.append(t)
            table = pa.concat_tables(parts) if parts else self._empty_raw()
        invalid = self._invalid_rows(table)
        if invalid.any():
            for path in set(table["_file"].filter(pa.array(invalid)).to_pylist()):
                bad[path] = "has rows a registry never writes (invalid key, put_id, status or created_at)"
            keep = pc.invert(pc.is_in(table["_file"], pa.array(sorted(bad), pa.string())))
            table = table.filter(keep)
        return table, bad, gone

    def refresh(self) -> None:
        """Bring the in-memory rows up to date with the meta folder (reads only files not seen before)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        for attempt in range(6):
            listed = self._list_meta()
            added = [i for p, i in sorted(listed.items()) if p not in self._known and p not in self._bad]
            new, bad, vanished = self._read_meta_files(added)
            if not vanished:
                break
            time.sleep(0.05 * (attempt + 1))  # a compaction deleted listed files: its merged file is new
        else:
            raise RegistryError(
                f"registry {self.uri}: metadata files keep vanishing while read: {sorted(vanished)}"
            )
        gone = self._known - set(listed)
        for path in set(self._bad) - set(listed):  # quarantined or deleted
            del self._bad[path]
        for path, reason in sorted(bad.items()):
            warnings.warn(
                f"registry {terminal(self.uri)}: skipping metadata file {terminal(path)}: {terminal(reason)} "
                f"(`ttft registry doctor --quarantine` moves it aside)",
                RegistryWarning,
                stacklevel=4,
            )
        self._bad.update(bad)
        added = [i for i in added if i.path not in bad]
        if gone:
            keep = pc.invert(pc.is_in(self._raw["_file"], pa.array(sorted(gone), pa.string())))
            self._raw = self._raw.filter(keep)
            self._known -= gone
        if added:
            self._raw = pa.concat_tables([self._raw, new])
            self._known |= {i.path for i in added}
        if gone or added or self._view is None:
            self._view = dedup(self._raw).drop_columns(["_file"])
        self._maybe_compact()

    def bad_meta_files(self) -> dict[str, str]:
        """Metadata files skipped as unreadable or of the wrong schema -> reason (after a refresh)."""
        with self._lock:
            self._refresh()
            return dict(self._bad)

    def _maybe_compact(self) -> None:
        if self.auto_compact is None or self._compacting:
            return
        if sum(not p.rsplit("/", 1)[-1].startswith("compact-") for p in self._known) < self.auto_compact:
            return
        try:
            self.compact()
        except (OSError, RegistryError) as e:
            warnings.warn(f"registry {self.uri}: auto-compaction failed, turned off: {e}", stacklevel=3)
            self.auto_compact = None

    def raw_rows(self) -> pa.Table:
        """Every stored row, duplicates included, with the meta file each came from (`_file`)."""
        with self._lock:
            self._refresh()
            return self._raw

    def rows(self) -> pa.Table:
        """One row per key (status ok preferred, then latest), as an Arrow table with SCHEMA."""
        with self._lock:
            self._refresh()
            assert self._view is not None
            return self._view

    def __len__(self) -> int:
        return self.rows().num_rows

    def exists(self, keys: Iterable[str], *, status: str | None = "ok", verify: bool = True) -> set[str]:
        """The subset of keys that have a row with the given status ("ok" by default; None: any status).

        With status "ok" and verify=True (the default: what resume asks), a key counts only if its adapter
        is intact in the store (see `damaged`); a damaged one is left out with a RegistryWarning, so it is
        trained again. verify=False answers from the metadata rows alone.
        """
        wanted = pa.array(sorted(set(keys)), pa.string())
        table = self.rows()
        mask = pc.is_in(table["key"], wanted)
        if status is not None:
            mask = pc.and_(mask, pc.equal(table["status"], status))
        found = set(table.filter(mask)["key"].to_pylist())
        if verify and status == "ok" and found:
            for key, reason in sorted(self.damaged(found).items()):
                warnings.warn(
                    f"registry {terminal(self.uri)}: adapter {key} is not intact ({terminal(reason)}): "
                    f"treated as missing",
                    RegistryWarning,
                    stacklevel=2,
                )
                found.discard(key)
        return found

    def damaged(self, keys: Iterable[str]) -> dict[str, str]:
        """Keys (of those with an ok row) whose stored adapter is not intact -> the reason.

        Cheap: per key one listing of its put folder (sizes) and one read of its manifest, in parallel; the
        manifest must match the row's sha256 and size_bytes, and every file its manifest size. (`get` checks
        every byte.) Storage errors other than a missing object raise.
        """
        rows = self.query(key=sorted(set(keys)), status="ok").to_pylist()
        if not rows:
            return {}
        with ThreadPoolExecutor(min(VERIFY_THREADS, len(rows))) as pool:
            problems = list(pool.map(self._damage, rows))
        return {r["key"]: p for r, p in zip(rows, problems, strict=True) if p is not None}

    def _damage(self, row: dict) -> str | None:
        key = row["key"]
        try:
            prefix = self._adapter_dir(key, row["put_id"])
        except RegistryError as e:
            return str(e)
        listed = {i.path[len(prefix) + 1 :]: i.size for i in objstore.list_files(self.fs, prefix)}
        if not listed:
            return f"no files at {self._uri('adapters', key, row['put_id'])}"
        if "manifest.json" not in listed:
            return "manifest.json missing"
        try:
            manifest = json.loads(objstore.read_bytes(self.fs, f"{prefix}/manifest.json"))
            files = manifest["files"]
            digest = manifest_sha256(files)
            sizes = {f["path"]: f["size"] for f in files}
        except FileNotFoundError:
            return "manifest.json missing"
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return f"manifest.json unreadable ({type(e).__name__})"
        if digest != row["sha256"]:
            return "manifest checksum does not match its row"
        if row["size_bytes"] is not None and sum(sizes.values()) != row["size_bytes"]:
            return f"manifest lists {sum(sizes.values())} bytes, the row {row['size_bytes']}"
        for rel, size in sorted(sizes.items()):
            stored = listed.get(f"files/{rel}")
            if stored is None:
                return f"file {rel} missing"
            if stored != size:
                return f"file {rel} has {stored} bytes, expected {size} (truncated or replaced)"
        return None

    def query(self, **filters: str | Sequence[str] | None) -> pa.Table:
        """Rows (one per key) matching every filter: key, run, task_id (in task_ids), base_model,
        config_hash, status. A filter value is a string or a list of strings (any of); None is ignored."""
        unknown = sorted(set(filters) - set(FILTERS))
        if unknown:
            raise ValueError(f"unknown query filter(s) {unknown}; known: {list(FILTERS)}")
        table = self.rows()
        for name, value in filters.items():
            if value is None:
                continue
            values = pa.array([value] if isinstance(value, str) else list(value), pa.string())
            if name == "task_id":
                col = (
                    table["task_ids"].combine_chunks()
                    if table.num_rows
                    else pa.array([], SCHEMA.field("task_ids").type)
                )
                hit = pc.is_in(pc.list_flatten(col), values)
                rows = np.unique(pc.list_parent_indices(col).filter(hit).to_numpy())
                mask = np.zeros(table.num_rows, dtype=bool)
                mask[rows] = True
                table = table.filter(pa.array(mask))
            else:
                table = table.filter(pc.is_in(table[name], values))
        return table

    def row(self, key: str) -> dict | None:
        """The winning row of key as a dict, or None."""
        t = self.query(key=check_key(key))
        return t.to_pylist()[0] if t.num_rows else None

    # ---- get -----------------------------------------------------------------------------------------
    def get(self, key: str) -> Path:
        """A local directory with the verified files of key's adapter (downloaded into cache_dir if needed).

        A cached copy is re-hashed; if it does not match (corrupted, partial, other registry) it is
        downloaded again. Every failure raises a RegistryError with a one-line reason: AdapterNotFound (no
        ok row), IntegrityError (stored files missing or not matching), or RegistryError itself (storage
        error while reading). Callers fall back (retrain, base model) on RegistryError.
        """
        check_key(key)
        try:
            return self._get(key)
        except RegistryError:
            raise
        except (OSError, pa.ArrowException) as e:
            raise RegistryError(
                f"adapter {key}: cannot fetch from {self.uri}: {' '.join(str(e).split())[:300]}"
            ) from e

    def _get(self, key: str) -> Path:
        row = self.row(key)
        if row is None or row["status"] != "ok":
            state = "no row" if row is None else f"status {row['status']!r}"
            raise AdapterNotFound(f"adapter {key} not in registry {self.uri} ({state})")
        local = self.cache_dir / key
        stamp = self.cache_dir / f"{key}.manifest.json"
        if self._cache_ok(local, stamp, row["sha256"]):
            return local
        prefix = self._adapter_dir(key, row["put_id"])
        try:
            manifest = json.loads(objstore.read_bytes(self.fs, f"{prefix}/manifest.json"))
            files = manifest.get("files") or []
            digest = manifest_sha256(files)
        except FileNotFoundError as e:
            raise IntegrityError(
                f"adapter {key}: manifest missing at {self._uri('adapters', key, row['put_id'])}"
            ) from e
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(
                f"adapter {key}: manifest unreadable at {self._uri('adapters', key, row['put_id'])} "
                f"({type(e).__name__})"
            ) from e
        if digest != row["sha256"]:
            raise IntegrityError(
                f"adapter {key}: manifest checksum does not match its row ({row['adapter_uri']})"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".tmp-{key}-{uuid.uuid4().hex}"
        try:
            for f in files:
                rel = f["path"]
                if (
                    not isinstance(rel, str)
                    or rel.startswith("/")
                    or any(p in ("", ".", "..") for p in rel.split("/"))
                ):
                    raise IntegrityError(f"adapter {key}: unsafe file name {rel!r} in its manifest")
                try:
                    size, sha = objstore.download_file(self.fs, f"{prefix}/files/{rel}", tmp / rel)
                except FileNotFoundError as e:
                    raise IntegrityError(f"adapter {key}: file {rel} missing at {row['adapter_uri']}") from e
                if (size, sha) != (f["size"], f["sha256"]):
                    raise IntegrityError(
                        f"adapter {key}: file {rel} at {row['adapter_uri']} is corrupt: "
                        f"sha256 {sha} ({size} bytes), expected {f['sha256']} ({f['size']} bytes)"
                    )
            if local.exists():
                shutil.rmtree(local)
            stamp.unlink(missing_ok=True)
            try:
                os.rename(tmp, local)
            except OSError:  # another process installed it meanwhile
                if not self._cache_ok(local, None, row["sha256"], files):
                    raise
            stamp.write_text(canonical_json({"sha256": row["sha256"], "files": files}))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local

    @staticmethod
    def _cache_ok(local: Path, stamp: Path | None, sha256: str, files: list[dict] | None = None) -> bool:
        """True if local holds exactly the files of the manifest (from stamp or given) with their sha256."""
        try:
            if files is None:
                assert stamp is not None
                recorded = json.loads(stamp.read_text())
                if recorded.get("sha256") != sha256:
                    return False
                files = recorded["files"]
            if manifest_sha256(files) != sha256 or objstore.local_files(local) != sorted(
                f["path"] for f in files
            ):
                return False
            return all(objstore.sha256_file(local / f["path"]) == (f["size"], f["sha256"]) for f in files)
        except (OSError, ValueError, KeyError, TypeError):
            return False

    # ---- maintenance ---------------------------------------------------------------------------------
    def compact(self) -> int:
        """Merge all row files into one deduplicated Parquet file; return how many files were merged.

        The merged file is written before any merged file is deleted; rows committed meanwhile are in
        files this call never listed, so they stay. Concurrent compactions at worst leave duplicate rows,
        which readers deduplicate.
        """
        with self._lock:
            self._compacting = True
            try:
                return self._compact()
            finally:
                self._compacting = False

    def _compact(self) -> int:
        self.refresh()
        files = sorted(self._known)
        if len(files) <= 1:
            return 0
        merged = dedup(self._raw.filter(pc.is_in(self._raw["_file"], pa.array(files, pa.string()))))
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self._write_meta(merged.drop_columns(["_file"]), f"compact-{stamp}-{uuid.uuid4().hex}.parquet")
        for path in files:
            try:
                self.fs.delete_file(path)
            except FileNotFoundError:
                pass
        self.refresh()
        return len(files)

    def gc(self, min_age_s: float = 3600) -> int:
        """Delete stored adapters that no row references and whose newest file is older than min_age_s.

        Never younger than `gc_floor_s` (by the put's start time, else its files' times), whatever
        min_age_s says: a put in flight commits within `put_deadline_s` < the floor or not at all. Put
        folders named by a skipped (unreadable) row file are kept; while a compacted row file is unreadable
        nothing is deleted. Local stale temp files go too. Returns the number of put folders removed.
        """
        now = time.time()
        cutoff_ns = time.time_ns() - int(min_age_s * 1e9)
        floor_cutoff_s = now - max(min_age_s, self.gc_floor_s)
        newest: dict[tuple[str, str], int] = {}
        prefix = self._path("adapters") + "/"
        for info in objstore.list_files(self.fs, self._path("adapters")):  # list before reading the rows
            parts = info.path[len(prefix) :].split("/")
            if len(parts) >= 3 and KEY_RE.match(parts[0]) and PUT_ID_RE.match(parts[1]):
                newest[(parts[0], parts[1])] = max(newest.get((parts[0], parts[1]), 0), info.mtime_ns or 0)
        raw = self.raw_rows()
        referenced = set(zip(raw["key"].to_pylist(), raw["put_id"].to_pylist(), strict=True))
        for path in self._bad:  # rows we cannot read may still reference their adapter
            name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
            key, _, put_id = name.rpartition("-")
            if KEY_RE.match(key) and PUT_ID_RE.match(put_id):
                referenced.add((key, put_id))
            else:
                warnings.warn(
                    f"registry {terminal(self.uri)}: gc deletes nothing while {terminal(path)} is unreadable "
                    f"(run `ttft registry doctor --quarantine` first)",
                    RegistryWarning,
                    stacklevel=2,
                )
                return 0
        removed = 0
        for (key, put_id), mtime_ns in sorted(newest.items()):
            started = put_id_time(put_id)
            young = mtime_ns / 1e9 > floor_cutoff_s if started is None else started > floor_cutoff_s
            if (key, put_id) in referenced or mtime_ns > cutoff_ns or young:
                continue
            self.fs.delete_dir(self._adapter_dir(key, put_id))
            removed += 1
            if objstore.is_local(self.fs):
                try:
                    os.rmdir(self._path("adapters", key))  # only if now empty
                except OSError:
                    pass
        if objstore.is_local(self.fs):  # temp files of local writers that died mid-write
            for info in objstore.list_files(self.fs, self._path("meta")):
                if info.base_name.startswith(".tmp-") and (info.mtime_ns or 0) <= cutoff_ns:
                    self.fs.delete_file(info.path)
        return removed

    def doctor(self, *, quarantine: bool = False, verify: bool = True) -> dict:
        """Check the registry: skipped (unreadable, wrong-schema) row files; with verify, damaged adapters.

        quarantine=True moves each skipped row file to `quarantine/meta/` beside `meta/` (out of every read;
        gc then no longer protects what it named). Damaged adapters need no action: `exists` already
        treats them as missing, so the next run trains them again. Returns
        {"bad_meta_files": {path: reason}, "quarantined": [new paths], "damaged": {key: reason}}.
        """
        with self._lock:
            bad = self.bad_meta_files()
            moved = []
            if quarantine and bad:
                dest_dir = self._path(QUARANTINE, "meta")
                if objstore.is_local(self.fs):
                    self.fs.create_dir(dest_dir, recursive=True)
                for path in sorted(bad):
                    dest = f"{dest_dir}/{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{path.rsplit('/', 1)[-1]}"
                    self.fs.move(path, dest)
                    moved.append(dest)
                self._refresh()
            damaged = self.damaged(self.query(status="ok")["key"].to_pylist()) if verify else {}
        return {"bad_meta_files": bad, "quarantined": moved, "damaged": damaged}

    def describe(self) -> dict:
        """Summary for `ttft registry show`: root, counts by status and run, meta files, total size."""
        table = self.rows()
        statuses = table["status"].to_pylist()
        runs: dict[str, int] = {}
        for run in table["run"].to_pylist():
            runs[str(run)] = runs.get(str(run), 0) + 1
        return {
            "root": self.uri,
            "rows": table.num_rows,
            "ok": statuses.count("ok"),
            "failed": statuses.count("failed"),
            "meta_files": len(self._known),
            "bad_meta_files": len(self._bad),
            "raw_rows": self._raw.num_rows,
            "size_bytes": int(pc.sum(table["size_bytes"]).as_py() or 0),
            "runs": dict(sorted(runs.items())),
            "base_models": sorted({m for m in table["base_model"].to_pylist() if m}),
        }
