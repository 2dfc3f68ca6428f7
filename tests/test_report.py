"""ttft.report.stage_summary: the short closing block of a run, from a real write_run on real predictions."""

from __future__ import annotations

from pathlib import Path

from ttft.formats import build_target
from ttft.inference import Adapter, Prompt, collect
from ttft.orchestrate import FinetuneSummary, JobOutcome
from ttft.report import RunRecord, stage_summary, write_run
from ttft.scoring import score_submission, solutions_of
from ttft.tasks import Pair, Task
from ttft.vllm_engine import GenResult

GRID = [[1, 2], [3, 4]]


def _tasks() -> list[Task]:
    return [
        Task(
            f"t{i}",
            (Pair([[0, 1], [1, 0]], GRID), Pair([[1, 1], [0, 0]], GRID)),
            ([[0, 1], [1, 1]],),
            (GRID,),
        )
        for i in range(3)
    ]


def _record(tmp_path: Path, ttft_enabled: bool = True) -> tuple[RunRecord, dict]:
    tasks = _tasks()
    adapters = {"t0": Adapter("k0", str(tmp_path)), "t1": Adapter("k1", str(tmp_path)), "t2": None}
    right, wrong = build_target(GRID, "minimal"), build_target([[9]], "minimal")
    prompts = [Prompt(t.id, 0, "identity", "p", 20, adapters[t.id] if ttft_enabled else None) for t in tasks]
    results = [
        [GenResult(right, -0.5, 8, "stop")],
        [GenResult(wrong, -0.7, 4, "stop")],
        [GenResult(right, -0.9, 8, "stop")],
    ]
    preds = collect(tasks, prompts, results, "minimal")
    preds.seconds = 2.0
    fin = None
    if ttft_enabled:
        fin = FinetuneSummary(
            [
                JobOutcome("k0", ["t0"], "trained", 1, seconds=3.0),
                JobOutcome("k1", ["t1"], "reused"),
                JobOutcome("k2", ["t2"], "failed", 2, error="RuntimeError: boom"),
            ],
            seconds=4.0,
            workers=2,
        )
    score = score_submission(preds.submission(), solutions_of(tasks))
    stages = {"setup": 5.2, "fine-tune": 4.0, "inference": 12.6}
    rec = RunRecord("demo", tasks, stages, fin, preds, score, ["bad: task x: field y"], ttft_enabled)
    return rec, write_run(rec, tmp_path / "run")


def test_stage_summary_is_one_short_block_with_every_stage(tmp_path):
    rec, summary = _record(tmp_path)
    text = stage_summary(rec, summary, tmp_path / "run" / "report.md")
    lines = text.splitlines()
    assert len(lines) <= 8, text
    assert lines[0] == "[ttft] run demo: 3 tasks (1 invalid, skipped)"
    assert "  fine-tune: 1 trained, 1 reused, 1 failed" in lines
    assert "  inference: 3 candidates, 20 tokens in 2.0s, 10 tok/s" in lines
    assert "  warning: 1 tasks had no adapter and ran on the base model: t2" in lines
    assert "  accuracy (pass@2): 66.7% (2/3 tasks); oracle 66.7%" in lines
    assert "  time: setup 5s | fine-tune 4s | inference 13s | total 22s" in lines
    assert lines[-1] == f"  report: {tmp_path / 'run' / 'report.md'}"


def test_stage_summary_of_a_baseline_has_no_fallback_warning(tmp_path):
    rec, summary = _record(tmp_path, ttft_enabled=False)
    text = stage_summary(rec, summary, "r.md")
    assert "fine-tune: off (baseline" in text and "warning" not in text
    rec.score = None
    summary["accuracy"], summary["scored_tasks"] = None, 0
    assert "No solutions: not scored" in stage_summary(rec, summary, "r.md")
