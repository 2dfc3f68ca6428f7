"""`python -m jobs.sweep --config C`: Ray Tune over TTFT hyperparameters, selected on held-out tasks.

The tasks are split once (stable in their content): `--select-share` of them select the hyperparameters,
the others only report how the selected config does, so the reported numbers are not fitted to the tasks
they describe. Each trial is a real TTFT run on the selection tasks: the trial loads the base model once,
trains one adapter per task with the trial's hyperparameters and reports the mean val loss after TTFT (the
seed's metric: loss on the test-output tokens) and, with `--metric accuracy`, the share of test outputs
that greedy decoding of the adapted model gets exactly right (identity augmentation: a fast proxy of the
full vLLM voting pass). The best config then runs once on the report tasks (val loss and accuracy). Prints
the best config, its held-out result and a table of all trials, also written to
<out_dir>/<name>-sweep/sweep.md and best.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from jobs.common import parser, setup, start_ray, tasks_of

DEFAULT_SPACE = {
    "ttft.optim.lr": ["loguniform", 1e-4, 1e-2],
    "ttft.optim.steps": ["choice", [8, 16, 32]],
    "ttft.lora.rank": ["choice", [4, 8, 16]],
    "ttft.optim.batch_size": ["choice", [1, 2]],
    "ttft.augment.per_split": ["choice", [2, 4, 8]],
}


def search_space(spec: dict[str, list]) -> dict[str, Any]:
    """Turn {"key": ["choice", [..]] | ["loguniform", lo, hi] | ["uniform", lo, hi]} into Tune domains."""
    from ray import tune

    kinds = {"choice": tune.choice, "loguniform": tune.loguniform, "uniform": tune.uniform}
    out = {}
    for key, (kind, *args) in spec.items():
        if kind not in kinds:
            raise SystemExit(f"sweep space: {key}: unknown kind {kind!r} (choice, loguniform, uniform)")
        out[key] = kinds[kind](*args)
    return out


def split_tasks(tasks: Sequence[Any], select_share: float) -> tuple[list[Any], list[Any]]:
    """(selection tasks, report tasks): a stable split by task content, at least one task on each side."""
    if len(tasks) < 2:
        raise ValueError(
            f"a sweep needs at least 2 tasks with known test outputs (select + report), got {len(tasks)}"
        )
    if not 0 < select_share < 1:
        raise ValueError(f"--select-share must be in (0, 1), got {select_share}")
    order = sorted(tasks, key=lambda t: hashlib.sha256(f"sweep:{t.content_hash()}".encode()).hexdigest())
    k = min(len(tasks) - 1, max(1, math.floor(select_share * len(tasks))))
    return sorted(order[:k], key=lambda t: t.id), sorted(order[k:], key=lambda t: t.id)


def greedy_exact(ft: Any, model: Any, tasks: list, encoder: str) -> tuple[int, int]:
    """(right, total) greedy predictions of the test outputs with `model` (identity augmentation).

    Prompt and budget as inference builds them (`inference.output_budget`, examples dropped to fit
    `samples.max_seq_len`); a test input whose prompt does not fit counts as wrong.
    """
    import torch

    from ttft.formats import ParseError, parse_output
    from ttft.inference import output_budget
    from ttft.samples import fit_examples, prompt_token_ids

    right = total = 0
    for task in tasks:
        for test_in, expected in zip(task.test_inputs, task.test_outputs or []):
            total += 1
            budget = output_budget(task.train, test_in, encoder, ft.count_tokens)
            prompt = fit_examples(
                task.train, test_in, budget, ft.count_tokens, ft.cfg.samples.max_seq_len, encoder
            )
            if prompt is None:
                continue
            ids = torch.tensor([prompt_token_ids(ft.tokenizer, prompt)], device=ft.device)
            with torch.no_grad():
                out = model.generate(
                    ids,
                    max_new_tokens=budget,
                    do_sample=False,
                    eos_token_id=ft.eos_id,
                    pad_token_id=ft.pad_id,
                )
            text = ft.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            grid = parse_output(text, encoder)
            right += int(not isinstance(grid, ParseError) and grid == expected)
    return right, total


def trial(params: dict[str, Any], base: dict[str, Any], tasks: list, want_accuracy: bool) -> dict[str, float]:
    """One Tune trial: TTFT on every task with `params`; returns the metrics."""
    from peft import PeftModel

    from ttft.config import apply_overrides, config_from_dict
    from ttft.finetune import Finetuner, make_jobs
    from ttft.model import model_identity

    cfg = config_from_dict(apply_overrides(base, params))
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=1)
    jobs = make_jobs(tasks, model_identity(ft.model_path), cfg.model, cfg.ttft)
    before, after, right, total = [], [], 0, 0
    for job in jobs:
        with tempfile.TemporaryDirectory() as work:
            r = ft.train(job, work)
            if r.val_loss_after is not None:
                before.append(r.val_loss_before)
                after.append(r.val_loss_after)
            if want_accuracy:
                adapted = PeftModel.from_pretrained(ft.model, work)
                ok, n = greedy_exact(ft, adapted, job.tasks, cfg.ttft.samples.encoder)
                ft.model = adapted.unload()
                right, total = right + ok, total + n
    return {
        "val_loss": sum(after) / max(1, len(after)),
        "val_loss_before": sum(before) / max(1, len(before)),
        "accuracy": right / total if total else 0.0,
    }


def tracking_callbacks(cfg: Any) -> list:
    """Ray Tune's own MLflow / W&B loggers when ``tracking.backend`` is set: one tracked run per trial."""
    t = cfg.tracking
    if t.backend == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        from ttft.tracking import mlflow_uri

        return [MLflowLoggerCallback(tracking_uri=mlflow_uri(t), experiment_name=f"{t.project}-sweep")]
    if t.backend == "wandb":
        from ray.air.integrations.wandb import WandbLoggerCallback

        return [WandbLoggerCallback(project=f"{t.project}-sweep", dir=t.uri)]
    return []


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m jobs.sweep", __doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8, help="Tune samples of the search space")
    p.add_argument("--metric", choices=["val_loss", "accuracy"], default="val_loss")
    p.add_argument("--space", help=f"JSON search space (default: {json.dumps(DEFAULT_SPACE)})")
    p.add_argument("--concurrent", type=int, default=2, help="trials running at once")
    p.add_argument(
        "--select-share",
        type=float,
        default=0.5,
        help="share of the tasks that select hyperparameters; the others only report the selected config",
    )
    args = p.parse_args(argv)
    cfg = setup(args)
    tasks, _ = tasks_of(cfg)
    try:
        select, report = split_tasks([t for t in tasks if t.test_outputs], args.select_share)
    except ValueError as e:
        sys.exit(f"sweep: {e}")
    start_ray(cfg, args)
    import ray
    from ray import tune

    space = search_space(json.loads(args.space) if args.space else DEFAULT_SPACE)
    base = cfg.to_dict()
    mode = "min" if args.metric == "val_loss" else "max"
    want_acc = args.metric == "accuracy"

    def trainable(params: dict[str, Any]) -> dict[str, float]:
        return trial(params, base, select, want_acc)

    out = cfg.run_dir.parent / f"{cfg.name}-sweep"
    out.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=args.metric, mode=mode, num_samples=args.trials, max_concurrent_trials=args.concurrent
        ),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-sweep",
            storage_path=str(out.resolve() / "tune"),
            verbose=1,
            callbacks=tracking_callbacks(cfg),
        ),
    )
    results = tuner.fit()
    rows = []
    for r in results:
        if r.error:
            rows.append(
                {**r.config, "val_loss": None, "accuracy": None, "error": str(r.error).splitlines()[0]}
            )
        else:
            rows.append(
                {**r.config, **{k: r.metrics.get(k) for k in ("val_loss", "val_loss_before", "accuracy")}}
            )
    best = results.get_best_result()
    # the selected config, once, on tasks no trial has seen: the numbers to report
    held_out = ray.get(ray.remote(num_cpus=1)(trial).remote(best.config, base, report, True))
    keys = list(space)
    cols = [*keys, "val_loss_before", "val_loss", "accuracy"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    ordered = sorted(
        rows,
        key=lambda r: (r.get(args.metric) is None, (r.get(args.metric) or 0) * (1 if mode == "min" else -1)),
    )
    for r in ordered:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    table = "\n".join(lines)
    text = (
        f"# Sweep {cfg.name}: {len(rows)} trials selecting on {len(select)} tasks, metric {args.metric} "
        f"({mode}); reported on {len(report)} other tasks\n\n"
        f"Best config: `{json.dumps(best.config)}` -> {args.metric} = "
        f"{_fmt(best.metrics.get(args.metric))} on the selection tasks\n\n"
        f"Held out ({len(report)} tasks, not used to select): val loss {_fmt(held_out['val_loss_before'])} "
        f"before TTFT, {_fmt(held_out['val_loss'])} after; accuracy (greedy, identity) "
        f"{_fmt(held_out['accuracy'])}\n\n"
        f"Trials (selection tasks):\n\n{table}\n"
    )
    (out / "sweep.md").write_text(text)
    (out / "best.json").write_text(
        json.dumps(
            {
                "config": best.config,
                "metrics": {k: best.metrics.get(k) for k in ("val_loss", "val_loss_before", "accuracy")},
                "held_out": held_out,
                "select_tasks": [t.id for t in select],
                "report_tasks": [t.id for t in report],
            },
            indent=2,
        )
    )
    print(text)
    return 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


if __name__ == "__main__":
    sys.exit(main())
