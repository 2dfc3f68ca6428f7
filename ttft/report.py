"""Run reports: results.parquet, report.md (markdown tables), PNG plots; the seed-style comparison table."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ttft.augment import Augmentation
from ttft.inference import Predictions
from ttft.safetext import markdown as md
from ttft.scoring import ScoreReport
from ttft.tasks import Task


@dataclass
class RunRecord:
    """Everything a report needs about one finished run."""

    name: str
    tasks: list[Task]
    stage_seconds: dict[str, float]
    finetune: Any = None  # orchestrate.FinetuneSummary
    predictions: Predictions | None = None
    score: ScoreReport | None = None
    invalid_tasks: list[str] = field(default_factory=list)
    ttft_enabled: bool = True
    base_val_loss: dict[str, float | None] = field(default_factory=dict)  # baseline runs: base model only
    inference_nodes: dict[str, str] = field(default_factory=dict)  # task id -> node whose engine predicted it
    adapter_errors: dict[str, str] = field(default_factory=dict)  # task id -> why its adapter was not used


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(vals) / len(vals) if vals else None


def results_table(rec: RunRecord) -> pa.Table:
    """One row per (task, test index): attempts, votes, solved, oracle, fallback, fine-tune, val loss, and
    `skipped` (why the test input got no prompt, else null)."""
    preds, score = rec.predictions, rec.score
    skipped = preds.skipped_inputs() if preds is not None else {}
    solved = {}
    if score is not None:
        for r in score.table.to_pylist():
            solved[(r["task_id"], r["test_index"])] = r["solved"]
    oracle: dict[tuple[str, int], bool] = {}
    if preds is not None:
        expected = {t.id: t.test_outputs for t in rec.tasks}
        for r in preds.candidates.select(["task_id", "test_index", "grid", "aug_key"]).to_pylist():
            k = (r["task_id"], r["test_index"])
            outs = expected.get(r["task_id"])
            hit = False
            if r["grid"] is not None and outs:
                grid = Augmentation.from_key(r["aug_key"]).invert_grid(json.loads(r["grid"]))
                hit = grid == outs[r["test_index"]]
            oracle[k] = oracle.get(k, False) or hit
    status, val, trained_on = {}, {}, {}
    if rec.finetune is not None:
        for o in rec.finetune.outcomes:
            for tid in o.task_ids:
                status[tid] = o.status
                trained_on[tid] = o.node
                if o.row:
                    val[tid] = (o.row.get("val_loss_before"), o.row.get("val_loss_after"))
    rows: dict[str, list] = {
        k: []
        for k in (
            "task_id",
            "test_index",
            "attempt_1",
            "attempt_2",
            "votes_1",
            "votes_2",
            "solved",
            "oracle",
            "fallback",
            "finetune",
            "val_loss_before",
            "val_loss_after",
            "finetune_node",
            "inference_node",
            "fallback_reason",
            "skipped",
        )
    }
    for t in rec.tasks:
        for i in range(len(t.test_inputs)):
            att = preds.attempts.get(t.id, [[]] * (i + 1))[i] if preds else []
            a1 = att[0] if len(att) > 0 else None
            a2 = att[1] if len(att) > 1 else None
            vb, va = val.get(t.id, (rec.base_val_loss.get(t.id), None))
            for k, v in (
                ("task_id", t.id),
                ("test_index", i),
                ("attempt_1", json.dumps(a1.grid) if a1 else None),
                ("attempt_2", json.dumps(a2.grid) if a2 else None),
                ("votes_1", a1.votes if a1 else 0),
                ("votes_2", a2.votes if a2 else 0),
                ("solved", solved.get((t.id, i))),
                ("oracle", oracle.get((t.id, i), False) if t.test_outputs else None),
                ("fallback", bool(preds and t.id in preds.fallback)),
                ("finetune", status.get(t.id, _adapter_status(rec, t.id))),
                ("val_loss_before", vb),
                ("val_loss_after", va),
                ("finetune_node", trained_on.get(t.id)),
                ("inference_node", rec.inference_nodes.get(t.id)),
                ("fallback_reason", rec.adapter_errors.get(t.id)),
                ("skipped", skipped.get((t.id, i))),
            ):
                rows[k].append(v)
    return pa.table(rows)


def _adapter_status(rec: RunRecord, task_id: str) -> str:
    """Fine-tune status when this run trained nothing itself (jobs.infer): from the registry lookup."""
    if not rec.ttft_enabled:
        return "none"
    if rec.predictions is not None and task_id not in rec.predictions.fallback:
        return "registry"
    return "missing"


def write_run(rec: RunRecord, run_dir: str | Path) -> dict[str, Any]:
    """Write results.parquet, summary.json, plots and report.md into `run_dir`; return the summary."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(rec)
    pq.write_table(table, out / "results.parquet")
    rows = table.to_pylist()
    fin = rec.finetune
    summary = {
        "name": rec.name,
        "tasks": len(rec.tasks),
        "accuracy": rec.score.mean_score if rec.score else None,
        "solved": rec.score.total if rec.score else None,
        "scored_tasks": rec.score.n_tasks if rec.score else 0,
        "skipped": [
            {"task_id": r["task_id"], "test_index": r["test_index"], "reason": r["skipped"]}
            for r in rows
            if r["skipped"] is not None
        ],
        "oracle": _mean([1.0 if r["oracle"] else 0.0 for r in rows if r["oracle"] is not None]),
        "val_loss_before": _mean([r["val_loss_before"] for r in rows]),
        "val_loss_after": _mean([r["val_loss_after"] for r in rows]),
        "finetune_counts": fin.counts if fin else {},
        "failed": [
            {"tasks": o.task_ids, "error": o.error} for o in fin.outcomes if o.status in ("failed", "skipped")
        ]
        if fin
        else [],
        "reduced": [
            {"tasks": o.task_ids, "steps": o.steps, "planned": o.planned_steps}
            for o in fin.outcomes
            if o.reduced
        ]
        if fin
        else [],
        "stage_seconds": rec.stage_seconds,
        "finetune_seconds": sum(o.seconds or 0 for o in fin.outcomes) if fin else 0.0,
        "invalid_tasks": rec.invalid_tasks,
        "ttft": rec.ttft_enabled,
        "placement": placement(rows),
        "requeued": [{"tasks": o.task_ids, "requeues": o.requeues} for o in fin.outcomes if o.requeues]
        if fin
        else [],
        "adapter_errors": rec.adapter_errors,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plots = plot_run(rec, rows, out)
    (out / "report.md").write_text(render_report(rec, summary, rows, plots))
    return summary


def placement(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per node: tasks fine-tuned there and tasks predicted there (from results rows)."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["test_index"] != 0:
            continue
        for col, what in (("finetune_node", "finetune"), ("inference_node", "inference")):
            if r[col]:
                out.setdefault(r[col], {"finetune": 0, "inference": 0})[what] += 1
    return out


def plot_run(rec: RunRecord, rows: list[dict], out: Path) -> list[str]:
    """PNG plots: per-task val loss before/after TTFT and train loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    by_task = {r["task_id"]: r for r in rows}
    ids = list(by_task)
    before = [by_task[t]["val_loss_before"] or 0 for t in ids]
    after = [by_task[t]["val_loss_after"] or 0 for t in ids]
    x = range(len(ids))
    axes[0].bar([i - 0.2 for i in x], before, width=0.4, label="before TTFT")
    axes[0].bar([i + 0.2 for i in x], after, width=0.4, label="after TTFT")
    axes[0].set_xticks(list(x), ids, rotation=75, fontsize=7)
    axes[0].set_ylabel("val loss (test-output tokens)")
    axes[0].set_title("Val loss per task")
    axes[0].legend()
    if rec.finetune is not None:
        for o in rec.finetune.outcomes:
            if o.row and o.row.get("train_losses"):
                axes[1].plot(o.row["train_losses"], alpha=0.6, lw=1)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("train loss")
    axes[1].set_title("TTFT train loss curves (one per adapter)")
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=110)
    plt.close(fig)
    names.append("losses.png")
    return names


def render_report(rec: RunRecord, summary: dict[str, Any], rows: list[dict], plots: list[str]) -> str:
    """report.md: accuracy, val loss, stage times, adapters, failures, reductions, per-task table."""
    acc = summary["accuracy"]
    lines = [f"# ttft run {md(rec.name)}", ""]
    if acc is not None:
        lines += [
            f"**Accuracy (pass@2): {100 * acc:.1f}%** — {summary['solved']:.2f} of "
            f"{summary['scored_tasks']} tasks solved; oracle (any candidate right): "
            f"{100 * (summary['oracle'] or 0):.1f}%",
            "",
        ]
    lines += [scoring_note(len(rec.tasks), summary["scored_tasks"]), ""]
    lines += [
        "| metric | value |",
        "|---|---|",
        f"| tasks | {len(rec.tasks)} |",
        f"| val loss before TTFT | {_fmt(summary['val_loss_before'])} |",
        f"| val loss after TTFT | {_fmt(summary['val_loss_after'])} |",
    ]
    c = summary["finetune_counts"]
    lines += [
        f"| adapters trained | {c.get('trained', 0)} |",
        f"| adapters reused | {c.get('reused', 0)} |",
        f"| fine-tunes failed | {c.get('failed', 0)} |",
        f"| fine-tunes skipped (budget) | {c.get('skipped', 0)} |",
    ]
    for stage, s in rec.stage_seconds.items():
        lines.append(f"| time: {md(stage)} | {s:.1f} s |")
    lines.append("")
    if summary["failed"] or rec.invalid_tasks:
        lines += ["## Failures", ""]
        lines += [f"- fine-tune {md(','.join(f['tasks']))}: {md(f['error'])}" for f in summary["failed"]]
        lines += [f"- invalid task: {md(e)}" for e in rec.invalid_tasks]
        lines.append("")
    if summary["requeued"] or rec.adapter_errors:
        lines += ["## Recovered", ""]
        lines += [
            f"- requeued {md(','.join(r['tasks']))}: its worker died {r['requeues']}x; trained again"
            for r in summary["requeued"]
        ]
        lines += [f"- {md(t)}: {md(why)}; base model used" for t, why in rec.adapter_errors.items()]
        lines.append("")
    if summary["placement"]:
        lines += ["## Placement", "", "| node | tasks fine-tuned | tasks predicted |", "|---|---|---|"]
        for node, n in sorted(summary["placement"].items()):
            lines.append(f"| {md(node)} | {n['finetune']} | {n['inference']} |")
        lines.append("")
    if summary["skipped"]:
        lines += [
            "## Skipped test inputs",
            "",
            "No prompt fitted, under any augmentation; the submission holds a placeholder for them.",
            "",
        ]
        for x in summary["skipped"]:
            lines.append(f"- {md(x['task_id'])} test {x['test_index']}: {md(x['reason'])}")
        lines.append("")
    if summary["reduced"]:
        lines += ["## Budget reductions", ""]
        lines += [
            f"- {md(','.join(r['tasks']))}: {r['steps']}/{r['planned']} steps" for r in summary["reduced"]
        ]
        lines.append("")
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += [
        "## Per task",
        "",
        "| task | test | solved | oracle | votes | fine-tune | fallback | val loss before | val loss after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        solved = "-" if r["solved"] is None else ("yes" if r["solved"] else "no")
        solved += " (skipped)" if r["skipped"] else ""
        oracle = "-" if r["oracle"] is None else ("yes" if r["oracle"] else "no")
        lines.append(
            f"| {md(r['task_id'])} | {r['test_index']} | {solved} | {oracle} | {r['votes_1']}/{r['votes_2']} "
            f"| {md(r['finetune'])} | {'yes' if r['fallback'] else 'no'} | {_fmt(r['val_loss_before'])} "
            f"| {_fmt(r['val_loss_after'])} |"
        )
    return "\n".join(lines) + "\n"


def scoring_note(n_tasks: int, n_scored: int) -> str:
    """One line on what was scored: all tasks, some (the rest have no solutions), or none."""
    if n_scored == 0:
        return f"No solutions: not scored ({n_tasks} tasks, predictions only)."
    if n_scored < n_tasks:
        return f"Scored {n_scored} of {n_tasks} tasks; {n_tasks - n_scored} have no solutions: not scored."
    return f"Scored all {n_tasks} tasks."


def compare_runs(run_dirs: Sequence[str | Path], out_png: str | Path | None = None) -> str:
    """The seed-style table over runs: experiment, val loss, val accuracy, fine-tune time, failed tasks."""
    rows = []
    for d in run_dirs:
        s = json.loads((Path(d) / "summary.json").read_text())
        rows.append(s)
    lines = [
        "| experiment | val loss | val accuracy | oracle | fine-tune time (s) | failed tasks |",
        "|---|---|---|---|---|---|",
    ]
    for s in rows:
        vl = s["val_loss_after"] if s.get("ttft") else s["val_loss_before"]
        acc = "-" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}%"
        orc = "-" if s.get("oracle") is None else f"{100 * s['oracle']:.1f}%"
        nfail = sum(len(f["tasks"]) for f in s["failed"])
        lines.append(
            f"| {md(s['name'])} | {_fmt(vl)} | {acc} | {orc} | {s['finetune_seconds']:.1f} | {nfail} |"
        )
    if out_png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax1 = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4))
        names = [s["name"] for s in rows]
        accs = [100 * (s["accuracy"] or 0) for s in rows]
        ax1.bar(names, accs, color="tab:blue", alpha=0.7)
        ax1.set_ylabel("val accuracy (%)", color="tab:blue")
        ax1.set_ylim(0, max(5.0, 1.2 * max(accs)))
        ax2 = ax1.twinx()
        ax2.plot(
            names,
            [(s["val_loss_after"] if s.get("ttft") else s["val_loss_before"]) or float("nan") for s in rows],
            "o-",
            color="tab:red",
        )
        ax2.set_ylabel("val loss", color="tab:red")
        ax1.set_title("TTFT experiments")
        plt.setp(ax1.get_xticklabels(), rotation=20, ha="right")
        fig.tight_layout()
        fig.savefig(out_png, dpi=110)
        plt.close(fig)
    return "\n".join(lines) + "\n"


def stage_summary(rec: RunRecord, summary: dict[str, Any], report: str | Path) -> str:
    """The closing block of a run on the console: tasks, fine-tunes, inference, accuracy, time per stage,
    where the report is; `summary` is what :func:`write_run` returned. Warnings that matter (tasks served
    by the base model because their fine-tune failed) appear here once.
    """
    invalid = f" ({len(rec.invalid_tasks)} invalid, skipped)" if rec.invalid_tasks else ""
    lines = [f"[ttft] run {rec.name}: {len(rec.tasks)} tasks{invalid}"]
    if rec.ttft_enabled:
        c = summary["finetune_counts"]
        skipped = f", {c['skipped']} skipped (budget)" if c.get("skipped") else ""
        lines.append(
            f"  fine-tune: {c.get('trained', 0)} trained, {c.get('reused', 0)} reused, "
            f"{c.get('failed', 0)} failed{skipped}"
        )
    else:
        lines.append("  fine-tune: off (baseline: the base model answers)")
    preds = rec.predictions
    if preds is not None:
        speed = f", {preds.output_tokens / preds.seconds:.0f} tok/s" if preds.seconds > 0 else ""
        lines.append(
            f"  inference: {preds.candidates.num_rows} candidates, {preds.output_tokens} tokens "
            f"in {preds.seconds:.1f}s{speed}"
        )
        if rec.ttft_enabled and preds.fallback:
            ids = sorted(preds.fallback)
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            lines.append(f"  warning: {len(ids)} tasks had no adapter and ran on the base model: {shown}")
    if summary.get("accuracy") is not None:
        oracle = f"; oracle {100 * summary['oracle']:.1f}%" if summary.get("oracle") is not None else ""
        lines.append(
            f"  accuracy (pass@2): {100 * summary['accuracy']:.1f}% "
            f"({summary['solved']:g}/{summary['scored_tasks']} tasks){oracle}"
        )
    if summary["scored_tasks"] < len(rec.tasks):
        lines.append(f"  {scoring_note(len(rec.tasks), summary['scored_tasks'])}")
    if summary.get("placement") and len(summary["placement"]) > 1:
        nodes = ", ".join(
            f"{n} {v['finetune']}/{v['inference']}" for n, v in sorted(summary["placement"].items())
        )
        lines.append(f"  placement (tasks fine-tuned/predicted): {nodes}")
    if rec.stage_seconds:
        stages = " | ".join(f"{k} {v:.0f}s" for k, v in rec.stage_seconds.items())
        lines.append(f"  time: {stages} | total {sum(rec.stage_seconds.values()):.0f}s")
    lines.append(f"  report: {report}")
    return "\n".join(lines)
