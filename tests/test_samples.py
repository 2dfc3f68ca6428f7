"""TTFT samples: n-1 / n-2 splits, augmentation, fitting to max length without truncating targets."""

import pytest

from ttft.augment import Augmentation
from ttft.config import AugmentConfig, SamplesConfig
from ttft.formats import build_target
from ttft.samples import splits, train_samples, val_samples
from ttft.tasks import Pair, Task


def chars(text: str) -> int:  # a character-level tokenizer, like the tiny model's
    return len(text.replace("<in>", "I").replace("<out>", "O"))


def task(n_train: int = 4, side: int = 3) -> Task:
    pairs = tuple(Pair([[i % 10] * side] * side, [[(i + 1) % 10] * side] * side) for i in range(n_train))
    return Task("t1", pairs, ([[7] * side] * side,), ([[9] * side] * side,))


@pytest.mark.parametrize(
    "mode, n, expected", [("n-1", 4, 4), ("n-2", 4, 12), ("all", 4, 16), ("n-1", 1, 0), ("n-2", 2, 0)]
)
def test_split_counts(mode: str, n: int, expected: int) -> None:
    t = task(n)
    out = splits(t.train, mode)
    assert len(out) == expected
    for s in out:
        assert s.query not in s.examples
        assert len(s.examples) == n - (1 if mode == "n-1" else 2) or mode == "all"


def test_train_samples_never_use_test_outputs_and_are_deterministic() -> None:
    t = task(4)
    cfg = SamplesConfig(mode="n-1", max_per_task=100, max_seq_len=4096)
    aug = AugmentConfig(d8=["identity"], color=False, shuffle_order=False, per_split=1)
    a = train_samples(t, cfg, aug, chars, seed=0)
    assert len(a) == 4
    assert a == train_samples(t, cfg, aug, chars, seed=0)
    test_out = build_target(t.test_outputs[0])
    assert all(test_out not in s.prompt + s.target for s in a)
    assert {s.target for s in a} == {build_target(p.output) for p in t.train}


def test_augmented_samples_are_the_augmented_task() -> None:
    t = task(3)
    cfg = SamplesConfig(mode="n-1", max_per_task=1000, max_seq_len=4096)
    aug = AugmentConfig(per_split=8)
    samples = train_samples(t, cfg, aug, chars, seed=1)
    assert len({s.aug_key for s in samples}) > 3
    for s in samples:
        a = Augmentation.from_key(s.aug_key)
        originals = {build_target(a.apply_grid(p.output)) for p in t.train}
        assert s.target in originals


def test_cap_and_max_len_drop_examples_but_never_truncate_targets() -> None:
    t = task(5, side=6)
    full = train_samples(
        t,
        SamplesConfig(max_per_task=1000, max_seq_len=10000),
        AugmentConfig(d8=["identity"], color=False, shuffle_order=False, per_split=1),
        chars,
        0,
    )
    assert {s.n_examples for s in full} == {4}
    tight = SamplesConfig(max_per_task=3, max_seq_len=260)
    few = train_samples(
        t, tight, AugmentConfig(d8=["identity"], color=False, shuffle_order=False, per_split=1), chars, 0
    )
    assert len(few) == 3
    for s in few:
        assert chars(s.prompt) + chars(s.target) + 1 <= 260
        assert s.n_examples < 4
        assert s.target.count("\n") == 6  # the whole 6-row target
    nothing = train_samples(t, SamplesConfig(max_seq_len=60), AugmentConfig(), chars, 0)
    assert nothing == []


def test_val_samples_use_test_outputs_and_all_train_pairs() -> None:
    t = task(3)
    (v,) = val_samples(t, SamplesConfig(), chars)
    assert v.target == build_target(t.test_outputs[0]) and v.n_examples == 3
    assert val_samples(Task("x", t.train, t.test_inputs), SamplesConfig(), chars) == []
