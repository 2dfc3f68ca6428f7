"""Prediction: prompts for every test input x augmentation, one vLLM multi-LoRA pass, parse, vote.

Every request carries its task's adapter (a LoRARequest inside `VllmEngine`); a task without a usable
adapter runs on the base model and is flagged `fallback`. Prompts go to vLLM as token ids made by
`samples.prompt_token_ids`, the tokenization training uses. Each prompt's output budget holds the largest
answer its task's train pairs make plausible (`output_budget`); generation also stops at a blank line or
a template marker (`formats.STOP_STRINGS`). Outputs that do not parse, are too large, or run out of
tokens before their grid ends become invalid candidates, never errors; a test input whose prompt does not
fit `max_model_len` is recorded as skipped, with the reason.
"""

from __future__ import annotations

import collections
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from ttft.augment import Augmentation, random_color_map
from ttft.config import InferenceConfig
from ttft.console import warn
from ttft.formats import STOP_STRINGS, ParseError, build_target, parse_output
from ttft.samples import fit_examples, prompt_token_ids
from ttft.scoring import Submission, submission_from_attempts
from ttft.tasks import MAX_SIDE, Grid, Pair, Task
from ttft.voting import Attempt, Candidate, vote

# The output budget multiplies the train pairs' size bound by this. Measured on ARC-AGI-1/2 training and
# evaluation: at x1 the bound is below the real output's shape for 16/17/50/18 test outputs (arc1
# train/eval, arc2 train/eval); at x1.5 one or two ARC-AGI-2 evaluation tasks stay over budget in tokens;
# at x2 none, under all 8 D8 transforms and both encoders (tests/test_inference.py checks every one), for
# budgets 1.8-3.0x the real answers' tokens on average (the old 3x-input-side rule: 2.0-4.9x, and up to
# 6 tasks per set impossible).
BUDGET_MARGIN = 2.0
PROGRESS_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Adapter:
    """A task's adapter: registry key and local directory."""

    key: str
    path: str


@dataclass(frozen=True)
class Prompt:
    """One generation request: a test input of a task under one augmentation (token ids: what vLLM gets)."""

    task_id: str
    test_index: int
    aug_key: str
    text: str
    max_tokens: int
    adapter: Adapter | None
    token_ids: tuple[int, ...] | None = None


def skip_record(task_id: str, test_index: int, aug_key: str, reason: str) -> dict[str, Any]:
    """A test input under one augmentation that got no prompt, and why."""
    return {"task_id": task_id, "test_index": test_index, "aug_key": aug_key, "reason": reason}


@dataclass
class Predictions:
    """Every candidate (as an Arrow table) and the voted top-2 attempts per test input."""

    candidates: pa.Table
    attempts: dict[str, list[list[Attempt]]]
    fallback: set[str] = field(default_factory=set)
    seconds: float = 0.0
    output_tokens: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # skip_record per prompt that did not fit

    def skipped_inputs(self) -> dict[tuple[str, int], str]:
        """{(task_id, test_index): reason} for test inputs that got no prompt under any augmentation."""
        table = self.candidates
        keys = zip(table["task_id"].to_pylist(), table["test_index"].to_pylist())
        reasons = table["skip_reason"].to_pylist() if "skip_reason" in table.column_names else None
        prompted = {k for j, k in enumerate(keys) if reasons is None or reasons[j] is None}
        out: dict[tuple[str, int], str] = {}
        for rec in self.skipped:
            key = (rec["task_id"], rec["test_index"])
            if key not in prompted:
                out.setdefault(key, rec["reason"])
        return out

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


def output_shape_bound(train: Sequence[Pair], test_input: Grid) -> tuple[int, int]:
    """A bound (rows, columns) on the output for ``test_input``, from the task's train pairs.

    Per side: the largest output/input ratio over the train pairs times the test input's side, at least
    the largest train output's side, times BUDGET_MARGIN (output sizes that depend on content), at most
    MAX_SIDE. Computed in whatever space the pairs are in, so it follows transposing augmentations.
    """
    bound = []
    for side in (len, lambda g: len(g[0])):
        ratio = max(side(p.output) / side(p.input) for p in train)
        base = max(ratio * side(test_input), max(side(p.output) for p in train))
        bound.append(min(MAX_SIDE, math.ceil(BUDGET_MARGIN * base - 1e-9)))
    return bound[0], bound[1]


def output_budget(
    train: Sequence[Pair], test_input: Grid, encoder: str, count_tokens: Callable[[str], int]
) -> int:
    """max_tokens for one prompt: the tokens of a grid of ``output_shape_bound`` size, its EOS and one spare.

    Counted on two fillings (zeros and mixed digits) so a tokenizer that merges repeated digits cannot
    make the budget smaller than a real grid of that size.
    """
    h, w = output_shape_bound(train, test_input)
    fills = ([[0] * w for _ in range(h)], [[(3 * r + c) % 10 for c in range(w)] for r in range(h)])
    return max(count_tokens(build_target(g, encoder)) for g in fills) + 2


def build_prompts(
    tasks: Sequence[Task],
    adapters: dict[str, Adapter | None],
    cfg: InferenceConfig,
    encoder: str,
    count_tokens: Callable[[str], int],
    encode: Callable[[str], list[int]] | None = None,
) -> tuple[list[Prompt], list[dict[str, Any]]]:
    """Prompts for all tasks x augmentations x test inputs, and a skip_record for each one that does not fit.

    ``max_tokens`` per prompt: ``cfg.max_tokens`` when set, else :func:`output_budget`. Examples are dropped
    from the end until prompt + max_tokens fit ``cfg.max_model_len`` (as training does). ``encode``, when
    given, turns each prompt into the token ids sent to the engine.
    """
    prompts: list[Prompt] = []
    skipped: list[dict[str, Any]] = []
    for task in tasks:
        for aug in augmentations_for(task, cfg):
            t = aug.apply_task(task)
            for i, test_in in enumerate(t.test_inputs):
                budget = cfg.max_tokens or output_budget(t.train, test_in, encoder, count_tokens)
                text = fit_examples(t.train, test_in, budget, count_tokens, cfg.max_model_len, encoder)
                if text is None:
                    reason = (
                        f"prompt with one example + max_tokens={budget} does not fit "
                        f"inference.max_model_len={cfg.max_model_len}"
                    )
                    skipped.append(skip_record(task.id, i, aug.key, reason))
                    continue
                ids = tuple(encode(text)) if encode is not None else None
                prompts.append(Prompt(task.id, i, aug.key, text, budget, adapters.get(task.id), ids))
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
        GenRequest(
            p.text, p.adapter.path if p.adapter else None, p.adapter.key if p.adapter else None, p.token_ids
        )
        for p in prompts
    ]
    return engine.generate(
        reqs,
        max_tokens=[p.max_tokens for p in prompts],
        n=cfg.n,
        temperature=cfg.temperature,
        stop=STOP_STRINGS,
        progress=progress,
    )


CANDIDATE_COLUMNS = (
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
    "skip_reason",
)


def collect(
    tasks: Sequence[Task],
    prompts: Sequence[Prompt],
    results: Sequence[Sequence],
    encoder: str,
    skipped: Sequence[dict[str, Any]] = (),
) -> Predictions:
    """Parse every generation into a candidate, vote per test input, and build the candidates table.

    A generation stopped by its token limit counts only if its grid is known to be complete
    (``parse_output(..., length_stop=True)``). Each skip_record becomes a row with error "skipped" and
    its ``skip_reason``.
    """
    rows: dict[str, list] = {k: [] for k in CANDIDATE_COLUMNS}

    def add(values: dict[str, Any]) -> None:
        for k in CANDIDATE_COLUMNS:
            rows[k].append(values.get(k))

    cands: dict[tuple[str, int], list[Candidate]] = {}
    out_tokens = 0
    for p, outs in zip(prompts, results):
        for j, r in enumerate(outs):
            parsed = parse_output(r.text, encoder, length_stop=r.finish_reason == "length")
            error = parsed.kind if isinstance(parsed, ParseError) else None
            grid = None if error else parsed
            cands.setdefault((p.task_id, p.test_index), []).append(
                Candidate(p.aug_key, grid, r.logprob, r.n_tokens, error)
            )
            out_tokens += r.n_tokens
            add(
                {
                    "task_id": p.task_id,
                    "test_index": p.test_index,
                    "aug_key": p.aug_key,
                    "adapter_key": p.adapter.key if p.adapter else None,
                    "fallback": p.adapter is None,
                    "sample": j,
                    "text": r.text,
                    "grid": json.dumps(grid) if grid else None,
                    "error": error,
                    "logprob": r.logprob,
                    "n_tokens": r.n_tokens,
                    "finish_reason": r.finish_reason,
                }
            )
    for rec in skipped:
        add({**rec, "error": "skipped", "skip_reason": rec["reason"], "n_tokens": 0})
    attempts = {
        t.id: [vote(cands.get((t.id, i), []), top_k=2) for i in range(len(t.test_inputs))] for t in tasks
    }
    fallback = {p.task_id for p in prompts if p.adapter is None}
    schema = pa.schema(
        [
            ("task_id", pa.string()),
            ("test_index", pa.int64()),
            ("aug_key", pa.string()),
            ("adapter_key", pa.string()),
            ("fallback", pa.bool_()),
            ("sample", pa.int64()),
            ("text", pa.string()),
            ("grid", pa.string()),
            ("error", pa.string()),
            ("logprob", pa.float64()),
            ("n_tokens", pa.int64()),
            ("finish_reason", pa.string()),
            ("skip_reason", pa.string()),
        ]
    )
    return Predictions(
        pa.table(rows, schema=schema), attempts, fallback, output_tokens=out_tokens, skipped=list(skipped)
    )


def merge_predictions(parts: Sequence[Predictions]) -> Predictions:
    """One Predictions from the predictions of disjoint task shards (one per engine)."""
    return Predictions(
        candidates=pa.concat_tables([p.candidates for p in parts], promote_options="default"),
        attempts={k: v for p in parts for k, v in p.attempts.items()},
        fallback=set().union(*(p.fallback for p in parts)),
        seconds=max((p.seconds for p in parts), default=0.0),
        output_tokens=sum(p.output_tokens for p in parts),
        skipped=[s for p in parts for s in p.skipped],
    )


def predict(
    engine,
    tasks: Sequence[Task],
    adapters: dict[str, Adapter | None],
    cfg: InferenceConfig,
    encoder: str,
    count_tokens: Callable[[str], int] | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
) -> Predictions:
    """Predict every test output of `tasks` in one engine pass and vote over augmentations.

    Prompts go to the engine as ``samples.prompt_token_ids`` of its tokenizer (the ids training uses);
    ``count_tokens`` measures prompts when fitting examples (default: the length of those ids). Progress
    lines (:class:`InferenceProgress`) go to stderr every ``progress_interval_s``.
    """
    t0 = time.perf_counter()
    tok = engine.tokenizer

    def encode(text: str) -> list[int]:
        return prompt_token_ids(tok, text)

    prompts, skipped = build_prompts(
        tasks, adapters, cfg, encoder, count_tokens or (lambda s: len(encode(s))), encode
    )
    for task_id, n in collections.Counter(r["task_id"] for r in skipped).items():  # once per task
        warn(f"task {task_id}: {n} prompts do not fit inference.max_model_len={cfg.max_model_len}; skipped")
    results = generate(engine, prompts, cfg, InferenceProgress(len(prompts), progress_interval_s))
    preds = collect(tasks, prompts, results, encoder, skipped)
    preds.seconds = time.perf_counter() - t0
    return preds


def write_predictions(preds: Predictions, out_dir: str | Path) -> None:
    """predictions.parquet (every candidate) and submission.json (Kaggle format)."""
    from ttft.scoring import write_submission

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(preds.candidates, out / "predictions.parquet")
    write_submission(out / "submission.json", preds.submission())
