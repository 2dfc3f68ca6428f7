"""TTFT training samples: n-1 / n-2 splits of a task's train pairs, augmented, fitted to max length.

A split holds out one train pair (n-1) or one pair plus one dropped example (n-2) as the target;
the remaining pairs are the in-context examples. Test outputs are never used here, except by
`val_samples`, which builds the seed's "val loss" samples (test output as target) for scoring only.
`prompt_token_ids` / `encode_prompt_target` are THE tokenization of prompts and targets: training
(`finetune.encode_sample`) and inference (token-id prompts to vLLM) both go through them.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ttft.augment import Augmentation, sample_augmentations
from ttft.config import AugmentConfig, SamplesConfig
from ttft.formats import build_prompt, build_target
from ttft.tasks import Grid, Pair, Task


@dataclass(frozen=True)
class Sample:
    """One training or evaluation sequence: prompt (masked in the loss) and target."""

    task_id: str
    prompt: str
    target: str
    aug_key: str
    n_examples: int


@functools.lru_cache(maxsize=8)
def special_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The special tokens a tokenizer puts before any text (BOS for Llama/Mistral-style; none for Qwen)."""
    plain = tokenizer("0", add_special_tokens=False).input_ids
    full = tokenizer("0", add_special_tokens=True).input_ids
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return tuple(full[:i])
    return ()


def prompt_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt: the tokenizer's leading special tokens (BOS if it adds one), then the text.

    The same ids in training and at inference (sent to vLLM as token ids, never re-tokenized there).
    """
    return [*special_prefix(tokenizer), *tokenizer(prompt, add_special_tokens=False).input_ids]


def encode_prompt_target(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids and labels of prompt + target + EOS: prompt tokens masked (-100), target and EOS learned.

    Prompt and target are tokenized separately, exactly as inference sees them (prompt in, target out).
    """
    p = prompt_token_ids(tokenizer, prompt)
    t = tokenizer(target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return p + t, [-100] * len(p) + t


@dataclass(frozen=True)
class Split:
    """In-context examples and the held-out pair to predict."""

    examples: tuple[Pair, ...]
    query: Pair


def splits(train: Sequence[Pair], mode: str) -> list[Split]:
    """All n-1, n-2 or both (`all`) splits of the train pairs. A task with one pair has no split."""
    out: list[Split] = []
    n = len(train)
    if mode in ("n-1", "all"):
        for i in range(n):
            rest = tuple(p for j, p in enumerate(train) if j != i)
            if rest:
                out.append(Split(rest, train[i]))
    if mode in ("n-2", "all"):
        for i, drop in itertools.permutations(range(n), 2):
            rest = tuple(p for j, p in enumerate(train) if j not in (i, drop))
            if rest:
                out.append(Split(rest, train[i]))
    if mode not in ("n-1", "n-2", "all"):
        raise ValueError(f"samples.mode: unknown mode {mode!r}")
    return out


def fit_examples(
    examples: Sequence[Pair],
    query_input: Grid,
    reserve_tokens: int,
    count_tokens: Callable[[str], int],
    max_len: int,
    encoder: str,
) -> str | None:
    """Build the longest prompt (dropping trailing examples) that leaves `reserve_tokens` for the target.

    Returns None when even one example does not fit: the target is never truncated.
    """
    for k in range(len(examples), 0, -1):
        prompt = build_prompt(examples[:k], query_input, encoder)
        if count_tokens(prompt) + reserve_tokens <= max_len:
            return prompt
    return None


def _augment_split(split: Split, aug: Augmentation) -> Split:
    """Apply one augmentation to a split as if it were a task (examples reordered, all grids mapped)."""
    task = Task(
        id="split", train=split.examples, test_inputs=(split.query.input,), test_outputs=(split.query.output,)
    )
    t = aug.apply_task(task)
    assert t.test_outputs is not None
    return Split(t.train, Pair(t.test_inputs[0], t.test_outputs[0]))


def train_samples(
    task: Task,
    samples_cfg: SamplesConfig,
    augment_cfg: AugmentConfig,
    count_tokens: Callable[[str], int],
    seed: int,
) -> list[Sample]:
    """Augmented training samples for one task, at most `samples_cfg.max_per_task`, deterministic in seed."""
    rng = random.Random(f"{seed}:{task.content_hash()}")
    out: list[Sample] = []
    candidates: list[tuple[Split, Augmentation]] = []
    for split in splits(task.train, samples_cfg.mode):
        augs = sample_augmentations(
            rng,
            augment_cfg.per_split,
            d8=augment_cfg.d8,
            color=augment_cfg.color,
            keep_zero=augment_cfg.keep_zero,
            preserve_colors=augment_cfg.preserve_colors,
            shuffle_order=augment_cfg.shuffle_order,
            n_train=len(split.examples),
        )
        # Identical augmentations of the same split are the same sample: keep one.
        for aug in dict.fromkeys(augs):
            candidates.append((split, aug))
    rng.shuffle(candidates)
    for split, aug in candidates:
        if len(out) >= samples_cfg.max_per_task:
            break
        s = _augment_split(split, aug)
        target = build_target(s.query.output, samples_cfg.encoder)
        prompt = fit_examples(
            s.examples,
            s.query.input,
            count_tokens(target) + 1,
            count_tokens,
            samples_cfg.max_seq_len,
            samples_cfg.encoder,
        )
        if prompt is None:
            continue
        out.append(Sample(task.id, prompt, target, aug.key, prompt.count("<in>") - 1))
    return out


def val_samples(task: Task, samples_cfg: SamplesConfig, count_tokens: Callable[[str], int]) -> list[Sample]:
    """The seed's validation samples: all train pairs as examples, each known test output as target."""
    if not task.test_outputs:
        return []
    out = []
    for test_in, test_out in zip(task.test_inputs, task.test_outputs):
        target = build_target(test_out, samples_cfg.encoder)
        prompt = fit_examples(
            task.train,
            test_in,
            count_tokens(target) + 1,
            count_tokens,
            samples_cfg.max_seq_len,
            samples_cfg.encoder,
        )
        if prompt is not None:
            out.append(Sample(task.id, prompt, target, "identity", prompt.count("<in>") - 1))
    return out
