"""Ray scheduling: the fine-tune pool and the inference engines, on a local Ray or a multi-node cluster.

The driver (which may run on a head node with no GPU and no disk shared with the workers) resolves the
base model's identity once, computes every job's registry key, skips keys the registry already holds
(resume), and runs the rest on `FinetuneWorker` actors, which load the base model once and train job after
job. `ttft.scheduler.Scheduler` makes every decision (pool target, dispatch, retry, worker death, budget);
this module only moves jobs and results through Ray. Inference runs in `InferenceWorker` actors, one vLLM
engine per GPU, whenever the cluster has (or will get) GPUs, and in the driver only when it has none.
Only registry keys cross a Ray boundary: every actor fetches what it needs into its own cache. Only this
module (and jobs/) imports Ray.
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import ray
from ray.exceptions import RayActorError, RayTaskError

from ttft.config import RegistryConfig, RunConfig, parse_duration, ttft_hash, vllm_max_lora_rank
from ttft.console import ray_init_kwargs, warn
from ttft.finetune import FinetuneJob, Finetuner, make_jobs
from ttft.inference import Adapter, Predictions, merge_predictions, predict
from ttft.model import base_model_path, model_identity
from ttft.registry import AdapterRegistry, RegistryError
from ttft.scheduler import (
    BudgetPlanner,
    FinetuneSummary,
    JobCost,
    JobOutcome,
    Scheduler,
    job_cost,
    pool_target,
)
from ttft.tasks import Task

WORKER_NAMESPACE = "ttft"
HEAD_RESOURCE = "node:__internal_head__"


def open_registry(cfg: RegistryConfig) -> AdapterRegistry:
    """The run's adapter registry (local path or s3://, endpoint from config or AWS_ENDPOINT_URL)."""
    return AdapterRegistry(cfg.root, s3_endpoint=cfg.s3_endpoint)


def this_node() -> str:
    """The Ray node id of the calling process (driver or actor)."""
    return ray.get_runtime_context().get_node_id()


def node_labels() -> dict[str, str]:
    """A readable label per alive Ray node id: `head` or `worker-N`, with its address."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    heads = [n for n in nodes if HEAD_RESOURCE in n.get("Resources", {})]
    workers = sorted(
        (n for n in nodes if n not in heads), key=lambda n: (n["NodeManagerAddress"], n["NodeID"])
    )
    labels = {n["NodeID"]: f"head ({n['NodeManagerAddress']})" for n in heads}
    for i, n in enumerate(workers, 1):
        labels[n["NodeID"]] = f"worker-{i} ({n['NodeManagerAddress']}, {n['NodeID'][:8]})"
    return labels


def resolve_gpus_per_worker(cfg: RunConfig, out: TextIO = sys.stderr) -> RunConfig:
    """`orchestrate.gpus_per_worker: auto` -> the share of one GPU a fine-tune needs on this cluster's cards
    (ttft.memory's model of peak memory, the card from the GPU nodes' Ray accelerator type)."""
    import dataclasses

    from ttft.config import AUTO
    from ttft.memory import gpus_per_worker_for

    if cfg.orchestrate.gpus_per_worker != AUTO:
        return cfg
    kinds = sorted(
        {
            r.split(":", 1)[1]
            for n in ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get("GPU")
            for r in n["Resources"]
            if r.startswith("accelerator_type:")
        }
    )
    share = 1.0
    if kinds:
        share = min(gpus_per_worker_for(cfg.model, cfg.ttft, k) for k in kinds)  # the smallest card decides
        print(f"[ttft] gpus_per_worker auto: {share:.3g} of a GPU per fine-tune on {kinds}", file=out)
    else:
        print("[ttft] gpus_per_worker auto: no GPU node up to size from; one fine-tune per GPU", file=out)
    orc = dataclasses.replace(cfg.orchestrate, gpus_per_worker=share)
    return dataclasses.replace(cfg, orchestrate=orc)


def check_device(cfg: RunConfig) -> None:
    """Fail fast when the config asks for GPUs but CUDA is not visible here (unless model.device is cpu)."""
    import torch

    if cfg.model.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model.device=cuda but CUDA is not visible on {socket.gethostname()}")
    if cfg.orchestrate.gpus_per_worker > 0 and cfg.model.device == "auto" and not torch.cuda.is_available():
        raise RuntimeError(
            f"orchestrate.gpus_per_worker={cfg.orchestrate.gpus_per_worker} but CUDA is not visible on "
            f"{socket.gethostname()} (torch {torch.__version__}); install the GPU stack (`make install-gpu`) "
            "or set model.device=cpu to train on CPU on purpose"
        )


@ray.remote
class FinetuneWorker:
    """A Ray actor holding one base model; trains and registers one adapter per call."""

    def __init__(self, cfg: RunConfig, identity: str, torch_threads: int | None):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per actor drowns the progress lines
        check_device(cfg)
        local = model_identity(base_model_path(cfg.model))
        if local != identity:
            raise RuntimeError(
                f"base model {cfg.model.name!r} on this node is {local}, the driver resolved {identity}: "
                "adapter keys would not match (pin model.revision, or use the same model files everywhere)"
            )
        self.cfg = cfg
        # cap this actor at its share of the GPU (fractional num_gpus); peak memory is reset per job
        gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
        self.finetuner = Finetuner(cfg.model, cfg.ttft, torch_threads=torch_threads, gpu_fraction=gpus)
        self.registry = open_registry(cfg.registry)

    def ready(self) -> str:
        """The node this worker runs on, once its model is loaded."""
        return this_node()

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


class Progress:
    """Console progress: done / failed / running / remaining, tasks per hour, ETA."""

    def __init__(self, total: int, interval_s: float, out: TextIO = sys.stderr, what: str = "fine-tune"):
        self.total, self.interval, self.out, self.what = total, interval_s, out, what
        self.t0 = time.monotonic()
        self.last = 0.0

    def line(self, done: int, failed: int, running: int, extra: str = "") -> str:
        elapsed = time.monotonic() - self.t0
        finished = done + failed
        rate = finished / elapsed * 3600 if elapsed > 0 else 0.0
        remaining = self.total - finished
        eta = remaining / (finished / elapsed) if finished else float("nan")
        eta_s = f"{eta:.0f}s" if eta == eta and eta != float("inf") else "?"
        return (
            f"[ttft] {self.what} {finished}/{self.total} done={done} failed={failed} running={running} "
            f"remaining={remaining}{extra} | {rate:.1f} tasks/h | elapsed {elapsed:.0f}s | ETA {eta_s}"
        )

    def tick(self, done: int, failed: int, running: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            print(self.line(done, failed, running, extra), file=self.out, flush=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def _worker_resources(cfg: RunConfig) -> dict[str, float]:
    orc = cfg.orchestrate
    return (
        {"CPU": orc.cpus_per_worker, "GPU": orc.gpus_per_worker}
        if orc.gpus_per_worker
        else {"CPU": orc.cpus_per_worker}
    )


def request_workers(bundles: list[dict[str, float]]) -> None:
    """Ask the autoscaler for these resource bundles (an empty list releases the request)."""
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=bundles)
    except Exception as e:  # a hint only: a cluster without an autoscaler still runs
        print(f"[ttft] could not ask the autoscaler for resources: {_describe(e)}", file=sys.stderr)


def wait_for_free_gpus(timeout_s: float = 120.0) -> bool:
    """Wait until every GPU of the cluster is free again (killed actors release theirs asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        total = ray.cluster_resources().get("GPU", 0)
        if ray.available_resources().get("GPU", 0) >= total - 1e-6:
            return True
        time.sleep(0.5)
    return False


def run_finetunes(
    cfg: RunConfig,
    tasks: Sequence[Task],
    *,
    identity: str | None = None,
    out: TextIO = sys.stderr,
    on_result: Callable[[JobOutcome], None] | None = None,
    start_time: float | None = None,
) -> FinetuneSummary:
    """Fine-tune every task (or group) of `tasks` on the Ray cluster; ray.init must have been called.

    `identity` is the base model's identity resolved once by the driver (`ttft.model.pin_model`); when
    None it is computed here. Returns per-job outcomes. Never raises for a failing job: it is retried
    `orchestrate.retries` times, then recorded as failed in the registry and in the summary.
    """
    t_start = start_time if start_time is not None else time.monotonic()
    cfg = resolve_gpus_per_worker(cfg, out)
    orc = cfg.orchestrate
    summary = FinetuneSummary()
    if not cfg.ttft.enabled or not tasks:
        return summary
    registry = open_registry(cfg.registry)
    identity = identity or model_identity(base_model_path(cfg.model))
    jobs = make_jobs(tasks, identity, cfg.model, cfg.ttft, orc.group_size)
    existing = registry.exists([j.key for j in jobs])
    deadline = None
    if orc.budget:
        deadline = t_start + parse_duration(orc.budget) * (1 - orc.inference_share)
        summary.deadline_s = deadline - t_start
    target = pool_target(
        len(jobs) - len(existing),
        workers=orc.workers,
        max_workers=orc.max_workers,
        cpus_per_worker=orc.cpus_per_worker,
        gpus_per_worker=orc.gpus_per_worker,
        cluster=ray.cluster_resources(),
    )
    sched = Scheduler(
        jobs,
        existing=existing,
        retries=orc.retries,
        target_workers=target,
        planner=BudgetPlanner(deadline, orc.min_steps),
        planned_steps=None if cfg.ttft.optim.epochs is not None else cfg.ttft.optim.steps,
        costs=job_costs(cfg, jobs, existing),
        order=orc.order,
    )
    print(
        f"[ttft] {len(jobs)} fine-tune jobs: {len(existing)} found in the registry, {sched.to_train} to train"
        + (f" on up to {target} workers" if sched.to_train else ""),
        file=out,
        flush=True,
    )
    if not sched.to_train:
        summary.outcomes = sched.summary_outcomes()
        return summary
    threads = orc.torch_threads or max(1, int(orc.cpus_per_worker))

    def start_worker(wid: int) -> Any:
        return FinetuneWorker.options(
            name=f"worker-{cfg.name}-{wid}-{os.getpid()}",
            namespace=WORKER_NAMESPACE,
            num_cpus=orc.cpus_per_worker,
            num_gpus=orc.gpus_per_worker,
            max_concurrency=1,
        ).remote(cfg, identity, threads)

    run_pool(cfg, sched, start_worker, registry, summary, out=out, on_result=on_result)
    summary.outcomes = sched.summary_outcomes()
    summary.seconds = time.monotonic() - t_start
    return summary


def job_costs(cfg: RunConfig, jobs: Sequence[FinetuneJob], existing: set[str]) -> dict[str, JobCost]:
    """The predicted cost of every job to train (`ttft.scheduler.job_cost`; ~1 ms per task, no model)."""
    return {j.key: job_cost(j.tasks, cfg.ttft) for j in jobs if j.key not in existing}


def run_pool(
    cfg: RunConfig,
    sched: Scheduler,
    start_worker: Callable[[int], Any],
    registry: AdapterRegistry,
    summary: FinetuneSummary,
    *,
    out: TextIO = sys.stderr,
    on_result: Callable[[JobOutcome], None] | None = None,
) -> None:
    """The pool loop: carry out `sched`'s decisions on Ray and feed it the results, until it is finished.

    `start_worker(wid)` returns a new actor handle with `ready() -> node id` and `run(job, attempt) ->
    metrics row` (`FinetuneWorker` in production; `bench/scale.py` passes a trivial actor). Each wait
    collects every result that is ready, so hundreds of jobs in flight cost one wait per batch.
    """
    orc = cfg.orchestrate
    labels = node_labels()
    actors: dict[int, Any] = {}
    pending: dict[Any, tuple[str, int]] = {}  # ref -> ("ready" | "run", worker id)
    progress = Progress(sched.to_train, orc.progress_interval_s, out)

    def label(node_id: str) -> str:
        if node_id not in labels:
            labels.update(node_labels())
        return labels.get(node_id, node_id[:8])

    def record_failure(job: FinetuneJob, outcome: JobOutcome) -> None:
        try:
            registry.put_failed(job.key, _failed_row(cfg, job, outcome.attempts), outcome.error or "")
        except Exception as e:  # the store is down: the outcome still goes to the summary (finetune.json)
            summary.registry_errors.append(f"{','.join(job.task_ids)}: {_describe(e)}")

    def finish(outcome: JobOutcome | None) -> None:
        if outcome is not None and on_result:
            on_result(outcome)

    request_workers([_worker_resources(cfg)] * sched.target)
    try:
        while not sched.finished:
            for wid in sched.workers_to_start():
                actors[wid] = start_worker(wid)
                pending[actors[wid].ready.remote()] = ("ready", wid)
            sent, skipped = sched.dispatch(time.monotonic())
            for d in sent:
                pending[actors[d.worker].run.remote(d.job, d.attempt)] = ("run", d.worker)
            for o in skipped:
                finish(o)
            for wid in sched.retire_idle():
                ray.kill(actors.pop(wid), no_restart=True)
            if sched.finished:
                break
            for ref in ready_refs(list(pending), min(orc.progress_interval_s, 5.0)):
                kind, wid = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except RayActorError as e:  # the actor died (node lost, OOM kill) or its constructor raised
                    actors.pop(wid, None)
                    if kind == "ready":
                        sched.worker_start_failed(wid, _describe(e))
                        continue
                    job, failed = sched.worker_died(wid, _describe(e))
                    if job is not None:
                        print(
                            f"[ttft] worker {wid} died running {','.join(job.task_ids)}; "
                            f"{'failed' if failed else 'requeued'} ({_describe(e)})",
                            file=out,
                            flush=True,
                        )
                    if failed is not None:
                        record_failure(job, failed)
                        finish(failed)
                    continue
                except Exception as e:  # the job raised: retry, then record as failed
                    if kind == "ready":
                        sched.worker_start_failed(wid, _describe(e))
                        continue
                    job = sched.busy[wid]
                    failed = sched.raised(wid, _describe(e))
                    if failed is not None:
                        record_failure(job, failed)
                        finish(failed)
                    continue
                if kind == "ready":
                    sched.worker_ready(wid, label(value))
                else:
                    finish(sched.succeeded(wid, value))
            done, failed_n = sched.counts()
            progress.tick(done, failed_n, len(sched.busy), f" workers={sched.ready_workers}/{sched.target}")
        done, failed_n = sched.counts()
        progress.tick(done, failed_n, 0, force=True)
    finally:
        for handle in actors.values():
            ray.kill(handle, no_restart=True)
        request_workers([])
    summary.workers = sched.started_ever


@ray.remote
class NullWorker:
    """A fine-tune worker that trains nothing: `run` returns a metrics row at once, so a pool of them
    measures the pool's own cost per job (`bench/scale.py`, tests)."""

    def ready(self) -> str:
        return this_node()

    def run(self, job: FinetuneJob, attempt: int) -> dict[str, Any]:
        return {"key": job.key, "steps": 1, "planned_steps": 1, "seconds": 0.0, "train_seconds": 0.0}


def null_workers(cfg: RunConfig) -> Callable[[int], Any]:
    """A `run_pool` worker factory of `NullWorker`s with the config's resources (no CPU: only a slot)."""
    return lambda wid: NullWorker.options(
        num_cpus=0, num_gpus=cfg.orchestrate.gpus_per_worker, max_concurrency=1
    ).remote()


def ready_refs(refs: list[Any], timeout_s: float) -> list[Any]:
    """Every ref of `refs` that is ready: wait up to `timeout_s` for the first, then take all the others
    already done (one `ray.wait` per batch, not one per result)."""
    ready, rest = ray.wait(refs, num_returns=1, timeout=timeout_s)
    if ready and rest:
        more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
        ready += more
    return ready


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
    """Join the cluster at `address` / $RAY_ADDRESS, or start a local one (the embedded default).

    No runtime_env is passed: credentials and settings come from each node's own environment (Ray logs a
    runtime_env's contents, so a secret passed that way ends up on disk), and inside a job (`ray job
    submit`, KubeRay) the job's own runtime_env applies unchanged.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Only verbosity settings and the quiet hook travel (ttft.console); never credentials.
    verbose = {k: v for k, v in os.environ.items() if k == "TTFT_VERBOSE"}
    opts = {**ray_init_kwargs({"env_vars": verbose}), **kwargs}
    if address:
        ray.init(address=address, **opts)
    else:  # "local": never attach to some other cluster that happens to run on this machine
        ray.init(address="local", num_cpus=num_cpus, **opts)


def in_ray_job() -> bool:
    """True when this driver runs as a Ray job (`ray job submit`, KubeRay RayJob)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_cluster_paths(cfg: RunConfig) -> RunConfig:
    """Where local paths would silently split across nodes or vanish with a job, resolve them or refuse.

    In a Ray job the working directory is a temporary copy: a relative `out_dir` / `registry.root` is
    resolved against $TTFT_SUBMIT_DIR (the submitting checkout, set by `make eval-cluster`) when this
    machine has it (a local head), else refused. On a multi-node cluster a local registry root is refused
    unless `registry.shared` says every node mounts it at the same path.
    """
    import dataclasses
    from pathlib import Path

    from ttft.config import ConfigError
    from ttft.objstore import is_s3

    submit_dir = os.environ.get("TTFT_SUBMIT_DIR")
    fixes: dict[str, str] = {}
    for key, value in (("out_dir", cfg.out_dir), ("registry.root", cfg.registry.root)):
        if is_s3(value) or Path(value).is_absolute() or not in_ray_job():
            continue
        if submit_dir and Path(submit_dir, "pyproject.toml").is_file():
            fixes[key] = str(Path(submit_dir, value))
            continue
        raise ConfigError(
            f"{key}: {value!r} is relative to this Ray job's temporary working directory and would be lost "
            "with it; use s3://bucket/prefix (or an absolute path on a disk that outlives the job)"
        )
    if fixes:
        cfg = dataclasses.replace(
            cfg,
            out_dir=fixes.get("out_dir", cfg.out_dir),
            registry=dataclasses.replace(cfg.registry, root=fixes.get("registry.root", cfg.registry.root)),
        )
        print(f"[ttft] local paths of the submitting checkout: {fixes}", file=sys.stderr)
    nodes = alive_nodes()
    if nodes > 1 and not is_s3(cfg.registry.root) and not cfg.registry.shared:
        raise ConfigError(
            f"registry.root: {cfg.registry.root!r} is a local path but the cluster has {nodes} nodes: each "
            "would write its own registry. Use s3://bucket/prefix, or set registry.shared=true for a "
            "filesystem every node mounts at the same path"
        )
    return cfg


def task_adapters(
    cfg: RunConfig, tasks: Sequence[Task], registry: AdapterRegistry, identity: str
) -> dict[str, str | None]:
    """Each task's adapter registry key, None where the registry has no complete adapter for it.

    Only keys are returned: whoever runs the engine fetches the files into its own cache (`fetch_adapters`).
    """
    if not cfg.ttft.enabled:
        return {t.id: None for t in tasks}
    jobs = make_jobs(tasks, identity, cfg.model, cfg.ttft, cfg.orchestrate.group_size)
    ok = registry.exists([j.key for j in jobs])
    return {tid: (job.key if job.key in ok else None) for job in jobs for tid in job.task_ids}


def fetch_adapters(
    registry: AdapterRegistry, keys: dict[str, str | None]
) -> tuple[dict[str, Adapter | None], dict[str, str]]:
    """Download each task's adapter into this process's cache: (adapters, {task_id: why it has none}).

    A key the registry cannot deliver intact (missing, corrupt, store down) leaves its tasks on the base
    model, with the reason; it never stops the run.
    """
    adapters: dict[str, Adapter | None] = {}
    reasons: dict[str, str] = {}
    fetched: dict[str, Adapter | str] = {}
    for tid, key in keys.items():
        if key is None:
            adapters[tid] = None
            continue
        if key not in fetched:
            try:
                fetched[key] = Adapter(key, str(registry.get(key)))
            except (RegistryError, OSError) as e:
                fetched[key] = f"adapter {key[:12]} not usable: {_describe(e)}"
        got = fetched[key]
        adapters[tid] = got if isinstance(got, Adapter) else None
        if isinstance(got, str):
            reasons[tid] = got
    return adapters, reasons


@dataclass
class InferenceShard:
    """What one engine predicted, and where."""

    predictions: Predictions
    node: str
    tasks: list[str]
    adapter_errors: dict[str, str] = field(default_factory=dict)


def predict_here(cfg: RunConfig, tasks: Sequence[Task], keys: dict[str, str | None]) -> InferenceShard:
    """Fetch the adapters and run one vLLM engine in this process over `tasks`."""
    from ttft.vllm_engine import VllmEngine, serving_dtype

    adapters, errors = fetch_adapters(open_registry(cfg.registry), keys)
    for tid, why in sorted(errors.items()):
        warn(f"task {tid}: {why}; predicted by the base model")
    model_dir = base_model_path(cfg.model)
    inf = cfg.inference
    n_adapters = len({a.key for a in adapters.values() if a})
    engine = VllmEngine(
        model_dir,
        enable_lora=n_adapters > 0,
        max_lora_rank=vllm_max_lora_rank(cfg.ttft.lora.rank),
        max_loras=max(1, min(inf.max_loras, n_adapters)),
        max_cpu_loras=inf.max_cpu_loras or n_adapters + 1,
        max_model_len=inf.max_model_len,
        gpu_memory_utilization=inf.gpu_memory_utilization,
        dtype=serving_dtype(cfg.model.dtype, inf.dtype),
        seed=inf.seed,
    )
    try:
        preds = predict(
            engine,
            tasks,
            adapters,
            inf,
            cfg.ttft.samples.encoder,
            progress_interval_s=cfg.orchestrate.progress_interval_s,
        )
    finally:
        engine.close()
    node = this_node() if ray.is_initialized() else "local"
    return InferenceShard(preds, node, [t.id for t in tasks], errors)


def wait_for_gpu_memory(fraction: float, timeout_s: float = 300.0) -> None:
    """Block until `fraction` of this GPU's memory is free (a killed fine-tune actor may still hold it)."""
    import torch

    if not torch.cuda.is_available():
        return
    deadline = time.monotonic() + timeout_s
    while True:
        free, total = torch.cuda.mem_get_info()
        if free >= fraction * total or time.monotonic() > deadline:
            return
        time.sleep(1.0)


@ray.remote(num_gpus=1)
class InferenceWorker:
    """One vLLM engine on one GPU, predicting a shard of the tasks."""

    def predict(self, cfg: RunConfig, tasks: list[Task], keys: dict[str, str | None]) -> InferenceShard:
        from ttft.vllm_engine import CUDA_GPU_MEMORY_UTILIZATION

        check_device(cfg)
        wait_for_gpu_memory(cfg.inference.gpu_memory_utilization or CUDA_GPU_MEMORY_UTILIZATION)
        return predict_here(cfg, tasks, keys)


def inference_engines(cfg: RunConfig) -> int:
    """vLLM engines for this run: 0 = one engine in the driver (a cluster without GPUs), else one per GPU."""
    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
    if gpus == 0 and cfg.orchestrate.gpus_per_worker == 0 and not cfg.inference.engines:
        return 0
    return cfg.inference.engines or max(1, gpus)


@dataclass
class InferenceResult:
    """All tasks' predictions, merged over shards, with each shard's placement."""

    predictions: Predictions
    shards: list[InferenceShard]

    @property
    def adapter_errors(self) -> dict[str, str]:
        return {k: v for s in self.shards for k, v in s.adapter_errors.items()}

    def node_of(self) -> dict[str, str]:
        return {tid: s.node for s in self.shards for tid in s.tasks}


def run_inference(cfg: RunConfig, tasks: Sequence[Task], keys: dict[str, str | None]) -> InferenceResult:
    """Predict all tasks: one engine per GPU as Ray actors over task shards, or one engine in the driver
    when the cluster has no GPUs (and the config asks for none).

    A shard whose engine dies (its node lost) is started again on another GPU, up to
    `orchestrate.retries` times; each engine is stopped as soon as its shard is done, freeing its GPU.
    """
    engines = inference_engines(cfg)
    if engines == 0:
        shard = predict_here(cfg, tasks, keys)
        shard.node = node_labels().get(shard.node, shard.node)
        return InferenceResult(shard.predictions, [shard])
    wait_for_free_gpus()
    shards = [s for s in (list(tasks[i::engines]) for i in range(engines)) if s]
    request_workers([{"GPU": 1}] * len(shards))
    pending: dict[Any, tuple[int, Any]] = {}
    losses: collections.Counter[int] = collections.Counter()

    def start(i: int) -> None:
        worker = InferenceWorker.remote()
        ref = worker.predict.remote(cfg, shards[i], {t.id: keys.get(t.id) for t in shards[i]})
        pending[ref] = (i, worker)

    parts: dict[int, InferenceShard] = {}
    try:
        for i in range(len(shards)):
            start(i)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i, worker = pending.pop(ready[0])
            try:
                parts[i] = ray.get(ready[0])
            except RayActorError as e:  # its node was lost: the shard goes to another engine
                losses[i] += 1
                if losses[i] > cfg.orchestrate.retries:
                    raise
                warn(f"inference shard {i + 1}/{len(shards)} lost its engine ({_describe(e)}); started again")
                start(i)
            finally:
                ray.kill(worker, no_restart=True)
    finally:
        for _, worker in pending.values():
            ray.kill(worker, no_restart=True)
        request_workers([])
    labels = node_labels()
    ordered = [parts[i] for i in range(len(shards))]
    for part in ordered:
        part.node = labels.get(part.node, part.node)
    return InferenceResult(merge_predictions([p.predictions for p in ordered]), ordered)
