"""`python -m jobs.canary` (`make canary`): the CPU-scale accuracy benchmark of the seed's TTFT ablations.

1. Build a random-init tiny model (``CanaryConfig``: hidden size, layers, seed) and pretrain it with Ray
   Train on generated *training* tasks
   (``python -m jobs.pretrain --config jobs/configs/canary_pretrain.yaml``).
   Skipped when ``<out>/model`` was exported by the same recipe (``<out>/pretrain.stamp.json``); an
   interrupted pretraining resumes from its last checkpoint.
2. Write the held-out *eval* tasks (``ttft.generate``, eval split, its own seed) to ``<out>/tasks``.
3. Run the seed's ablations through the real pipeline, one ``python -m jobs.eval`` each (Ray fine-tunes ->
   registry ``<out>/registry`` -> vLLM multi-LoRA -> vote -> score): baseline, n-1, n-1+geometric,
   n-1+geometric+color, as ``<out>/<ablation>/``. Adapters already in the registry are reused.
4. Print the seed-style table (``ttft.report.compare_runs``) and write ``<out>/table.md`` and
   ``<out>/summary.json``: ``{"pass2": {ablation: pass@2 in percent}, "lift": best TTFT row - baseline}``.

Every step runs as a subprocess that starts its own local Ray (``RAY_ADDRESS`` is removed from their
environment: the canary's paths are local), so nothing is left running between steps.
Exit status: 0 done (1 with ``--min-lift`` when the lift is below it); 2 bad config; 1 a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIG = "jobs/configs/canary_pretrain.yaml"
ABLATIONS = {  # summary.json name (also the run dir under <out>) -> jobs.eval config: the seed's rows
    "baseline": "jobs/configs/canary_baseline.yaml",
    "n-1": "jobs/configs/canary_n-1.yaml",
    "n-1+geometric": "jobs/configs/canary_n-1_geometric.yaml",
    "n-1+geometric+color": "jobs/configs/canary_n-1_geometric_color.yaml",
}
STAMP = "pretrain.stamp.json"
SUMMARY = "summary.json"


@dataclass
class CanaryConfig:
    """What the canary pretrains, evaluates and compares (relative paths are relative to the repo root)."""

    out_dir: str = "runs/canary"
    hidden_size: int = 128  # the random-init tiny model (a multiple of 64: head_dim 64 for vLLM CPU)
    layers: int = 2
    intermediate_size: int | None = None  # None: 2 x hidden_size
    model_seed: int = 0
    pretrain: str = PRETRAIN_CONFIG
    eval_tasks: int = 50
    eval_seed: int = 1000  # eval split seed of the held-out tasks (TTFT was tuned on other seeds)
    ablations: dict[str, str] = field(default_factory=lambda: dict(ABLATIONS))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _run(cmd: list[str], what: str) -> None:
    print(f"[canary] {what}: {' '.join(cmd[2:])}", flush=True)
    rc = subprocess.run(cmd, cwd=ROOT, env=_env()).returncode
    if rc != 0:
        raise RuntimeError(f"{what} failed (exit {rc}): {' '.join(cmd)}")


def _path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


# --------------------------------------------------------------------------------------------- pretrain


def init_recipe(cfg: CanaryConfig) -> dict[str, Any]:
    """What the random-init tiny model is built from."""
    return {
        "hidden_size": cfg.hidden_size,
        "layers": cfg.layers,
        "intermediate_size": cfg.intermediate_size,
        "seed": cfg.model_seed,
    }


def build_init_model(cfg: CanaryConfig, out: Path) -> Path:
    """The random-init tiny model the pretraining starts from (rebuilt when its recipe changed)."""
    from ttft.model import init_tiny_model

    recipe = init_recipe(cfg)
    d = out / "init-model"
    stamp = d / "canary-init.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return d
    shutil.rmtree(d, ignore_errors=True)
    init_tiny_model(
        d,
        seed=cfg.model_seed,
        hidden_size=cfg.hidden_size,
        layers=cfg.layers,
        intermediate_size=cfg.intermediate_size,
    )
    stamp.write_text(json.dumps(recipe))
    return d


def load_pretrain(cfg: CanaryConfig, overrides: list[str]) -> tuple[Any, Any]:
    """The pretraining (RunConfig, PretrainConfig) with ``KEY=VALUE`` overrides; raises ConfigError."""
    from ttft.config import parse_override
    from ttft.pretrain import load_pretrain_config

    return load_pretrain_config(_path(cfg.pretrain), dict(parse_override(s) for s in overrides))


def pretrain_recipe(cfg: CanaryConfig, overrides: list[str]) -> dict[str, Any]:
    """Everything the pretrained model depends on: init model, the pretrain config, the overrides."""
    rcfg, pcfg = load_pretrain(cfg, overrides)
    return {
        "init": init_recipe(cfg),
        "ttft": asdict(rcfg.ttft),
        "pretrain": {k: v for k, v in asdict(pcfg).items() if k not in ("output", "storage")},
    }


def pretrain(cfg: CanaryConfig, out: Path, overrides: list[str]) -> tuple[Path, float, bool]:
    """(model dir, seconds, trained now): pretrain unless ``out/model`` matches the recipe."""
    model = out / "model"
    recipe = pretrain_recipe(cfg, overrides)
    stamp = out / STAMP
    if stamp.is_file() and (model / "config.json").is_file():
        done = json.loads(stamp.read_text())
        if done.get("recipe") == recipe:
            print(
                f"[canary] pretrained model {model} matches the recipe: reused "
                f"({done['seconds']:.0f} s when trained)",
                flush=True,
            )
            return model, float(done["seconds"]), False
    ckpts = out / "pretrain" / "checkpoints"
    started = out / "pretrain.recipe.json"
    if not started.is_file() or json.loads(started.read_text()) != recipe:
        shutil.rmtree(ckpts, ignore_errors=True)  # another recipe's checkpoints cannot be resumed
        stamp.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps(recipe, indent=1))
    init = build_init_model(cfg, out)
    t0 = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "jobs.pretrain",
        "--config",
        str(_path(cfg.pretrain)),
        "--model",
        str(init),
        "--output",
        str(model),
        "--storage",
        str(ckpts),
    ]
    for s in overrides:
        cmd += ["--set", s]
    _run(cmd, "pretrain")
    seconds = time.monotonic() - t0
    stamp.write_text(json.dumps({"recipe": recipe, "seconds": seconds}, indent=1))
    return model, seconds, True


# ------------------------------------------------------------------------------------------ ablations


def write_eval_tasks(cfg: CanaryConfig, out: Path) -> Path:
    """The held-out eval tasks as one JSON file each in ``out/tasks`` (other files there are removed)."""
    from ttft.generate import generate_tasks, write_tasks

    d = out / "tasks"
    tasks = generate_tasks("eval", cfg.eval_tasks, cfg.eval_seed)
    keep = {f"{t.id}.json" for t in tasks}
    if d.is_dir():
        for p in d.glob("*.json"):
            if p.name not in keep:
                p.unlink()
    write_tasks(tasks, d)
    return d


def run_ablation(name: str, config: str, out: Path, tasks: Path, model: Path, overrides: list[str]) -> Path:
    """One ``jobs.eval`` run: the ablation's config with the canary's data, model, registry and out dir."""
    cmd = [
        sys.executable,
        "-m",
        "jobs.eval",
        "--config",
        str(_path(config)),
        "--name",
        name,
        "--data",
        str(tasks),
        "--model",
        str(model),
        "--registry",
        str(out / "registry"),
        "--set",
        f"out_dir={out}",
    ]
    for s in overrides:
        cmd += ["--set", s]
    _run(cmd, f"ablation {name}")
    return out / name


def summarize(names: list[str], out: Path) -> dict[str, Any]:
    """``{"pass2": {name: percent}, "lift": best non-baseline row - baseline}`` from the runs' summaries."""
    pass2 = {}
    for n in names:
        s = json.loads((out / n / "summary.json").read_text())
        pass2[n] = round(100 * (s["accuracy"] or 0.0), 2)
    ttft = [v for k, v in pass2.items() if k != "baseline"]
    return {"pass2": pass2, "lift": round(max(ttft) - pass2["baseline"], 2) if ttft else 0.0}


def seed_ordering(pass2: dict[str, float]) -> bool:
    """Whether the rows reproduce the seed's ordering: every TTFT row above the baseline, and adding
    augmentations never loses accuracy (baseline < n-1 <= +geometric <= +color, in the config's order)."""
    vals = list(pass2.values())
    return all(v > vals[0] for v in vals[1:]) and all(a <= b for a, b in zip(vals[1:], vals[2:]))


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.canary",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pretrain-config", help="pretraining YAML (a jobs.pretrain config)")
    d = CanaryConfig()
    p.add_argument("--out", help=f"output dir (default {d.out_dir})")
    p.add_argument("--tasks", type=int, help=f"number of held-out eval tasks (default {d.eval_tasks})")
    p.add_argument("--eval-seed", type=int, help=f"eval split seed (default {d.eval_seed})")
    p.add_argument(
        "--hidden-size", type=int, help=f"tiny model hidden size, a multiple of 64 (default {d.hidden_size})"
    )
    p.add_argument("--layers", type=int, help=f"tiny model layers (default {d.layers})")
    p.add_argument(
        "--pretrain-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pretraining config value, e.g. ttft.optim.steps=10 (repeatable)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of every ablation run, e.g. ttft.optim.steps=4 (repeatable)",
    )
    p.add_argument("--min-lift", type=float, help="exit 1 when the lift (points) is below this")
    return p


def main(argv: list[str] | None = None) -> int:
    """Pretrain (or reuse), run the ablations, print the table, write summary.json."""
    args = build_parser().parse_args(argv)
    from ttft.config import ConfigError

    try:
        cfg = CanaryConfig()
        for attr, key in (
            ("pretrain_config", "pretrain"),
            ("out", "out_dir"),
            ("tasks", "eval_tasks"),
            ("eval_seed", "eval_seed"),
            ("hidden_size", "hidden_size"),
            ("layers", "layers"),
        ):
            if getattr(args, attr) is not None:
                setattr(cfg, key, getattr(args, attr))
        pretrain_recipe(cfg, args.pretrain_set)  # validate before any work
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    out = _path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        model, pretrain_s, _ = pretrain(cfg, out, args.pretrain_set)
        tasks = write_eval_tasks(cfg, out)
        for name, config in cfg.ablations.items():
            run_ablation(name, config, out, tasks, model, args.set)
    except RuntimeError as e:
        print(f"[canary] {e}", file=sys.stderr)
        return 1
    from ttft.report import compare_runs

    names = list(cfg.ablations)
    table = compare_runs([out / n for n in names], out / "canary.png")
    summary = summarize(names, out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    total = time.monotonic() - t0
    ordered = seed_ordering(summary["pass2"])
    footer = (
        f"\n{cfg.eval_tasks} held-out generated eval tasks (seed {cfg.eval_seed}); pass@2 lift of the best "
        f"TTFT row over the baseline: {summary['lift']:+.1f} points; seed ordering: "
        f"{'reproduced' if ordered else 'not reproduced'}.\npretrain {pretrain_s / 60:.1f} min; "
        f"canary total {total / 60:.1f} min\n"
    )
    (out / "table.md").write_text(table + footer)
    print("\n" + table + footer, flush=True)
    print(f"[canary] {out / SUMMARY}: {json.dumps(summary)}")
    if args.min_lift is not None and summary["lift"] < args.min_lift:
        print(f"[canary] lift {summary['lift']:.1f} < --min-lift {args.min_lift}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
