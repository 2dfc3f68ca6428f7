"""`python -m jobs.canary` (`make canary`): the CPU-scale accuracy benchmark of the seed's TTFT ablations.

The tasks are ``ttft.generate``'s ``canary`` family: colour maps (substitutions a->b and swaps a<->b over
colours 1..9) on a fixed 3x3 layout, 3 demonstrations + 1 test, a quarter of the maps held out of training
by key hash. A tiny model can learn the family (a fixed layout keeps the distance from an output cell to its
source cell constant) and still has something left for TTFT to lift (the held-out maps).

1. Build a random-init tiny model (``CanaryConfig``: hidden size, layers, seed) and pretrain it with Ray
   Train on fresh *training* tasks every step, no augmentation, for a wall-time budget
   (``python -m jobs.pretrain --config jobs/configs/canary_pretrain.yaml``). Skipped when ``<out>/model``
   was exported by the same recipe (``<out>/pretrain.stamp.json``); an interrupted pretraining resumes.
2. The gate: the base model alone (``jobs.eval``, baseline config) on held-out tasks of its own *training*
   distribution (train-split maps, a seed the pretraining never drew). Below ``--min-base`` percent pass@2
   the base did not learn: the canary says so and stops (exit 1).
3. Write the held-out *eval* tasks (eval split, its own seed) to ``<out>/tasks`` and run every row through
   the real pipeline, one ``python -m jobs.eval`` each (Ray fine-tunes -> registry ``<out>/registry`` ->
   vLLM multi-LoRA -> 8 D8 views inverted and voted -> score): baseline, n-1, n-1+geometric,
   n-1+geometric+color, and group mode (one adapter per 8 tasks). Adapters already in the registry are reused.
4. The accuracy-vs-TTFT-steps curve: the best single-task row again at 8, 16, 32 and 64 steps.
5. Write ``<out>/table.md`` (per row: pass@2, greedy top-1, val loss, fine-tune time; a per-row reading; the
   curve), ``<out>/canary.png`` and ``<out>/summary.json``: ``{"pass2": {row: pct}, "greedy": {...},
   "lift": best TTFT row - baseline, "best_row", "base_in_distribution": pct, "steps_curve": {...}, ...}``.

The pretraining runs as a subprocess with its own local Ray (``RAY_ADDRESS`` is removed from its
environment: the canary's paths are local); the rows share one fresh local Ray in this process, shut down at
the end, so nothing is left running.
Exit status: 0 done; 1 a step failed, the base did not learn, or the lift is below ``--min-lift``;
2 bad config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIG = "jobs/configs/canary_pretrain.yaml"
BASELINE = "baseline"
ROWS = {  # summary.json name (also the run dir under <out>) -> jobs.eval config
    BASELINE: "jobs/configs/canary_baseline.yaml",
    "n-1": "jobs/configs/canary_n-1.yaml",
    "n-1+geometric": "jobs/configs/canary_n-1_geometric.yaml",
    "n-1+geometric+color": "jobs/configs/canary_n-1_geometric_color.yaml",
    "group-8": "jobs/configs/canary_group8.yaml",
}
IN_DISTRIBUTION = "base-in-distribution"  # run dir of the gate: the base on training-distribution tasks
CURVE_STEPS = (8, 16, 32, 64)
STAMP = "pretrain.stamp.json"
SUMMARY = "summary.json"
FAMILY = "canary"


@dataclass
class CanaryConfig:
    """What the canary pretrains, evaluates and compares (relative paths are relative to the repo root)."""

    out_dir: str = "runs/canary"
    hidden_size: int = 128  # the random-init tiny model (a multiple of 64: head_dim 64 for vLLM CPU)
    layers: int = 2
    intermediate_size: int | None = None  # None: 2 x hidden_size
    seed: int = 0  # init model, pretraining task stream and pretraining optimizer
    pretrain: str = PRETRAIN_CONFIG
    eval_tasks: int = 50
    eval_seed: int = 1000  # eval split seed of the held-out tasks
    in_distribution_tasks: int = 50
    in_distribution_seed: int = 1_000_000  # train split; the pretraining draws from seed `seed`
    min_base: float = 25.0  # the gate: base in-distribution pass@2 (percent) below this = did not learn
    rows: dict[str, str] = field(default_factory=lambda: dict(ROWS))
    curve_steps: tuple[int, ...] = CURVE_STEPS


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
        "seed": cfg.seed,
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
        seed=cfg.seed,
        hidden_size=cfg.hidden_size,
        layers=cfg.layers,
        intermediate_size=cfg.intermediate_size,
    )
    stamp.write_text(json.dumps(recipe))
    return d


def pretrain_overrides(cfg: CanaryConfig, overrides: list[str]) -> list[str]:
    """The seed's overrides (task stream and optimizer seed), then the user's ``KEY=VALUE`` overrides."""
    return [f"pretrain.data=fresh:{FAMILY}:train:{cfg.seed}", f"ttft.optim.seed={cfg.seed}", *overrides]


def load_pretrain(cfg: CanaryConfig, overrides: list[str]) -> tuple[Any, Any]:
    """The pretraining (RunConfig, PretrainConfig) with the seed and ``KEY=VALUE`` overrides."""
    from ttft.config import parse_override
    from ttft.pretrain import load_pretrain_config

    sets = pretrain_overrides(cfg, overrides)
    return load_pretrain_config(_path(cfg.pretrain), dict(parse_override(s) for s in sets))


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
        *(sys.executable, "-m", "jobs.pretrain", "--config", str(_path(cfg.pretrain))),
        *("--model", str(init), "--output", str(model), "--storage", str(ckpts)),
    ]
    for s in pretrain_overrides(cfg, overrides):
        cmd += ["--set", s]
    _run(cmd, "pretrain")
    seconds = time.monotonic() - t0
    stamp.write_text(json.dumps({"recipe": recipe, "seconds": seconds}, indent=1))
    return model, seconds, True


# ----------------------------------------------------------------------------------------------- rows


def write_tasks_dir(d: Path, split: str, n: int, seed: int) -> Path:
    """``n`` canary tasks of the split as one JSON file each in ``d`` (other files there are removed)."""
    from ttft.generate import generate_tasks, write_tasks

    tasks = generate_tasks(split, n, seed, family=FAMILY)
    keep = {f"{t.id}.json" for t in tasks}
    if d.is_dir():
        for p in d.glob("*.json"):
            if p.name not in keep:
                p.unlink()
    write_tasks(tasks, d)
    return d


def write_eval_tasks(cfg: CanaryConfig, out: Path) -> Path:
    """The held-out eval tasks (eval split, ``eval_seed``) in ``out/tasks``."""
    return write_tasks_dir(out / "tasks", "eval", cfg.eval_tasks, cfg.eval_seed)


def write_in_distribution_tasks(cfg: CanaryConfig, out: Path) -> Path:
    """Tasks of the pretraining's own distribution (train split) that it never drew, in
    ``out/tasks-in-distribution``."""
    return write_tasks_dir(
        out / "tasks-in-distribution", "train", cfg.in_distribution_tasks, cfg.in_distribution_seed
    )


def run_row(name: str, config: str, out: Path, tasks: Path, model: Path, overrides: list[str]) -> Path:
    """One ``jobs.eval`` run: the row's config with the canary's data, model, registry and out dir.

    It runs in this process on the canary's one local Ray (``open_ray``): a fresh Ray and interpreter per
    row cost ~30 s each on 2 cores. Raises RuntimeError when the run fails."""
    from jobs import eval as eval_job

    argv = [
        *("--config", str(_path(config)), "--name", name),
        *("--data", str(tasks), "--model", str(model), "--registry", str(out / "registry")),
        *("--set", f"out_dir={out}"),
    ]
    for s in overrides:
        argv += ["--set", s]
    print(f"[canary] row {name}: jobs.eval {' '.join(argv)}", flush=True)
    try:
        rc = eval_job.main(argv)
    except SystemExit as e:  # jobs.eval exits with a one-line message on bad config / data
        rc = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    if rc != 0:
        raise RuntimeError(f"row {name} failed (exit {rc}): jobs.eval {' '.join(argv)}")
    return out / name


@contextlib.contextmanager
def open_ray(num_cpus: int | None = None) -> Iterator[None]:
    """A fresh local Ray for the rows (never someone else's cluster: ``address="local"``), shut down after."""
    import ray

    # No runtime_env: the canary's paths are local, and Ray would log a runtime_env's secrets to disk.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def greedy(run: Path, tasks: Path) -> float:
    """Percent of test outputs the vote's top-1 (attempt_1) gets exactly right."""
    import pyarrow.parquet as pq

    from ttft.tasks import load_tasks

    expected = {t.id: t.test_outputs or () for t in load_tasks(tasks).tasks}
    rows = pq.read_table(run / "results.parquet").to_pylist()
    right = 0
    for r in rows:
        outs = expected.get(r["task_id"], ())
        want = outs[r["test_index"]] if r["test_index"] < len(outs) else None
        right += int(r["attempt_1"] is not None and json.loads(r["attempt_1"]) == want)
    return round(100 * right / max(1, len(rows)), 2)


def row_stats(run: Path, tasks: Path) -> dict[str, Any]:
    """pass@2 and greedy (percent), val loss (after TTFT; the base's for a baseline), fine-tune wall time."""
    s = json.loads((run / "summary.json").read_text())
    return {
        "pass2": round(100 * (s["accuracy"] or 0.0), 2),
        "greedy": greedy(run, tasks),
        "val_loss": s["val_loss_after"] if s.get("ttft") else s["val_loss_before"],
        "finetune_s": round(float(s.get("stage_seconds", {}).get("fine-tune", 0.0)), 1),
        "failed": sum(len(f["tasks"]) for f in s.get("failed", [])),
    }


def summarize(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"pass2": {row: pct}, "greedy": {row: pct}, "lift": best TTFT row - baseline, "best_row": name}``."""
    pass2 = {k: v["pass2"] for k, v in stats.items()}
    ttft = {k: v for k, v in pass2.items() if k != BASELINE}
    best = max(ttft, key=lambda k: (ttft[k], -list(ttft).index(k))) if ttft else None
    return {
        "pass2": pass2,
        "greedy": {k: v["greedy"] for k, v in stats.items()},
        "lift": round(ttft[best] - pass2.get(BASELINE, 0.0), 2) if best else 0.0,
        "best_row": best,
    }


def curve_row(stats: dict[str, dict[str, Any]]) -> str | None:
    """The best single-task TTFT row (highest pass@2, then greedy; the first on a tie): the curve's row."""
    single = [k for k in stats if k != BASELINE and not k.startswith("group")]
    if not single:
        return None
    return max(single, key=lambda k: (stats[k]["pass2"], stats[k]["greedy"], -single.index(k)))


# ----------------------------------------------------------------------------------------------- text


def _delta(a: float, b: float, n: int) -> str:
    """'+6.0 points (3 tasks)' with a plain word for differences of at most one task."""
    d = a - b
    tasks = round(abs(d) * n / 100)
    if tasks <= 1:
        return f"{d:+.1f} points ({tasks} task{'s' if tasks != 1 else ''}: noise)"
    return f"{d:+.1f} points ({tasks} tasks)"


def _compare(a: float, b: float, n: int) -> int:
    """-1, 0 or 1: whether `a` is below, level with (within one task of `n`) or above `b`."""
    d = round((a - b) * n / 100)
    return 0 if abs(d) <= 1 else (1 if d > 0 else -1)


def readings(stats: dict[str, dict[str, Any]], n: int) -> list[str]:
    """An honest sentence per row, from the numbers (a difference of one task of `n` is noise)."""
    p = {k: v["pass2"] for k, v in stats.items()}
    out = []
    if BASELINE in p:
        out.append(
            f"- **baseline** {p[BASELINE]:.0f}%: no TTFT; the base model has only the three demonstrations "
            "in context to infer a colour map it was never trained on."
        )
    if "n-1" in p and BASELINE in p:
        how = {
            1: "leave-one-out fine-tuning on the task's own demonstrations teaches the adapter the held-out "
            "map",
            0: "no lift beyond noise",
            -1: "the adapter made things worse",
        }[_compare(p["n-1"], p[BASELINE], n)]
        out.append(f"- **n-1** {p['n-1']:.0f}%: {_delta(p['n-1'], p[BASELINE], n)} over the baseline: {how}.")
    if "n-1+geometric" in p and "n-1" in p:
        g = p["n-1+geometric"]
        how = {1: "gained", 0: "level within noise", -1: "lost"}[_compare(g, p["n-1"], n)]
        out.append(
            f"- **+geometric** {g:.0f}%: {_delta(g, p['n-1'], n)} vs n-1 ({how}): a colour map commutes with "
            "every D8 transform, so the 8 views are more samples of the same rule."
        )
    if "n-1+geometric+color" in p and "n-1+geometric" in p:
        c, g = p["n-1+geometric+color"], p["n-1+geometric"]
        verdict = "hurts, as expected" if _compare(c, g, n) < 0 else "did not hurt beyond noise here"
        out.append(
            f"- **+color** {c:.0f}%: {_delta(c, g, n)} vs +geometric: colour augmentation {verdict}. It "
            "is wrong for colour-map rules: permuting colours by s turns the rule a->b into s(a)->s(b), a "
            "different rule in every view, so the adapter cannot memorise the task's map and must infer it "
            "in context from the demonstrations, which is what the base model already does without TTFT."
        )
    for k in (k for k in p if k.startswith("group")):
        ref = "n-1+geometric" if "n-1+geometric" in p else BASELINE
        how = {
            -1: "one adapter for 8 tasks must hold 8 different maps, told apart only by the demonstrations, "
            "and helps less than one adapter per task",
            0: "as good as one adapter per task within noise, with 8x fewer adapters",
            1: "better than one adapter per task here (8x the steps on one adapter: the shared skill of "
            "reading a map from the demonstrations transfers across the group)",
        }[_compare(p[k], p[ref], n)]
        out.append(
            f"- **{k}** {p[k]:.0f}%: {_delta(p[k], p[ref], n)} vs {ref} (its per-task recipe, 8x the steps "
            f"per adapter): {how}."
        )
    return out


def table_markdown(
    stats: dict[str, dict[str, Any]],
    base_in: dict[str, Any],
    curve: dict[str, Any],
    cfg: CanaryConfig,
    summary: dict[str, Any],
    pretrain_info: dict[str, Any],
    total_s: float,
) -> str:
    """table.md: the rows, the per-row reading, the steps curve, the pretraining and the run's times."""
    lines = [
        f"# Canary: {cfg.eval_tasks} held-out colour-map tasks (eval seed {cfg.eval_seed}), seed {cfg.seed}",
        "",
        "| row | pass@2 | greedy top-1 | val loss | fine-tune stage (s) | failed |",
        "|---|---|---|---|---|---|",
        f"| base, in-distribution ({cfg.in_distribution_tasks} train-split tasks) | "
        f"{base_in['pass2']:.1f}% | {base_in['greedy']:.1f}% | {_fmt(base_in['val_loss'])} | - | - |",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s['pass2']:.1f}% | {s['greedy']:.1f}% | {_fmt(s['val_loss'])} | "
            f"{s['finetune_s']:.1f} | {s['failed']} |"
        )
    lines += [
        "",
        f"Lift of the best TTFT row ({summary['best_row']}) over the baseline: {summary['lift']:+.1f} points "
        "pass@2. Inference: 8 D8 views per test input, inverted and voted (top-2 = pass@2, top-1 = greedy). "
        "Fine-tune stage: the run's wall time from the first job to the last adapter, Ray actors' start "
        "included.",
        "",
        *readings(stats, cfg.eval_tasks),
    ]
    if curve.get("points"):
        row = curve["row"]
        lines += [
            "",
            f"Accuracy vs TTFT steps ({row}; the row itself is {curve['row_steps']} steps):",
            "",
            "| steps | pass@2 | greedy top-1 | val loss | fine-tune stage (s) |",
            "|---|---|---|---|---|",
        ]
        for steps, s in sorted(curve["points"].items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"| {steps} | {s['pass2']:.1f}% | {s['greedy']:.1f}% | {_fmt(s['val_loss'])} | "
                f"{s['finetune_s']:.1f} |"
            )
    lines += [
        "",
        f"Pretraining: {pretrain_info.get('steps', '?')} steps x {pretrain_info.get('batch', '?')} fresh "
        f"tasks, {pretrain_info.get('minutes', 0):.1f} min, {pretrain_info.get('workers', '?')} Ray Train "
        f"worker(s), final loss {_fmt(pretrain_info.get('loss'))}; canary total {total_s / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def plot(stats: dict[str, dict[str, Any]], base_in: dict[str, Any], curve: dict[str, Any], png: Path) -> None:
    """canary.png: pass@2 and greedy per row (and the base in-distribution); the steps curve beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    names = ["base in-dist.", *stats]
    p2 = [base_in["pass2"], *(s["pass2"] for s in stats.values())]
    g1 = [base_in["greedy"], *(s["greedy"] for s in stats.values())]
    x = range(len(names))
    ax1.bar([i - 0.2 for i in x], p2, width=0.4, label="pass@2")
    ax1.bar([i + 0.2 for i in x], g1, width=0.4, label="greedy top-1")
    ax1.set_xticks(list(x), names, rotation=20, ha="right")
    ax1.set_ylim(0, 105)
    ax1.set_ylabel("accuracy (%)")
    ax1.legend(loc="upper left")
    ax1.set_title("held-out colour maps (base in-dist.: training maps)")
    pts = sorted((int(k), v) for k, v in (curve.get("points") or {}).items())
    if pts:
        ax2.plot([k for k, _ in pts], [v["pass2"] for _, v in pts], "o-", label="pass@2")
        ax2.plot([k for k, _ in pts], [v["greedy"] for _, v in pts], "s--", label="greedy top-1")
        ax2.set_xscale("log", base=2)
        ax2.set_xticks([k for k, _ in pts], [str(k) for k, _ in pts])
        ax2.legend(loc="lower right")
    ax2.set_ylim(0, 105)
    ax2.set_xlabel("TTFT steps")
    ax2.set_title(f"accuracy vs steps ({curve.get('row') or '-'})")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def pretrain_info(model: Path, seconds: float, batch: int) -> dict[str, Any]:
    """Steps, workers, final loss and minutes of the pretraining (from the model's pretrain.json)."""
    info = json.loads((model / "pretrain.json").read_text()) if (model / "pretrain.json").is_file() else {}
    history = info.get("history") or []
    return {
        "steps": info.get("steps"),
        "workers": info.get("workers"),
        "batch": batch,
        "loss": history[-1][1] if history else None,
        "minutes": round(seconds / 60, 2),
        "train_minutes": round(float(info.get("train_seconds") or 0.0) / 60, 2),
    }


def gate_message(cfg: CanaryConfig, base_in: dict[str, Any], info: dict[str, Any]) -> str:
    """What the canary says when the base model did not learn its own training distribution."""
    return (
        f"the base model did not learn its own training distribution: {base_in['pass2']:.1f}% pass@2 on "
        f"{cfg.in_distribution_tasks} held-out training-distribution tasks, below the gate of "
        f"{cfg.min_base:g}% (pretraining {info['steps']} steps, {info['minutes']:.1f} min, final loss "
        f"{_fmt(info['loss'])}). "
        "TTFT rows are not run: there is nothing for TTFT to lift. Pretrain longer (pretrain.max_minutes) or "
        "on a less loaded machine."
    )


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.canary",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = CanaryConfig()
    p.add_argument(
        "--pretrain-config", help=f"pretraining YAML, a jobs.pretrain config (default {d.pretrain})"
    )
    p.add_argument("--out", help=f"output dir (default {d.out_dir})")
    p.add_argument(
        "--seed", type=int, help=f"init model, pretraining stream and optimizer seed (default {d.seed})"
    )
    p.add_argument("--tasks", type=int, help=f"number of held-out eval tasks (default {d.eval_tasks})")
    p.add_argument("--eval-seed", type=int, help=f"eval split seed (default {d.eval_seed})")
    p.add_argument(
        "--in-distribution-tasks",
        type=int,
        help=f"training-distribution tasks of the gate (default {d.in_distribution_tasks})",
    )
    p.add_argument(
        "--min-base", type=float, help=f"the gate, base in-distribution pass@2 %% (default {d.min_base})"
    )
    p.add_argument(
        "--hidden-size", type=int, help=f"tiny model hidden size, a multiple of 64 (default {d.hidden_size})"
    )
    p.add_argument("--layers", type=int, help=f"tiny model layers (default {d.layers})")
    p.add_argument("--rows", help=f"comma-separated rows to run (default all: {','.join(ROWS)})")
    p.add_argument(
        "--curve-steps",
        help=f"TTFT steps of the curve, comma-separated (default {','.join(map(str, CURVE_STEPS))})",
    )
    p.add_argument(
        "--pretrain-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pretraining config value, e.g. pretrain.max_minutes=3 (repeatable)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of every row's jobs.eval run, e.g. inference.max_loras=8 (repeatable)",
    )
    p.add_argument("--min-lift", type=float, help="exit 1 when the lift (points) is below this")
    p.add_argument("--num-cpus", type=int, help="CPUs of the rows' local Ray (default: all)")
    return p


def config_from_args(args: argparse.Namespace) -> CanaryConfig:
    """The CanaryConfig of the command line; raises ValueError on an unknown row or a bad number."""
    cfg = CanaryConfig()
    for attr, key in (
        ("pretrain_config", "pretrain"),
        ("out", "out_dir"),
        ("seed", "seed"),
        ("tasks", "eval_tasks"),
        ("eval_seed", "eval_seed"),
        ("in_distribution_tasks", "in_distribution_tasks"),
        ("min_base", "min_base"),
        ("hidden_size", "hidden_size"),
        ("layers", "layers"),
    ):
        if getattr(args, attr) is not None:
            setattr(cfg, key, getattr(args, attr))
    if args.rows is not None:
        names = [r for r in args.rows.split(",") if r]
        unknown = [r for r in names if r not in ROWS]
        if unknown or not names:
            raise ValueError(f"--rows: unknown row(s) {unknown}; expected some of {list(ROWS)}")
        cfg.rows = {r: ROWS[r] for r in ROWS if r in names}
    if args.curve_steps is not None:
        cfg.curve_steps = tuple(int(s) for s in args.curve_steps.split(",") if s)
        if any(s < 1 for s in cfg.curve_steps):
            raise ValueError(f"--curve-steps: steps must be >= 1, got {args.curve_steps}")
    if cfg.eval_tasks < 1 or cfg.in_distribution_tasks < 1:
        raise ValueError("--tasks and --in-distribution-tasks must be >= 1")
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Pretrain (or reuse), gate on the base, run the rows and the steps curve, write the table."""
    args = build_parser().parse_args(argv)
    from ttft.config import ConfigError, load_config

    try:
        cfg = config_from_args(args)
        rcfg, pcfg = load_pretrain(cfg, args.pretrain_set)  # validate before any work
        for config in cfg.rows.values():
            load_config(_path(config))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    out = _path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    summary: dict[str, Any] = {}
    try:
        model, pretrain_s, _ = pretrain(cfg, out, args.pretrain_set)
        info = pretrain_info(model, pretrain_s, rcfg.ttft.optim.batch_size * pcfg.workers)
        with open_ray(args.num_cpus):
            in_tasks = write_in_distribution_tasks(cfg, out)
            run_row(IN_DISTRIBUTION, ROWS[BASELINE], out, in_tasks, model, args.set)
            base_in = row_stats(out / IN_DISTRIBUTION, in_tasks)
            summary["base_in_distribution"] = base_in["pass2"]
            summary["base_in_distribution_greedy"] = base_in["greedy"]
            summary["pretrain"] = info
            if base_in["pass2"] < cfg.min_base:
                msg = gate_message(cfg, base_in, info)
                summary.update({"pass2": {}, "greedy": {}, "lift": None, "best_row": None, "verdict": msg})
                (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
                (out / "table.md").write_text(f"# Canary: stopped at the gate\n\n{msg}\n")
                print(f"[canary] {msg}", file=sys.stderr)
                return 1
            tasks = write_eval_tasks(cfg, out)
            stats = {}
            for name, config in cfg.rows.items():
                stats[name] = row_stats(run_row(name, config, out, tasks, model, args.set), tasks)
            curve: dict[str, Any] = {"row": curve_row(stats), "points": {}}
            if curve["row"] is not None and cfg.curve_steps:
                row_cfg = load_config(_path(cfg.rows[curve["row"]]))
                curve["row_steps"] = row_cfg.ttft.optim.steps
                curve["points"][str(curve["row_steps"])] = stats[curve["row"]]
                for steps in cfg.curve_steps:
                    if steps == curve["row_steps"]:
                        continue
                    name = f"curve-{curve['row']}-{steps}steps"
                    sets = [*args.set, f"ttft.optim.steps={steps}"]
                    curve["points"][str(steps)] = row_stats(
                        run_row(name, cfg.rows[curve["row"]], out, tasks, model, sets), tasks
                    )
    except RuntimeError as e:
        print(f"[canary] {e}", file=sys.stderr)
        return 1
    summary.update(summarize(stats))
    summary["steps_curve"] = {
        "row": curve["row"],
        "pass2": {k: v["pass2"] for k, v in curve["points"].items()},
        "greedy": {k: v["greedy"] for k, v in curve["points"].items()},
    }
    summary["rows"] = stats
    total = time.monotonic() - t0
    summary.update(
        {
            "eval_tasks": cfg.eval_tasks,
            "eval_seed": cfg.eval_seed,
            "seed": cfg.seed,
            "minutes": round(total / 60, 2),
        }
    )
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    table = table_markdown(stats, base_in, curve, cfg, summary, info, total)
    (out / "table.md").write_text(table)
    plot(stats, base_in, curve, out / "canary.png")
    print("\n" + table, flush=True)
    print(
        f"[canary] {out / SUMMARY}: lift {summary['lift']}, "
        f"base in-distribution {summary['base_in_distribution']}"
    )
    if args.min_lift is not None and summary["lift"] < args.min_lift:
        print(f"[canary] lift {summary['lift']:.1f} < --min-lift {args.min_lift}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
