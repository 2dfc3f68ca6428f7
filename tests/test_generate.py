"""Generated canary tasks: rules vs numpy references, determinism, validity, non-degeneracy, splits."""

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttft import generate as G
from ttft.generate import (
    KIND_ORDER,
    ColorMap,
    Compose,
    Crop,
    D8Rule,
    FillLines,
    GenerationError,
    Gravity,
    Scale,
    Shift,
    demonstrates,
    generate_task,
    generate_tasks,
    generate_tasks_with_rules,
    rule_from_key,
    rule_instances,
    rule_of,
    split_of,
    write_tasks,
)
from ttft.tasks import SAFE_ID, Pair, load_tasks, validate_task

ATOMS = [r for split in G.SPLITS for r in rule_instances(split) if not isinstance(r, Compose)]


@pytest.fixture(scope="module")
def generated():
    """200 train + 50 eval (task, rule, split) triples, seed 0."""
    return [(t, r, "train") for t, r in generate_tasks_with_rules("train", 200, 0)] + [
        (t, r, "eval") for t, r in generate_tasks_with_rules("eval", 50, 0)
    ]


# ------------------------------------------------------------------------------ rules vs numpy references


def _ref_gravity(a: np.ndarray, direction: str) -> np.ndarray:
    turns = {"left": 0, "up": 1, "right": 2, "down": 3}[direction]  # np.rot90 turns: cells fall left
    b = np.rot90(a, turns)
    out = np.zeros_like(b)
    for i, row in enumerate(b):
        cells = row[row != 0]
        out[i, : len(cells)] = cells
    return np.rot90(out, -turns)


def _ref_shift(a: np.ndarray, r: Shift) -> np.ndarray:
    if r.wrap:
        return np.roll(a, (r.dy, r.dx), axis=(0, 1))
    h, w = a.shape
    padded = np.pad(a, ((abs(r.dy), abs(r.dy)), (abs(r.dx), abs(r.dx))))
    top, left = abs(r.dy) - r.dy, abs(r.dx) - r.dx
    return padded[top : top + h, left : left + w]


def _ref_crop(a: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(a)
    if not len(rows):
        return a
    return a[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _ref_fill(a: np.ndarray, r: FillLines) -> np.ndarray:
    b = a if r.axis == "rows" else a.T
    out = b.copy()
    lines = (b == r.color).any(axis=1)
    out[lines[:, None] & (b == 0)] = r.color
    return out if r.axis == "rows" else out.T


NUMPY_D8 = {
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "flip_h": np.fliplr,
    "flip_v": np.flipud,
    "transpose": lambda a: a.T,
    "antitranspose": lambda a: np.rot90(a, 2).T,
}


def reference(rule, grid):
    """Independent numpy implementation of every rule."""
    a = np.array(grid)
    if isinstance(rule, Compose):
        return reference(rule.second, reference(rule.first, grid))
    if isinstance(rule, D8Rule):
        out = NUMPY_D8[rule.transform](a)
    elif isinstance(rule, ColorMap):
        table = np.arange(10)
        for s, d in rule.mapping:
            table[s] = d
        out = table[a]
    elif isinstance(rule, Shift):
        out = _ref_shift(a, rule)
    elif isinstance(rule, Scale):
        out = np.kron(a, np.ones((rule.k, rule.k), dtype=a.dtype))
    elif isinstance(rule, Crop):
        out = _ref_crop(a)
    elif isinstance(rule, FillLines):
        out = _ref_fill(a, rule)
    elif isinstance(rule, Gravity):
        out = _ref_gravity(a, rule.direction)
    else:
        raise AssertionError(f"no reference for {rule!r}")
    return out.tolist()


@st.composite
def sparse_grids(draw, max_side: int = 8):
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rng = random.Random(draw(st.integers(0, 2**32)))
    density = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]))
    return [[rng.randint(1, 9) if rng.random() < density else 0 for _ in range(w)] for _ in range(h)]


@settings(max_examples=400, deadline=None)
@given(sparse_grids(), st.sampled_from(ATOMS), st.sampled_from(ATOMS))
def test_rules_match_numpy_reference(grid, a, b):
    assert a.apply(grid) == reference(a, grid)
    comp = Compose(a, b)
    assert comp.apply(grid) == reference(b, reference(a, grid))
    assert grid == np.array(grid).tolist()  # apply is pure: the input is untouched


@given(sparse_grids(), st.sampled_from([r for r in ATOMS if isinstance(r, Shift) and r.wrap]))
def test_wrap_shift_is_invertible(grid, rule):
    back = Shift(-rule.dx, -rule.dy, wrap=True)
    assert back.apply(rule.apply(grid)) == grid


@given(sparse_grids(), st.sampled_from([r for r in ATOMS if isinstance(r, Gravity | Crop)]))
def test_gravity_and_crop_are_idempotent_and_keep_colors(grid, rule):
    once = rule.apply(grid)
    assert rule.apply(once) == once
    count = lambda g: sorted(c for row in g for c in row if c)  # noqa: E731
    assert count(once) == count(grid)


def test_keys_round_trip_and_are_safe():
    for split in G.SPLITS:
        for rule in rule_instances(split):
            assert rule_from_key(rule.key) == rule
            assert rule.name == rule.key
            assert SAFE_ID.match(f"gen-{split}-00001-{rule.key}") and ".." not in rule.key


@pytest.mark.parametrize(
    "key", ["", "rot45", "identity", "cmap-11", "cmap-21-12", "shift-zero-r0", "a.b.c", "x.rot90"]
)
def test_bad_rule_keys_raise(key):
    with pytest.raises(ValueError, match="rule key"):
        rule_from_key(key)


def test_invalid_rule_parameters_raise():
    for make in (
        lambda: D8Rule("identity"),
        lambda: ColorMap(((1, 1),)),
        lambda: ColorMap(((1, 2), (1, 3))),
        lambda: ColorMap(((0, 2),)),
        lambda: Shift(0, 0, True),
        lambda: Scale(4),
        lambda: FillLines(0, "rows"),
        lambda: Gravity("sideways"),
        lambda: Compose(Compose(Crop(), Scale(2)), Scale(3)),
    ):
        with pytest.raises(ValueError):
            make()


# ------------------------------------------------------------------------------------ train/eval partition


def test_train_eval_rules_disjoint_and_cover_kinds():
    train, ev = rule_instances("train"), rule_instances("eval")
    train_keys, eval_keys = {r.key for r in train}, {r.key for r in ev}
    assert len(train_keys) == len(train) and len(eval_keys) == len(ev)
    assert not train_keys & eval_keys
    assert all(split_of(r) == "train" for r in train) and all(split_of(r) == "eval" for r in ev)
    # the partition does not depend on the seed: a seed only reorders
    assert sorted(r.key for r in rule_instances("train", seed=7)) == sorted(train_keys)
    assert [r.key for r in rule_instances("eval", seed=1)] != sorted(eval_keys)
    # every atom kind is in train; eval holds new parameters of the held-out kinds and new compositions
    assert {r.kind for r in train} == set(KIND_ORDER) | {"compose"}
    assert {r.kind for r in ev} == set(G.HELD_OUT_KINDS) | {"compose"}
    train_atoms = {r.key for r in train if r.kind != "compose"}
    novel_combos = [r for r in ev if r.kind == "compose" and {p.key for p in r.parts} <= train_atoms]
    assert novel_combos
    # every kind pair (family) but the held-out ones is trained on; those are eval only, with all instances
    families = {G.family_of(r) for r in train if r.kind == "compose"}
    assert len(families) == len(KIND_ORDER) * (len(KIND_ORDER) - 1) // 2 - len(G.HELD_OUT_FAMILIES)
    assert not families & set(G.HELD_OUT_FAMILIES)
    for fam in G.HELD_OUT_FAMILIES:
        a, b = fam.split(".")
        n_a, n_b = (sum(r.kind == k for r in train + ev) for k in (a, b))
        assert sum(G.family_of(r) == fam for r in ev) == n_a * n_b


def test_bad_split_raises():
    with pytest.raises(ValueError, match="split"):
        generate_tasks("test", 1, 0)
    with pytest.raises(ValueError, match="split"):
        rule_instances("validation")


# --------------------------------------------------------------------------------------- generated tasks


def test_deterministic_for_a_seed():
    a = [json.dumps(t.to_json()) + t.id for t in generate_tasks("train", 30, 0)]
    b = [json.dumps(t.to_json()) + t.id for t in generate_tasks("train", 30, 0)]
    c = [json.dumps(t.to_json()) + t.id for t in generate_tasks("train", 30, 1)]
    assert a == b
    assert a != c and not set(a) & set(c)
    assert [json.dumps(t.to_json()) + t.id for t in generate_tasks("train", 10, 0)] == a[:10]  # prefix


def test_max_side_caps_inputs_and_default_is_unchanged():
    small = generate_tasks_with_rules("eval", 25, 3, max_side=4)
    for task, rule in small:
        validate_task(task)
        inputs = [p.input for p in task.train] + list(task.test_inputs)
        assert all(G.MIN_SIDE <= len(g) <= 4 and len(g[0]) <= 4 for g in inputs)
        assert all(rule.apply(p.input) == p.output for p in task.train)
    assert generate_tasks("train", 5, 0, max_side=G.MAX_INPUT_SIDE) == generate_tasks("train", 5, 0)
    with pytest.raises(ValueError, match="max_side must be in 3..8"):
        generate_tasks("train", 1, 0, max_side=2)


def test_generated_tasks_valid_and_rule_maps_every_pair(generated):
    for task, rule, split in generated:
        validate_task(task)
        assert task.id.startswith(f"gen-{split}-") and SAFE_ID.match(task.id)
        assert rule_of(task.id) == rule and split_of(rule) == split
        assert len(task.train) in (3, 4) and len(task.test_inputs) == 1
        pairs = [(p.input, p.output) for p in task.train] + list(zip(task.test_inputs, task.test_outputs))
        for inp, out in pairs:
            assert G.MIN_SIDE <= len(inp) <= 8 and G.MIN_SIDE <= len(inp[0]) <= 8
            assert len(out) <= 30 and len(out[0]) <= 30
            assert rule.apply(inp) == out == reference(rule, inp)
    ids = [t.id for t, _, _ in generated]
    assert len(set(ids)) == len(ids)


def test_every_pair_demonstrates_its_rule(generated):
    for task, rule, _ in generated:
        inputs = [p.input for p in task.train] + list(task.test_inputs)
        outputs = [p.output for p in task.train] + list(task.test_outputs)
        assert len({json.dumps(g) for g in inputs}) == len(inputs), task.id
        for inp, out in zip(inputs, outputs):
            assert out != inp, task.id
            assert any(any(row) for row in out), task.id
            for part in rule.parts if isinstance(rule, Compose) else ():
                assert part.apply(inp) != out, task.id
        # the fate of every test color is shown: in a train input, and in a train output unless recolored
        colors = lambda grids: {c for g in grids for row in g for c in row if c}  # noqa: E731
        ins, outs = colors(p.input for p in task.train), colors(p.output for p in task.train)
        for c in colors(task.test_inputs):
            assert c in ins and (c in outs or c in rule.colors), (task.id, c)


def test_no_equally_simple_rival_fits_with_another_answer(generated):
    """Neighbors (one part swapped for another instance of its kind) that fit every train pair agree on
    the test output, so the demonstrations pin the answer down among equally simple rules."""
    n_rivals = 0
    for task, rule, _ in generated:
        for other in G.neighbors(rule):
            if all(other.apply(p.input) == p.output for p in task.train):
                n_rivals += 1
                assert other.apply(task.test_inputs[0]) == task.test_outputs[0], (task.id, other.key)
    assert n_rivals  # the check is not vacuous: some neighbors do fit the train pairs


def test_neighbors_are_same_shape_rules():
    rule = Compose(Shift(1, 0, wrap=False), ColorMap(((1, 2),)))
    keys = {r.key for r in G.neighbors(rule)}
    assert "shift-wrap-r1.cmap-12" in keys and "shift-zero-r1.cmap-12-21" in keys
    assert rule.key not in keys and all(len(r.parts) == 2 for r in G.neighbors(rule))
    assert {r.key for r in G.neighbors(D8Rule("rot90"))} == {
        t for t in G.D8 if t not in ("identity", "rot90")
    }


def test_generated_mix_covers_kinds(generated):
    train_rules = [r for _, r, split in generated if split == "train"]
    assert {p.kind for r in train_rules for p in r.parts} == set(KIND_ORDER)
    assert {r.kind for r in train_rules} == set(KIND_ORDER) | {"compose"}
    eval_rules = [r for _, r, split in generated if split == "eval"]
    assert any(r.kind == "compose" for r in eval_rules) and any(r.kind != "compose" for r in eval_rules)


def test_generate_task_explicit_counts():
    rule = Compose(Gravity("down"), ColorMap(((1, 2), (2, 1))))
    task = generate_task(rule, random.Random(3), n_train=4, n_test=2, task_id="custom-1")
    assert task.id == "custom-1" and len(task.train) == 4 and len(task.test_outputs) == 2
    for p in task.train:
        assert demonstrates(rule, p.input, p.output)


def test_rule_that_never_demonstrates_raises():
    identity = Compose(D8Rule("rot90"), D8Rule("rot270"))
    with pytest.raises(GenerationError, match="rot90.rot270"):
        generate_task(identity, random.Random(0))
    with pytest.raises(GenerationError):  # everything shifts out of the grid: output all 0
        generate_task(Shift(20, 0, wrap=False), random.Random(0))


def test_rule_of_rejects_foreign_ids():
    with pytest.raises(ValueError, match="not a generated task id"):
        rule_of("007bbfb7")
    with pytest.raises(ValueError, match="rule key"):
        rule_of("gen-train-00001-rot45")


def test_write_load_round_trip(tmp_path, generated):
    tasks = [t for t, _, _ in generated[:20]] + [t for t, _, split in generated if split == "eval"][:5]
    paths = write_tasks(tasks, tmp_path / "a")
    write_tasks(generate_tasks("train", 20, 0) + generate_tasks("eval", 5, 0), tmp_path / "b")
    for p in paths:  # byte-identical when regenerated with the same seed
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
    loaded = load_tasks(tmp_path / "a")
    assert not loaded.errors
    assert [t.id for t in loaded.tasks] == sorted(t.id for t in tasks)
    by_id = {t.id: t for t in tasks}
    for t in loaded.tasks:
        assert t.to_json() == by_id[t.id].to_json()
        assert rule_of(t.id).apply(t.train[0].input) == t.train[0].output
    with pytest.raises(ValueError, match="duplicate"):
        write_tasks(tasks[:1] * 2, tmp_path / "c")


def test_cli_writes_tasks(tmp_path, capsys):
    G.main(["--split", "eval", "--n", "3", "--seed", "5", "--out", str(tmp_path)])
    assert "wrote 3 eval tasks" in capsys.readouterr().out
    assert len(load_tasks(tmp_path).tasks) == 3


# ------------------------------------------------------------------------------------------ canary family


def test_canary_rules_are_the_colour_map_atoms_split_by_key_hash():
    train, held = G.canary_rules("train"), G.canary_rules("eval")
    everything = train + held
    assert len(everything) == len(set(everything)) == 36 + 72  # swaps a<->b, substitutions a->b over 1..9
    assert all(isinstance(r, ColorMap) for r in everything)
    assert sum(len(r.mapping) == 2 for r in everything) == 36
    assert all(split_of(r) == "train" for r in train) and all(split_of(r) == "eval" for r in held)
    assert 0.15 < len(held) / len(everything) < 0.35  # one in four by key hash
    with pytest.raises(ValueError, match="split must be one of"):
        G.canary_rules("test")


def _colors(grid):
    return {c for row in grid for c in row if c}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(G.SPLITS), st.integers(0, 10**6), st.integers(1, 10**6))
def test_canary_tasks_follow_the_recipe(split, seed, index):
    task, rule = G.generated_task(split, seed, index, family="canary")
    assert task.id == f"gen-canary-{split}-{index:05d}-{rule.key}" and rule_of(task.id) == rule
    assert split_of(rule) == split
    validate_task(task)
    assert len(task.train) == G.CANARY_TRAIN_PAIRS and len(task.test_inputs) == 1
    pairs = [*task.train, Pair(task.test_inputs[0], task.test_outputs[0])]
    side = G.CANARY_SIDE
    inputs = [p.input for p in pairs]
    assert len({json.dumps(g) for g in inputs}) == len(inputs)  # distinct inputs
    palette = set().union(*map(_colors, inputs))
    assert len(palette) <= max(G.CANARY_PALETTE_SIZES)
    for p in pairs:
        assert len(p.input) == side and all(len(row) == side for row in p.input)
        assert rule.colors[0] in _colors(p.input)  # the rule's first source colour: output != input
        assert p.output == rule.apply(p.input) == reference(rule, p.input) and p.output != p.input
    assert _colors(task.test_inputs[0]) <= set().union(*(_colors(p.input) for p in task.train))
    assert G.canary_rival(rule, task.train, task.test_inputs) is None


def test_canary_rival_finds_an_ambiguous_draw():
    swap, sub = ColorMap(((1, 2), (2, 1))), ColorMap(((1, 2),))
    train = [Pair([[1, 0, 0]] * 3, [[2, 0, 0]] * 3)]  # colour 2 never shown: 1->2 and 1<->2 both fit
    assert G.canary_rival(sub, train, [[[2, 1, 0]] * 3]) == swap
    assert G.canary_rival(sub, train, [[[1, 1, 0]] * 3]) is None  # same answer either way


def test_canary_tasks_are_deterministic_and_prefix_stable():
    a = generate_tasks("eval", 12, 7, family="canary")
    assert a == generate_tasks("eval", 12, 7, family="canary")
    assert generate_tasks("eval", 5, 7, family="canary") == a[:5]
    assert a != generate_tasks("eval", 12, 8, family="canary")
    rules = [rule_of(t.id) for t in generate_tasks("train", 300, 0, family="canary")]
    assert len(set(rules)) > 60  # the draw covers the training maps


def test_canary_family_is_checked():
    with pytest.raises(ValueError, match="family must be one of"):
        generate_tasks("train", 1, 0, family="nope")
    with pytest.raises(ValueError, match="canary rules are colour maps"):
        G.generate_canary_task(Crop(), random.Random(0))
