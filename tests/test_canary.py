"""The canary (`make canary`, jobs/canary.py): its configs, summary and resume logic, and a tiny run end
to end (Ray Train pretraining with 2 workers -> eval tasks -> the four ablations through jobs.eval ->
table)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import canary
from ttft.config import load_config
from ttft.generate import rule_of, split_of
from ttft.tasks import load_tasks

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["baseline", "n-1", "n-1+geometric", "n-1+geometric+color"]


# ------------------------------------------------------------------------------------------ configs


def test_ablation_configs_differ_only_where_the_seed_says():
    cfgs = {name: load_config(ROOT / path) for name, path in canary.ABLATIONS.items()}
    assert list(cfgs) == NAMES
    base, n1, geo, color = cfgs.values()
    assert not base.ttft.enabled and all(c.ttft.enabled for c in (n1, geo, color))
    assert n1.ttft.augment.d8 == ["identity"] and not n1.ttft.augment.color and n1.ttft.samples.mode == "n-1"
    assert len(geo.ttft.augment.d8) == 8 and not geo.ttft.augment.color
    assert len(color.ttft.augment.d8) == 8 and color.ttft.augment.color
    # Everything else is shared: same samples, LoRA, optimizer, inference, and the pretraining's format.
    for c in (base, geo, color):
        for section in ("samples", "lora", "optim"):
            assert getattr(c.ttft, section) == getattr(n1.ttft, section), section
        assert c.inference == n1.inference
    pre, _ = canary.load_pretrain(canary.CanaryConfig(), [])
    assert pre.ttft.samples.encoder == n1.ttft.samples.encoder


def test_pretrain_recipe_tracks_what_the_model_depends_on():
    cfg = canary.CanaryConfig()
    base = canary.pretrain_recipe(cfg, [])
    assert canary.pretrain_recipe(cfg, []) == base
    assert canary.pretrain_recipe(cfg, ["ttft.optim.steps=7"]) != base
    assert canary.pretrain_recipe(canary.CanaryConfig(hidden_size=192), []) != base
    assert base["pretrain"]["data"].startswith("generated:train:")


def test_eval_tasks_are_held_out_deterministic_and_replace_stale_files(tmp_path):
    cfg = canary.CanaryConfig(eval_tasks=6, eval_seed=3)
    d = canary.write_eval_tasks(cfg, tmp_path / "a")
    first = {p.name: p.read_bytes() for p in d.glob("*.json")}
    (d / "gen-eval-99999-crop.json").write_text("{}")  # a task of an older, larger run
    assert canary.write_eval_tasks(cfg, tmp_path / "a") == d
    assert {p.name: p.read_bytes() for p in d.glob("*.json")} == first
    other = canary.write_eval_tasks(canary.CanaryConfig(eval_tasks=6, eval_seed=4), tmp_path / "b")
    assert {p.name for p in other.glob("*.json")} != set(first)
    tasks = load_tasks(d).tasks
    assert len(tasks) == 6 and all(split_of(rule_of(t.id)) == "eval" for t in tasks)


def _fake_run(out: Path, name: str, accuracy: float | None) -> None:
    (out / name).mkdir(parents=True)
    (out / name / "summary.json").write_text(json.dumps({"accuracy": accuracy}))


def test_summary_is_percent_and_lift_is_best_ttft_row_minus_baseline(tmp_path):
    for name, acc in zip(NAMES, (0.04, 0.10, 0.08, 0.26)):
        _fake_run(tmp_path, name, acc)
    s = canary.summarize(NAMES, tmp_path)
    assert s == {
        "pass2": {"baseline": 4.0, "n-1": 10.0, "n-1+geometric": 8.0, "n-1+geometric+color": 26.0},
        "lift": 22.0,
    }
    assert not canary.seed_ordering(s["pass2"])  # geometric lost to n-1
    assert canary.seed_ordering(
        {"baseline": 4.0, "n-1": 6.0, "n-1+geometric": 6.0, "n-1+geometric+color": 20.0}
    )
    assert not canary.seed_ordering(
        {"baseline": 8.0, "n-1": 6.0, "n-1+geometric": 9.0, "n-1+geometric+color": 20.0}
    )


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_canary_end_to_end(tmp_path, capsys):
    out = tmp_path / "canary"
    args = [
        "--out", str(out), "--tasks", "2", "--eval-seed", "5",
        "--pretrain-set", "pretrain.data=generated:train:8:0",
        "--pretrain-set", "ttft.optim.steps=4",
        "--pretrain-set", "ttft.optim.warmup_steps=1",
        "--pretrain-set", "ttft.samples.max_per_task=2",
        "--pretrain-set", "pretrain.checkpoint_every=2",
        "--set", "ttft.optim.steps=2",
        "--set", "ttft.samples.max_per_task=4",
        "--set", "inference.d8=[identity,rot90]",
    ]  # fmt: skip
    assert canary.main(args) == 0
    printed = capsys.readouterr().out

    # Pretraining: a merged HF model from 2 Ray Train workers, stamped with its recipe.
    model = out / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in model.iterdir()}
    info = json.loads((model / "pretrain.json").read_text())
    assert info["workers"] == 2 and info["steps"] == 4 and info["data"] == "generated:train:8:0"

    # The ablations: one jobs.eval run each on the same held-out tasks, adapters in the canary's registry.
    tasks = load_tasks(out / "tasks").tasks
    assert len(tasks) == 2 and all(t.id.startswith("gen-eval-") for t in tasks)
    for name in NAMES:
        run = out / name
        for f in ("summary.json", "submission.json", "predictions.parquet", "report.md", "config.yaml"):
            assert (run / f).is_file(), f"{name}/{f}"
        s = json.loads((run / "summary.json").read_text())
        assert s["tasks"] == 2 and s["ttft"] == (name != "baseline")
        if name != "baseline":
            assert s["finetune_counts"].get("trained", 0) + s["finetune_counts"].get("reused", 0) == 2
    assert any((out / "registry").rglob("adapter_model.safetensors"))

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pass2", "lift"} and list(summary["pass2"]) == NAMES
    assert all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in summary["pass2"].values())
    best = max(v for k, v in summary["pass2"].items() if k != "baseline")
    assert summary["lift"] == pytest.approx(best - summary["pass2"]["baseline"])
    table = (out / "table.md").read_text()
    assert all(f"| {n} |" in table for n in NAMES) and table.splitlines()[0] in printed

    # Resume: the same recipe finds the pretrained model and does not train again.
    cfg = canary.CanaryConfig(out_dir=str(out), eval_tasks=2, eval_seed=5)
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--pretrain-set"]
    assert canary.pretrain(cfg, out, sets)[2] is False
