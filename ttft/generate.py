"""Generator of small ARC-like tasks with known rules, for the CPU-scale accuracy benchmark (the canary).

A tiny model is pretrained on generated "train" tasks and test-time fine-tuned on held-out "eval" tasks,
so every rule must be learnable from 3-4 demonstration pairs while the eval rule instances must not be
guessable without them.

Rules (atoms; each a frozen dataclass with ``kind``, ``key``/``name`` and a pure ``apply(grid) -> grid``):

- ``D8Rule``    "rot90", "flip_h", ... (the 7 non-identity transforms of ``ttft.augment.D8``)
- ``ColorMap``  "cmap-12-21" (swap 1<->2), "cmap-35" (3 -> 5): substitution of some colors 1..9; 0 stays
- ``Shift``     "shift-wrap-r1u1", "shift-zero-l2": translate right/left by dx and down/up by dy, wrapping
                around or filling with 0 (wrap: |dx|, |dy| <= 1; zero fill: |dx|, |dy| <= 2)
- ``Scale``     "scale-2", "scale-3": every cell becomes a k x k block
- ``Crop``      "crop": crop to the bounding box of the non-zero cells
- ``FillLines`` "fill-rows-3", "fill-cols-3": background cells of every row (column) that holds color c
                become c
- ``Gravity``   "gravity-down" (up, left, right): non-zero cells fall to that side, keeping their order
- ``Compose``   "rot90.cmap-35": two atoms of different kinds, applied left to right. Only the canonical
                kind order ``KIND_ORDER`` is generated, because most pairs commute up to re-parametrization
                (cmap commutes with everything but fill; D8 moves through every rule): this keeps most
                functions under one key, so an eval composition is not a train one in disguise.

Train/eval partition (fixed, independent of any seed, so any train seed and any eval seed stay disjoint;
``split_of(rule)``): a rule is "eval" when

1. its family (kind pair) is in HELD_OUT_FAMILIES ("d8.cmap", "gravity.crop"): these kind pairs never occur
   in training at all, so they stay novel even if pretraining applies D8 / color augmentations; or
2. one of its atoms is held out: an atom of a parameter-rich kind (shift, fill, cmap) whose key hashes into
   the held-out quarter (``_held_out``: sha256 of the key, 1 in 4); or
3. it is a composition whose own key hashes into the held-out quarter (trained atoms, new combination).

Everything else is "train". Every D8, gravity, scale and crop atom is a train rule (too few instances to
hold any out), and every kind and every other kind pair occurs in training. Caveat: levels 2 and 3 are new by
key only; conjugating by a D8 transform or a color permutation maps them onto train rules (e.g. cmap-35 onto
cmap-12), so they are truly unseen only if pretraining does not augment. Level 1 is unseen either way.

Inputs are 3..8 per side (scale: at most 12 // k, so outputs stay <= 12), background 0 with scattered cells
or a few small objects inside a random window, drawn from a per-task palette of 2..4 colors that holds the
rule's colors. A pair is kept only if it demonstrates the rule: output != input, output not all 0, and for a
composition output != either part applied alone. The fate of every test input color is shown by the train
pairs: it is in a train input, and also in a train output unless the rule recolors it (``colors``). And no
equally simple rival (``neighbors``: one part replaced by another instance of its kind) that fits every
train pair gives another test output. Rules with more parts may still fit (e.g. "crop" vs
"shift-wrap-d1.crop" when no train input touches the bottom edge): the intended answer is the simplest.

Task ids are ``gen-<split>-<index:05d>-<rule key>`` (safe names), so ``rule_of(task_id)`` recovers the rule
from a task even after ``write_tasks`` / ``ttft.tasks.load_tasks``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from ttft.augment import D8, apply_d8
from ttft.tasks import Grid, Pair, Task, check_task_id, grid_problem, validate_task

SPLITS = ("train", "eval")
FAMILIES = ("mixed", "canary")  # the task families ``generate_tasks`` draws from
MIN_SIDE = 3
MAX_INPUT_SIDE = 8
MAX_SCALED_SIDE = 12  # scale-k inputs are at most MAX_SCALED_SIDE // k per side
KIND_ORDER = ("d8", "gravity", "shift", "fill", "crop", "scale", "cmap")  # atom kinds, composition order
HELD_OUT_KINDS = ("shift", "fill", "cmap")
HELD_OUT_FAMILIES = ("d8.cmap", "gravity.crop")
ATOM_FRACTION = 0.5  # share of generated tasks whose rule is one atom (the rest are compositions)
MAX_PAIR_ATTEMPTS = 200
MAX_RULE_ATTEMPTS = 20
GRAVITY_DIRECTIONS = ("down", "up", "left", "right")
# The canary family (section "canary" below): colour-map atoms on a fixed layout.
CANARY_SIDE = 3  # every grid is CANARY_SIDE x CANARY_SIDE
CANARY_TRAIN_PAIRS = 3  # demonstration pairs per task (plus one test pair)
CANARY_PALETTE_SIZES = (2, 3)  # colours per task, the rule's source colours included
CANARY_DENSITY = (0.25, 0.6)  # each cell is non-zero with a probability drawn per grid from U(lo, hi)
_ID_RE = re.compile(r"^gen-(?:(canary)-)?(train|eval)-(\d{5,})-(.+)$")


class GenerationError(RuntimeError):
    """No demonstrating pair could be drawn for a rule (e.g. a rule that is the identity on its inputs)."""


def _transpose(g: Grid) -> Grid:
    return [list(col) for col in zip(*g)]


class _Rule:
    """Shared behaviour of the rule dataclasses."""

    kind: ClassVar[str]

    @property
    def key(self) -> str:
        raise NotImplementedError

    @property
    def name(self) -> str:
        """Same as ``key``."""
        return self.key

    @property
    def parts(self) -> tuple[_Rule, ...]:
        """The atoms of the rule, in application order."""
        return (self,)

    @property
    def max_input_side(self) -> int:
        """Largest input side the generator uses for this rule."""
        return MAX_INPUT_SIDE

    @property
    def colors(self) -> tuple[int, ...]:
        """Colors the rule is about; the task palette always contains them."""
        return ()

    def apply(self, grid: Grid) -> Grid:
        raise NotImplementedError


@dataclass(frozen=True)
class D8Rule(_Rule):
    """A non-identity D8 transform of ``ttft.augment`` (rot90 is counter-clockwise, as np.rot90)."""

    transform: str
    kind: ClassVar[str] = "d8"

    def __post_init__(self) -> None:
        if self.transform not in D8 or self.transform == "identity":
            raise ValueError(f"D8Rule: transform must be one of {D8[1:]}, got {self.transform!r}")

    @property
    def key(self) -> str:
        return self.transform

    def apply(self, grid: Grid) -> Grid:
        return apply_d8(self.transform, grid)


@dataclass(frozen=True)
class ColorMap(_Rule):
    """Substitute colors: ``mapping`` holds (source, new color) pairs over 1..9, sources distinct."""

    mapping: tuple[tuple[int, int], ...]
    kind: ClassVar[str] = "cmap"

    def __post_init__(self) -> None:
        mapping = tuple(sorted((int(s), int(d)) for s, d in self.mapping))
        sources = [s for s, _ in mapping]
        if not mapping or len(set(sources)) != len(sources):
            raise ValueError(f"ColorMap: needs distinct source colors, got {self.mapping!r}")
        for s, d in mapping:
            if not (1 <= s <= 9 and 1 <= d <= 9) or s == d:
                raise ValueError(
                    f"ColorMap: pairs must map a color 1..9 to another 1..9, got {self.mapping!r}"
                )
        object.__setattr__(self, "mapping", mapping)

    @property
    def key(self) -> str:
        return "cmap-" + "-".join(f"{s}{d}" for s, d in self.mapping)

    @property
    def colors(self) -> tuple[int, ...]:
        return tuple(s for s, _ in self.mapping)

    def apply(self, grid: Grid) -> Grid:
        table = list(range(10))
        for s, d in self.mapping:
            table[s] = d
        return [[table[c] for c in row] for row in grid]


@dataclass(frozen=True)
class Shift(_Rule):
    """Translate by dx columns (right > 0) and dy rows (down > 0); wrap around or fill with 0."""

    dx: int
    dy: int
    wrap: bool
    kind: ClassVar[str] = "shift"

    def __post_init__(self) -> None:
        if (self.dx, self.dy) == (0, 0) or max(abs(self.dx), abs(self.dy)) > 29:
            raise ValueError(f"Shift: need (dx, dy) != (0, 0) within +-29, got ({self.dx}, {self.dy})")

    @property
    def key(self) -> str:
        moves = ""
        if self.dx:
            moves += f"{'r' if self.dx > 0 else 'l'}{abs(self.dx)}"
        if self.dy:
            moves += f"{'d' if self.dy > 0 else 'u'}{abs(self.dy)}"
        return f"shift-{'wrap' if self.wrap else 'zero'}-{moves}"

    def apply(self, grid: Grid) -> Grid:
        h, w = len(grid), len(grid[0])
        out = [[0] * w for _ in range(h)]
        for r in range(h):
            for c in range(w):
                r2, c2 = r + self.dy, c + self.dx
                if self.wrap:
                    out[r2 % h][c2 % w] = grid[r][c]
                elif 0 <= r2 < h and 0 <= c2 < w:
                    out[r2][c2] = grid[r][c]
        return out


@dataclass(frozen=True)
class Scale(_Rule):
    """Every cell becomes a k x k block (k = 2 or 3)."""

    k: int
    kind: ClassVar[str] = "scale"

    def __post_init__(self) -> None:
        if self.k not in (2, 3):
            raise ValueError(f"Scale: k must be 2 or 3, got {self.k!r}")

    @property
    def key(self) -> str:
        return f"scale-{self.k}"

    @property
    def max_input_side(self) -> int:
        return MAX_SCALED_SIDE // self.k

    def apply(self, grid: Grid) -> Grid:
        return [[c for c in row for _ in range(self.k)] for row in grid for _ in range(self.k)]


@dataclass(frozen=True)
class Crop(_Rule):
    """Crop to the bounding box of the non-zero cells (an all-zero grid is returned unchanged)."""

    kind: ClassVar[str] = "crop"

    @property
    def key(self) -> str:
        return "crop"

    def apply(self, grid: Grid) -> Grid:
        rows = [r for r, row in enumerate(grid) if any(row)]
        cols = [c for c in range(len(grid[0])) if any(row[c] for row in grid)]
        if not rows:
            return [list(row) for row in grid]
        return [row[cols[0] : cols[-1] + 1] for row in grid[rows[0] : rows[-1] + 1]]


@dataclass(frozen=True)
class FillLines(_Rule):
    """Background (0) cells of every row (axis "rows") or column ("cols") holding ``color`` become it."""

    color: int
    axis: str
    kind: ClassVar[str] = "fill"

    def __post_init__(self) -> None:
        if not 1 <= self.color <= 9 or self.axis not in ("rows", "cols"):
            raise ValueError(
                f"FillLines: need color 1..9 and axis rows/cols, got {self.color!r}, {self.axis!r}"
            )

    @property
    def key(self) -> str:
        return f"fill-{self.axis}-{self.color}"

    @property
    def colors(self) -> tuple[int, ...]:
        return (self.color,)

    def apply(self, grid: Grid) -> Grid:
        g = grid if self.axis == "rows" else _transpose(grid)
        out = [[self.color if c == 0 else c for c in row] if self.color in row else list(row) for row in g]
        return out if self.axis == "rows" else _transpose(out)


@dataclass(frozen=True)
class Gravity(_Rule):
    """Non-zero cells fall toward one side (down, up, left, right), keeping their order in the line."""

    direction: str
    kind: ClassVar[str] = "gravity"

    def __post_init__(self) -> None:
        if self.direction not in GRAVITY_DIRECTIONS:
            raise ValueError(
                f"Gravity: direction must be one of {GRAVITY_DIRECTIONS}, got {self.direction!r}"
            )

    @property
    def key(self) -> str:
        return f"gravity-{self.direction}"

    def apply(self, grid: Grid) -> Grid:
        vertical = self.direction in ("down", "up")
        lines = _transpose(grid) if vertical else grid
        out = []
        for line in lines:
            cells = [c for c in line if c]
            pad = [0] * (len(line) - len(cells))
            out.append(cells + pad if self.direction in ("up", "left") else pad + cells)
        return _transpose(out) if vertical else out


@dataclass(frozen=True)
class Compose(_Rule):
    """``first`` then ``second`` (two atoms; the generated families use different kinds in KIND_ORDER)."""

    first: _Rule
    second: _Rule
    kind: ClassVar[str] = "compose"

    def __post_init__(self) -> None:
        for part in (self.first, self.second):
            if not isinstance(part, _Rule) or isinstance(part, Compose):
                raise ValueError(f"Compose: parts must be atom rules, got {part!r}")

    @property
    def key(self) -> str:
        return f"{self.first.key}.{self.second.key}"

    @property
    def parts(self) -> tuple[_Rule, ...]:
        return (self.first, self.second)

    @property
    def max_input_side(self) -> int:
        return min(self.first.max_input_side, self.second.max_input_side)

    @property
    def colors(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.first.colors + self.second.colors))

    def apply(self, grid: Grid) -> Grid:
        return self.second.apply(self.first.apply(grid))


Rule = D8Rule | ColorMap | Shift | Scale | Crop | FillLines | Gravity | Compose

_SHIFT_RE = re.compile(r"^shift-(wrap|zero)-(?:([rl])(\d+))?(?:([du])(\d+))?$")
_CMAP_RE = re.compile(r"^cmap(?:-\d\d)+$")
_FILL_RE = re.compile(r"^fill-(rows|cols)-(\d)$")


def _atom_from_key(key: str) -> Rule:
    if key in D8 and key != "identity":
        return D8Rule(key)
    if key == "crop":
        return Crop()
    if key in ("scale-2", "scale-3"):
        return Scale(int(key[-1]))
    if key.startswith("gravity-") and key[8:] in GRAVITY_DIRECTIONS:
        return Gravity(key[8:])
    if m := _FILL_RE.match(key):
        return FillLines(int(m[2]), m[1])
    if _CMAP_RE.match(key):
        return ColorMap(tuple((int(p[0]), int(p[1])) for p in key.split("-")[1:]))
    if (m := _SHIFT_RE.match(key)) and (m[2] or m[4]):
        dx = int(m[3]) * (1 if m[2] == "r" else -1) if m[2] else 0
        dy = int(m[5]) * (1 if m[4] == "d" else -1) if m[4] else 0
        return Shift(dx, dy, m[1] == "wrap")
    raise ValueError(f"unknown rule key {key!r}")


def rule_from_key(key: str) -> Rule:
    """Parse a rule key (``rule.key``) back into the rule; raises ValueError naming the key."""
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) not in (1, 2):
        raise ValueError(f"unknown rule key {key!r}")
    try:
        atoms = [_atom_from_key(p) for p in parts]
        rule = atoms[0] if len(atoms) == 1 else Compose(atoms[0], atoms[1])
    except ValueError as e:
        raise ValueError(f"unknown rule key {key!r}: {e}") from None
    if rule.key != key:  # non-canonical spelling, e.g. "cmap-21-12" or "shift-zero-r0"
        raise ValueError(f"rule key {key!r} is not canonical; the canonical key is {rule.key!r}")
    return rule


# ------------------------------------------------------------------------------------- train/eval partition


def _held_out(key: str) -> bool:
    """Fixed pseudo-random 1-in-4 choice by key (seed independent)."""
    return int(hashlib.sha256(f"ttft.generate/{key}".encode()).hexdigest(), 16) % 4 == 0


def family_of(rule: Rule) -> str:
    """The rule's family: its kind for an atom ("shift"), its parts' kinds for a composition ("d8.cmap")."""
    return ".".join(p.kind for p in rule.parts)


def split_of(rule: Rule) -> str:
    """Split holding the rule: "eval" if it is held out of training (module docstring), else "train"."""
    if family_of(rule) in HELD_OUT_FAMILIES:
        return "eval"
    if any(p.kind in HELD_OUT_KINDS and _held_out(p.key) for p in rule.parts):
        return "eval"
    if isinstance(rule, Compose) and _held_out(rule.key):
        return "eval"
    return "train"


@lru_cache(maxsize=1)
def _atoms() -> tuple[Rule, ...]:
    atoms: list[Rule] = [D8Rule(t) for t in D8 if t != "identity"]
    atoms += [Gravity(d) for d in GRAVITY_DIRECTIONS]
    for wrap, reach in ((True, 1), (False, 2)):
        atoms += [
            Shift(dx, dy, wrap)
            for dx in range(-reach, reach + 1)
            for dy in range(-reach, reach + 1)
            if (dx, dy) != (0, 0)
        ]
    atoms += [FillLines(c, axis) for axis in ("rows", "cols") for c in range(1, 10)]
    atoms.append(Crop())
    atoms += [Scale(2), Scale(3)]
    colors = range(1, 10)
    atoms += [ColorMap(((a, b), (b, a))) for a in colors for b in colors if a < b]  # swaps
    atoms += [ColorMap(((a, b),)) for a in colors for b in colors if a != b]  # substitutions
    return tuple(atoms)


@lru_cache(maxsize=1)
def _universe() -> dict[str, tuple[Rule, ...]]:
    """Every rule instance by family ("d8", ..., "d8.cmap"), each family sorted by key."""
    by_kind: dict[str, list[Rule]] = {k: [] for k in KIND_ORDER}
    for atom in _atoms():
        by_kind[atom.kind].append(atom)
    families: dict[str, list[Rule]] = {k: list(v) for k, v in by_kind.items()}
    for i, ka in enumerate(KIND_ORDER):
        for kb in KIND_ORDER[i + 1 :]:
            families[f"{ka}.{kb}"] = [Compose(a, b) for a in by_kind[ka] for b in by_kind[kb]]
    return {fam: tuple(sorted(rules, key=lambda r: r.key)) for fam, rules in families.items()}


@lru_cache(maxsize=2)
def _split_families(split: str) -> dict[str, tuple[Rule, ...]]:
    _check_split(split)
    out = {fam: tuple(r for r in rules if split_of(r) == split) for fam, rules in _universe().items()}
    return {fam: rules for fam, rules in out.items() if rules}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def rule_instances(split: str, seed: int | None = None) -> list[Rule]:
    """All rule instances of a split ("train" or "eval"), sorted by key.

    The partition is fixed (see the module docstring) and does not depend on ``seed``, so train and eval
    rules are disjoint whatever seeds are used; a seed only returns the same list in a seeded random order.
    """
    rules = sorted((r for rules in _split_families(split).values() for r in rules), key=lambda r: r.key)
    if seed is not None:
        random.Random(f"ttft.generate/rules/{split}/{seed}").shuffle(rules)
    return rules


def sample_rule(split: str, rng: random.Random) -> Rule:
    """A rule of the split: an atom with probability ATOM_FRACTION, else a composition; the family (atom
    kind or kind pair) uniformly, then the instance uniformly within it."""
    families = _split_families(split)
    atoms = sorted(f for f in families if "." not in f)
    pairs = sorted(f for f in families if "." in f)
    pool = atoms if atoms and (not pairs or rng.random() < ATOM_FRACTION) else pairs
    return rng.choice(families[rng.choice(pool)])


# --------------------------------------------------------------------------------------------- generation


def _grid_colors(grid: Grid) -> set[int]:
    return {c for row in grid for c in row if c}


def _palette(rule: Rule, rng: random.Random) -> list[int]:
    palette = list(rule.colors)
    size = max(len(palette), rng.randint(2, 4))
    others = [c for c in range(1, 10) if c not in palette]
    palette += rng.sample(others, size - len(palette))
    return palette


def random_grid(rng: random.Random, h: int, w: int, palette: Sequence[int]) -> Grid:
    """A sparse h x w grid: background 0 with scattered cells or 1-3 small objects inside a random window."""
    g = [[0] * w for _ in range(h)]
    wh, ww = rng.randint((h + 1) // 2, h), rng.randint((w + 1) // 2, w)
    top, left = rng.randint(0, h - wh), rng.randint(0, w - ww)
    if rng.random() < 0.5:  # scattered cells
        for _ in range(rng.randint(2, max(2, wh * ww // 3))):
            g[top + rng.randrange(wh)][left + rng.randrange(ww)] = rng.choice(palette)
    else:  # small objects: random cells of a box of at most 3 x 3, one color each
        for _ in range(rng.randint(1, 3)):
            oh, ow = rng.randint(1, min(3, wh)), rng.randint(1, min(3, ww))
            r0, c0 = top + rng.randint(0, wh - oh), left + rng.randint(0, ww - ow)
            color = rng.choice(palette)
            for r in range(r0, r0 + oh):
                for c in range(c0, c0 + ow):
                    if rng.random() < 0.7:
                        g[r][c] = color
    if not any(any(row) for row in g):
        g[top + rng.randrange(wh)][left + rng.randrange(ww)] = rng.choice(palette)
    return g


def demonstrates(rule: Rule, grid: Grid, output: Grid) -> bool:
    """Whether (grid, output) shows the rule: output changed, not all 0, a valid grid, and for a
    composition different from either part applied alone (both parts visible)."""
    if output == grid or not any(any(row) for row in output) or grid_problem(output) is not None:
        return False
    return not isinstance(rule, Compose) or all(output != p.apply(grid) for p in rule.parts)


def _variants(atom: Rule) -> list[Rule]:
    variants = [a for a in _atoms() if a.kind == atom.kind and a != atom]
    if isinstance(atom, Shift) and Shift(atom.dx, atom.dy, not atom.wrap) not in variants:
        variants.append(Shift(atom.dx, atom.dy, not atom.wrap))
    return variants


@lru_cache(maxsize=4096)
def neighbors(rule: Rule) -> tuple[Rule, ...]:
    """Rules as simple as ``rule`` that a few pairs could confuse with it: one part swapped for another
    instance of its kind (a shift also for the same move with the other edge mode)."""
    if isinstance(rule, Compose):
        firsts = [Compose(a, rule.second) for a in _variants(rule.first)]
        return tuple(firsts + [Compose(rule.first, b) for b in _variants(rule.second)])
    return tuple(_variants(rule))


def _draw_pair(
    rule: Rule,
    rng: random.Random,
    palette: Sequence[int],
    used: list[Grid],
    allowed: set[int] | None = None,
    rivals: Sequence[Rule] = (),
    max_side: int = MAX_INPUT_SIDE,
) -> Pair:
    hi = min(rule.max_input_side, max_side)
    for _ in range(MAX_PAIR_ATTEMPTS):
        grid = random_grid(rng, rng.randint(MIN_SIDE, hi), rng.randint(MIN_SIDE, hi), palette)
        if grid in used or (allowed is not None and not _grid_colors(grid) <= allowed):
            continue
        out = rule.apply(grid)
        if demonstrates(rule, grid, out) and all(r.apply(grid) == out for r in rivals):
            return Pair(grid, out)
    raise GenerationError(f"rule {rule.key}: no demonstrating pair in {MAX_PAIR_ATTEMPTS} attempts")


def generate_task(
    rule: Rule,
    rng: random.Random,
    n_train: int = 3,
    n_test: int = 1,
    task_id: str = "gen-task",
    max_side: int = MAX_INPUT_SIDE,
) -> Task:
    """One task of the rule with test outputs filled; every pair demonstrates the rule (``demonstrates``),
    inputs are distinct, the fate of every test input color is shown by the train pairs (module docstring),
    and every neighbor of the rule (``neighbors``) that fits all train pairs gives the same test output.
    Raises GenerationError."""
    check_task_id(task_id)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"task {task_id}: need n_train >= 1 and n_test >= 1, got {n_train}, {n_test}")
    palette = _palette(rule, rng)
    used: list[Grid] = []
    train = []
    for _ in range(n_train):
        train.append(_draw_pair(rule, rng, palette, used, None, max_side=max_side))
        used.append(train[-1].input)
    in_colors = set().union(*(_grid_colors(p.input) for p in train))
    out_colors = set().union(*(_grid_colors(p.output) for p in train))
    seen = (in_colors & out_colors) - set(rule.colors) | (in_colors & set(rule.colors))
    rivals = [r for r in neighbors(rule) if all(r.apply(p.input) == p.output for p in train)]
    tests = []
    for _ in range(n_test):
        tests.append(_draw_pair(rule, rng, palette, used, seen, rivals, max_side=max_side))
        used.append(tests[-1].input)
    task = Task(task_id, tuple(train), tuple(p.input for p in tests), tuple(p.output for p in tests))
    validate_task(task)
    return task


# ------------------------------------------------------------------------------------------------ canary


@lru_cache(maxsize=1)
def _canary_atoms() -> tuple[ColorMap, ...]:
    return tuple(a for a in _atoms() if isinstance(a, ColorMap))


@lru_cache(maxsize=256)
def _table(rule: ColorMap) -> tuple[int, ...]:
    table = list(range(10))
    for s, d in rule.mapping:
        table[s] = d
    return tuple(table)


@lru_cache(maxsize=2)
def canary_rules(split: str) -> tuple[ColorMap, ...]:
    """The canary family's rules of a split, sorted by key: the 36 swaps a<->b and 72 substitutions a->b
    over colours 1..9, a quarter held out for "eval" by key hash (``split_of``, the same partition as the
    mixed family's colour-map atoms)."""
    _check_split(split)
    return tuple(sorted((r for r in _canary_atoms() if split_of(r) == split), key=lambda r: r.key))


def _canary_grid(rng: random.Random, palette: Sequence[int], must: int) -> Grid:
    """CANARY_SIDE x CANARY_SIDE; each cell non-zero with a probability drawn from CANARY_DENSITY, its
    colour uniform in ``palette``; holds ``must`` (one random cell is set to it when the draw missed it)."""
    p = rng.uniform(*CANARY_DENSITY)
    cells = [rng.choice(palette) if rng.random() < p else 0 for _ in range(CANARY_SIDE * CANARY_SIDE)]
    if must not in cells:
        cells[rng.randrange(len(cells))] = must
    return [cells[r * CANARY_SIDE : (r + 1) * CANARY_SIDE] for r in range(CANARY_SIDE)]


def canary_rival(rule: ColorMap, train: Sequence[Pair], test_inputs: Sequence[Grid]) -> ColorMap | None:
    """Another canary atom that fits every train pair but maps some test input differently, or None."""
    seen: dict[int, int] = {}
    for pair in train:
        for row_in, row_out in zip(pair.input, pair.output):
            for a, b in zip(row_in, row_out):
                seen[a] = b
    test_colors = set().union(*(_grid_colors(g) for g in test_inputs))
    mine = _table(rule)
    for other in _canary_atoms():
        t = _table(other)
        if other != rule and all(t[a] == b for a, b in seen.items()):
            if any(t[c] != mine[c] for c in test_colors):
                return other
    return None


def generate_canary_task(rule: ColorMap, rng: random.Random, task_id: str = "gen-task") -> Task:
    """One canary task: CANARY_TRAIN_PAIRS demonstrations + 1 test, every grid CANARY_SIDE square.

    The palette is the rule's source colours plus random others (CANARY_PALETTE_SIZES colours in all);
    every input holds the rule's first source colour (so output != input) and inputs are distinct; every
    test input colour appears in a demonstration input; a draw where another colour-map atom fits every
    demonstration but gives another test output (``canary_rival``) is rejected. Raises GenerationError.
    """
    check_task_id(task_id)
    if not isinstance(rule, ColorMap):
        raise ValueError(f"task {task_id}: canary rules are colour maps, got {rule.key!r}")
    sources = list(rule.colors)
    size = max(len(sources), rng.choice(CANARY_PALETTE_SIZES))
    palette = sources + rng.sample([c for c in range(1, 10) if c not in sources], size - len(sources))
    for _ in range(MAX_RULE_ATTEMPTS):
        inputs: list[Grid] = []
        for i in range(CANARY_TRAIN_PAIRS + 1):
            colors = palette if i < CANARY_TRAIN_PAIRS else sorted(set().union(*map(_grid_colors, inputs)))
            for _ in range(MAX_PAIR_ATTEMPTS):
                grid = _canary_grid(rng, colors, sources[0])
                if grid not in inputs:
                    inputs.append(grid)
                    break
            else:
                raise GenerationError(f"rule {rule.key}: no new input in {MAX_PAIR_ATTEMPTS} attempts")
        train = tuple(Pair(g, rule.apply(g)) for g in inputs[:-1])
        if canary_rival(rule, train, inputs[-1:]) is None:
            return Task(task_id, train, (inputs[-1],), (rule.apply(inputs[-1]),))
    raise GenerationError(f"rule {rule.key}: every draw was ambiguous ({MAX_RULE_ATTEMPTS} tries)")


# ----------------------------------------------------------------------------------------- task sets


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def task_id_for(split: str, index: int, rule: Rule, family: str = "mixed") -> str:
    """``gen-<split>-<index:05d>-<rule key>`` (mixed family), ``gen-canary-<split>-...`` (canary)."""
    _check_family(family)
    prefix = "gen" if family == "mixed" else f"gen-{family}"
    return f"{prefix}-{split}-{index:05d}-{rule.key}"


def rule_of(task_id: str) -> Rule:
    """The rule of a generated task, from its id; raises ValueError for other ids."""
    m = _ID_RE.match(task_id) if isinstance(task_id, str) else None
    if m is None:
        raise ValueError(f"task {task_id!r}: not a generated task id (gen-<split>-<index>-<rule key>)")
    return rule_from_key(m[4])


def generated_task(
    split: str, seed: int, index: int, family: str = "mixed", max_side: int = MAX_INPUT_SIDE
) -> tuple[Task, Rule]:
    """Task ``index`` (>= 1) of (family, split, seed) and its rule; depends only on these and ``max_side``
    (mixed family: 3 or 4 train pairs, 1 test; canary: see ``generate_canary_task``)."""
    if family == "canary":
        rng = random.Random(f"ttft.generate/canary/{split}/{seed}/{index}")  # str seeds: sha512, stable
        rules = canary_rules(split)
        for _ in range(MAX_RULE_ATTEMPTS):
            rule = rng.choice(rules)
            try:
                return generate_canary_task(rule, rng, task_id_for(split, index, rule, family)), rule
            except GenerationError:
                continue
        raise GenerationError(
            f"canary {split} task {index}: no rule gave a task in {MAX_RULE_ATTEMPTS} tries"
        )
    _check_family(family)
    rng = random.Random(f"ttft.generate/{split}/{seed}/{index}")
    for _ in range(MAX_RULE_ATTEMPTS):
        rule = sample_rule(split, rng)
        n_train = rng.choice((3, 4))
        try:
            task = generate_task(
                rule,
                rng,
                n_train=n_train,
                n_test=1,
                task_id=task_id_for(split, index, rule),
                max_side=max_side,
            )
            return task, rule
        except GenerationError:
            continue
    raise GenerationError(f"{split} task {index}: no rule gave a task in {MAX_RULE_ATTEMPTS} tries")


def generate_tasks_with_rules(
    split: str, n: int, seed: int, max_side: int = MAX_INPUT_SIDE, family: str = "mixed"
) -> list[tuple[Task, Rule]]:
    """``n`` (task, rule) pairs of the split, deterministic for (split, seed, max_side, family); task i
    (1-based) is ``generated_task(split, seed, i, ...)``, so a shorter run is a prefix of a longer one.
    ``max_side`` (MIN_SIDE..MAX_INPUT_SIDE) caps the mixed family's input sides (shorter prompts)."""
    _check_split(split)
    _check_family(family)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not MIN_SIDE <= max_side <= MAX_INPUT_SIDE:
        raise ValueError(f"max_side must be in {MIN_SIDE}..{MAX_INPUT_SIDE}, got {max_side}")
    return [generated_task(split, seed, i, family, max_side) for i in range(1, n + 1)]


def generate_tasks(
    split: str, n: int, seed: int, max_side: int = MAX_INPUT_SIDE, family: str = "mixed"
) -> list[Task]:
    """``n`` generated tasks of the split, deterministic for (split, seed, max_side, family); see
    generate_tasks_with_rules."""
    return [task for task, _ in generate_tasks_with_rules(split, n, seed, max_side, family)]


def write_tasks(tasks: Sequence[Task], directory: str | Path) -> list[Path]:
    """Write one ARC JSON file per task (``<id>.json``, compact, stable bytes) so that
    ``ttft.tasks.load_tasks(directory)`` loads them; validates first, refuses duplicate ids."""
    directory = Path(directory)
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate task ids: {dup[:5]}")
    for t in tasks:
        validate_task(t)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in tasks:
        path = directory / f"{t.id}.json"
        path.write_text(json.dumps(t.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: python -m ttft.generate --split train --n 200 --seed 0 --out DIR."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=SPLITS, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", choices=FAMILIES, default="mixed")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    paths = write_tasks(generate_tasks(args.split, args.n, args.seed, family=args.family), args.out)
    print(f"wrote {len(paths)} {args.split} tasks to {args.out}")


if __name__ == "__main__":
    main()
