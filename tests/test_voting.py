"""Voting: inversion, grouping, deterministic order-invariant ranking."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttft.augment import D8, Augmentation
from ttft.voting import Attempt, Candidate, vote

ORIGINAL = [[1, 2, 0], [0, 3, 0]]
OTHER = [[5, 5], [5, 0]]


def _under(aug: Augmentation, grid, logprob, n_tokens=7):
    return Candidate(aug.key, aug.apply_grid(grid), logprob, n_tokens)


def test_inversion_matters_golden():
    swap = (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)
    cands = [
        _under(Augmentation("rot90"), ORIGINAL, -1.0),
        _under(Augmentation("rot90", swap), ORIGINAL, -2.0),
        _under(Augmentation("flip_h", (0, 3, 2, 1, 4, 5, 6, 7, 8, 9)), ORIGINAL, -3.0),
        _under(Augmentation("identity"), OTHER, -0.1),
        # same text as the rot90 candidate, but under identity: a different grid in original space
        Candidate("identity", Augmentation("rot90").apply_grid(ORIGINAL), -0.5, 7),
        Candidate("transpose", None, -0.01, 3, error="ragged"),
    ]
    # without inversion the three raw grids for ORIGINAL all differ (no grid would get 3 votes)
    assert len({repr(c.grid) for c in cands[:3]}) == 3
    top = vote(cands)
    assert top == [Attempt(ORIGINAL, 3, -2.0 / 7), Attempt(OTHER, 1, -0.1 / 7)]
    rotated = [[0, 0], [2, 3], [1, 0]]  # rot90 (counter-clockwise) of ORIGINAL
    assert vote(cands, top_k=None) == [*top, Attempt(rotated, 1, -0.5 / 7)]
    assert vote(cands, top_k=1) == [Attempt(ORIGINAL, 3, -2.0 / 7)]


def test_ties_broken_by_mean_logprob_then_grid():
    a, b, c = [[1]], [[2]], [[3]]
    cands = [
        Candidate("identity", a, -4.0, 1),
        Candidate("identity", a, -2.0, 1),  # a: 2 votes, mean -3
        Candidate("identity", b, -1.0, 1),
        Candidate("rot90", b, -3.0, 1),  # b: 2 votes, mean -2 -> first
        Candidate("identity", c, -0.001, 1),  # c: 1 vote, best logprob but fewer votes
    ]
    assert vote(cands) == [Attempt(b, 2, -2.0), Attempt(a, 2, -3.0)]
    # full tie (votes and mean): canonical JSON decides, whatever the input order
    tie = [Candidate("identity", [[9]], -1.0, 1), Candidate("identity", [[4]], -1.0, 1)]
    assert [x.grid for x in vote(tie)] == [[[4]], [[9]]]
    assert [x.grid for x in vote(tie[::-1])] == [[[4]], [[9]]]


def test_ties_use_per_token_log_prob_so_large_grids_are_not_penalised():
    small, large = [[1]], [[2] * 6] * 6
    cands = [  # one vote each: the 6x6 grid is more confident per token, less in total (42 tokens vs 2)
        Candidate("identity", small, -1.0, 2),  # -0.5 per token
        Candidate("identity", large, -4.2, 42),  # -0.1 per token
    ]
    assert [a.grid for a in vote(cands)] == [large, small]
    assert vote(cands)[0].mean_logprob == pytest.approx(-0.1)


def test_invalid_candidates_do_not_vote():
    cands = [
        Candidate("identity", None, -0.1, 3, error="truncated"),
        Candidate("identity", [[1, 2], [3]], -0.1, 3),  # ragged grid that slipped through
        Candidate("identity", [[1]], -9.0, 3, error="stray_characters"),
        Candidate("identity", [[4]], float("nan"), 3),
    ]
    assert vote(cands) == [Attempt([[4]], 1, -math.inf)]
    assert vote([]) == []


def test_bad_aug_key_raises():
    with pytest.raises(ValueError, match="invalid augmentation key"):
        vote([Candidate("rot45", [[1]], -1.0, 1)])


@st.composite
def candidate_lists(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    h, w = rng.randint(1, 4), rng.randint(1, 4)
    answers = [[[rng.randrange(10) for _ in range(w)] for _ in range(h)]]
    answers += [[[rng.randrange(3)]] for _ in range(2)]
    cands = []
    for _ in range(draw(st.integers(0, 25))):
        colors = list(range(1, 10))
        rng.shuffle(colors)
        aug = Augmentation(rng.choice(D8), (0, *colors))
        if rng.random() < 0.15:
            cands.append(Candidate(aug.key, None, -1.0, 5, error="ragged"))
        else:
            # few distinct log-probs so that ties happen often
            lp = rng.choice([-0.1, -0.2, -0.3, -1e-17, -1e17, 0.1 + 0.2])
            cands.append(_under(aug, rng.choice(answers), lp))
    return cands


@given(candidate_lists(), st.randoms(use_true_random=False))
def test_vote_is_order_invariant(cands, rnd):
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert vote(shuffled, top_k=None) == vote(cands, top_k=None)
    assert vote(iter(shuffled)) == vote(cands)
    total = sum(1 for c in cands if c.grid is not None)
    assert sum(a.votes for a in vote(cands, top_k=None)) == total
