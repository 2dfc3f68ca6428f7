"""`python -m jobs.eval --config C`: the main job. Fine-tune every task on Ray -> registry -> one vLLM
multi-LoRA pass -> vote -> score -> runs/<name>/ (config, submission, predictions, results, report, plots).
"""

from __future__ import annotations

import sys
import time

from jobs.common import Stopwatch, parser, run_dir, setup, start_ray, tasks_of
from ttft.report import RunRecord, stage_summary, write_run
from ttft.scoring import score_submission, solutions_of


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m jobs.eval", __doc__.splitlines()[0])
    args = p.parse_args(argv)
    cfg = setup(args)
    clock = Stopwatch()
    t_start = time.monotonic()
    tasks, invalid = tasks_of(cfg)
    out = run_dir(cfg)
    print(
        f"[ttft] run {cfg.name}: {len(tasks)} tasks from {cfg.data.source}, model {cfg.model.name}, "
        f"TTFT {'on' if cfg.ttft.enabled else 'off (baseline)'}",
        file=sys.stderr,
    )
    start_ray(cfg, args)
    from ttft.orchestrate import open_registry, run_finetunes, run_inference, task_adapters

    clock.lap("setup")
    summary = run_finetunes(cfg, tasks, start_time=t_start)
    if cfg.ttft.enabled:
        print(summary.text(), file=sys.stderr)
    clock.lap("fine-tune")
    adapters = task_adapters(cfg, tasks, open_registry(cfg.registry))
    preds = run_inference(cfg, tasks, adapters)
    from ttft.inference import write_predictions

    write_predictions(preds, out)
    clock.lap("inference")
    solutions = solutions_of(tasks)
    score = score_submission(preds.submission(), solutions) if solutions else None
    base_val = {}
    if not cfg.ttft.enabled and solutions:  # the seed's baseline row has a val loss too: the base model's
        from ttft.finetune import base_val_losses

        base_val = base_val_losses(cfg.model, cfg.ttft, tasks)
        clock.lap("val loss")
    rec = RunRecord(cfg.name, tasks, clock.stages, summary, preds, score, invalid, cfg.ttft.enabled, base_val)
    result = write_run(rec, out)
    print(stage_summary(rec, result, out / "report.md"))
    if cfg.tracking.backend is not None:
        from ttft.tracking import log_run, tracked_run

        curves = {"+".join(o.task_ids): (o.row or {}).get("train_losses") or [] for o in summary.outcomes}
        where = log_run(cfg.tracking, tracked_run(cfg, result, out, curves))
        if where:
            print(f"tracked: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
