"""Decisions of the fine-tune pool, without Ray: pool target, dispatch, retry, worker death, budget.

`Scheduler` is a plain state machine. `ttft.orchestrate` feeds it events from Ray (a worker is ready, a
job returned, raised, or its worker died) and carries out what it decides (start a worker, send a job,
record a failure); `bench/scale.py` drives the same object with simulated time. Nothing here imports Ray,
so every decision is a unit test.

Size-aware ordering: `job_cost` predicts a job's training tokens from its tasks and the config (characters
of its unaugmented splits, no model needed); the scheduler starts the largest predicted jobs first
(longest-processing-time order, `orchestrate.order: size`) so the pool does not idle at the end while the
longest fine-tunes finish, and the budget planner sizes each job from its own predicted cost.
"""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttft.config import ORDERS, TTFTConfig
from ttft.finetune import FinetuneJob
from ttft.formats import build_target
from ttft.samples import fit_examples, splits
from ttft.tasks import Task

WINDOW = 256  # the planner's medians cover the latest WINDOW finished jobs (O(1) per decision at any N)
DEADLINE_SAFETY = 0.98  # the budget plans to fill this share of the pool's time left (the list's tail)


@dataclass(frozen=True)
class JobCost:
    """A job's predicted size: the optimizer steps it plans and its training tokens over them."""

    steps: int
    tokens: float

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / max(1, self.steps)


def job_cost(tasks: Sequence[Task], cfg: TTFTConfig) -> JobCost:
    """Predicted steps and training tokens of one job (one task or a group), without a model.

    Tokens are counted as characters (the ARC encoders' digits, spaces and newlines are a token each in
    character-level and Qwen-style tokenizers) of each unaugmented split fitted to `max_seq_len`:
    augmentations permute cells and examples, so they barely change a sample's length. Steps follow
    `optim.steps`, or `epochs` over the predicted number of samples. About 1 ms per task.
    """
    sc, o = cfg.samples, cfg.optim
    total_len, n_samples = 0.0, 0
    for task in tasks:
        lens = []
        for split in splits(task.train, sc.mode):
            target = build_target(split.query.output, sc.encoder)
            prompt = fit_examples(
                split.examples, split.query.input, len(target) + 1, len, sc.max_seq_len, sc.encoder
            )
            if prompt is not None:
                lens.append(len(prompt) + len(target) + 1)
        if lens:
            n = min(sc.max_per_task, len(lens) * cfg.augment.per_split)
            n_samples += n
            total_len += n * sum(lens) / len(lens)
    per_step = o.batch_size * o.grad_accum
    if o.epochs is not None:
        steps = max(1, math.ceil(o.epochs * n_samples / per_step))
    else:
        steps = o.steps
    mean_len = total_len / n_samples if n_samples else 0.0
    return JobCost(steps, steps * per_step * mean_len)


@dataclass
class JobOutcome:
    """What happened to one job in this run."""

    key: str
    task_ids: list[str]
    status: str  # trained | reused | failed | skipped
    attempts: int = 0
    error: str | None = None
    steps: int | None = None
    planned_steps: int | None = None
    seconds: float | None = None
    reduced: bool = False
    requeues: int = 0  # times its worker died under it and it went back to the queue
    node: str | None = None  # where it was trained
    row: dict[str, Any] | None = None


@dataclass
class FinetuneSummary:
    """The fine-tune stage of a run: per-job outcomes and totals."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    deadline_s: float | None = None
    registry_errors: list[str] = field(default_factory=list)  # failures to record an outcome in the registry

    def by_status(self, status: str) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(o.status for o in self.outcomes))

    @property
    def nodes(self) -> dict[str, int]:
        """Trained jobs per node."""
        return dict(collections.Counter(o.node for o in self.outcomes if o.node))

    def text(self) -> str:
        c = self.counts
        lines = [
            f"fine-tune: {len(self.outcomes)} jobs, {c.get('trained', 0)} trained, "
            f"{c.get('reused', 0)} reused, "
            f"{c.get('failed', 0)} failed, {c.get('skipped', 0)} skipped; {self.workers} workers, "
            f"{self.seconds:.1f}s"
        ]
        for o in self.by_status("failed") + self.by_status("skipped"):
            lines.append(f"  {o.status}: {','.join(o.task_ids)}: {o.error}")
        for o in self.outcomes:
            if o.reduced:
                lines.append(f"  reduced: {','.join(o.task_ids)}: {o.steps}/{o.planned_steps} steps (budget)")
            if o.requeues:
                lines.append(f"  requeued: {','.join(o.task_ids)}: {o.requeues}x after a worker died")
        lines += [f"  registry error: {e}" for e in self.registry_errors]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The summary as plain data (finetune.json), without the per-job metric rows."""
        return {
            "counts": self.counts,
            "seconds": self.seconds,
            "workers": self.workers,
            "nodes": self.nodes,
            "registry_errors": self.registry_errors,
            "outcomes": [{k: v for k, v in vars(o).items() if k != "row"} for o in self.outcomes],
        }


class BudgetPlanner:
    """Estimates job durations from finished jobs and shrinks the steps of jobs still to start.

    Jobs with a predicted cost (`JobCost`) are planned from seconds per predicted token (`plan_cost`);
    jobs without one from the median seconds per step (`plan`). Medians cover the latest WINDOW jobs.
    """

    def __init__(self, deadline: float | None, min_steps: int):
        self.deadline = deadline  # a clock value, same clock as `now` in plan()
        self.min_steps = min_steps
        self.per_step: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.overhead: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.per_token: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self._medians: tuple[float, float, float | None] | None = None

    def observe(self, row: dict[str, Any], cost: JobCost | None = None) -> None:
        """Learn from a finished job: seconds per train step (and per predicted token), seconds outside."""
        if row.get("steps") and row.get("train_seconds"):
            self.per_step.append(row["train_seconds"] / row["steps"])
            self.overhead.append(max(0.0, row["seconds"] - row["train_seconds"]))
            if cost is not None and cost.tokens > 0:
                self.per_token.append(row["train_seconds"] / (cost.tokens_per_step * row["steps"]))
            self._medians = None

    def medians(self) -> tuple[float, float, float | None]:
        """(seconds per step, overhead seconds, seconds per predicted token or None); needs one job."""
        if self._medians is None:
            self._medians = (
                statistics.median(self.per_step),
                statistics.median(self.overhead),
                statistics.median(self.per_token) if self.per_token else None,
            )
        return self._medians

    def job_seconds(self, cost: JobCost, steps: int | None = None) -> float | None:
        """Predicted wall seconds of a job at `steps` (default: its planned steps); None until measured."""
        if not self.per_step:
            return None
        _, overhead, per_token = self.medians()
        if per_token is None:
            return None
        return overhead + per_token * cost.tokens_per_step * (cost.steps if steps is None else steps)

    def plan(self, planned: int, queued: int, workers: int, now: float) -> tuple[int | None, float | None]:
        """(steps, max_seconds) for the next job; steps 0 means it cannot finish before the deadline.

        Jobs still to start share the remaining time across the pool; each gets at most its share as a
        hard time cap, and once time per step is measured, its steps are cut to fit that share.
        """
        if self.deadline is None:
            return None, None
        left = self.deadline - now
        if left <= 0:
            return 0, None
        share = left / max(1, math.ceil(queued / max(1, workers)))
        if not self.per_step:
            return None, share
        sps, overhead, _ = self.medians()
        steps = min(planned, int((share - overhead) / sps))
        if steps < self.min_steps:
            if overhead + self.min_steps * sps > left:
                return 0, None
            steps = self.min_steps
        return steps, max(share, overhead + steps * sps)

    def plan_cost(
        self, cost: JobCost, *, queued_tokens: float, workers: int, queued: int, busy_s: float, now: float
    ) -> tuple[int | None, float | None]:
        """(steps or None = as planned, max_seconds) for a job of predicted `cost`; steps 0: skip it.

        `queued_tokens` is the predicted tokens of the jobs still to start (this one included), `queued`
        their number, `busy_s` the predicted seconds the running jobs still need. Before any job has
        finished, the job's time cap is its cost's share of the pool's time left. Then every job still to
        start is cut by the same factor, so that all of them fit the pool's time left; a job that cannot
        finish before the deadline (even at `min_steps`) is not started, and its time cap stops it there.
        """
        if self.deadline is None:
            return None, None
        left = self.deadline - now
        if left <= 0:
            return 0, None
        seconds = self.job_seconds(cost)
        if seconds is None:  # nothing measured yet: a time cap only
            share = left * max(1, workers) * cost.tokens / max(queued_tokens, cost.tokens, 1e-9)
            return None, min(left, share)
        _, overhead, per_token = self.medians()
        assert per_token is not None
        step_s = per_token * cost.tokens_per_step
        train_s = per_token * queued_tokens  # the queue's training at full steps
        room = max(1, workers) * left * DEADLINE_SAFETY - busy_s - queued * overhead
        steps: int | None = None
        if train_s > 0 and room < train_s:
            steps = max(self.min_steps, int(cost.steps * max(0.0, room) / train_s))
        # the deadline guard: the time cap leaves room for one more step and the work after training
        cap = left - step_s - overhead
        run = cost.steps if steps is None else steps
        if overhead + run * step_s > cap:
            run = int((cap - overhead) / step_s) if step_s > 0 else -1
            if run < self.min_steps:
                return 0, None
            steps = min(run, cost.steps)
        return steps, cap


def pool_target(
    n_jobs: int,
    *,
    workers: int | None,
    max_workers: int | None,
    cpus_per_worker: float,
    gpus_per_worker: float,
    cluster: dict[str, float],
) -> int:
    """How many fine-tune workers the run wants (what it asks the autoscaler for), at most one per job.

    `workers` is exact; else `max_workers` is the target (a `min_workers: 0` cluster grows towards it);
    else as many as the cluster's current resources hold.
    """
    if n_jobs <= 0:
        return 0
    if workers:
        return min(workers, n_jobs)
    if max_workers:
        return min(max_workers, n_jobs)
    if gpus_per_worker > 0:
        fit = int(cluster.get("GPU", 0) / gpus_per_worker + 1e-9)
    else:
        fit = int(cluster.get("CPU", 1) / max(cpus_per_worker, 1e-9) + 1e-9)
    return max(1, min(fit, n_jobs))


@dataclass
class Dispatch:
    """Send `job` (attempt number `attempt`) to worker `worker`."""

    worker: int
    job: FinetuneJob
    attempt: int


class PoolError(RuntimeError):
    """No worker could start (e.g. CUDA not visible where the config asks for a GPU)."""


class Scheduler:
    """The fine-tune pool's state: queue, workers (starting / idle / busy), attempts, outcomes.

    Event methods return what the caller must act on; the caller owns time (`now`), Ray and the registry.
    A job that raises is retried `retries` times, then failed. A worker that dies has its job requeued at
    the front (it does not count as an attempt) and is replaced; a job whose workers die more than
    `retries + 1` times fails. Workers that cannot start at all `retries + 1` times in a row, while none
    ever started, abort the run with the error (a configuration problem, not bad luck).

    `costs` (registry key -> `JobCost`) are the jobs' predicted sizes: with `order="size"` the queue
    starts with the largest (jobs without a cost keep their order, after the others), and the budget
    plans those jobs from their own cost. Every event costs O(1), and O(busy workers) under a budget.
    """

    def __init__(
        self,
        jobs: Sequence[FinetuneJob],
        *,
        existing: set[str] = frozenset(),  # type: ignore[assignment]
        retries: int,
        target_workers: int,
        planner: BudgetPlanner | None = None,
        planned_steps: int | None = None,  # the config's steps; None when they follow from `epochs`
        costs: Mapping[str, JobCost] | None = None,
        order: str = "size",
    ):
        if order not in ORDERS:
            raise ValueError(f"orchestrate.order: {order!r} is not one of {list(ORDERS)}")
        self.jobs = list(jobs)
        self.retries = retries
        self.target = target_workers
        self.planner = planner or BudgetPlanner(None, 1)
        self.planned_steps = planned_steps
        self.costs: Mapping[str, JobCost] = costs or {}
        self.order = order
        self.outcomes: dict[str, JobOutcome] = {}
        self.status_counts: collections.Counter[str] = collections.Counter()
        self.queue: collections.deque[FinetuneJob] = collections.deque()
        todo = []
        for job in self.jobs:
            if job.key in existing:
                self._record(JobOutcome(job.key, job.task_ids, "reused"))
            else:
                todo.append(job)
        if order == "size" and self.costs:  # stable: equal costs keep their order; no cost goes last
            todo.sort(key=lambda j: -c.tokens if (c := self.costs.get(j.key)) is not None else math.inf)
        self.queue.extend(todo)
        self.queued_tokens = sum(c.tokens for j in todo if (c := self.costs.get(j.key)) is not None)
        self.to_train = len(self.queue)
        self.starting: set[int] = set()
        self.idle: collections.deque[int] = collections.deque()
        self.busy: dict[int, FinetuneJob] = {}
        self.started_at: dict[int, tuple[float, int | None]] = {}  # worker -> (dispatch time, steps sent)
        self.node_of: dict[int, str] = {}
        self.attempts: collections.Counter[str] = collections.Counter()
        self.deaths: collections.Counter[str] = collections.Counter()
        self.started_ever = 0
        self.start_failures = 0
        self._next_id = 0
        self._last_planned = 0

    # ---- state ---------------------------------------------------------------------------------------
    @property
    def live_workers(self) -> int:
        return len(self.starting) + len(self.idle) + len(self.busy)

    @property
    def ready_workers(self) -> int:
        return len(self.idle) + len(self.busy)

    @property
    def finished(self) -> bool:
        return not self.queue and not self.busy

    def counts(self) -> tuple[int, int]:
        """(trained, failed) so far among the jobs to train."""
        c = self.status_counts
        return c["trained"], c["failed"] + c["skipped"]

    def _record(self, out: JobOutcome) -> None:
        old = self.outcomes.get(out.key)
        if old is not None:
            self.status_counts[old.status] -= 1
        self.outcomes[out.key] = out
        self.status_counts[out.status] += 1

    def _enqueue(self, job: FinetuneJob, front: bool = False) -> None:
        if front:
            self.queue.appendleft(job)
        else:
            self.queue.append(job)
        cost = self.costs.get(job.key)
        if cost is not None:
            self.queued_tokens += cost.tokens

    # ---- pool ----------------------------------------------------------------------------------------
    def workers_to_start(self) -> list[int]:
        """Ids of new workers to start now: up to the target, never more than the jobs left to run."""
        want = min(self.target, len(self.queue) + len(self.busy))
        new = []
        while self.live_workers < want:
            wid = self._next_id
            self._next_id += 1
            self.starting.add(wid)
            new.append(wid)
        return new

    def worker_ready(self, wid: int, node: str) -> None:
        """Worker `wid` has loaded its model on `node` and takes jobs."""
        self.starting.discard(wid)
        self.node_of[wid] = node
        self.idle.append(wid)
        self.started_ever += 1
        self.start_failures = 0

    def worker_start_failed(self, wid: int, error: str) -> None:
        """Worker `wid` could not start (its constructor raised, or its node died while it started)."""
        self.starting.discard(wid)
        self.start_failures += 1
        if self.start_failures > self.retries:
            if not self.started_ever:
                raise PoolError(f"no fine-tune worker could start ({self.start_failures} tries): {error}")
            self.target = max(1, self.ready_workers)  # stop replacing workers that keep failing to start

    def retire_idle(self) -> list[int]:
        """Idle workers no longer needed (nothing left to dispatch): the caller stops them."""
        if self.queue:
            return []
        out = list(self.idle)
        self.idle.clear()
        return out

    # ---- dispatch ------------------------------------------------------------------------------------
    def dispatch(self, now: float) -> tuple[list[Dispatch], list[JobOutcome]]:
        """Assign queued jobs to idle workers: (dispatches, outcomes of jobs the budget can no longer fit)."""
        sent: list[Dispatch] = []
        skipped: list[JobOutcome] = []
        while self.idle and self.queue:
            job = self.queue.popleft()
            cost = self.costs.get(job.key)
            if cost is None:
                steps, max_s = self.planner.plan(
                    self._planned(), len(self.queue) + 1, self.ready_workers, now
                )
            else:
                steps, max_s = self.planner.plan_cost(
                    cost,
                    queued_tokens=self.queued_tokens,
                    # before a measurement, the pool being built (workers start one by one); then the pool
                    # that runs (workers the autoscaler has not delivered do not count)
                    workers=self.ready_workers if self.planner.per_token else self.live_workers,
                    queued=len(self.queue) + 1,
                    busy_s=self._busy_seconds(now),
                    now=now,
                )
                self.queued_tokens = max(0.0, self.queued_tokens - cost.tokens)
            if steps == 0:
                out = JobOutcome(
                    job.key,
                    job.task_ids,
                    "skipped",
                    self.attempts[job.key],
                    error="not started: cannot finish before the time budget's deadline",
                    requeues=self.deaths[job.key],
                )
                self._record(out)
                skipped.append(out)
                continue
            job.steps, job.max_seconds = steps, max_s
            wid = self.idle.popleft()
            self.attempts[job.key] += 1
            self.busy[wid] = job
            self.started_at[wid] = (now, steps)
            sent.append(Dispatch(wid, job, self.attempts[job.key]))
        return sent, skipped

    def _busy_seconds(self, now: float) -> float:
        """Predicted seconds the running jobs with a cost still need (0 without a budget or a measurement)."""
        if self.planner.deadline is None or not self.planner.per_token:
            return 0.0
        total = 0.0
        for wid, job in self.busy.items():
            cost = self.costs.get(job.key)
            if cost is not None:
                t0, steps = self.started_at[wid]
                total += max(0.0, t0 + (self.planner.job_seconds(cost, steps) or 0.0) - now)
        return total

    def _planned(self) -> int:
        """Planned steps of a job: the config's, or (epochs: `planned_steps` None) the latest job's plan."""
        if self.planned_steps is not None:
            return self.planned_steps
        return self._last_planned

    # ---- results -------------------------------------------------------------------------------------
    def succeeded(self, wid: int, row: dict[str, Any]) -> JobOutcome:
        """Worker `wid` returned its job's metrics row."""
        job = self.busy.pop(wid)
        self.started_at.pop(wid, None)
        self.idle.append(wid)
        self.planner.observe(row, self.costs.get(job.key))
        if row.get("planned_steps"):
            self._last_planned = row["planned_steps"]
        out = JobOutcome(
            job.key,
            job.task_ids,
            "trained",
            self.attempts[job.key],
            steps=row.get("steps"),
            planned_steps=row.get("planned_steps"),
            seconds=row.get("seconds"),
            reduced=bool(row.get("reduced")),
            requeues=self.deaths[job.key],
            node=self.node_of.get(wid),
            row=row,
        )
        self._record(out)
        return out

    def raised(self, wid: int, error: str) -> JobOutcome | None:
        """Worker `wid`'s job raised: requeue it (None) or, out of retries, its `failed` outcome."""
        job = self.busy.pop(wid)
        self.started_at.pop(wid, None)
        self.idle.append(wid)
        if self.attempts[job.key] <= self.retries:
            self._enqueue(job)
            return None
        return self._fail(job, error)

    def worker_died(self, wid: int, error: str) -> tuple[FinetuneJob | None, JobOutcome | None]:
        """Worker `wid` died (node lost, OOM): (its job, None) if requeued, else (job, failed outcome)."""
        self.node_of.pop(wid, None)
        if wid in self.starting:
            self.worker_start_failed(wid, error)
            return None, None
        if wid in self.idle:
            self.idle.remove(wid)
            return None, None
        job = self.busy.pop(wid, None)
        self.started_at.pop(wid, None)
        if job is None:
            return None, None
        self.deaths[job.key] += 1
        self.attempts[job.key] -= 1  # not the job's fault
        if self.deaths[job.key] > self.retries + 1:
            return job, self._fail(job, f"worker died {self.deaths[job.key]} times: {error}")
        self._enqueue(job, front=True)
        return job, None

    def _fail(self, job: FinetuneJob, error: str) -> JobOutcome:
        out = JobOutcome(
            job.key, job.task_ids, "failed", self.attempts[job.key], error, requeues=self.deaths[job.key]
        )
        self._record(out)
        return out

    def summary_outcomes(self) -> list[JobOutcome]:
        """Every job's outcome in job order (a job never reached is `skipped`)."""
        return [
            self.outcomes.get(j.key)
            or JobOutcome(j.key, j.task_ids, "skipped", error="not started: the run stopped first")
            for j in self.jobs
        ]
