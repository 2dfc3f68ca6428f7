"""Prediction: prompts for every test input x augmentation, one vLLM multi-LoRA pass, parse, vote.

Every request carries its task's adapter (a LoRARequest inside `VllmEngine`); a task without a usable
adapter runs on the base model and is flagged `fallback`. Outputs that do not parse, are too large,
or run out of tokens become invalid candidates, never errors.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from ttft.augment import Augmentation, random_color_map
from ttft.config import InferenceConfig
from ttft.console import warn
from ttft.formats import ParseError, build_target, parse_output
from ttft.samples import fit_examples
from ttft.scoring import Submission, submission_from_attempts
from ttft.tasks import Task
from ttft.voting import Attempt, Candidate, vote

MAX_SIDE = 30
PROGRESS_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Adapter:
    """A task's adapter: registry key and local directory."""

    key: str
    path: str


@dataclass(frozen=True)
class Prompt:
    """One generation request: a test input of a task under one augmentation."""

    task_id: str
    test_index: int
    aug_key: str
    text: str
    max_tokens: int
    adapter: Adapter | None


@dataclass
class Predictions:
    """Every candidate (as an Arrow table) and the voted top-2 attempts per test input."""

    candidates: pa.Table
    attempts: dict[str, list[list[Attempt]]]
    fallback: set[str] = field(default_factory=set)
    seconds: float = 0.0
    output_tokens: int = 0

    def submission(self) -> Submission:
        return submission_from_attempts(
            {tid: [[a.grid for a in per_test] for per_test in tests] for tid, tests in self.attempts.items()}
        )


def augmentations_for(task: Task, cfg: InferenceConfig) -> list[Augmentation]:
    """The inference augmentations of a task: each D8 transform, plus `color_perms` color variants of each."""
    rng = random.Random(f"{cfg.seed}:{task.content_hash()}")
    augs = []
    for d8 in cfg.d8:
        augs.append(Augmentation(d8=d8))
        for _ in range(cfg.color_perms):
            augs.append(Augmentation(d8=d8, colors=random_color_map(rng, keep_zero=cfg.keep_zero)))
    return list(dict.fromkeys(augs))


def max_output_side(task: Task) -> int:
    """A generous bound on the output grid side: 3x the largest input side (scaling tasks), at most 30."""
    sides = [len(g) for g in task.test_inputs] + [len(g[0]) for g in task.test_inputs]
    sides += [max(len(p.output), len(p.output[0])) for p in task.train]
    return min(MAX_SIDE, max(max(sides), 3 * max(len(g) for g in task.test_inputs)))


def build_prompts(
    tasks: Sequence[Task],
    adapters: dict[str, Adapter | None],
    cfg: InferenceConfig,
    encoder: str,
    count_tokens: Callable[[str], int],
) -> tuple[list[Prompt], dict[str, str]]:
    """Prompts for all tasks; returns (prompts, {task_id: reason}) for test inputs that fit no prompt."""
    prompts: list[Prompt] = []
    skipped: dict[str, str] = {}
    for task in tasks:
        side = max_output_side(task)
        max_tokens = count_tokens(build_target([[0] * side] * side, encoder)) + 2
        for aug in augmentations_for(task, cfg):
            t = aug.apply_task(task)
            for i, test_in in enumerate(t.test_inputs):
                # Reserve room for the largest plausible output; drop examples to fit, like training.
                text = fit_examples(t.train, test_in, max_tokens, count_tokens, cfg.max_model_len, encoder)
                if text is None:
                    skipped[task.id] = f"test {i}: prompt does not fit max_model_len={cfg.max_model_len}"
                    continue
                prompts.append(Prompt(task.id, i, aug.key, text, max_tokens, adapters.get(task.id)))
    return prompts, skipped


class InferenceProgress:
    """Console progress of an engine pass (a ``ProgressFn``): prompts done / total, tokens/s, ETA.

    Prints at most one line per ``interval_s``, and only when another tenth of the prompts is done or
    ``HEARTBEAT_S`` passed without a line (about ten lines per pass however long it runs), and always the
    last one. Inside a Ray actor the lines go to the actor's stderr, which Ray forwards to the driver.
    """

    HEARTBEAT_S = 60.0

    def __init__(self, prompts: int, interval_s: float = PROGRESS_INTERVAL_S, out: TextIO = sys.stderr):
        self.prompts, self.interval, self.out = prompts, interval_s, out
        self.step = max(1, math.ceil(prompts / 10))
        self.last = time.monotonic()  # the first line comes after one interval (or at the end)
        self.last_done = 0

    def line(self, done: int, elapsed: float, tokens_per_s: float | None) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.prompts - done) / rate if rate > 0 else math.nan
        speed = f"{tokens_per_s:.0f} tok/s" if tokens_per_s is not None else "? tok/s"
        eta_s = f"{eta:.0f}s" if math.isfinite(eta) else "?"
        return (
            f"[ttft] inference {done}/{self.prompts} prompts | {speed} | elapsed {elapsed:.0f}s | ETA {eta_s}"
        )

    def __call__(self, done: int, total: int, elapsed: float, tokens_per_s: float | None) -> None:
        """Called by the engine per finished request; ``done``/``total`` may count completions (n each)."""
        prompts_done = min(self.prompts, round(done * self.prompts / total)) if total else self.prompts
        now = time.monotonic()
        moved = prompts_done - self.last_done >= self.step or now - self.last >= self.HEARTBEAT_S
        if prompts_done >= self.prompts or (now - self.last >= self.interval and moved):
            self.last, self.last_done = now, prompts_done
            print(self.line(prompts_done, elapsed, tokens_per_s), file=self.out, flush=True)


def generate(engine, prompts: Sequence[Prompt], cfg: InferenceConfig, progress=None) -> list[list]:
    """One engine call over all prompts: every adapter, augmentation and per-prompt max_tokens together.

    ``progress`` (e.g. an :class:`InferenceProgress`) is called as requests finish.
    """
    from ttft.vllm_engine import GenRequest

    reqs = [
        GenRequest(p.text, p.adapter.path if p.adapter else None, p.adapter.key if p.adapter else None)
        for p in prompts
    ]
    return engine.generate(
        reqs,
        max_tokens=[p.max_tokens for p in prompts],
        n=cfg.n,
        temperature=cfg.temperature,
        progress=progress,
    )


def collect(
    tasks: Sequence[Task], prompts: Sequence[Prompt], results: Sequence[Sequence], encoder: str
) -> Predictions:
    """Parse every generation into a candidate, vote per test input, and build the candidates table."""
    rows: dict[str, list] = {
        k: []
        for k in (
            "task_id",
            "test_index",
            "aug_key",
            "adapter_key",
            "fallback",
            "sample",
            "text",
            "grid",
            "error",
            "logprob",
            "n_tokens",
            "finish_reason",
        )
    }
    cands: dict[tuple[str, int], list[Candidate]] = {}
    out_tokens = 0
    for p, outs in zip(prompts, results):
        for j, r in enumerate(outs):
            parsed = parse_output(r.text, encoder)
            error = parsed.kind if isinstance(parsed, ParseError) else None
            if error is None and r.finish_reason == "length":
                error = "truncated"
            grid = None if error else parsed
            cands.setdefault((p.task_id, p.test_index), []).append(
                Candidate(p.aug_key, grid, r.logprob, r.n_tokens, error)
            )
            out_tokens += r.n_tokens
            for k, v in (
                ("task_id", p.task_id),
                ("test_index", p.test_index),
                ("aug_key", p.aug_key),
                ("adapter_key", p.adapter.key if p.adapter else None),
                ("fallback", p.adapter is None),
                ("sample", j),
                ("text", r.text),
                ("grid", json.dumps(grid) if grid else None),
                ("error", error),
                ("logprob", r.logprob),
                ("n_tokens", r.n_tokens),
                ("finish_reason", r.finish_reason),
            ):
                rows[k].append(v)
    attempts = {
        t.id: [vote(cands.get((t.id, i), []), top_k=2) for i in range(len(t.test_inputs))] for t in tasks
    }
    fallback = {p.task_id for p in prompts if p.adapter is None}
    return Predictions(pa.table(rows), attempts, fallback, output_tokens=out_tokens)


def predict(
    engine,
    tasks: Sequence[Task],
    adapters: dict[str, Adapter | None],
    cfg: InferenceConfig,
    encoder: str,
    count_tokens: Callable[[str], int],
    progress_interval_s: float = PROGRESS_INTERVAL_S,
) -> Predictions:
    """Predict every test output of `tasks` in one engine pass and vote over augmentations.

    Progress lines (:class:`InferenceProgress`) go to stderr every ``progress_interval_s``.
    """
    t0 = time.perf_counter()
    prompts, skipped = build_prompts(tasks, adapters, cfg, encoder, count_tokens)
    for task_id, why in skipped.items():  # once per task, in the run's own words
        warn(f"task {task_id}: {why}; no prediction for it")
    results = generate(engine, prompts, cfg, InferenceProgress(len(prompts), progress_interval_s))
    preds = collect(tasks, prompts, results, encoder)
    preds.seconds = time.perf_counter() - t0
    return preds


def write_predictions(preds: Predictions, out_dir: str | Path) -> None:
    """predictions.parquet (every candidate) and submission.json (Kaggle format)."""
    from ttft.scoring import write_submission

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(preds.candidates, out / "predictions.parquet")
    write_submission(out / "submission.json", preds.submission())
