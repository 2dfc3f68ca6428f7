"""Invertible augmentations of ARC grids and tasks: D8 geometry, color permutations, train-pair order.

An Augmentation applies its D8 transform, then its color map; ``invert_grid`` undoes both. Its ``key`` is a
stable string ("identity", "rot90|c=0312456789|o=1.0.2") that ``Augmentation.from_key`` parses back, so
predictions made under an augmentation can be mapped back to the original space later (voting).
Geometry follows numpy: rot90 is ``np.rot90(g, 1)`` (counter-clockwise), flip_h mirrors left-right,
flip_v mirrors top-bottom, transpose swaps rows and columns, antitranspose mirrors on the anti-diagonal.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ttft.tasks import Grid, Pair, Task

D8 = ("identity", "rot90", "rot180", "rot270", "flip_h", "flip_v", "transpose", "antitranspose")

_IDENTITY_COLORS = tuple(range(10))


def _transpose(g: Grid) -> Grid:
    return [list(col) for col in zip(*g)]


_D8_FUNCS: dict[str, Callable[[Grid], Grid]] = {
    "identity": lambda g: [list(row) for row in g],
    "rot90": lambda g: _transpose(g)[::-1],
    "rot180": lambda g: [row[::-1] for row in g[::-1]],
    "rot270": lambda g: [col[::-1] for col in _transpose(g)],
    "flip_h": lambda g: [row[::-1] for row in g],
    "flip_v": lambda g: [list(row) for row in g[::-1]],
    "transpose": _transpose,
    "antitranspose": lambda g: [col[::-1] for col in _transpose(g)][::-1],
}

_D8_INVERSE = {name: name for name in D8} | {"rot90": "rot270", "rot270": "rot90"}


def apply_d8(name: str, grid: Grid) -> Grid:
    """Apply the D8 transform ``name`` to a grid (returns a new grid)."""
    if name not in _D8_FUNCS:
        raise ValueError(f"unknown D8 transform {name!r}; expected one of {D8}")
    return _D8_FUNCS[name](grid)


def invert_d8(name: str) -> str:
    """Name of the inverse D8 transform."""
    if name not in _D8_INVERSE:
        raise ValueError(f"unknown D8 transform {name!r}; expected one of {D8}")
    return _D8_INVERSE[name]


def _build_compose_table() -> dict[tuple[str, str], str]:
    probe = [[0, 1, 2], [3, 4, 5]]  # all cells distinct and not square: identifies each transform
    images = {name: apply_d8(name, probe) for name in D8}
    by_image = {repr(img): name for name, img in images.items()}
    return {(a, b): by_image[repr(apply_d8(b, images[a]))] for a in D8 for b in D8}


_COMPOSE = _build_compose_table()


def compose_d8(a: str, b: str) -> str:
    """The D8 transform equal to applying ``a`` first, then ``b``."""
    for name in (a, b):
        if name not in _D8_FUNCS:
            raise ValueError(f"unknown D8 transform {name!r}; expected one of {D8}")
    return _COMPOSE[(a, b)]


def _as_permutation(values: Sequence[int], n: int | None, what: str) -> tuple[int, ...]:
    perm = tuple(values)
    if any(type(v) is not int for v in perm):
        perm = tuple(int(v) for v in perm)  # numpy ints and the like -> plain ints
    size = len(perm) if n is None else n
    if sorted(perm) != list(range(size)) or len(perm) != size:
        raise ValueError(f"{what} must be a permutation of 0..{size - 1}, got {values!r}")
    return perm


@dataclass(frozen=True)
class Augmentation:
    """D8 transform + color permutation + train-pair order.

    colors: new color of c is colors[c] (a permutation of 0..9); order: new i-th train pair = old order[i].
    Identity color maps and orders are stored as None, so equal effects have equal keys.
    """

    d8: str = "identity"
    colors: tuple[int, ...] | None = None
    order: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.d8 not in _D8_FUNCS:
            raise ValueError(f"unknown D8 transform {self.d8!r}; expected one of {D8}")
        if self.colors is not None:
            colors = _as_permutation(self.colors, 10, "colors")
            object.__setattr__(self, "colors", None if colors == _IDENTITY_COLORS else colors)
        if self.order is not None:
            order = _as_permutation(self.order, None, "order")
            object.__setattr__(self, "order", None if order == tuple(range(len(order))) else order)

    @property
    def key(self) -> str:
        """Stable string form, e.g. "identity", "rot90|c=0312456789|o=1.0.2"."""
        parts = [self.d8]
        if self.colors is not None:
            parts.append("c=" + "".join(str(c) for c in self.colors))
        if self.order is not None:
            parts.append("o=" + ".".join(str(i) for i in self.order))
        return "|".join(parts)

    @classmethod
    def from_key(cls, key: str) -> Augmentation:
        """Parse a key made by ``Augmentation.key``; raises ValueError on a malformed key."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"invalid augmentation key {key!r}")
        d8, *rest = key.split("|")
        colors = order = None
        try:
            for part in rest:
                if part.startswith("c=") and colors is None:
                    digits = part[2:]
                    if len(digits) != 10 or not digits.isdigit():
                        raise ValueError("color map must be 10 digits")
                    colors = tuple(int(ch) for ch in digits)
                elif part.startswith("o=") and order is None:
                    order = tuple(int(i) for i in part[2:].split("."))
                else:
                    raise ValueError(f"unexpected part {part!r}")
            return cls(d8, colors, order)
        except ValueError as e:
            raise ValueError(f"invalid augmentation key {key!r}: {e}") from None

    def apply_grid(self, grid: Grid) -> Grid:
        """Transform a grid: D8 geometry, then colors."""
        out = _D8_FUNCS[self.d8](grid)
        if self.colors is not None:
            cmap = self.colors
            out = [[cmap[c] for c in row] for row in out]
        return out

    def invert_grid(self, grid: Grid) -> Grid:
        """Undo ``apply_grid``: inverse colors, then inverse geometry."""
        out = grid
        if self.colors is not None:
            inv = [0] * 10
            for c, new in enumerate(self.colors):
                inv[new] = c
            out = [[inv[c] for c in row] for row in out]
        return _D8_FUNCS[_D8_INVERSE[self.d8]](out)

    def apply_task(self, task: Task) -> Task:
        """Transform every grid of the task (train, test inputs, known test outputs); reorder train pairs."""
        train = task.train
        if self.order is not None:
            if len(self.order) != len(train):
                raise ValueError(
                    f"task {task.id}: order {self.order} is for {len(self.order)} train pairs, "
                    f"the task has {len(train)}"
                )
            train = tuple(train[i] for i in self.order)
        return Task(
            id=task.id,
            train=tuple(Pair(self.apply_grid(p.input), self.apply_grid(p.output)) for p in train),
            test_inputs=tuple(self.apply_grid(g) for g in task.test_inputs),
            test_outputs=None
            if task.test_outputs is None
            else tuple(self.apply_grid(g) for g in task.test_outputs),
        )


IDENTITY = Augmentation()


def random_color_map(rng: random.Random, *, keep_zero: bool = True) -> tuple[int, ...]:
    """A random permutation of the 10 colors; with keep_zero, color 0 (background) stays 0."""
    if keep_zero:
        rest = list(range(1, 10))
        rng.shuffle(rest)
        return (0, *rest)
    colors = list(range(10))
    rng.shuffle(colors)
    return tuple(colors)


def sample_augmentations(
    rng: random.Random,
    n: int,
    *,
    d8: Sequence[str] = D8,
    color: bool = True,
    keep_zero: bool = True,
    preserve_colors: bool = False,
    shuffle_order: bool = False,
    n_train: int = 0,
) -> list[Augmentation]:
    """Sample ``n`` augmentations, deterministic given the rng state.

    Geometry: the transforms in ``d8`` are used in rounds, each round a random permutation of them, so
    every transform appears equally often (±1). color: a random color map each (keep_zero: 0 never moves).
    preserve_colors (the seed's "preserve original colors in color swap" variant): every other sample
    (odd indices 1, 3, 5, ...) keeps the identity color map, so the original colors stay in half of the
    color-augmented samples. shuffle_order: a random order of the ``n_train`` train pairs each.
    Samples are not guaranteed distinct (e.g. n > len(d8) without colors).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    d8 = list(d8)
    if not d8:
        raise ValueError("d8 must name at least one transform")
    for name in d8:
        if name not in _D8_FUNCS:
            raise ValueError(f"unknown D8 transform {name!r}; expected one of {D8}")
    if shuffle_order and n_train < 1:
        raise ValueError("shuffle_order needs n_train >= 1")
    out: list[Augmentation] = []
    geometry: list[str] = []
    for i in range(n):
        if not geometry:
            geometry = rng.sample(d8, len(d8))
        g = geometry.pop()
        colors = None
        if color and not (preserve_colors and i % 2 == 1):
            colors = random_color_map(rng, keep_zero=keep_zero)
        order = tuple(rng.sample(range(n_train), n_train)) if shuffle_order else None
        out.append(Augmentation(g, colors, order))
    return out
