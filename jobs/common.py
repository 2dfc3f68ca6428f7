"""Shared plumbing of the job entrypoints: argument parsing, task loading, Ray start, run directory."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from ttft.console import setup_console

# Before any third-party import, and also when vLLM's spawned processes re-import the entry module.
setup_console()

from ttft.config import ConfigError, RunConfig, add_config_args, config_from_args  # noqa: E402
from ttft.runs import RunDir  # noqa: E402
from ttft.tasks import Task, TaskError, load_tasks  # noqa: E402


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_config_args(p)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started when no cluster is given")
    p.add_argument(
        "--verbose", action="store_true", help="show all third-party logging (also: TTFT_VERBOSE=1)"
    )
    return p


def setup(args: argparse.Namespace) -> RunConfig:
    """Parse the config or exit 2 with a one-line error naming the key."""
    setup_console(getattr(args, "verbose", False))
    try:
        cfg = config_from_args(args)
        if cfg.tracking.backend is not None:
            from ttft.tracking import check_backend

            check_backend(cfg.tracking)
        return cfg
    except ConfigError as e:
        sys.exit(f"config error: {e}")


def tasks_of(cfg: RunConfig) -> tuple[list[Task], list[str]]:
    """The run's tasks; invalid ones are skipped and returned as one-line reasons."""
    d = cfg.data
    try:
        res = load_tasks(
            d.source, solutions=d.solutions, ids=d.ids, limit=d.limit, max_side=d.max_side, skip_invalid=True
        )
    except (TaskError, FileNotFoundError, ValueError) as e:
        sys.exit(f"data error: {e}")
    errors = [str(e) for e in res.errors]
    for e in errors:
        print(f"[ttft] skipping invalid task: {e}", file=sys.stderr)
    if not res.tasks:
        sys.exit(f"data error: no valid task in {d.source!r}")
    return res.tasks, errors


def start_ray(cfg: RunConfig, args: argparse.Namespace) -> tuple[RunConfig, str]:
    """Join or start Ray; returns the config with paths checked for the cluster and the base model pinned
    (an HF revision resolved to its commit), and the model identity every adapter key of the run uses."""
    from ttft.model import pin_model
    from ttft.orchestrate import check_cluster_paths, init_ray, resolve_gpus_per_worker

    init_ray(args.address, num_cpus=args.num_cpus)
    try:
        cfg = resolve_gpus_per_worker(check_cluster_paths(cfg))
        model, identity = pin_model(cfg.model)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        sys.exit(f"config error: {e}")
    return dataclasses.replace(cfg, model=model), identity


def run_dir(cfg: RunConfig) -> RunDir:
    """The run's directory (`<out_dir>/<name>/`, local or published to an object store) with config.yaml."""
    out = RunDir(cfg.out_dir, cfg.name)
    (out.local / "config.yaml").write_text(cfg.to_yaml())
    return out


def publish(out: RunDir) -> str:
    """Upload the run to its object store (when out_dir is one), say where it is, drop the local copy."""
    where = out.publish()
    if out.remote:
        print(f"[ttft] run files: {where}/ (read them with `ttft runs pull {where} DIR`)", file=sys.stderr)
        out.cleanup()
    return where


class Stopwatch:
    """Seconds per named stage, in order."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.stages: dict[str, float] = {}
        self._last = self.t0

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.stages[stage] = now - self._last
        self._last = now
