"""Scale: the real scheduler at 10,000 fine-tunes on 256 slots (64 GPUs x 4), simulated; real Ray dispatch.

1. Simulation: a discrete-event loop drives `ttft.scheduler.Scheduler` (the object production uses, not a
   copy) with simulated time. Job sizes come from the real task set under a config (`job_cost`: training
   tokens of each task's samples, counted in characters) x seconds per token (bench/results/gpu.json's
   packed fine-tune speed when present, else --tokens-per-s), plus per-job overhead and noise (the
   prediction is not the truth). Tasks are replicated with distinct keys up to N jobs. Workers take
   --startup-s to start, a job's worker dies with probability --death-rate while running it (it is replaced
   and the job requeued), jobs may raise (--raise-rate, retried). Reports makespan vs the ideal
   max(total work / slots, longest job), slot utilisation, requeues, jobs lost, and the scheduler's own CPU
   time per job; FIFO vs size-aware (largest first) order; and budget runs (jobs reduced / skipped, jobs
   that ended after the deadline: must be 0).
2. Real Ray: one local node declaring --ray-gpus fake GPUs, a pool of `NullWorker` actors (return a
   metrics row at once; --ray-gpus-per-worker GPUs each) fed 10,000 jobs through the production pool loop
   (`ttft.orchestrate.run_pool`): jobs/s once the actors are up, and the driver's CPU time per job.

Writes bench/results/scale.json, scale_utilisation.png, scale.md, and that section into summary.md.
`make bench-scale`; `python -m bench.scale --help`.
"""

from __future__ import annotations

import argparse
import heapq
import io
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import RESULTS, ROOT, CpuMonitor, machine, write_json
from ttft.config import RunConfig, load_config
from ttft.finetune import FinetuneJob
from ttft.scheduler import BudgetPlanner, JobCost, Scheduler, job_cost
from ttft.tasks import Task, load_tasks

DEFAULT_CONFIG = ROOT / "jobs" / "configs" / "qwen0.5b_arc1_bf16.yaml"
GPU_JSON = RESULTS / "gpu.json"
# Per fine-tune slot when bench/results/gpu.json is absent: 4 packed LoRA fine-tunes of Qwen2.5-0.5B on one
# H100-class GPU at ~32k tokens/s together (~10% MFU). An assumption: the ratios below do not depend on it
# much (only overhead and startup are absolute seconds).
DEFAULT_TOKENS_PER_S = 8000.0
# Real Ray on this machine: a NullWorker actor holds ~380 MB (it unpickles FinetuneJob, so it imports torch),
# so 8 actors on the 64 fake GPUs are what a shared 24 GiB box holds; a big machine can pass 0.25 (256).
RAY_GPUS_PER_WORKER = 8.0


# ---- the cost model ---------------------------------------------------------------------------------


def task_costs(cfg: RunConfig, limit: int | None = None) -> list[tuple[Task, JobCost]]:
    """Every task of the config's data source with its predicted cost under the config."""
    tasks = load_tasks(cfg.data.source, max_side=cfg.data.max_side, limit=limit or cfg.data.limit).tasks
    return [(t, job_cost([t], cfg.ttft)) for t in tasks]


def replicate(costed: Sequence[tuple[Task, JobCost]], n: int) -> tuple[list[FinetuneJob], dict[str, JobCost]]:
    """N jobs cycling over the tasks (in their order), each with a distinct key, and their costs."""
    jobs, costs = [], {}
    for i in range(n):
        task, cost = costed[i % len(costed)]
        key = f"{i:064x}"
        jobs.append(FinetuneJob(key, [task]))
        costs[key] = cost
    return jobs, costs


def slot_tokens_per_s(cli_value: float | None, per_gpu: int) -> tuple[float, str]:
    """Training tokens/s of one slot: --tokens-per-s, else gpu.json's `per_gpu` packed fine-tunes, else the
    default assumption."""
    if cli_value:
        return cli_value, "--tokens-per-s"
    if GPU_JSON.exists():
        data = json.loads(GPU_JSON.read_text())
        if not data.get("dry_run"):
            packs = {p["concurrent"]: p for p in data.get("packing", []) if "tokens_per_s" in p}
            best = packs.get(per_gpu) or (packs[max(packs)] if packs else None)
            if best:
                return best["tokens_per_s"] / best["concurrent"], f"gpu.json ({data.get('device')})"
    return DEFAULT_TOKENS_PER_S, "assumed (no gpu.json; pass --tokens-per-s)"


# ---- the simulation ---------------------------------------------------------------------------------


@dataclass
class SimConfig:
    """One simulated run: the pool, the speeds, the failures and the budget."""

    slots: int = 256
    tokens_per_s: float = DEFAULT_TOKENS_PER_S  # per slot
    overhead_s: float = 2.0  # per job outside the train steps (samples, val loss, save, registry put)
    startup_s: float = 15.0  # a worker's start (process, imports, base model load)
    death_rate: float = 0.01  # probability that a job's worker dies while running it
    raise_rate: float = 0.0  # probability that a job attempt raises
    retries: int = 2
    budget_s: float | None = None  # deadline of the fine-tune stage (simulated clock starts at 0)
    min_steps: int = 4
    noise: float = 0.1  # sigma of the log of (true / predicted) seconds per step, per job
    order: str = "size"
    seed: int = 0


class Timer:
    """CPU time spent inside the scheduler's methods."""

    def __init__(self) -> None:
        self.total, self.calls, self.worst = 0.0, 0, 0.0

    def __call__(self, fn: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.process_time()
        try:
            return fn(*args, **kw)
        finally:
            dt = time.process_time() - t0
            self.total += dt
            self.calls += 1
            self.worst = max(self.worst, dt)


def simulate(jobs: Sequence[FinetuneJob], costs: dict[str, JobCost], sc: SimConfig) -> dict[str, Any]:
    """Run the real Scheduler over `jobs` in simulated time; returns the run's figures and its timeline."""
    rng = random.Random(sc.seed)
    jobs = [FinetuneJob(j.key, j.tasks) for j in jobs]  # fresh: dispatch writes steps / max_seconds
    # the truth: seconds per step of each job (its predicted tokens per step x speed x noise)
    step_s = {
        j.key: costs[j.key].tokens_per_step / sc.tokens_per_s * math.exp(rng.gauss(0.0, sc.noise))
        for j in jobs
    }
    full_s = {j.key: sc.overhead_s + costs[j.key].steps * step_s[j.key] for j in jobs}
    sched = Scheduler(
        jobs,
        retries=sc.retries,
        target_workers=sc.slots,
        planner=BudgetPlanner(sc.budget_s, sc.min_steps),
        planned_steps=None,
        costs=costs,
        order=sc.order,
    )
    timer = Timer()
    events: list[tuple[float, int, str, int, Any]] = []  # (time, seq, kind, worker, payload)
    seq = 0

    def push(t: float, kind: str, wid: int, payload: Any = None) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, wid, payload))
        seq += 1

    busy_changes: list[tuple[float, int]] = []  # (time, +1 | -1): slots running a job
    ends: dict[str, float] = {}  # key -> end of its trained attempt
    late = 0
    deaths = raises = 0
    now = 0.0
    pre, post = sc.overhead_s / 2, sc.overhead_s / 2

    def act(now: float) -> None:
        for wid in timer(sched.workers_to_start):
            push(now + sc.startup_s, "ready", wid)
        sent, _ = timer(sched.dispatch, now)
        for d in sent:
            job, s = d.job, step_s[d.job.key]
            cost = costs[job.key]
            run = cost.steps if job.steps is None else min(cost.steps, job.steps)
            if job.max_seconds is not None:  # Finetuner.train: stops before a step once past max_seconds
                run = min(run, max(0, math.floor((job.max_seconds - pre) / s) + 1))
            seconds = pre + run * s + post
            row = {
                "steps": run,
                "planned_steps": cost.steps,
                "seconds": seconds,
                "train_seconds": run * s,
                "reduced": run < cost.steps,
            }
            busy_changes.append((now, 1))
            u = rng.random()
            if u < sc.death_rate:
                push(now + rng.random() * seconds, "died", d.worker, job.key)
            elif u < sc.death_rate + sc.raise_rate:
                push(now + rng.random() * seconds, "raised", d.worker, job.key)
            else:
                push(now + seconds, "done", d.worker, (job.key, row))
        timer(sched.retire_idle)

    act(now)
    while events:
        now, _, kind, wid, payload = heapq.heappop(events)
        if kind == "ready":
            timer(sched.worker_ready, wid, f"node-{wid // 4}")
        elif kind == "done":
            key, row = payload
            busy_changes.append((now, -1))
            timer(sched.succeeded, wid, row)
            ends[key] = now
            if sc.budget_s is not None and now > sc.budget_s + 1e-6:
                late += 1
        elif kind == "died":
            busy_changes.append((now, -1))
            deaths += 1
            timer(sched.worker_died, wid, "simulated node loss")
        elif kind == "raised":
            busy_changes.append((now, -1))
            raises += 1
            timer(sched.raised, wid, "RuntimeError: simulated")
        act(now)
        if sched.finished:  # what is left are starts of workers nobody needs
            break
    makespan = max(ends.values(), default=0.0)
    outcomes = sched.summary_outcomes()
    status = {s: sum(1 for o in outcomes if o.status == s) for s in ("trained", "failed", "skipped")}
    total_work = sum(full_s.values())
    ideal = max(total_work / sc.slots, max(full_s.values()))
    busy_s = _busy_seconds(busy_changes, makespan)
    done_work = sum(o.row["train_seconds"] for o in outcomes if o.row) / max(
        1e-9, sum(full_s[j.key] - sc.overhead_s for j in jobs)
    )
    return {
        "jobs": len(jobs),
        "slots": sc.slots,
        "order": sc.order,
        "budget_s": sc.budget_s,
        "makespan_s": round(makespan, 1),
        "ideal_s": round(ideal, 1),
        "makespan_vs_ideal": round(makespan / ideal, 4) if ideal else None,
        "slot_utilisation": round(busy_s / (sc.slots * makespan), 4) if makespan else None,
        "trained": status["trained"],
        "failed": status["failed"],
        "skipped": status["skipped"],
        "reduced": sum(1 for o in outcomes if o.reduced),
        "lost_jobs": status["failed"] + (status["skipped"] if sc.budget_s is None else 0),
        "requeues": sum(o.requeues for o in outcomes),
        "worker_deaths": deaths,
        "raised": raises,
        "late_jobs": late,
        "train_work_done": round(done_work, 4),
        "decision_ms": round(timer.total / len(jobs) * 1e3, 4),
        "decision_calls": timer.calls,
        "decision_worst_call_ms": round(timer.worst * 1e3, 3),
        "timeline": _timeline(busy_changes, makespan, sc.slots),
    }


def _busy_seconds(changes: list[tuple[float, int]], end: float) -> float:
    total, level, last = 0.0, 0, 0.0
    for t, d in sorted(changes):
        total += level * (min(t, end) - last)
        level, last = level + d, min(t, end)
    return total


def _timeline(changes: list[tuple[float, int]], end: float, slots: int, bins: int = 200) -> list[list[float]]:
    """[time, share of the slots busy] averaged over `bins` equal intervals up to `end`."""
    if end <= 0:
        return []
    width = end / bins
    acc = [0.0] * bins
    level, last = 0, 0.0
    for t, d in sorted(changes) + [(end, 0)]:
        t = min(t, end)
        a = last
        while a < t:  # spread the interval [last, t) at `level` over the bins it covers
            b = min(t, (math.floor(a / width + 1e-9) + 1) * width)
            acc[min(bins - 1, int(a / width + 1e-9))] += level * (b - a)
            a = b
        level, last = level + d, t
    return [[round((i + 0.5) * width, 1), round(v / (width * slots), 4)] for i, v in enumerate(acc)]


# ---- real Ray ---------------------------------------------------------------------------------------


def ray_dispatch(cfg: RunConfig, jobs: Sequence[FinetuneJob], gpus: int) -> dict[str, Any]:
    """`jobs` through the production pool loop on `NullWorker` actors; one local node, `gpus` fake GPUs."""
    import ray  # only for shutdown; everything else goes through ttft.orchestrate

    from ttft.orchestrate import init_ray, null_workers, open_registry, run_pool
    from ttft.scheduler import FinetuneSummary, pool_target

    t0 = time.perf_counter()
    init_ray(num_cpus=2, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    try:
        target = pool_target(
            len(jobs),
            workers=cfg.orchestrate.workers,
            max_workers=None,
            cpus_per_worker=0,
            gpus_per_worker=cfg.orchestrate.gpus_per_worker,
            cluster=ray.cluster_resources(),
        )
        sched = Scheduler(jobs, retries=cfg.orchestrate.retries, target_workers=target, order="fifo")
        finished: list[float] = []
        summary = FinetuneSummary()
        cpu0, t1 = time.process_time(), time.perf_counter()
        run_pool(
            cfg,
            sched,
            null_workers(cfg),
            open_registry(cfg.registry),
            summary,
            out=io.StringIO(),
            on_result=lambda o: finished.append(time.perf_counter()),
        )
        wall, cpu = time.perf_counter() - t1, time.process_time() - cpu0
    finally:
        ray.shutdown()
    trained = sum(1 for o in sched.summary_outcomes() if o.status == "trained")
    # jobs/s once the pool is up: from the first result to the last (actor start-up is apart)
    steady = (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 else None
    return {
        "jobs": len(jobs),
        "trained": trained,
        "fake_gpus": gpus,
        "actors": summary.workers,
        "ray_init_s": round(init_s, 2),
        "wall_s": round(wall, 2),
        "first_result_s": round(finished[0] - t1, 2) if finished else None,
        "ray_dispatch_jobs_per_s": round(steady, 1) if steady else None,
        "jobs_per_s_with_actor_start": round(len(jobs) / wall, 1),
        "driver_cpu_ms_per_job": round(cpu / len(jobs) * 1e3, 3),
    }


# ---- the benchmark ----------------------------------------------------------------------------------


def plot(runs: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Slot utilisation over time, one line per run (matplotlib, if installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench.scale: matplotlib not installed, no plot", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, r in runs.items():
        xs = [t / 60 for t, _ in r["timeline"]]
        ys = [u * 100 for _, u in r["timeline"]]
        ax.plot(
            xs,
            ys,
            label=f"{label}: makespan {r['makespan_s'] / 60:.1f} min ({r['makespan_vs_ideal']}x ideal)",
        )
    ideal = next(iter(runs.values()))["ideal_s"] / 60
    ax.axvline(ideal, color="grey", linestyle="--", linewidth=1, label=f"ideal {ideal:.1f} min")
    r0 = next(iter(runs.values()))
    ax.set_title(f"{r0['jobs']:,} simulated fine-tunes on {r0['slots']} slots: slot utilisation")
    ax.set_xlabel("minutes")
    ax.set_ylabel("slots busy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(
    config: Path = DEFAULT_CONFIG,
    n_jobs: int = 10_000,
    slots: int = 256,
    tokens_per_s: float | None = None,
    death_rate: float = 0.01,
    budgets: Sequence[float] = (0.7, 1.05),
    ray_jobs: int = 10_000,
    ray_gpus: int = 64,
    ray_gpus_per_worker: float = RAY_GPUS_PER_WORKER,
    limit: int | None = None,
    out: Path | None = RESULTS / "scale.json",
    seed: int = 0,
) -> dict[str, Any]:
    """The whole benchmark; returns (and writes to `out`) the result."""
    start_load = machine()
    monitor = CpuMonitor()
    t_start = time.perf_counter()
    cfg = load_config(config)
    per_gpu = round(1 / cfg.orchestrate.gpus_per_worker) if cfg.orchestrate.gpus_per_worker else 1
    speed, speed_source = slot_tokens_per_s(tokens_per_s, per_gpu)
    t0 = time.perf_counter()
    costed = task_costs(cfg, limit)
    cost_s = time.perf_counter() - t0
    jobs, costs = replicate(costed, n_jobs)
    per_step = cfg.ttft.optim.batch_size * cfg.ttft.optim.grad_accum
    tokens = sorted(c.tokens_per_step / per_step for _, c in costed)
    base = SimConfig(slots=slots, tokens_per_s=speed, death_rate=death_rate, seed=seed)
    print(
        f"bench.scale: {len(costed)} tasks of {cfg.data.source} under {config.name} -> {n_jobs} jobs on "
        f"{slots} slots; {speed:.0f} tokens/s per slot ({speed_source}); cost model {cost_s:.2f}s",
        flush=True,
    )
    sims: dict[str, dict[str, Any]] = {}
    for order in ("size", "fifo"):
        sims[order] = simulate(jobs, costs, replace(base, order=order))
        print(_line(order, sims[order]), flush=True)
    best = min(sims, key=lambda o: sims[o]["makespan_s"])
    budget_runs = []
    for frac in budgets:
        b = round(sims["size"]["ideal_s"] * frac, 1)
        r = simulate(jobs, costs, replace(base, budget_s=b))
        r["budget_vs_ideal"] = frac
        budget_runs.append({k: v for k, v in r.items() if k != "timeline"})
        print(_line(f"size, budget {frac}x ideal", r), flush=True)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "machine": start_load,
        "config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config),
        "tasks": len(costed),
        "cost_model": {
            "seconds_for_all_tasks": round(cost_s, 3),
            "tokens_per_sample": {
                "mean": round(sum(tokens) / len(tokens), 1),
                "p90": round(tokens[int(0.9 * (len(tokens) - 1))], 1),
                "max": round(tokens[-1], 1),
            },
            "tokens_per_s_per_slot": round(speed, 1),
            "speed_source": speed_source,
            "sim": {k: v for k, v in vars(base).items() if k not in ("order", "budget_s")},
        },
        "makespan_vs_ideal": sims["size"]["makespan_vs_ideal"],
        "makespan_vs_ideal_fifo": sims["fifo"]["makespan_vs_ideal"],
        "lost_jobs": sims["size"]["lost_jobs"],
        "decision_ms": sims["size"]["decision_ms"],
        "late_jobs_under_budget": sum(r["late_jobs"] for r in budget_runs),
        "best_order": best,
        "simulation": {o: {k: v for k, v in r.items() if k != "timeline"} for o, r in sims.items()},
        "budget_runs": budget_runs,
    }
    if ray_jobs:
        ray_cfg = load_config(
            config,
            {
                "orchestrate.gpus_per_worker": ray_gpus_per_worker,
                "orchestrate.cpus_per_worker": 0,
                "orchestrate.progress_interval_s": 5.0,
                "registry.root": tempfile.mkdtemp(prefix="bench-scale-registry-"),
            },
        )
        ray_jobs_list, _ = replicate(costed, ray_jobs)
        r = ray_dispatch(ray_cfg, ray_jobs_list, ray_gpus)
        result["ray"] = r
        result["ray_dispatch_jobs_per_s"] = r["ray_dispatch_jobs_per_s"]
        print(
            f"  real Ray: {r['jobs']} jobs on {r['actors']} NullWorker actors ({ray_gpus} fake GPUs): "
            f"{r['ray_dispatch_jobs_per_s']} jobs/s, driver {r['driver_cpu_ms_per_job']} ms CPU per job",
            flush=True,
        )
    else:
        result["ray_dispatch_jobs_per_s"] = None
    result.update(monitor.load_fields(start_load["loadavg"]))
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    if out is not None:
        png = plot({"size-aware": sims["size"], "FIFO": sims["fifo"]}, out.with_name("scale_utilisation.png"))
        result["plot"] = png.name if png else None
        write_json(out, result)
        md = markdown(result)
        out.with_name("scale.md").write_text(md)
        update_summary(out.with_name("summary.md"), md)
    return result


def update_summary(path: Path, section: str) -> None:
    """Put `section` (a `## ` heading and its text) into summary.md, replacing its previous version."""
    text = path.read_text() if path.exists() else "# ttft benchmarks\n"
    heading = section.splitlines()[0]
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    path.write_text(text if text.endswith("\n") else text + "\n")


def _line(label: str, r: dict[str, Any]) -> str:
    return (
        f"  {label}: makespan {r['makespan_s']:.0f}s = {r['makespan_vs_ideal']}x ideal {r['ideal_s']:.0f}s, "
        f"utilisation {r['slot_utilisation']}, trained {r['trained']}, reduced {r['reduced']}, "
        f"skipped {r['skipped']}, failed {r['failed']}, work done {r['train_work_done']}, "
        f"requeues {r['requeues']}, late {r['late_jobs']}, "
        f"decision {r['decision_ms']} ms/job"
    )


def markdown(result: dict[str, Any]) -> str:
    """The summary.md section of this benchmark."""
    s, f = result["simulation"]["size"], result["simulation"]["fifo"]
    cm = result["cost_model"]
    lines = [
        "## Scale (simulated 10k fine-tunes, real Ray dispatch)",
        "",
        f"`make bench-scale`: the real `Scheduler` in simulated time, {s['jobs']:,} jobs (the "
        f"{result['tasks']} tasks of `{result['config']}` replicated) on {s['slots']} slots; "
        f"{cm['tokens_per_s_per_slot']:.0f} tokens/s per slot ({cm['speed_source']}), "
        f"{cm['sim']['overhead_s']} s overhead per job, "
        f"{cm['sim']['startup_s']} s worker start, {cm['sim']['death_rate']:.0%} of jobs lose their worker, "
        f"{cm['sim']['noise']} log-noise on predicted durations.",
        "",
        "| order | makespan s | ideal s | vs ideal | slot utilisation | requeues | lost | scheduler ms/job |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in (("size-aware (default)", s), ("FIFO", f)):
        lines.append(
            f"| {name} | {r['makespan_s']:.0f} | {r['ideal_s']:.0f} | {r['makespan_vs_ideal']} | "
            f"{r['slot_utilisation']} | {r['requeues']} | {r['lost_jobs']} | {r['decision_ms']} |"
        )
    lines += [
        "",
        "| budget (x ideal) | trained | reduced | skipped | failed | train work done | ended past deadline "
        "| scheduler ms/job |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["budget_runs"]:
        lines.append(
            f"| {r['budget_vs_ideal']} | {r['trained']} | {r['reduced']} | {r['skipped']} | {r['failed']} | "
            f"{r['train_work_done']:.1%} | {r['late_jobs']} | {r['decision_ms']} |"
        )
    ray_r = result.get("ray")
    if ray_r:
        lines += [
            "",
            f"Real Ray: {ray_r['jobs']:,} jobs through `run_pool` (the production loop) on {ray_r['actors']} "
            f"`NullWorker` actors, one node declaring {ray_r['fake_gpus']} fake GPUs: "
            f"**{ray_r['ray_dispatch_jobs_per_s']} jobs/s** once the actors are up "
            f"({ray_r['jobs_per_s_with_actor_start']} jobs/s with their start), driver CPU "
            f"{ray_r['driver_cpu_ms_per_job']} ms per job. An actor unpickles `FinetuneJob`, so it imports "
            "torch (~380 MB each): 8 actors are what this shared box holds; the loop's cost is the driver's.",
        ]
    if result.get("plot"):
        lines += ["", f"![slot utilisation]({result['plot']})"]
    if result.get("load_warning"):
        lines += ["", f"Note: {result['load_warning']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config: data source, samples, steps")
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--slots", type=int, default=256, help="fine-tune slots (64 GPUs x 4)")
    p.add_argument("--tokens-per-s", type=float, default=None, help="training tokens/s of one slot")
    p.add_argument("--death-rate", type=float, default=0.01)
    p.add_argument("--budgets", default="0.7,1.05", help="budget runs, as fractions of the ideal makespan")
    p.add_argument("--ray-jobs", type=int, default=10_000, help="0: skip the real Ray part")
    p.add_argument("--ray-gpus", type=int, default=64)
    p.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=RAY_GPUS_PER_WORKER,
        help="8: 8 actors on 64 fake GPUs. Each actor imports torch (to unpickle FinetuneJob), ~380 MB: "
        "0.25 (256 actors) needs ~100 GB",
    )
    p.add_argument("--limit", type=int, default=None, help="first N tasks of the data source")
    p.add_argument("--out", default=str(RESULTS / "scale.json"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run(
        Path(a.config).resolve(),
        a.jobs,
        a.slots,
        a.tokens_per_s,
        a.death_rate,
        [float(x) for x in a.budgets.split(",") if x],
        a.ray_jobs,
        a.ray_gpus,
        a.ray_gpus_per_worker,
        a.limit,
        Path(a.out),
        a.seed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
