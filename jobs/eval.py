"""`python -m jobs.eval --config C`: the main job. Fine-tune every task on Ray -> registry -> one vLLM
multi-LoRA pass -> vote -> score -> <out_dir>/<name>/ (config, submission, predictions, results, report,
plots), on a local disk or an object store (`out_dir: s3://...`).

Exit status: 0 done; 3 the registry's object store failed (outcomes so far are in finetune.json).
"""

from __future__ import annotations

import json
import sys
import time

from jobs.common import Stopwatch, parser, publish, run_dir, setup, start_ray, tasks_of
from ttft.registry import RegistryError
from ttft.report import RunRecord, stage_summary, write_run
from ttft.scoring import known_solutions, score_submission


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m jobs.eval", __doc__.splitlines()[0])
    args = p.parse_args(argv)
    cfg = setup(args)
    clock = Stopwatch()
    t_start = time.monotonic()
    tasks, invalid = tasks_of(cfg)
    cfg, identity = start_ray(cfg, args)
    out = run_dir(cfg)
    print(
        f"[ttft] run {cfg.name}: {len(tasks)} tasks from {cfg.data.source}, model {cfg.model.name}, "
        f"TTFT {'on' if cfg.ttft.enabled else 'off (baseline)'}",
        file=sys.stderr,
    )
    from ttft.orchestrate import open_registry, run_finetunes, run_inference, task_adapters

    clock.lap("setup")
    try:
        summary = run_finetunes(cfg, tasks, identity=identity, start_time=t_start)
        (out.local / "finetune.json").write_text(json.dumps(summary.to_json(), indent=2))
        if cfg.ttft.enabled:
            print(summary.text(), file=sys.stderr)
        clock.lap("fine-tune")
        keys = task_adapters(cfg, tasks, open_registry(cfg.registry), identity)
    except (RegistryError, OSError) as e:
        print(
            f"[ttft] the registry at {cfg.registry.root} failed: {e}; outcomes in finetune.json",
            file=sys.stderr,
        )
        print(f"run: {publish(out)}")
        return 3
    inference = run_inference(cfg, tasks, keys)
    preds = inference.predictions
    from ttft.inference import write_predictions

    write_predictions(preds, out.local)
    clock.lap("inference")
    solutions = known_solutions(tasks)  # tasks without solutions are predicted, not scored
    score = score_submission(preds.submission(), solutions) if solutions else None
    base_val = {}
    if not cfg.ttft.enabled and solutions:  # the seed's baseline row has a val loss too: the base model's
        from ttft.finetune import base_val_losses

        base_val = base_val_losses(cfg.model, cfg.ttft, tasks)
        clock.lap("val loss")
    rec = RunRecord(
        cfg.name,
        tasks,
        clock.stages,
        summary,
        preds,
        score,
        invalid,
        cfg.ttft.enabled,
        base_val,
        inference_nodes=inference.node_of(),
        adapter_errors=inference.adapter_errors,
    )
    result = write_run(rec, out.local)
    print(stage_summary(rec, result, out.path("report.md")))
    if cfg.tracking.backend is not None:
        from ttft.tracking import log_run, tracked_run

        curves = {"+".join(o.task_ids): (o.row or {}).get("train_losses") or [] for o in summary.outcomes}
        where = log_run(cfg.tracking, tracked_run(cfg, result, out.local, curves))
        if where:
            print(f"tracked: {where}")
    publish(out)
    return 3 if summary.registry_errors else 0


if __name__ == "__main__":
    sys.exit(main())
