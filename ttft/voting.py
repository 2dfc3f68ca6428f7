"""Voting over predictions made under different augmentations.

Each valid candidate is mapped back to the original space with the inverse of the augmentation its
prompt was built under; equal grids are grouped; groups rank by (-votes, -mean per-token log-prob,
canonical JSON of the grid). Per-token, not cumulative: a cumulative log-prob grows more negative with
every generated cell, so it would favour small grids over large ones regardless of confidence. The
result does not depend on the order of the candidates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from ttft.augment import Augmentation
from ttft.tasks import Grid, grid_problem


@dataclass(frozen=True)
class Candidate:
    """One model prediction for one test input under one augmentation."""

    aug_key: str  # Augmentation.key the prompt was built under
    grid: Grid | None  # parsed grid in the AUGMENTED space; None if invalid
    logprob: float  # cumulative log-prob of the generated tokens
    n_tokens: int
    error: str | None = None  # ParseError kind when invalid


@dataclass(frozen=True)
class Attempt:
    """A voted answer in the ORIGINAL space."""

    grid: Grid
    votes: int
    mean_logprob: float  # mean over its voters of their per-token log-prob (cumulative / n_tokens)


def _canonical(grid: Grid) -> str:
    return json.dumps(grid, separators=(",", ":"))


def vote(candidates: Iterable[Candidate], top_k: int | None = 2) -> list[Attempt]:
    """Invert, group and rank candidates; return the best ``top_k`` attempts (all if None).

    Candidates with no grid, an error, or a malformed grid do not vote. A candidate's confidence is its
    per-token log-prob (``logprob / n_tokens``); NaN log-probs count as -inf.
    Raises ValueError on a malformed aug_key (a bug upstream, not a model failure).
    """
    groups: dict[str, tuple[Grid, list[float]]] = {}
    for cand in candidates:
        if cand.grid is None or cand.error is not None or grid_problem(cand.grid) is not None:
            continue
        grid = Augmentation.from_key(cand.aug_key).invert_grid(cand.grid)
        lp = float(cand.logprob) / max(1, cand.n_tokens)
        if math.isnan(lp):
            lp = -math.inf
        key = _canonical(grid)
        if key not in groups:
            groups[key] = (grid, [])
        groups[key][1].append(lp)

    def mean(values: list[float]) -> float:
        if any(v == -math.inf for v in values):
            return -math.inf
        return math.fsum(values) / len(values)  # fsum is exact: independent of the order of values

    attempts = [(key, Attempt(grid, len(lps), mean(lps))) for key, (grid, lps) in groups.items()]
    attempts.sort(key=lambda ka: (-ka[1].votes, -ka[1].mean_logprob, ka[0]))
    ranked = [a for _, a in attempts]
    return ranked if top_k is None else ranked[:top_k]
