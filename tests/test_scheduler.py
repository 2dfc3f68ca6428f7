"""The fine-tune pool's decisions without Ray: pool target, dispatch, retry, worker death, budget."""

from __future__ import annotations

import pytest

from ttft.finetune import FinetuneJob
from ttft.scheduler import BudgetPlanner, PoolError, Scheduler, pool_target
from ttft.tasks import load_tasks

TASKS = load_tasks("arc1/evaluation", max_side=6).tasks


def jobs(n: int) -> list[FinetuneJob]:
    return [FinetuneJob(f"{i:064x}", [TASKS[i]]) for i in range(n)]


def row(steps: int = 10, seconds: float = 2.0, train: float = 1.0) -> dict:
    return {
        "steps": steps,
        "planned_steps": steps,
        "seconds": seconds,
        "train_seconds": train,
        "reduced": False,
    }


def test_pool_target_prefers_exact_then_max_workers_then_what_fits():
    cluster = {"CPU": 8.0, "GPU": 0.0}
    kw = dict(cpus_per_worker=1.0, gpus_per_worker=0.25, cluster=cluster)
    assert pool_target(10, workers=3, max_workers=None, **kw) == 3
    # A min_workers: 0 GPU cluster has no GPU yet: max_workers is the target asked of the autoscaler.
    assert pool_target(10, workers=None, max_workers=32, **kw) == 10
    assert pool_target(100, workers=None, max_workers=32, **kw) == 32
    assert pool_target(100, workers=None, max_workers=None, **kw) == 1  # nothing fits now: one, pending
    assert pool_target(100, workers=None, max_workers=None, **{**kw, "cluster": {"GPU": 2.0}}) == 8
    assert pool_target(0, workers=4, max_workers=None, **kw) == 0


def test_reused_jobs_are_not_scheduled_and_workers_never_exceed_jobs():
    js = jobs(5)
    s = Scheduler(js, existing={js[0].key, js[1].key}, retries=1, target_workers=8)
    assert s.to_train == 3
    assert s.workers_to_start() == [0, 1, 2]
    assert s.workers_to_start() == []  # starting workers count as live
    assert [o.status for o in s.summary_outcomes()[:2]] == ["reused", "reused"]


def test_dispatch_only_to_ready_workers_and_in_order():
    s = Scheduler(jobs(3), retries=0, target_workers=2)
    w = s.workers_to_start()
    assert s.dispatch(0.0) == ([], [])  # nobody is ready yet: no job waits on a pending actor
    s.worker_ready(w[0], "node-a")
    sent, skipped = s.dispatch(0.0)
    assert [(d.worker, d.job.key, d.attempt) for d in sent] == [(0, s.jobs[0].key, 1)] and not skipped
    s.worker_ready(w[1], "node-b")
    (d,) = s.dispatch(0.0)[0]
    assert d.job.key == s.jobs[1].key
    out = s.succeeded(0, row())
    assert out.status == "trained" and out.node == "node-a"
    (d,) = s.dispatch(0.0)[0]
    assert (d.worker, d.job.key) == (0, s.jobs[2].key)


def test_raising_job_is_retried_then_failed():
    s = Scheduler(jobs(1), retries=2, target_workers=1)
    s.worker_ready(s.workers_to_start()[0], "n")
    for attempt in (1, 2):
        (d,) = s.dispatch(0.0)[0]
        assert d.attempt == attempt
        assert s.raised(d.worker, "ValueError: bad") is None
    (d,) = s.dispatch(0.0)[0]
    out = s.raised(d.worker, "ValueError: bad")
    assert out is not None and out.status == "failed" and out.attempts == 3 and "bad" in out.error
    assert s.finished


def test_dead_worker_requeues_its_job_first_and_is_replaced():
    s = Scheduler(jobs(3), retries=1, target_workers=2)
    a, b = s.workers_to_start()
    s.worker_ready(a, "n1")
    s.worker_ready(b, "n2")
    sent, _ = s.dispatch(0.0)
    lost = sent[0].job
    job, failed = s.worker_died(a, "node lost")
    assert job is lost and failed is None
    assert s.queue[0] is lost  # requeued at the front
    assert s.workers_to_start() == [2]  # replaced
    s.worker_ready(2, "n3")
    (d,) = s.dispatch(0.0)[0]
    assert d.job is lost and d.attempt == 1  # a death is not the job's fault
    out = s.succeeded(2, row())
    assert out.requeues == 1 and out.node == "n3"


def test_job_whose_workers_keep_dying_fails():
    s = Scheduler(jobs(1), retries=0, target_workers=1)
    for i in range(2):
        (wid,) = s.workers_to_start()
        s.worker_ready(wid, f"n{i}")
        s.dispatch(0.0)
        job, failed = s.worker_died(wid, "OOM")
        if i == 0:
            assert failed is None
    assert failed is not None and failed.status == "failed" and "died 2 times" in failed.error
    assert s.finished


def test_workers_that_cannot_start_abort_with_the_error():
    s = Scheduler(jobs(2), retries=1, target_workers=1)
    (w,) = s.workers_to_start()
    s.worker_start_failed(w, "RuntimeError: CUDA is not visible")
    (w,) = s.workers_to_start()
    with pytest.raises(PoolError, match="CUDA is not visible"):
        s.worker_start_failed(w, "RuntimeError: CUDA is not visible")


def test_idle_workers_retire_once_the_queue_is_empty():
    s = Scheduler(jobs(1), retries=0, target_workers=1)
    (w,) = s.workers_to_start()
    s.worker_ready(w, "n")
    s.dispatch(0.0)
    assert s.retire_idle() == []  # busy
    s.succeeded(w, row())
    assert s.retire_idle() == [w] and s.finished


def test_budget_skips_jobs_that_cannot_finish_and_cuts_steps():
    planner = BudgetPlanner(deadline=100.0, min_steps=2)
    s = Scheduler(jobs(4), retries=0, target_workers=1, planner=planner, planned_steps=50)
    (w,) = s.workers_to_start()
    s.worker_ready(w, "n")
    (d,), _ = s.dispatch(0.0)
    assert d.job.steps is None and d.job.max_seconds == 25.0  # no measurement yet: a time cap only
    s.succeeded(w, row(steps=10, seconds=12.0, train=10.0))  # 1 s/step, 2 s overhead
    (d,), _ = s.dispatch(60.0)  # 40 s left for 3 jobs: ~13 s each -> 11 steps
    assert d.job.steps == 11
    s.succeeded(w, row(steps=11, seconds=13.0, train=11.0))
    sent, skipped = s.dispatch(99.0)  # 1 s left: nothing fits even min_steps
    assert sent == [] and [o.status for o in skipped] == ["skipped", "skipped"]
    assert s.finished
    assert [o.status for o in s.summary_outcomes()] == ["trained", "trained", "skipped", "skipped"]
