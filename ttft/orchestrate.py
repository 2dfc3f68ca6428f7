"""Ray scheduling of fine-tunes: a pool of actors, a queue, retries, resume, a time budget, progress.

The driver computes every job's registry key, skips keys the registry already holds (resume), and
feeds the rest to `FinetuneWorker` actors, one job in flight per actor (backpressure). Each actor
loads the base model once and trains job after job. A dead actor's job goes back to the queue and a
replacement starts; a job that raises is retried, then recorded in the registry as failed. With a
budget, per-job steps shrink as the measured time per step says they must, and a job that cannot
finish before the deadline is not started. Only this module (and jobs/) imports Ray.
"""

from __future__ import annotations

import collections
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import pyarrow as pa
import ray
from ray.exceptions import RayActorError, RayTaskError

from ttft.config import OrchestrateConfig, RegistryConfig, RunConfig, parse_duration, ttft_hash
from ttft.finetune import FinetuneJob, Finetuner, make_jobs
from ttft.inference import Adapter, Predictions, predict
from ttft.model import base_model_path, model_identity
from ttft.registry import AdapterRegistry
from ttft.tasks import Task

WORKER_NAMESPACE = "ttft"


def open_registry(cfg: RegistryConfig) -> AdapterRegistry:
    """The run's adapter registry (local path or s3://, endpoint from config or AWS_ENDPOINT_URL)."""
    return AdapterRegistry(cfg.root, s3_endpoint=cfg.s3_endpoint)


@ray.remote
class FinetuneWorker:
    """A Ray actor holding one base model; trains and registers one adapter per call."""

    def __init__(self, cfg: RunConfig, torch_threads: int | None):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per actor drowns the progress lines
        self.cfg = cfg
        # cap this actor at its share of the GPU (fractional num_gpus); peak memory is reset per job
        gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
        self.finetuner = Finetuner(cfg.model, cfg.ttft, torch_threads=torch_threads, gpu_fraction=gpus)
        self.registry = open_registry(cfg.registry)

    def ready(self) -> str:
        return socket.gethostname()

    def run(self, job: FinetuneJob, attempt: int) -> dict[str, Any]:
        """Train `job`, put the adapter in the registry, return its metrics."""
        work = tempfile.mkdtemp(prefix=f"ttft-{job.key[:8]}-")
        try:
            result = self.finetuner.train(job, work)
            self.registry.put(
                job.key, work, result.registry_row(self.cfg.name, self.cfg.model, self.cfg.ttft, attempt)
            )
            return result.to_row()
        finally:
            shutil.rmtree(work, ignore_errors=True)


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
    row: dict[str, Any] | None = None


@dataclass
class FinetuneSummary:
    """The fine-tune stage of a run: per-job outcomes and totals."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    deadline_s: float | None = None

    def by_status(self, status: str) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(o.status for o in self.outcomes))

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
        return "\n".join(lines)


class Progress:
    """Console progress: done / failed / running / remaining, tasks per hour, ETA."""

    def __init__(self, total: int, interval_s: float, out: TextIO = sys.stderr):
        self.total, self.interval, self.out = total, interval_s, out
        self.t0 = time.monotonic()
        self.last = 0.0

    def line(self, done: int, failed: int, running: int) -> str:
        elapsed = time.monotonic() - self.t0
        finished = done + failed
        rate = finished / elapsed * 3600 if elapsed > 0 else 0.0
        remaining = self.total - finished
        eta = remaining / (finished / elapsed) if finished else float("nan")
        eta_s = f"{eta:.0f}s" if math.isfinite(eta) else "?"
        return (
            f"[ttft] fine-tune {finished}/{self.total} done={done} failed={failed} running={running} "
            f"remaining={remaining} | {rate:.1f} tasks/h | elapsed {elapsed:.0f}s | ETA {eta_s}"
        )

    def tick(self, done: int, failed: int, running: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            print(self.line(done, failed, running), file=self.out, flush=True)


def pool_size(orc: OrchestrateConfig, n_jobs: int) -> int:
    """Actors that the cluster's current resources hold (or `orc.workers`), at most one per job."""
    if orc.workers:
        return max(1, min(orc.workers, n_jobs))
    res = ray.cluster_resources()
    if orc.gpus_per_worker > 0:
        fit = int(res.get("GPU", 0) / orc.gpus_per_worker)
    else:
        fit = int(res.get("CPU", 1) / max(orc.cpus_per_worker, 1e-9))
    return max(1, min(fit, n_jobs))


class BudgetPlanner:
    """Estimates time per step from finished jobs and shrinks the steps of jobs still to start."""

    def __init__(self, deadline: float | None, min_steps: int):
        self.deadline = deadline  # time.monotonic() value
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def run_finetunes(
    cfg: RunConfig,
    tasks: Sequence[Task],
    *,
    out: TextIO = sys.stderr,
    on_result: Callable[[JobOutcome], None] | None = None,
    start_time: float | None = None,
) -> FinetuneSummary:
    """Fine-tune every task (or group) of `tasks` on the Ray cluster; ray.init must have been called.

    Returns per-job outcomes. Never raises for a failing job: it is retried `orchestrate.retries` times,
    then recorded as failed in the registry and in the summary.
    """
    t_start = start_time if start_time is not None else time.monotonic()
    orc = cfg.orchestrate
    summary = FinetuneSummary()
    if not cfg.ttft.enabled or not tasks:
        return summary
    registry = open_registry(cfg.registry)
    identity = model_identity(base_model_path(cfg.model))
    jobs = make_jobs(tasks, identity, cfg.model, cfg.ttft, orc.group_size)
    existing = registry.exists([j.key for j in jobs])
    outcomes: dict[str, JobOutcome] = {}
    queue: collections.deque[FinetuneJob] = collections.deque()
    for job in jobs:
        if job.key in existing:
            outcomes[job.key] = JobOutcome(job.key, job.task_ids, "reused")
        else:
            queue.append(job)
    print(
        f"[ttft] {len(jobs)} fine-tune jobs: {len(existing)} found in the registry, {len(queue)} to train",
        file=out,
        flush=True,
    )

    deadline = None
    if orc.budget:
        deadline = t_start + parse_duration(orc.budget) * (1 - orc.inference_share)
        summary.deadline_s = deadline - t_start
    planner = BudgetPlanner(deadline, orc.min_steps)
    threads = orc.torch_threads or max(1, int(orc.cpus_per_worker))

    def new_actor(i: int) -> Any:
        name = f"worker-{cfg.name}-{i}-{os.getpid()}"
        return FinetuneWorker.options(
            name=name,
            namespace=WORKER_NAMESPACE,
            num_cpus=orc.cpus_per_worker,
            num_gpus=orc.gpus_per_worker,
            max_concurrency=1,
        ).remote(cfg, threads)

    actors: dict[int, Any] = {}
    next_id = 0
    idle: collections.deque[int] = collections.deque()
    in_flight: dict[Any, tuple[int, FinetuneJob]] = {}
    attempts: collections.Counter[str] = collections.Counter()
    deaths: collections.Counter[str] = collections.Counter()
    progress = Progress(len(queue), orc.progress_interval_s, out)
    done = failed = 0

    def grow() -> None:
        nonlocal next_id
        want = pool_size(orc, len(queue) + len(in_flight))
        while len(actors) < want and queue:
            actors[next_id] = new_actor(next_id)
            idle.append(next_id)
            next_id += 1

    def finish(job: FinetuneJob, outcome: JobOutcome) -> None:
        outcomes[job.key] = outcome
        if on_result:
            on_result(outcome)

    grow()
    summary.workers = len(actors)
    try:
        while queue or in_flight:
            while idle and queue:
                job = queue.popleft()
                steps, max_s = planner.plan(
                    _planned(outcomes, cfg), len(queue) + 1, len(actors), time.monotonic()
                )
                if steps == 0:
                    finish(
                        job,
                        JobOutcome(
                            job.key,
                            job.task_ids,
                            "skipped",
                            error="not started: cannot finish before the time budget's deadline",
                        ),
                    )
                    continue
                job.steps, job.max_seconds = steps, max_s
                aid = idle.popleft()
                attempts[job.key] += 1
                in_flight[actors[aid].run.remote(job, attempts[job.key])] = (aid, job)
            if not in_flight:
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=min(orc.progress_interval_s, 5.0))
            for ref in ready:
                aid, job = in_flight.pop(ref)
                try:
                    row = ray.get(ref)
                except RayActorError as e:  # the actor died (node lost, OOM kill, ray.kill): requeue the job
                    deaths[job.key] += 1
                    attempts[job.key] -= 1
                    actors.pop(aid, None)
                    print(
                        f"[ttft] worker {aid} died running {','.join(job.task_ids)}; requeued "
                        f"({_describe(e)})",
                        file=out,
                        flush=True,
                    )
                    if deaths[job.key] > orc.retries + 1:
                        failed += 1
                        err = f"worker died {deaths[job.key]} times: {_describe(e)}"
                        registry.put_failed(job.key, _failed_row(cfg, job, attempts[job.key]), err)
                        finish(job, JobOutcome(job.key, job.task_ids, "failed", attempts[job.key], err))
                    else:
                        queue.appendleft(job)
                    grow()
                    continue
                except Exception as e:  # the job raised: retry, then record as failed
                    idle.append(aid)
                    if attempts[job.key] <= orc.retries:
                        queue.append(job)
                        continue
                    failed += 1
                    err = _describe(e)
                    registry.put_failed(job.key, _failed_row(cfg, job, attempts[job.key]), err)
                    finish(job, JobOutcome(job.key, job.task_ids, "failed", attempts[job.key], err))
                    continue
                idle.append(aid)
                planner.observe(row)
                done += 1
                finish(
                    job,
                    JobOutcome(
                        job.key,
                        job.task_ids,
                        "trained",
                        attempts[job.key],
                        steps=row["steps"],
                        planned_steps=row["planned_steps"],
                        seconds=row["seconds"],
                        reduced=bool(row["reduced"]),
                        row=row,
                    ),
                )
            grow()
            progress.tick(done, failed, len(in_flight))
        progress.tick(done, failed, 0, force=True)
    finally:
        for handle in actors.values():
            ray.kill(handle, no_restart=True)
    summary.outcomes = [outcomes[j.key] for j in jobs]
    summary.seconds = time.monotonic() - t_start
    return summary


def _planned(outcomes: dict[str, JobOutcome], cfg: RunConfig) -> int:
    """Planned steps of a job: the config's, or with `epochs`, the latest finished job's plan."""
    if cfg.ttft.optim.epochs is not None:
        for o in reversed(list(outcomes.values())):
            if o.planned_steps:
                return o.planned_steps
    return cfg.ttft.optim.steps


def _failed_row(cfg: RunConfig, job: FinetuneJob, attempts: int) -> dict[str, Any]:
    return {
        "task_ids": job.task_ids,
        "run": cfg.name,
        "base_model": cfg.model.name,
        "base_revision": cfg.model.revision,
        "config_hash": ttft_hash(cfg.ttft),
        "attempt": attempts,
    }


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """Join the cluster at `address` / $RAY_ADDRESS, or start a local one (the embedded default)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("TTFT_", "AWS_", "HF_"))}}
    if address:
        ray.init(address=address, runtime_env=env, **kwargs)
    else:  # "local": never attach to some other cluster that happens to run on this machine
        ray.init(address="local", num_cpus=num_cpus, runtime_env=env, **kwargs)


def task_adapters(
    cfg: RunConfig, tasks: Sequence[Task], registry: AdapterRegistry
) -> dict[str, Adapter | None]:
    """Each task's adapter from the registry (downloaded to the local cache), None where missing or failed."""
    if not cfg.ttft.enabled:
        return {t.id: None for t in tasks}
    identity = model_identity(base_model_path(cfg.model))
    jobs = make_jobs(tasks, identity, cfg.model, cfg.ttft, cfg.orchestrate.group_size)
    ok = registry.exists([j.key for j in jobs])
    adapters: dict[str, Adapter | None] = {}
    for job in jobs:
        adapter = Adapter(job.key, str(registry.get(job.key))) if job.key in ok else None
        for tid in job.task_ids:
            adapters[tid] = adapter
    return adapters


def _predict_local(cfg: RunConfig, tasks: Sequence[Task], adapters: dict[str, Adapter | None]) -> Predictions:
    """One vLLM engine in this process over all tasks."""
    from transformers import AutoTokenizer

    from ttft.vllm_engine import VllmEngine

    model_dir = base_model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    inf = cfg.inference
    n_adapters = len({a.key for a in adapters.values() if a})
    engine = VllmEngine(
        model_dir,
        enable_lora=n_adapters > 0,
        max_lora_rank=max(8, cfg.ttft.lora.rank),
        max_loras=max(1, min(inf.max_loras, n_adapters)),
        max_cpu_loras=inf.max_cpu_loras or n_adapters + 1,
        max_model_len=inf.max_model_len,
        gpu_memory_utilization=inf.gpu_memory_utilization,
        seed=inf.seed,
    )
    try:
        return predict(
            engine,
            tasks,
            adapters,
            inf,
            cfg.ttft.samples.encoder,
            lambda s: len(tok(s, add_special_tokens=False).input_ids),
        )
    finally:
        engine.close()


@ray.remote(num_gpus=1)
class InferenceWorker:
    """One vLLM engine on one GPU, predicting a shard of the tasks."""

    def predict(self, cfg: RunConfig, tasks: list[Task], adapters: dict[str, Adapter | None]) -> Predictions:
        return _predict_local(cfg, tasks, adapters)


def run_inference(cfg: RunConfig, tasks: Sequence[Task], adapters: dict[str, Adapter | None]) -> Predictions:
    """Predict all tasks: one engine per GPU as Ray actors over task shards, or one local engine on CPU."""
    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
    engines = cfg.inference.engines or gpus
    if engines <= 1 or gpus == 0:
        return _predict_local(cfg, tasks, adapters)
    shards = [list(tasks[i::engines]) for i in range(engines)]
    workers = [InferenceWorker.remote() for _ in shards]
    parts = ray.get(
        [w.predict.remote(cfg, s, {t.id: adapters.get(t.id) for t in s}) for w, s in zip(workers, shards)]
    )
    return Predictions(
        candidates=pa.concat_tables([p.candidates for p in parts]),
        attempts={k: v for p in parts for k, v in p.attempts.items()},
        fallback=set().union(*(p.fallback for p in parts)),
        seconds=max(p.seconds for p in parts),
        output_tokens=sum(p.output_tokens for p in parts),
    )
