"""Decisions of the fine-tune pool, without Ray: pool target, dispatch, retry, worker death, budget.

`Scheduler` is a plain state machine. `ttft.orchestrate` feeds it events from Ray (a worker is ready, a
job returned, raised, or its worker died) and carries out what it decides (start a worker, send a job,
record a failure); `bench/scale.py` drives the same object with simulated time. Nothing here imports Ray,
so every decision is a unit test.
"""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ttft.finetune import FinetuneJob


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
    """Estimates time per step from finished jobs and shrinks the steps of jobs still to start."""

    def __init__(self, deadline: float | None, min_steps: int):
        self.deadline = deadline  # a clock value, same clock as `now` in plan()
        self.min_steps = min_steps
        self.per_step: list[float] = []
        self.overhead: list[float] = []

    def observe(self, row: dict[str, Any]) -> None:
        """Learn from a finished job: seconds per train step, and seconds outside the steps."""
        if row.get("steps") and row.get("train_seconds"):
            self.per_step.append(row["train_seconds"] / row["steps"])
            self.overhead.append(max(0.0, row["seconds"] - row["train_seconds"]))

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
        sps = statistics.median(self.per_step)
        overhead = statistics.median(self.overhead)
        steps = min(planned, int((share - overhead) / sps))
        if steps < self.min_steps:
            if overhead + self.min_steps * sps > left:
                return 0, None
            steps = self.min_steps
        return steps, max(share, overhead + steps * sps)


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
    ):
        self.jobs = list(jobs)
        self.retries = retries
        self.target = target_workers
        self.planner = planner or BudgetPlanner(None, 1)
        self.planned_steps = planned_steps
        self.outcomes: dict[str, JobOutcome] = {}
        self.queue: collections.deque[FinetuneJob] = collections.deque()
        for job in self.jobs:
            if job.key in existing:
                self.outcomes[job.key] = JobOutcome(job.key, job.task_ids, "reused")
            else:
                self.queue.append(job)
        self.to_train = len(self.queue)
        self.starting: set[int] = set()
        self.idle: collections.deque[int] = collections.deque()
        self.busy: dict[int, FinetuneJob] = {}
        self.node_of: dict[int, str] = {}
        self.attempts: collections.Counter[str] = collections.Counter()
        self.deaths: collections.Counter[str] = collections.Counter()
        self.started_ever = 0
        self.start_failures = 0
        self._next_id = 0

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
        c = collections.Counter(o.status for o in self.outcomes.values())
        return c["trained"], c["failed"] + c["skipped"]

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
            steps, max_s = self.planner.plan(self._planned(), len(self.queue) + 1, self.ready_workers, now)
            if steps == 0:
                self.outcomes[job.key] = out = JobOutcome(
                    job.key,
                    job.task_ids,
                    "skipped",
                    self.attempts[job.key],
                    error="not started: cannot finish before the time budget's deadline",
                    requeues=self.deaths[job.key],
                )
                skipped.append(out)
                continue
            job.steps, job.max_seconds = steps, max_s
            wid = self.idle.popleft()
            self.attempts[job.key] += 1
            self.busy[wid] = job
            sent.append(Dispatch(wid, job, self.attempts[job.key]))
        return sent, skipped

    def _planned(self) -> int:
        """Planned steps of a job: the config's, or (epochs: `planned_steps` None) the latest job's plan."""
        if self.planned_steps is not None:
            return self.planned_steps
        for o in reversed(list(self.outcomes.values())):
            if o.planned_steps:
                return o.planned_steps
        return 0

    # ---- results -------------------------------------------------------------------------------------
    def succeeded(self, wid: int, row: dict[str, Any]) -> JobOutcome:
        """Worker `wid` returned its job's metrics row."""
        job = self.busy.pop(wid)
        self.idle.append(wid)
        self.planner.observe(row)
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
        self.outcomes[job.key] = out
        return out

    def raised(self, wid: int, error: str) -> JobOutcome | None:
        """Worker `wid`'s job raised: requeue it (None) or, out of retries, its `failed` outcome."""
        job = self.busy.pop(wid)
        self.idle.append(wid)
        if self.attempts[job.key] <= self.retries:
            self.queue.append(job)
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
        if job is None:
            return None, None
        self.deaths[job.key] += 1
        self.attempts[job.key] -= 1  # not the job's fault
        if self.deaths[job.key] > self.retries + 1:
            return job, self._fail(job, f"worker died {self.deaths[job.key]} times: {error}")
        self.queue.appendleft(job)
        return job, None

    def _fail(self, job: FinetuneJob, error: str) -> JobOutcome:
        out = JobOutcome(
            job.key, job.task_ids, "failed", self.attempts[job.key], error, requeues=self.deaths[job.key]
        )
        self.outcomes[job.key] = out
        return out

    def summary_outcomes(self) -> list[JobOutcome]:
        """Every job's outcome in job order (a job never reached is `skipped`)."""
        return [
            self.outcomes.get(j.key)
            or JobOutcome(j.key, j.task_ids, "skipped", error="not started: the run stopped first")
            for j in self.jobs
        ]
