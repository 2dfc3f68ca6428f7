"""ARC pass@2 scoring and Kaggle submission files.

Official rule: a test output is solved if attempt_1 or attempt_2 equals it exactly; a task scores the
fraction of its test outputs solved; a dataset scores the mean (and sum) of its task scores.
Submission format (Kaggle): {task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}, one entry per
test input.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ttft.tasks import Grid, Task, grid_problem

Submission = dict[str, list[dict[str, Grid]]]

ATTEMPTS = ("attempt_1", "attempt_2")

SCORE_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("test_index", pa.int32()),
        ("solved", pa.bool_()),
        ("attempt_1", pa.string()),
        ("attempt_2", pa.string()),
        ("expected", pa.string()),
    ]
)


def submission_from_attempts(attempts: dict[str, list[list[Grid]]]) -> Submission:
    """{task_id: [[grid, ...] per test input]} -> Submission.

    Uses the first two grids per test input; a missing attempt_2 repeats attempt_1; no grid at all -> [[0]].
    """
    sub: Submission = {}
    for task_id in sorted(attempts):
        entries = []
        for grids in attempts[task_id]:
            first = grids[0] if len(grids) > 0 else [[0]]
            second = grids[1] if len(grids) > 1 else first
            entries.append({"attempt_1": [list(r) for r in first], "attempt_2": [list(r) for r in second]})
        sub[task_id] = entries
    return sub


def read_submission(path: str | Path) -> Submission:
    """Read a submission JSON file (not validated: see validate_submission); raises ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def write_submission(path: str | Path, sub: Submission) -> None:
    """Write a submission JSON file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(sub, f, separators=(",", ":"))
    os.replace(tmp, path)


def validate_submission(sub: object, tasks: Sequence[Task]) -> list[str]:
    """Problems of a submission for these tasks, as readable one-line strings (empty list: valid).

    Reports missing tasks, unknown tasks, wrong numbers of test outputs, missing attempts, malformed grids.
    """
    if not isinstance(sub, dict):
        return [f"submission: expected a JSON object {{task_id: [...]}}, got {type(sub).__name__}"]
    problems: list[str] = []
    known = {t.id for t in tasks}
    for task in sorted(tasks, key=lambda t: t.id):
        tid = task.id
        if tid not in sub:
            problems.append(f"task {tid}: missing from the submission")
            continue
        entries = sub[tid]
        n = len(task.test_inputs)
        if not isinstance(entries, list):
            problems.append(f"task {tid}: expected a list of {n} prediction(s), got {type(entries).__name__}")
            continue
        if len(entries) != n:
            problems.append(f"task {tid}: expected {n} test output(s), got {len(entries)}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                problems.append(
                    f"task {tid}: test[{i}]: expected an object with attempt_1 and attempt_2, "
                    f"got {type(entry).__name__}"
                )
                continue
            for name in ATTEMPTS:
                if name not in entry:
                    problems.append(f"task {tid}: test[{i}]: missing {name}")
                    continue
                problem = grid_problem(entry[name])
                if problem is not None:
                    suffix, reason = problem
                    problems.append(f"task {tid}: test[{i}].{name}{suffix}: {reason}")
    for tid in sorted(k for k in sub if k not in known):
        problems.append(f"task {tid}: not in the task set")
    return problems


def _to_json(x: object) -> str | None:
    if x is None:
        return None
    try:
        return json.dumps(x, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


@dataclass
class ScoreReport:
    """Scores of a submission: one table row per (task, test output), task scores, mean and total."""

    table: pa.Table
    task_scores: dict[str, float]
    mean_score: float
    total: float
    n_tasks: int


def score_submission(sub: Submission, solutions: dict[str, list[Grid]]) -> ScoreReport:
    """Score a submission against {task_id: [expected grid per test input]} with the pass@2 rule.

    Tasks missing from the submission, and malformed entries, count as unsolved; tasks of the
    submission that have no solution are ignored. Grids compare exactly (type-strict: true != 1).
    """
    rows: dict[str, list] = {name: [] for name in SCORE_SCHEMA.names}
    task_scores: dict[str, float] = {}
    sub = sub if isinstance(sub, dict) else {}
    for tid in sorted(solutions):
        expected_list = solutions[tid]
        entries = sub.get(tid)
        entries = entries if isinstance(entries, list) else []
        n_solved = 0
        for i, expected in enumerate(expected_list):
            entry = entries[i] if i < len(entries) and isinstance(entries[i], dict) else {}
            exp = _to_json(expected)
            got = [_to_json(entry.get(name)) for name in ATTEMPTS]
            solved = exp is not None and any(g == exp for g in got)
            n_solved += solved
            for name, value in zip(SCORE_SCHEMA.names, (tid, i, solved, got[0], got[1], exp)):
                rows[name].append(value)
        task_scores[tid] = n_solved / len(expected_list) if expected_list else 0.0
    total = math.fsum(task_scores.values())
    n = len(task_scores)
    return ScoreReport(
        table=pa.table(rows, schema=SCORE_SCHEMA),
        task_scores=task_scores,
        mean_score=total / n if n else 0.0,
        total=total,
        n_tasks=n,
    )


def write_parquet(report: ScoreReport | pa.Table, path: str | Path) -> None:
    """Write a score table (or a ScoreReport's table) as Parquet."""
    table = report.table if isinstance(report, ScoreReport) else report
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))


def solutions_of(tasks: Sequence[Task]) -> dict[str, list[Grid]]:
    """{task_id: test outputs}; raises ValueError naming the first task without known test outputs."""
    out: dict[str, list[Grid]] = {}
    for task in tasks:
        if task.test_outputs is None:
            raise ValueError(f"task {task.id}: no known test outputs to score against")
        out[task.id] = [[list(r) for r in g] for g in task.test_outputs]
    return out


def known_solutions(tasks: Sequence[Task]) -> dict[str, list[Grid]]:
    """{task_id: test outputs} of the tasks whose test outputs are known; the others are left out (a Kaggle
    challenges file without solutions gives {}: nothing to score)."""
    return solutions_of([t for t in tasks if t.test_outputs is not None])
