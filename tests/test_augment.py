"""Augmentations: invertibility, key round-trips, the D8 group, task consistency."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttft.augment import (
    D8,
    IDENTITY,
    Augmentation,
    apply_d8,
    compose_d8,
    invert_d8,
    random_color_map,
    sample_augmentations,
)
from ttft.tasks import Pair, Task


@st.composite
def grids(draw, max_side: int = 30):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    n_colors = draw(st.integers(1, 10))
    rng = random.Random(draw(st.integers(0, 2**32)))
    return [[rng.randrange(n_colors) for _ in range(w)] for _ in range(h)]


color_maps = st.permutations(list(range(10))).map(tuple)


@st.composite
def augmentations(draw, n_train: int | None = None):
    d8 = draw(st.sampled_from(D8))
    colors = draw(st.none() | color_maps)
    n = draw(st.integers(0, 6)) if n_train is None else n_train
    order = draw(st.none() | st.permutations(list(range(n))).map(tuple))
    return Augmentation(d8, colors, order)


NUMPY_D8 = {
    "identity": lambda a: a,
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "flip_h": np.fliplr,
    "flip_v": np.flipud,
    "transpose": lambda a: a.T,
    "antitranspose": lambda a: np.rot90(a, 2).T,
}


@given(grids(), augmentations())
def test_invert_apply_is_identity(grid, aug):
    out = aug.apply_grid(grid)
    assert aug.invert_grid(out) == grid
    assert aug.apply_grid(aug.invert_grid(grid)) == grid


@given(grids(), augmentations())
def test_key_round_trips(grid, aug):
    back = Augmentation.from_key(aug.key)
    assert back == aug
    assert back.key == aug.key
    assert back.apply_grid(grid) == aug.apply_grid(grid)


@given(grids(max_side=8), st.sampled_from(D8))
def test_d8_matches_numpy(grid, name):
    expected = NUMPY_D8[name](np.array(grid)).tolist()
    assert apply_d8(name, grid) == expected


@given(grids(), augmentations())
def test_outputs_are_plain_int_lists(grid, aug):
    out = aug.apply_grid(grid)
    assert type(out) is list and all(type(row) is list for row in out)
    assert all(type(c) is int for row in out for c in row)
    assert out is not grid and all(a is not b for a, b in zip(out, grid))


@given(grids(max_side=12))
def test_d8_group_closes(grid):
    images = {name: apply_d8(name, grid) for name in D8}
    for a in D8:
        for b in D8:
            c = compose_d8(a, b)
            assert c in D8
            assert apply_d8(b, apply_d8(a, grid)) == apply_d8(c, grid)
        assert compose_d8(a, invert_d8(a)) == "identity"
        assert compose_d8("identity", a) == a == compose_d8(a, "identity")
    assert len(images) == 8


def test_d8_table_is_a_group():
    # each row and column of the Cayley table is a permutation of D8 (Latin square)
    for a in D8:
        assert sorted(compose_d8(a, b) for b in D8) == sorted(D8)
        assert sorted(compose_d8(b, a) for b in D8) == sorted(D8)
    assert compose_d8("rot90", "rot90") == "rot180"
    assert compose_d8("rot90", "rot270") == "identity"
    assert compose_d8("flip_h", "flip_v") == "rot180"
    assert compose_d8("transpose", "flip_h") == "rot270"  # transpose then mirror left-right: clockwise


def test_eight_distinct_transforms():
    g = [[0, 1, 2], [3, 4, 5]]
    assert len({repr(apply_d8(n, g)) for n in D8}) == 8
    assert apply_d8("rot90", g) == [[2, 5], [1, 4], [0, 3]]  # counter-clockwise, as np.rot90
    assert apply_d8("antitranspose", g) == [[5, 2], [4, 1], [3, 0]]


def test_key_examples():
    assert IDENTITY.key == "identity"
    aug = Augmentation("rot90", (0, 3, 1, 2, 4, 5, 6, 7, 8, 9), (1, 0, 2))
    assert aug.key == "rot90|c=0312456789|o=1.0.2"
    assert Augmentation.from_key("rot90|c=0312456789|o=1.0.2") == aug
    big = Augmentation(order=tuple(range(11, -1, -1)))
    assert big.key == "identity|o=11.10.9.8.7.6.5.4.3.2.1.0"
    assert Augmentation.from_key(big.key) == big


def test_identity_maps_normalize():
    aug = Augmentation("flip_h", tuple(range(10)), (0, 1, 2))
    assert aug == Augmentation("flip_h") and aug.key == "flip_h"
    assert Augmentation(colors=[0, 2, 1, 3, 4, 5, 6, 7, 8, 9]).colors == (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)
    assert Augmentation(colors=tuple(np.arange(10)[::-1])).colors == tuple(range(9, -1, -1))


@pytest.mark.parametrize(
    "key",
    ["", "rot45", "rot90|c=012", "rot90|c=0123456788", "identity|o=0.0", "identity|o=1.x", "rot90|z=1",
     "rot90|c=0123456789|c=0123456789", "identity|o=", "flip_h|"],
)  # fmt: skip
def test_bad_keys_raise(key):
    with pytest.raises(ValueError, match="invalid augmentation key"):
        Augmentation.from_key(key)


def test_bad_fields_raise():
    with pytest.raises(ValueError, match="unknown D8"):
        Augmentation("rotate")
    with pytest.raises(ValueError, match="colors"):
        Augmentation(colors=(0, 1, 2))
    with pytest.raises(ValueError, match="order"):
        Augmentation(order=(0, 2))


def _task(n_train=3, with_outputs=True):
    rng = random.Random(n_train)

    def g(h, w):
        return [[rng.randrange(10) for _ in range(w)] for _ in range(h)]

    train = tuple(Pair(g(2 + i, 3), g(3, 2 + i)) for i in range(n_train))
    outs = (g(4, 5), g(1, 1)) if with_outputs else None
    return Task("t1", train, (g(5, 4), g(2, 2)), outs)


@given(augmentations(n_train=3))
def test_apply_task_is_consistent(aug):
    task = _task(3)
    out = aug.apply_task(task)
    order = aug.order or (0, 1, 2)
    assert out.id == task.id
    assert len(out.train) == 3
    for i, pair in enumerate(out.train):
        old = task.train[order[i]]
        assert pair.input == aug.apply_grid(old.input)
        assert pair.output == aug.apply_grid(old.output)
    assert out.test_inputs == tuple(aug.apply_grid(g) for g in task.test_inputs)
    assert out.test_outputs == tuple(aug.apply_grid(g) for g in task.test_outputs)
    # the same color map everywhere: a color that appears anywhere maps to the same new color
    if aug.colors is not None:
        reordered = Task(task.id, tuple(task.train[i] for i in order), task.test_inputs, task.test_outputs)
        for old_g, new_g in zip(reordered.grids(), out.grids()):
            assert sorted({aug.colors[c] for row in old_g for c in row}) == sorted(
                {c for r in new_g for c in r}
            )


def test_apply_task_concrete():
    task = Task("x", (Pair([[1, 2]], [[2]]), Pair([[3, 0]], [[0]])), ([[1, 0]],), ([[1]],))
    swap = (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)
    out = Augmentation("transpose", swap, (1, 0)).apply_task(task)
    assert out.train == (Pair([[3], [0]], [[0]]), Pair([[2], [1]], [[1]]))
    assert out.test_inputs == ([[2], [0]],)
    assert out.test_outputs == ([[2]],)
    assert Augmentation("rot90").apply_task(_task(2, with_outputs=False)).test_outputs is None


def test_apply_task_wrong_order_length():
    with pytest.raises(ValueError, match="task t1: order"):
        Augmentation(order=(1, 0)).apply_task(_task(3))


def test_random_color_map():
    rng = random.Random(0)
    for _ in range(50):
        cmap = random_color_map(rng)
        assert cmap[0] == 0 and sorted(cmap) == list(range(10))
    moved = {random_color_map(rng, keep_zero=False)[0] for _ in range(200)}
    assert len(moved) > 1


def test_sample_augmentations_deterministic_and_balanced():
    a = sample_augmentations(random.Random(7), 16)
    b = sample_augmentations(random.Random(7), 16)
    assert a == b
    assert sorted(x.d8 for x in a) == sorted(D8 * 2)  # every transform twice
    assert all(x.colors is not None and x.colors[0] == 0 for x in a)
    assert sample_augmentations(random.Random(8), 16) != a


def test_sample_augmentations_options():
    rng = random.Random(1)
    geo = sample_augmentations(rng, 5, d8=("identity", "rot90"), color=False)
    assert {x.d8 for x in geo} == {"identity", "rot90"} and all(x.colors is None for x in geo)

    pres = sample_augmentations(rng, 10, preserve_colors=True)
    assert [x.colors is None for x in pres] == [False, True] * 5

    free = sample_augmentations(rng, 40, keep_zero=False)
    assert any(x.colors[0] != 0 for x in free)

    orders = sample_augmentations(rng, 20, shuffle_order=True, n_train=4)
    assert all(x.order is None or sorted(x.order) == [0, 1, 2, 3] for x in orders)
    assert any(x.order is not None for x in orders)
    with pytest.raises(ValueError):
        sample_augmentations(rng, 3, shuffle_order=True)
    with pytest.raises(ValueError):
        sample_augmentations(rng, 3, d8=("rot45",))


@settings(max_examples=30)
@given(st.integers(0, 2**32), st.integers(0, 40))
def test_sampled_keys_round_trip(seed, n):
    for aug in sample_augmentations(random.Random(seed), n, shuffle_order=True, n_train=5):
        assert Augmentation.from_key(aug.key) == aug
