"""`python -m jobs.infer --config C`: predict every task with its registry adapter (base model where
missing) in one vLLM multi-LoRA pass; writes submission.json, predictions.parquet and, with solutions,
results.parquet and report.md (into `--out`, or `<out_dir>/<name>/`, local or s3://).
"""

from __future__ import annotations

import sys

from jobs.common import Stopwatch, parser, publish, run_dir, setup, start_ray, tasks_of
from ttft.report import RunRecord, scoring_note, write_run
from ttft.scoring import known_solutions, score_submission


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m jobs.infer", __doc__.splitlines()[0])
    p.add_argument("--out", help="output directory or s3:// URI (default: <out_dir>/<name>)")
    p.add_argument(
        "--baseline", action="store_true", help="base model only, no adapters (ttft.enabled=false)"
    )
    args = p.parse_args(argv)
    if args.baseline:
        args.set.append("ttft.enabled=false")
    cfg = setup(args)
    if args.out:
        parent, _, name = args.out.rstrip("/").rpartition("/")
        cfg.out_dir, cfg.name = parent or ".", name
    clock = Stopwatch()
    tasks, invalid = tasks_of(cfg)
    cfg, identity = start_ray(cfg, args)
    out = run_dir(cfg)
    from ttft.inference import write_predictions
    from ttft.orchestrate import open_registry, run_inference, task_adapters

    keys = task_adapters(cfg, tasks, open_registry(cfg.registry), identity)
    missing = sorted(t for t, k in keys.items() if k is None)
    if cfg.ttft.enabled and missing:
        print(
            f"[ttft] {len(missing)} tasks have no adapter and use the base model: {', '.join(missing)}",
            file=sys.stderr,
        )
    clock.lap("setup")
    inference = run_inference(cfg, tasks, keys)
    preds = inference.predictions
    write_predictions(preds, out.local)
    clock.lap("inference")
    solutions = known_solutions(tasks)  # tasks without solutions are predicted, not scored
    score = score_submission(preds.submission(), solutions) if solutions else None
    rec = RunRecord(
        cfg.name,
        tasks,
        clock.stages,
        None,
        preds,
        score,
        invalid,
        cfg.ttft.enabled,
        inference_nodes=inference.node_of(),
        adapter_errors=inference.adapter_errors,
    )
    result = write_run(rec, out.local)
    print(f"submission: {out.path('submission.json')}")
    if result["accuracy"] is not None:
        acc, solved = 100 * result["accuracy"], result["solved"]
        print(f"accuracy (pass@2): {acc:.1f}% ({solved:g}/{len(solutions)} tasks)")
    if len(solutions) < len(tasks):
        print(scoring_note(len(tasks), len(solutions)))
    publish(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
