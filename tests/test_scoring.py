"""Scoring: the pass@2 rule with hand-computed values, submission files and their validation."""

import json

import pyarrow.parquet as pq
import pytest

from ttft.scoring import (
    read_submission,
    score_submission,
    solutions_of,
    submission_from_attempts,
    validate_submission,
    write_parquet,
    write_submission,
)
from ttft.tasks import Pair, Task

A, B, C, D, E = [[1]], [[2, 2]], [[3], [3]], [[4, 0], [0, 4]], [[5]]
WRONG = [[9]]


def _task(tid, test_outputs):
    return Task(tid, (Pair([[0]], [[0]]),), tuple([[0]] for _ in test_outputs), tuple(test_outputs))


TASKS = [_task("t1", [A]), _task("t2", [B, C]), _task("t3", [D]), _task("t4", [E, A, B])]
SOLUTIONS = solutions_of(TASKS)


def _entry(a1, a2):
    return {"attempt_1": a1, "attempt_2": a2}


def test_golden_scores():
    sub = {
        "t1": [_entry(A, WRONG)],  # attempt_1 solves: 1.0
        "t2": [_entry(WRONG, B), _entry(WRONG, WRONG)],  # attempt_2 solves 1 of 2: 0.5
        # t3 missing: 0.0
        "t4": [_entry(E, E), _entry(WRONG, A), _entry(B, WRONG)],  # 3 of 3: 1.0
        "extra": [_entry(A, A)],  # not in the solutions: ignored
    }
    rep = score_submission(sub, SOLUTIONS)
    assert rep.task_scores == {"t1": 1.0, "t2": 0.5, "t3": 0.0, "t4": 1.0}
    assert rep.total == 2.5
    assert rep.mean_score == 2.5 / 4
    assert rep.n_tasks == 4
    t = rep.table.to_pylist()
    assert [(r["task_id"], r["test_index"], r["solved"]) for r in t] == [
        ("t1", 0, True),
        ("t2", 0, True),
        ("t2", 1, False),
        ("t3", 0, False),
        ("t4", 0, True),
        ("t4", 1, True),
        ("t4", 2, True),
    ]
    assert t[1]["attempt_1"] == "[[9]]" and t[1]["attempt_2"] == "[[2,2]]" and t[1]["expected"] == "[[2,2]]"
    assert t[3]["attempt_1"] is None and t[3]["expected"] == json.dumps(D, separators=(",", ":"))
    assert rep.table.column_names == ["task_id", "test_index", "solved", "attempt_1", "attempt_2", "expected"]


def test_only_two_attempts_and_exact_match():
    sols = {"t": [[[1, 1]]]}
    assert score_submission({"t": [{"attempt_1": [[1]], "attempt_2": [[1, 1, 0]]}]}, sols).total == 0.0
    assert score_submission({"t": [{"attempt_1": [[1]], "attempt_3": [[1, 1]]}]}, sols).total == 0.0
    assert (
        score_submission({"t": [{"attempt_1": [[True, True]], "attempt_2": [[1.0, 1.0]]}]}, sols).total == 0.0
    )
    assert score_submission({"t": [{"attempt_1": [[1, 1]]}]}, sols).total == 1.0
    # malformed entries count as unsolved, never raise
    for bad in ({"t": "x"}, {"t": [None]}, {"t": [{"attempt_1": {1, 2}}]}, [], None):
        assert score_submission(bad, sols).mean_score == 0.0


def test_empty_solutions():
    rep = score_submission({}, {})
    assert (rep.mean_score, rep.total, rep.n_tasks, rep.table.num_rows) == (0.0, 0.0, 0, 0)


def test_submission_from_attempts_pads():
    sub = submission_from_attempts({"t2": [[B, C], [C]], "t1": [[]], "t3": [[D, E, A]]})
    assert list(sub) == ["t1", "t2", "t3"]
    assert sub["t1"] == [_entry([[0]], [[0]])]
    assert sub["t2"] == [_entry(B, C), _entry(C, C)]
    assert sub["t3"] == [_entry(D, E)]


def test_write_read_round_trip_and_parquet(tmp_path):
    sub = submission_from_attempts({"t1": [[A]], "t2": [[B], [WRONG, C]]})
    path = tmp_path / "out" / "submission.json"
    write_submission(path, sub)
    assert read_submission(path) == sub
    assert [p.name for p in path.parent.iterdir()] == ["submission.json"]
    rep = score_submission(read_submission(path), SOLUTIONS)
    assert rep.task_scores == {"t1": 1.0, "t2": 1.0, "t3": 0.0, "t4": 0.0}
    write_parquet(rep, tmp_path / "scores.parquet")
    assert pq.read_table(tmp_path / "scores.parquet").equals(rep.table)


def test_read_submission_bad_json(tmp_path):
    path = tmp_path / "sub.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="sub.json: not valid JSON"):
        read_submission(path)


def test_validate_submission_problems():
    assert (
        validate_submission(
            submission_from_attempts({t.id: [[o] for o in t.test_outputs] for t in TASKS}), TASKS
        )
        == []
    )
    sub = {
        "t1": [_entry(A, [[1, 2], [3]])],  # ragged attempt_2
        "t2": [_entry(B, B)],  # 1 of 2 test outputs
        # t3 missing
        "t4": [_entry(E, E), {"attempt_1": A}, _entry([[10]], [[True]])],
        "zz": [],
    }
    assert validate_submission(sub, TASKS) == [
        "1 of 4 task(s) missing from the submission (scored 0): t3",
        "task t1: test[0].attempt_2[1]: ragged grid: row has 1 cells, row 0 has 2",
        "task t2: expected 2 test output(s), got 1",
        "task t4: test[1]: missing attempt_2",
        "task t4: test[2].attempt_1[0][0]: color 10 is not in 0..9",
        "task t4: test[2].attempt_2[0][0]: color must be an int 0..9, got bool True",
        "1 task(s) not in the task set (not scored): zz",
    ]
    assert validate_submission({"t1": {"attempt_1": A}}, TASKS[:1]) == [
        "task t1: expected a list of 1 prediction(s), got dict"
    ]
    assert validate_submission({"t1": [[A, A]]}, TASKS[:1]) == [
        "task t1: test[0]: expected an object with attempt_1 and attempt_2, got list"
    ]
    assert validate_submission({"t1": [_entry([], [[1] * 31])]}, TASKS[:1]) == [
        "task t1: test[0].attempt_1: grid has no rows",
        "task t1: test[0].attempt_2[0]: row has 31 cells, more than 30",
    ]
    assert validate_submission([1, 2], TASKS) == [
        "submission: expected a JSON object {task_id: [...]}, got list"
    ]


def test_solutions_of_needs_outputs():
    assert solutions_of(TASKS[:1]) == {"t1": [A]}
    with pytest.raises(ValueError, match="task u: no known test outputs"):
        solutions_of([Task("u", (Pair([[0]], [[0]]),), ([[0]],))])
