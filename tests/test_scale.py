"""Size-aware scheduling: the cost model, largest-first order, per-job budgets, the scale simulation."""

from __future__ import annotations

import dataclasses
import io
import json
import statistics
import time

import pytest

from bench import scale
from ttft.config import ConfigError, load_config
from ttft.finetune import FinetuneJob
from ttft.samples import train_samples
from ttft.scheduler import BudgetPlanner, JobCost, Scheduler, job_cost
from ttft.tasks import load_tasks

ARC1 = load_tasks("arc1/evaluation").tasks
QWEN = load_config(scale.DEFAULT_CONFIG)


def sized_jobs(sizes: list[float], steps: int = 10) -> tuple[list[FinetuneJob], dict[str, JobCost]]:
    jobs = [FinetuneJob(f"{i:064x}", [ARC1[i]]) for i in range(len(sizes))]
    return jobs, {j.key: JobCost(steps, s) for j, s in zip(jobs, sizes)}


def ready_pool(s: Scheduler, node: str = "n") -> list[int]:
    wids = s.workers_to_start()
    for w in wids:
        s.worker_ready(w, node)
    return wids


def test_job_cost_predicts_the_training_tokens_of_the_samples():
    cfg = QWEN.ttft
    small = min(ARC1[:60], key=lambda t: sum(len(g) * len(g[0]) for g in t.grids()))
    big = max(ARC1[:60], key=lambda t: sum(len(g) * len(g[0]) for g in t.grids()))
    for task in (small, big):
        cost = job_cost([task], cfg)
        assert cost.steps == cfg.optim.steps == 300
        samples = train_samples(task, cfg.samples, cfg.augment, len, cfg.optim.seed)
        real = statistics.mean(len(s.prompt) + len(s.target) + 1 for s in samples)
        assert cost.tokens_per_step == pytest.approx(real * cfg.optim.batch_size, rel=0.05)
    assert job_cost([big], cfg).tokens > 5 * job_cost([small], cfg).tokens
    group = job_cost([small, big], cfg)  # a group trains on both tasks' samples
    assert job_cost([small], cfg).tokens < group.tokens < job_cost([big], cfg).tokens


def test_job_cost_steps_follow_epochs_and_nothing_fits_costs_nothing():
    cfg = QWEN.ttft
    epochs = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=2.0, batch_size=4))
    task = ARC1[0]
    n = min(cfg.samples.max_per_task, (len(task.train)) * cfg.augment.per_split)
    assert job_cost([task], epochs).steps == -(-2 * n // 4)
    tight = dataclasses.replace(cfg, samples=dataclasses.replace(cfg.samples, max_seq_len=10))
    assert job_cost([task], tight).tokens == 0


def test_size_order_starts_the_largest_first_and_fifo_keeps_the_task_order():
    sizes = [5.0, 50.0, 1.0, 20.0, 50.0]
    jobs, costs = sized_jobs(sizes)
    for order, expect in (("size", [1, 4, 3, 0, 2]), ("fifo", [0, 1, 2, 3, 4])):
        s = Scheduler(jobs, retries=0, target_workers=5, costs=costs, order=order)
        ready_pool(s)
        sent, _ = s.dispatch(0.0)
        assert [d.job.key for d in sent] == [jobs[i].key for i in expect], order
        assert all(d.job.steps is None and d.job.max_seconds is None for d in sent)  # no budget: no cut
    # jobs without a predicted cost keep their order, after the others
    partial = {k: c for k, c in costs.items() if k in (jobs[2].key, jobs[3].key)}
    s = Scheduler(jobs, retries=0, target_workers=5, costs=partial)
    assert [j.key for j in s.queue] == [jobs[i].key for i in (3, 2, 0, 1, 4)]
    with pytest.raises(ValueError, match="orchestrate.order"):
        Scheduler(jobs, retries=0, target_workers=1, order="random")


def test_config_order_defaults_to_size_and_rejects_others():
    assert QWEN.orchestrate.order == "size"
    with pytest.raises(ConfigError, match="orchestrate.order"):
        load_config(scale.DEFAULT_CONFIG, {"orchestrate.order": "lifo"})


def test_a_dead_workers_job_goes_first_and_costs_stay_counted():
    jobs, costs = sized_jobs([10.0, 30.0, 20.0])
    s = Scheduler(jobs, retries=1, target_workers=1, costs=costs)
    assert s.queued_tokens == 60.0
    (w,) = ready_pool(s)
    (d,), _ = s.dispatch(0.0)
    assert d.job.key == jobs[1].key and s.queued_tokens == 30.0
    s.worker_died(w, "node lost")
    assert s.queue[0].key == jobs[1].key and s.queued_tokens == 60.0
    (w,) = ready_pool(s)
    (d,), _ = s.dispatch(1.0)
    assert d.job.key == jobs[1].key
    s.succeeded(w, {"steps": 10, "planned_steps": 10, "seconds": 3.0, "train_seconds": 3.0})
    assert s.counts() == (1, 0)


def test_budget_plans_each_job_from_its_own_cost():
    p = BudgetPlanner(deadline=1000.0, min_steps=2)
    big, small = JobCost(100, 10_000.0), JobCost(100, 1_000.0)
    # nothing measured: a time cap, the job's share of the pool's time left
    steps, cap = p.plan_cost(big, queued_tokens=20_000.0, workers=4, queued=2, busy_s=0.0, now=0.0)
    assert steps is None and cap == 1000.0  # 4 workers x 1000 s x half the work > the time left
    steps, cap = p.plan_cost(small, queued_tokens=100_000.0, workers=1, queued=10, busy_s=0.0, now=0.0)
    assert steps is None and cap == pytest.approx(10.0)
    # measured: 0.01 s per predicted token, 2 s overhead -> big needs 102 s, small 12 s
    p.observe({"steps": 100, "seconds": 102.0, "train_seconds": 100.0}, big)
    assert p.job_seconds(big) == pytest.approx(102.0) and p.job_seconds(small) == pytest.approx(12.0)
    # the queue fits: nothing is cut, and the time cap keeps one step and the overhead before the deadline
    steps, cap = p.plan_cost(big, queued_tokens=50_000.0, workers=4, queued=5, busy_s=0.0, now=0.0)
    assert steps is None and cap == pytest.approx(1000.0 - 1.0 - 2.0)
    # 4 workers x 100 s left (98% planned) - 2 s x 10 jobs = 372 s for 1000 s of training: cut to 37%
    steps, cap = p.plan_cost(big, queued_tokens=100_000.0, workers=4, queued=10, busy_s=0.0, now=900.0)
    assert steps == 37
    # the running jobs' remaining seconds count against the room
    busy, _ = p.plan_cost(big, queued_tokens=100_000.0, workers=4, queued=10, busy_s=200.0, now=900.0)
    assert busy == 17
    # 20 s left: big cannot run more than (20 - 1 - 2 - 2) / 1 = 15 steps; 3 s left: not even min_steps
    steps, cap = p.plan_cost(big, queued_tokens=10_000.0, workers=4, queued=1, busy_s=0.0, now=980.0)
    assert steps == 15 and cap == pytest.approx(17.0)
    assert p.plan_cost(big, queued_tokens=1e4, workers=4, queued=1, busy_s=0.0, now=997.0) == (0, None)
    assert BudgetPlanner(None, 2).plan_cost(big, queued_tokens=1.0, workers=1, queued=1, busy_s=0, now=0) == (
        None,
        None,
    )


def test_simulation_drives_the_real_scheduler_size_beats_fifo_and_nothing_is_lost():
    costed = scale.task_costs(QWEN, limit=60)
    jobs, costs = scale.replicate(costed, 600)
    assert len({j.key for j in jobs}) == 600 and costs[jobs[60].key] == costs[jobs[0].key]
    sc = scale.SimConfig(slots=16, tokens_per_s=8000.0, death_rate=0.05, seed=1)
    size = scale.simulate(jobs, costs, sc)
    fifo = scale.simulate(jobs, costs, dataclasses.replace(sc, order="fifo"))
    for r in (size, fifo):
        assert r["trained"] == 600 and r["lost_jobs"] == 0 and r["late_jobs"] == 0
        assert r["worker_deaths"] > 0 and r["requeues"] == r["worker_deaths"]
        assert r["ideal_s"] == size["ideal_s"] and r["makespan_vs_ideal"] >= 1.0
        assert 0.5 < r["slot_utilisation"] <= 1.0
        assert r["timeline"] and all(0.0 <= u <= 1.0 + 1e-9 for _, u in r["timeline"])
    assert size["makespan_s"] < fifo["makespan_s"]
    assert size["makespan_vs_ideal"] < 1.1


def test_simulation_under_a_budget_cuts_jobs_and_none_ends_past_the_deadline():
    costed = scale.task_costs(QWEN, limit=40)
    jobs, costs = scale.replicate(costed, 300)
    sc = scale.SimConfig(slots=8, tokens_per_s=8000.0, death_rate=0.02, raise_rate=0.02, seed=2)
    ideal = scale.simulate(jobs, costs, sc)["ideal_s"]
    tight = scale.simulate(jobs, costs, dataclasses.replace(sc, budget_s=0.5 * ideal))
    assert tight["late_jobs"] == 0 and tight["makespan_s"] <= 0.5 * ideal
    assert tight["reduced"] > 100 and 0.3 < tight["train_work_done"] < 0.5
    assert tight["trained"] + tight["skipped"] + tight["failed"] == 300
    assert tight["raised"] > 0 and tight["failed"] == 0  # raising jobs are retried


def test_bench_scale_writes_its_results_without_ray(tmp_path):
    out = tmp_path / "scale.json"
    result = scale.run(n_jobs=200, slots=16, budgets=(0.8,), ray_jobs=0, limit=30, out=out)
    data = json.loads(out.read_text())
    for key in ("makespan_vs_ideal", "makespan_vs_ideal_fifo", "lost_jobs", "decision_ms"):
        assert data[key] == result[key] is not None
    assert data["ray_dispatch_jobs_per_s"] is None
    assert data["budget_runs"][0]["late_jobs"] == 0
    md = (tmp_path / "scale.md").read_text()
    assert md.startswith("## Scale") and "size-aware" in md
    assert (tmp_path / "summary.md").read_text() == "# ttft benchmarks\n\n" + md
    scale.update_summary(tmp_path / "summary.md", md.replace("size-aware", "LPT"))  # replaced, not added
    assert (tmp_path / "summary.md").read_text().count("## Scale") == 1
    (tmp_path / "summary.md").write_text("# t\n\n" + md + "\n## Later\nkept\n")
    scale.update_summary(tmp_path / "summary.md", md)
    assert (tmp_path / "summary.md").read_text() == "# t\n\n" + md + "\n## Later\nkept\n"
    if data["plot"]:
        assert (tmp_path / data["plot"]).stat().st_size > 1000


@pytest.mark.slow  # ~20 s on an idle 2-core box; minutes when it is loaded (actor processes start slowly)
def test_production_pool_dispatches_200_jobs_on_16_fake_gpus(tmp_path):
    """run_pool (the loop run_finetunes uses) on NullWorker actors: every job trained once."""
    import ray

    from ttft.orchestrate import init_ray, job_costs, null_workers, open_registry, run_pool
    from ttft.scheduler import FinetuneSummary

    cfg = load_config(
        scale.DEFAULT_CONFIG,
        {"orchestrate.gpus_per_worker": 4, "registry.root": str(tmp_path / "reg")},
    )
    jobs, _ = scale.replicate(scale.task_costs(cfg, limit=20), 200)
    costs = job_costs(cfg, jobs, set())
    assert set(costs) == {j.key for j in jobs}
    # 4 actors (each imports torch to unpickle FinetuneJob: ~380 MB), a slot per 4 GPUs
    sched = Scheduler(jobs, retries=0, target_workers=4, costs=costs, order=cfg.orchestrate.order)
    assert ray.is_initialized() is False
    init_ray(num_cpus=1, num_gpus=16, include_dashboard=False, log_to_driver=False)
    try:
        summary, done = FinetuneSummary(), []
        t0 = time.monotonic()
        run_pool(
            cfg,
            sched,
            null_workers(cfg),
            open_registry(cfg.registry),
            summary,
            out=io.StringIO(),
            on_result=done.append,
        )
        wall = time.monotonic() - t0
    finally:
        ray.shutdown()
    assert len(done) == 200 and len({o.key for o in done}) == 200 and sched.counts() == (200, 0)
    assert 1 <= summary.workers <= 4 and sched.finished and not sched.busy
    assert wall < 120
