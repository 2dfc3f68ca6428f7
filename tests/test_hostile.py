"""Hostile-input corpus: every class of the hardening issue, tried against the real components.

Classes (each a section below): a code-carrying or truncated pretraining checkpoint; a damaged adapter in the
registry (truncated, deleted, garbage manifest, same-size replacement, storage refusing reads); garbage,
empty and wrong-schema row files; gc racing a put, a put past its deadline; scoring with Kaggle semantics
and malformed submissions / solutions; untrusted text in report.md and on the terminal; out-of-range config
values, bad URIs, budgets in seconds, YAML bombs and unreadable config files; JSON that is too deep, holds
huge integers or is not UTF-8. Registry classes run on a local directory and on SeaweedFS S3 (loopback).
The inputs are generated here (under each test's tmp_path), nothing is mocked.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.s3_server import s3_server  # noqa: F401  (session fixture)
from tests.test_registry import Root, key_of, make_adapter, row, stored_files
from ttft import objstore
from ttft.config import ConfigError, load_config, parse_duration, parse_override, safe_yaml
from ttft.registry import (
    PAUSE_ENV,
    AdapterRegistry,
    IntegrityError,
    RegistryError,
    RegistryWarning,
    new_put_id,
    put_id_time,
)
from ttft.report import RunRecord, render_report
from ttft.safetext import markdown, terminal
from ttft.scoring import check_submission, load_solutions, read_submission, score_submission
from ttft.tasks import Pair, Task, TaskError, load_tasks

REPO = Path(__file__).resolve().parents[1]
GOOD = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[3, 4]], "output": [[4, 3]]}]}


def ttft(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "ttft.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def no_traceback(out: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> Root:
    if request.param == "local":
        return Root("local", str(tmp_path / "registry"))
    server = request.getfixturevalue("s3_server")
    kwargs = {
        "s3_endpoint": server.endpoint,
        "s3_access_key": server.access_key,
        "s3_secret_key": server.secret_key,
    }
    return Root("s3", f"s3://{server.bucket}/hostile-{uuid.uuid4().hex[:12]}", kwargs, server.env())


# ---- 3: checkpoints ------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs `touch <marker>`: what a writer of the checkpoint bucket could plant."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_carrying_code_is_refused_and_never_runs(tmp_path):
    from ttft.pretrain import STATE_FILE, load_checkpoint

    marker = tmp_path / "pwned"
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    (tmp_path / "evil").mkdir()
    torch.save({"format": 1, "fingerprint": {}, "x": _Payload(str(marker))}, tmp_path / "evil" / STATE_FILE)
    with pytest.raises(ValueError, match="refused: not a plain tensors-and-numbers checkpoint"):
        load_checkpoint(tmp_path / "evil", model, opt, sched, {})
    assert not marker.exists()
    # a plain pickle (not a torch zip) with the same payload
    (tmp_path / "evil2").mkdir()
    (tmp_path / "evil2" / STATE_FILE).write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ValueError, match=str(STATE_FILE)):
        load_checkpoint(tmp_path / "evil2", model, opt, sched, {})
    assert not marker.exists()
    # truncated: a one-line error, not a zip-reader traceback
    (tmp_path / "cut").mkdir()
    torch.save({"format": 1, "w": torch.zeros(1000)}, tmp_path / "cut" / STATE_FILE)
    data = (tmp_path / "cut" / STATE_FILE).read_bytes()
    (tmp_path / "cut" / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "cut", model, opt, sched, {})


# ---- 4: damaged adapters ---------------------------------------------------------------------------
def _weights(reg: AdapterRegistry, key: str) -> str:
    (path,) = [p for p in stored_files(reg) if f"/{key}/" in p and p.endswith("adapter_model.safetensors")]
    return path


def test_truncated_adapter_is_not_existing_and_get_raises_a_registry_error(root, tmp_path):
    reg = root.open(tmp_path / "cache")
    good, cut, gone, garbled, swapped = (key_of(f"dmg-{i}") for i in range(5))
    for k in (good, cut, gone, garbled, swapped):
        reg.put(k, make_adapter(tmp_path / k, k, size=4096), row())
    with reg.fs.open_output_stream(_weights(reg, cut)) as out:  # truncated safetensors
        out.write(b"x" * 100)
    reg.fs.delete_file(_weights(reg, gone))
    manifest = [p for p in stored_files(reg) if f"/{garbled}/" in p and p.endswith("manifest.json")][0]
    objstore.write_bytes(reg.fs, manifest, b"{not json", atomic=False)
    with reg.fs.open_output_stream(_weights(reg, swapped)) as out:  # same size, other bytes
        out.write(b"Z" * 4096)

    fresh = root.open(tmp_path / "cache2")
    with pytest.warns(RegistryWarning) as caught:
        found = fresh.exists([good, cut, gone, garbled, swapped])
    assert found == {good, swapped}  # the cheap check sees sizes and the manifest, not every byte
    text = " ".join(str(w.message) for w in caught)
    assert f"adapter {cut} is not intact" in text and "truncated" in text
    assert f"adapter {gone} is not intact" in text and f"adapter {garbled} is not intact" in text
    assert set(fresh.damaged([good, cut, gone, garbled, swapped])) == {cut, gone, garbled}
    assert fresh.exists([cut], verify=False) == {cut}  # the metadata alone still has the row
    for k in (cut, gone, garbled, swapped):  # get verifies every byte: all four refused, one line each
        with pytest.raises(IntegrityError) as err:
            fresh.get(k)
        assert isinstance(err.value, RegistryError) and "\n" not in str(err.value) and k in str(err.value)
    assert fresh.get(good).is_dir()
    # a retrain (a new put of the same key) makes it exist again
    reg.put(cut, make_adapter(tmp_path / "again", "again", size=4096), row())
    assert root.open(tmp_path / "cache3").exists([cut]) == {cut}
    assert (root.open(tmp_path / "cache4").get(cut) / "adapter_model.safetensors").stat().st_size == 4096


def test_get_wraps_storage_errors_in_a_registry_error(s3_server, tmp_path):  # noqa: F811
    root = f"s3://{s3_server.bucket}/hostile-{uuid.uuid4().hex[:8]}"
    good = AdapterRegistry(
        root,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        cache_dir=tmp_path / "c1",
    )
    k = key_of("creds")
    good.put(k, make_adapter(tmp_path / "a", "creds"), row())
    bad = AdapterRegistry(
        root,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key="wrong-secret",
        cache_dir=tmp_path / "c2",
    )
    with pytest.raises(RegistryError, match=f"adapter {k}: cannot fetch from s3://") as err:
        bad.get(k)
    assert "\n" not in str(err.value)


def test_cli_finetune_retrains_a_truncated_adapter_registry_level(tmp_path):
    """`exists` is what `ttft finetune` / run_finetunes ask before training: a truncated adapter is absent."""
    reg = AdapterRegistry(tmp_path / "reg", cache_dir=tmp_path / "c")
    k = key_of("resume")
    reg.put(k, make_adapter(tmp_path / "a", "resume", size=2048), row())
    path = _weights(reg, k)
    Path(path).write_bytes(Path(path).read_bytes()[:10])
    with pytest.warns(RegistryWarning, match="not intact"):
        assert AdapterRegistry(tmp_path / "reg", cache_dir=tmp_path / "c2").exists([k]) == set()


# ---- 5: garbage row files --------------------------------------------------------------------------
def _plant_bad_rows(reg: AdapterRegistry) -> dict[str, str]:
    """Row files a crash, a foreign tool or an attacker could leave in meta/; name -> what it is."""
    meta = f"{reg.base}/meta"
    k, p = key_of("phantom"), new_put_id()
    bad: dict[str, bytes] = {
        f"{k}-{p}.parquet": os.urandom(300),
        f"{key_of('z')}-{new_put_id()}.parquet": b"",
    }
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"colour": ["red"], "n": [1]}), sink)  # wrong schema: would be a null-key phantom
    bad["compact-20990101T000000-foreign.parquet"] = sink.getvalue().to_pybytes()
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"key": [1, 2], "status": [3, 4]}), sink)  # right names, wrong types
    bad["compact-20990101T000001-types.parquet"] = sink.getvalue().to_pybytes()
    for name, data in bad.items():
        objstore.write_bytes(reg.fs, f"{meta}/{name}", data, atomic=False)
    return {f"{meta}/{n}": n for n in bad}


def test_garbage_row_files_are_skipped_listed_and_quarantined(root, tmp_path):
    reg = root.open(tmp_path / "cache")
    keys = [key_of(f"gr-{i}") for i in range(3)]
    for k in keys:
        reg.put(k, make_adapter(tmp_path / k, k), row())
    planted = _plant_bad_rows(reg)

    fresh = root.open(tmp_path / "cache2")
    with pytest.warns(RegistryWarning, match="skipping metadata file") as caught:
        assert fresh.exists(keys) == set(keys)
    assert {p for p in planted if any(p in str(w.message) for w in caught)} == set(planted)
    assert len(fresh) == 3 and None not in fresh.rows()["key"].to_pylist()  # no phantom adapter
    assert set(fresh.bad_meta_files()) == set(planted)
    assert fresh.describe()["bad_meta_files"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file and object, not on every read
        assert fresh.exists(keys) == set(keys)
    with pytest.warns(RegistryWarning, match="gc deletes nothing"):  # unreadable compacted rows: gc waits
        assert fresh.gc(min_age_s=0) == 0
    assert fresh.compact() == 3  # merges the good files, leaves the bad ones alone
    assert set(planted) <= set(stored_files(fresh, "meta"))

    report = fresh.doctor(quarantine=True)
    assert set(report["bad_meta_files"]) == set(planted) and report["damaged"] == {}
    assert len(report["quarantined"]) == 4 and all("/quarantine/meta/" in q for q in report["quarantined"])
    assert not set(planted) & set(stored_files(fresh, "meta"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = root.open(tmp_path / "cache3")
        assert after.exists(keys) == set(keys) and after.bad_meta_files() == {}
        assert after.doctor() == {"bad_meta_files": {}, "quarantined": [], "damaged": {}}


def test_gc_keeps_the_adapter_a_garbled_row_file_names(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", cache_dir=tmp_path / "c", gc_floor_s=0)
    k = key_of("named")
    reg.put(k, make_adapter(tmp_path / "a", "named"), row())
    (row_file,) = stored_files(reg, "meta")
    Path(row_file).write_bytes(b"PAR1 garbage PAR1")  # the row is gone, its name still says which put
    fresh = AdapterRegistry(tmp_path / "reg", cache_dir=tmp_path / "c2", gc_floor_s=0)
    with pytest.warns(RegistryWarning):
        assert fresh.gc(min_age_s=0) == 0
    assert any(f"/{k}/" in p for p in stored_files(fresh))


def test_registry_cli_keeps_working_on_garbage_and_escapes_row_fields(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", cache_dir=tmp_path / "c")
    reg.put(
        key_of("cli"),
        make_adapter(tmp_path / "a", "cli"),
        row(run="\x1b[2J\x1b]0;owned\x07", tasks=["\u202ex"]),
    )
    _plant_bad_rows(reg)
    for action in ("ls", "show", "compact", "gc"):
        out = ttft("registry", action, str(tmp_path / "reg"))
        no_traceback(out)
        assert out.returncode == 0, (action, out.stdout, out.stderr)
        assert "\x1b" not in out.stdout + out.stderr and "\u202e" not in out.stdout + out.stderr
    out = ttft("registry", "ls", str(tmp_path / "reg"))
    assert "1 adapters" in out.stdout and "\\x1b[2J" in out.stdout and "\\u202ex" in out.stdout
    assert out.stderr.count("warning: registry") == 4 and "skipping metadata file" in out.stderr
    out = ttft("registry", "gc", str(tmp_path / "reg"), "--min-age", "0")
    assert "kept whatever --min-age says" in out.stdout
    out = ttft("registry", "doctor", str(tmp_path / "reg"))
    assert (
        out.returncode == 1 and out.stdout.count("bad metadata file:") == 4 and "--quarantine" in out.stdout
    )
    out = ttft("registry", "doctor", str(tmp_path / "reg"), "--quarantine")
    assert out.stdout.count("quarantined:") == 4
    out = ttft("registry", "doctor", str(tmp_path / "reg"))
    assert out.returncode == 0 and "0 bad metadata files, 0 damaged adapters" in out.stdout
    out = ttft("registry", "ls", "http://example.com/reg")
    no_traceback(out)
    assert out.returncode == 1 and "unsupported storage URI" in out.stdout


# ---- 11: gc against a put in flight ----------------------------------------------------------------
def test_gc_with_min_age_0_during_a_put_deletes_nothing(root, tmp_path, monkeypatch):
    writer = root.open(tmp_path / "cache-w")
    k = key_of("inflight")
    monkeypatch.setenv(PAUSE_ENV, "3")  # the put stores its files, then waits before writing its row
    errors: list[BaseException] = []

    def put() -> None:
        try:
            writer.put(k, make_adapter(tmp_path / "a", "inflight", size=1000), row())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=put)
    t.start()
    deadline = time.monotonic() + 30
    while not any(p.endswith("manifest.json") for p in stored_files(writer)):
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.05)
    gc = root.open(tmp_path / "cache-gc")
    assert gc.gc(min_age_s=0) == 0  # the floor (1 h) protects the files of the put in flight
    t.join()
    assert not errors, errors
    reader = root.open(tmp_path / "cache-r")
    assert reader.exists([k]) == {k} and reader.get(k).is_dir()


def test_a_put_past_its_deadline_does_not_commit(root, tmp_path, monkeypatch):
    monkeypatch.setenv(PAUSE_ENV, "1")
    reg = root.open(tmp_path / "cache", put_deadline_s=0.5)
    k = key_of("slow")
    with pytest.raises(RegistryError, match="deadline"):
        reg.put(k, make_adapter(tmp_path / "a", "slow"), row())
    assert reg.exists([k], status=None) == set() and stored_files(reg) == []


def test_put_ids_carry_their_time_and_old_ids_still_work():
    now = time.time()
    pid = new_put_id(now)
    assert len(pid) == 32 and int(pid, 16) >= 0 and abs(put_id_time(pid) - now) < 0.002
    assert str(uuid.UUID(pid).version) == "7" and len({new_put_id(now) for _ in range(1000)}) == 1000
    assert put_id_time(uuid.uuid4().hex) is None and put_id_time("zz") is None


# ---- 7: scoring ------------------------------------------------------------------------------------
def _sub_entry(grid):
    return {"attempt_1": grid, "attempt_2": grid}


def test_kaggle_semantics_missing_tasks_score_zero(tmp_path):
    solutions = {"aaaa0001": [[[1]]], "aaaa0002": [[[2]]]}
    sub = {"aaaa0001": [_sub_entry([[1]])]}
    rep = score_submission(sub, solutions)
    assert (rep.total, rep.n_tasks, rep.mean_score, rep.missing) == (1, 2, 0.5, ["aaaa0002"])
    assert rep.text() == "score: 1 / 2 tasks (50.00%); 1 task missing from the submission (scored 0)"
    only = score_submission(sub, solutions, only_submitted=True)
    assert (only.total, only.n_tasks, only.mean_score, only.missing) == (1, 1, 1.0, [])
    assert "only the submitted tasks: 1 of 2 tasks" in only.text()
    empty = score_submission({}, solutions)
    assert (empty.total, empty.n_tasks) == (0, 2)

    (tmp_path / "sol.json").write_text(json.dumps(solutions))
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    out = ttft("score", "--submission", str(tmp_path / "sub.json"), "--solutions", str(tmp_path / "sol.json"))
    assert out.returncode == 1 and "score: 1 / 2 tasks (50.00%)" in out.stdout
    assert "1 of 2 task(s) missing from the submission (scored 0): aaaa0002" in out.stdout
    out = ttft(
        "score",
        "--submission",
        str(tmp_path / "sub.json"),
        "--solutions",
        str(tmp_path / "sol.json"),
        "--only-submitted",
    )
    assert (
        out.returncode == 0 and "score: 1 / 1 tasks (100.00%), only the submitted tasks: 1 of 2" in out.stdout
    )
    (tmp_path / "empty.json").write_text("{}")
    out = ttft(
        "score", "--submission", str(tmp_path / "empty.json"), "--solutions", str(tmp_path / "sol.json")
    )
    assert "score: 0 / 2 tasks" in out.stdout and out.returncode == 1


BAD_SUBMISSIONS = {
    "missing attempt_2": ({"t": [{"attempt_1": [[1]]}]}, "missing attempt_2"),
    "ragged": ({"t": [_sub_entry([[1, 2], [1]])]}, "ragged grid"),
    "31x31": ({"t": [_sub_entry([[1] * 31] * 31)]}, "more than 30"),
    "bool": ({"t": [_sub_entry([[True]])]}, "got bool True"),
    "float": ({"t": [_sub_entry([[1.0]])]}, "got float 1.0"),
    "nan": ({"t": [_sub_entry([[math.nan]])]}, "got float nan"),
    "extra task": ({"t": [_sub_entry([[1]])], "u": [_sub_entry([[1]])]}, "not in the task set"),
    "two entries for one output": ({"t": [_sub_entry([[1]]), _sub_entry([[1]])]}, "expected 1 test output"),
    "not a list": ({"t": _sub_entry([[1]])}, "expected a list"),
    "task file as submission": ({"train": [], "test": []}, "looks like an ARC task file"),
}


@pytest.mark.parametrize("name", sorted(BAD_SUBMISSIONS))
def test_malformed_submissions_are_reported(name):
    sub, message = BAD_SUBMISSIONS[name]
    problems = check_submission(sub, {"t": 1})
    assert any(message in p for p in problems), problems
    assert score_submission(sub, {"t": [[[1]]]}).total == (
        1 if name in ("extra task", "two entries for one output", "missing attempt_2") else 0
    )


def test_malformed_submission_file_through_the_cli(tmp_path):
    (tmp_path / "sol.json").write_text(json.dumps({"t": [[[1]]]}))
    (tmp_path / "sub.json").write_text('{"t": [{"attempt_1": [[NaN]], "attempt_2": [[true]]}]}')
    out = ttft("score", "--submission", str(tmp_path / "sub.json"), "--solutions", str(tmp_path / "sol.json"))
    no_traceback(out)
    assert out.returncode == 1 and "got float nan" in out.stdout and "got bool True" in out.stdout
    assert "score: 0 / 1 tasks" in out.stdout


BAD_SOLUTIONS = {
    "single task file": (GOOD, "single ARC task file"),
    "ragged": ({"t": [[[1, 2], [1]]]}, "t: test[0].output[1]: ragged"),
    "31 rows": ({"t": [[[1]] * 31]}, "31 rows"),
    "bool": ({"t": [[[False]]]}, "got bool False"),
    "float": ({"t": [[[2.5]]]}, "got float 2.5"),
    "color 10": ({"t": [[[10]]]}, "color 10"),
    "unsafe id": ({"../x": [[[1]]]}, "not a safe name"),
    "no grids": ({"t": []}, "no solution grids"),
    "empty": ({}, "no tasks"),
}


@pytest.mark.parametrize("name", sorted(BAD_SOLUTIONS))
def test_malformed_solutions_are_one_line_errors(name, tmp_path):
    data, message = BAD_SOLUTIONS[name]
    path = tmp_path / "task1.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TaskError, match=re.escape(message)) as err:
        load_solutions(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_single_task_file_as_solutions_through_the_cli(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "abc.json").write_text(json.dumps(GOOD))
    (tmp_path / "sub.json").write_text(json.dumps({"abc": [_sub_entry([[4, 3]])]}))
    sub = str(tmp_path / "sub.json")
    out = ttft("score", "--submission", sub, "--solutions", str(tmp_path / "tasks" / "abc.json"))
    no_traceback(out)
    assert out.returncode == 1 and "single ARC task file" in out.stdout and "score:" not in out.stdout
    out = ttft("score", "--submission", sub, "--solutions", str(tmp_path / "tasks"))
    assert out.returncode == 0 and "score: 1 / 1 tasks (100.00%)" in out.stdout  # its directory works


# ---- 10: JSON that is too deep, too big or not text ---------------------------------------------------
def _deep(n: int) -> str:
    return "[" * n + "]" * n


def test_hostile_json_files_are_one_line_errors_naming_the_file(tmp_path):
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "good1.json").write_text(json.dumps(GOOD))
    (d / "deep.json").write_text('{"train": ' + _deep(100_000) + "}")
    (d / "huge.json").write_text(
        '{"train": [{"input": [[' + "9" * 5000 + ']], "output": [[1]]}], "test": []}'
    )
    (d / "big.json").write_text(json.dumps(GOOD).replace("[[1, 2]]", "[[1, " + "9" * 4000 + "]]", 1))
    (d / "latin1.json").write_bytes(json.dumps(GOOD).encode().replace(b"train", b"tr\xe9in"))
    (d / "dir.json").mkdir()  # a directory named like a task file is not a file: ignored
    res = load_tasks(d, skip_invalid=True)
    assert [t.id for t in res.tasks] == ["good1"]
    errors = {e.task_id: str(e) for e in res.errors}
    assert set(errors) == {"deep", "huge", "big", "latin1"}
    assert "nested too deeply" in errors["deep"] and "deep.json" in errors["deep"]
    assert "4300" in errors["huge"] and "huge.json" in errors["huge"]
    assert "<4000-digit int>" in errors["big"] and len(errors["big"]) < 400
    assert "not UTF-8" in errors["latin1"]
    assert all("\n" not in e for e in errors.values())
    out = ttft("data", "validate", str(d))
    no_traceback(out)
    assert out.returncode == 1 and "1 valid tasks" in out.stdout and "4 invalid tasks" in out.stdout

    for name in ("sub", "sol"):
        (tmp_path / f"{name}.json").write_text('{"t": ' + _deep(50_000) + "}")
    with pytest.raises(TaskError, match="sub.json: not valid JSON: nested too deeply"):
        read_submission(tmp_path / "sub.json")
    with pytest.raises(TaskError, match="sol.json: not valid JSON: nested too deeply"):
        load_solutions(tmp_path / "sol.json")
    (tmp_path / "sol2.json").write_text(json.dumps({"t": [[[1]]]}))
    for args in (("sub.json", "sol2.json"), ("sol2.json", "sol.json")):
        out = ttft("score", "--submission", str(tmp_path / args[0]), "--solutions", str(tmp_path / args[1]))
        no_traceback(out)
        assert out.returncode == 1 and "nested too deeply" in out.stdout


# ---- 8: untrusted text -------------------------------------------------------------------------------
def test_report_renders_untrusted_text_inert():
    task = Task("a_b", (Pair([[1]], [[1]]),), ([[1]],), ([[1]],))
    evil = (
        "<img src=x onerror=alert(1)>.json: task x: [click](javascript:alert(1)) | `code` **bold** \x1b[31m"
    )
    rec = RunRecord("run", [task], {"setup": 1.0}, invalid_tasks=[evil])
    rows = [
        {
            "task_id": "a_b",
            "test_index": 0,
            "solved": None,
            "oracle": None,
            "votes_1": 0,
            "votes_2": 0,
            "finetune": "<b>x</b>",
            "fallback": False,
            "val_loss_before": None,
            "val_loss_after": None,
            "skipped": None,
        }
    ]
    summary = {
        "scored_tasks": 0,
        "skipped": [],
        "requeued": [],
        "placement": {},
        "accuracy": None,
        "val_loss_before": None,
        "val_loss_after": None,
        "finetune_counts": {},
        "failed": [{"tasks": ["<script>"], "error": "RuntimeError: <iframe src=//evil>\nline 2 | x"}],
        "reduced": [],
        "oracle": None,
    }
    text = render_report(rec, summary, rows, ["losses.png"])
    for live in ("<img", "<b>", "<script>", "<iframe", "[click](", "\x1b", "`code`", "**bold**"):
        assert live not in text, live
    assert "&lt;img src=x onerror=alert(1)&gt;.json" in text and "a\\_b" in text
    failures = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(failures) == 2 and "line 2 \\| x" in failures[0]  # one line each, the pipe cannot end a cell


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_safetext_never_lets_controls_or_markup_through(s):
    t = terminal(s)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or 0x202A <= ord(c) <= 0x202E for c in t)
    m = markdown(s, limit=None)
    assert "<" not in m and ">" not in m and "\n" not in m
    i = 0
    while i < len(m):  # every inline-markup character comes escaped
        if m[i] == "\\":
            i += 2
            continue
        assert m[i] not in "`*_[]|~", (s, m)
        i += 1
    if all(c.isalnum() or c in " .,:-+/" for c in s) and s == " ".join(s.split()):
        assert m == s  # plain text is left alone


# ---- 9: config values, URIs, durations -----------------------------------------------------------------
BAD_VALUES = [
    ("ttft.optim.lr", ".nan", "finite"),
    ("ttft.optim.lr", ".inf", "finite"),
    ("ttft.optim.lr", "-1e-4", "> 0"),
    ("ttft.lora.alpha", "0", "> 0"),
    ("ttft.lora.dropout", "1.0", "in [0, 1)"),
    ("ttft.lora.dropout", "-0.1", "in [0, 1)"),
    ("ttft.lora.target_modules", "[]", "must not be empty"),
    ("ttft.optim.warmup_steps", "-1", ">= 0"),
    ("orchestrate.retries", "-1", ">= 0"),
    ("orchestrate.workers", "-2", ">= 1"),
    ("orchestrate.cpus_per_worker", "-1", ">= 0"),
    ("orchestrate.gpus_per_worker", "-0.5", ">= 0"),
    ("ttft.optim.epochs", "0", "> 0"),
    ("orchestrate.torch_threads", "0", ">= 1"),
    ("orchestrate.progress_interval_s", "0", "> 0"),
    ("inference.temperature", "-0.1", ">= 0"),
    ("inference.max_model_len", "0", ">= 1"),
    ("inference.gpu_memory_utilization", "1.5", "in (0, 1]"),
    ("inference.gpu_memory_utilization", "0", "in (0, 1]"),
    ("data.max_side", "31", "in [1, 30]"),
    ("ttft.optim.seed", "-1", "in [0, 4294967295]"),
    ("ttft.optim.steps", str(10**40), "out of range"),
    ("registry.root", "''", "storage root is empty"),
    ("registry.root", "http://example.com/reg", "unsupported storage URI"),
    ("registry.root", "s3://b/../x", "'..' path component"),
    ("registry.root", "s3://", "no bucket"),
    ("registry.s3_endpoint", "''", "empty"),
    ("registry.s3_endpoint", "ftp://h:1", "http or https"),
    ("registry.s3_endpoint", "http://h:99999", "out of range"),
    ("registry.s3_endpoint", "http://user:pw@h:1/x", "scheme://host"),
    ("out_dir", "''", "storage root is empty"),
    ("model.name", "s3://bucket/../etc", "'..' path component"),
    ("orchestrate.budget", "0", "positive duration"),
    ("orchestrate.budget", "soon", "cannot parse duration"),
    ("ttft.optim.lr", "[", "not valid YAML"),
]


@pytest.mark.parametrize(("key", "raw", "message"), BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_out_of_range_config_values_are_refused(key, raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        k, v = parse_override(f"{key}={raw}")
        load_config(None, {k: v})
    assert "\n" not in str(err.value)
    if "YAML" not in message:
        assert str(err.value).startswith(key)


def test_budgets_in_seconds_and_good_values_are_accepted(tmp_path):
    assert load_config(None, {"orchestrate.budget": 3600}).orchestrate.budget == 3600
    assert parse_duration("3600") == parse_duration("1h") == parse_duration(3600) == 3600.0
    (tmp_path / "c.yaml").write_text("orchestrate:\n  budget: 3600\n")
    assert parse_duration(load_config(tmp_path / "c.yaml").orchestrate.budget) == 3600
    cfg = load_config(
        None,
        {
            "ttft.lora.dropout": 0.0,
            "inference.gpu_memory_utilization": 1.0,
            "registry.root": "s3://bucket/prefix",
            "registry.s3_endpoint": "http://127.0.0.1:9000",
            "orchestrate.workers": None,
        },
    )
    assert cfg.registry.root == "s3://bucket/prefix"


@settings(max_examples=200, deadline=None)
@given(h=st.integers(0, 99), m=st.integers(0, 59), s=st.integers(0, 59))
def test_parse_duration_roundtrip(h, m, s):
    total = 3600 * h + 60 * m + s
    assert parse_duration(f"{h}h{m}m{s}s") == total == parse_duration(str(total)) == parse_duration(total)


# ---- 10: config files --------------------------------------------------------------------------------------
def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = "\n".join(lines) + "\n"
    assert len(bomb.encode()) < 600  # 9**9 = 387 million strings once expanded
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(path)
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_override("name={" + ", ".join(lines) + "}")
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(ConfigError, match="refers to itself"):
        safe_yaml("a: &a [*a]", "x")
    with pytest.raises(ConfigError, match="nested too deeply|not valid YAML"):
        safe_yaml(_deep(20_000), "x")
    (tmp_path / "huge.yaml").write_text("name: " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(tmp_path / "huge.yaml")
    assert safe_yaml("x: &x {lr: 1}\ny: *x", "ok") == {"x": {"lr": 1}, "y": {"lr": 1}}  # anchors still work


def test_unreadable_config_files_are_one_line_errors(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    (tmp_path / "confdir").mkdir()
    (tmp_path / "ext.yaml").write_text("extends: confdir\n")
    (tmp_path / "ext2.yaml").write_text("extends: [a, b]\n")
    (tmp_path / "syntax.yaml").write_text("name: [unclosed\n")
    cases = {
        "latin1.yaml": "not UTF-8",
        "confdir": "is a directory",
        "ext.yaml": "is a directory",
        "ext2.yaml": "extends: expected the file name",
        "syntax.yaml": "not valid YAML",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError, match=message) as err:
            load_config(tmp_path / name)
        assert "\n" not in str(err.value)
    for args in (["--config", str(tmp_path / "confdir")], ["--set", "ttft.optim.lr=[1,"], ["--budget", "-5"]):
        out = ttft("finetune", *args, "--task", "x")
        no_traceback(out)
        assert out.returncode == 2 and out.stdout.startswith("config error:"), out.stdout + out.stderr
