"""Per-task LoRA fine-tuning on the tiny model: it learns, QLoRA trains, no state leaks between jobs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ttft.config import load_config
from ttft.finetune import FinetuneJob, Finetuner, job_key, make_jobs
from ttft.model import model_identity
from ttft.registry import AdapterRegistry
from ttft.tasks import load_tasks

ROOT = Path(__file__).resolve().parents[1]
SMALL = load_tasks("arc1/evaluation", max_side=6).tasks


def smoke(tiny_model_dir: Path, **over):
    return load_config(ROOT / "jobs/configs/smoke.yaml", {"model.name": str(tiny_model_dir), **over})


@pytest.fixture(scope="module")
def finetuner(tiny_model_dir: Path) -> Finetuner:
    cfg = smoke(tiny_model_dir, **{"ttft.optim.steps": 6, "ttft.samples.max_per_task": 16})
    return Finetuner(cfg.model, cfg.ttft, torch_threads=2)


def adapter_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "adapter_model.safetensors"))


def test_ttft_lowers_the_loss_on_the_held_out_test_output(tiny_model_dir, tmp_path):
    cfg = smoke(tiny_model_dir, **{"ttft.optim.steps": 40, "ttft.optim.lr": 3e-3})
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=2)
    task = next(t for t in SMALL if t.id == "66e6c45b")
    r = ft.train(FinetuneJob("a" * 32, [task]), tmp_path / "adapter")
    assert r.steps == 40 and r.tokens > 0 and r.seconds > 0 and r.train_seconds <= r.seconds
    assert r.val_loss_before is not None and r.val_loss_after is not None
    assert r.val_loss_after < 0.8 * r.val_loss_before, (r.val_loss_before, r.val_loss_after)
    assert r.train_losses[-1] < r.train_losses[0]
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not any(f.endswith(".bin") for f in files)


def test_qlora_4bit_trains_on_cpu(tiny_model_dir, tmp_path):
    cfg = smoke(tiny_model_dir, **{"model.load_in_4bit": True, "ttft.optim.steps": 12, "ttft.optim.lr": 3e-3})
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=2)
    assert any("4bit" in type(m).__name__ for m in ft.model.modules())
    r = ft.train(FinetuneJob("b" * 32, [SMALL[0]]), tmp_path / "q")
    assert r.steps == 12 and all(map(torch.isfinite, map(torch.tensor, r.train_losses)))
    assert sum(r.train_losses[-3:]) < sum(r.train_losses[:3])
    assert adapter_tensors(tmp_path / "q")


def test_no_leakage_training_b_after_a_equals_b_alone(finetuner, tiny_model_dir, tmp_path):
    a, b = SMALL[0], SMALL[1]
    finetuner.train(FinetuneJob("c" * 32, [a]), tmp_path / "a")
    after_a = finetuner.train(FinetuneJob("d" * 32, [b]), tmp_path / "b_after_a")
    cfg = smoke(tiny_model_dir, **{"ttft.optim.steps": 6, "ttft.samples.max_per_task": 16})
    alone = Finetuner(cfg.model, cfg.ttft, torch_threads=2).train(FinetuneJob("d" * 32, [b]), tmp_path / "b")
    x, y = adapter_tensors(tmp_path / "b_after_a"), adapter_tensors(tmp_path / "b")
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k
    assert after_a.train_losses == alone.train_losses
    # and the base model really is back to its loaded weights (no LoRA layers left behind)
    assert not any("lora" in n for n, _ in finetuner.model.named_parameters())


def test_group_mode_trains_one_adapter_on_all_tasks(finetuner, tmp_path):
    cfg = finetuner.cfg
    jobs = make_jobs(SMALL[:4], "m", finetuner.model_cfg, cfg, group_size=4)
    assert len(jobs) == 1 and jobs[0].task_ids == [t.id for t in SMALL[:4]]
    r = finetuner.train(jobs[0], tmp_path / "g")
    assert r.task_ids == jobs[0].task_ids
    assert r.n_samples > cfg.samples.max_per_task  # capped per task, not per group
    assert len(make_jobs(SMALL[:5], "m", finetuner.model_cfg, cfg, group_size=2)) == 3


def test_job_key_changes_with_every_training_input(tiny_model_dir):
    cfg = smoke(tiny_model_dir)
    ident = model_identity(str(tiny_model_dir))
    base = job_key(ident, cfg.model, cfg.ttft, [SMALL[0]])
    assert base == job_key(ident, cfg.model, cfg.ttft, [SMALL[0]])
    other = smoke(tiny_model_dir, **{"ttft.optim.lr": 1e-4})
    seeded = smoke(tiny_model_dir, **{"ttft.optim.seed": 1})
    quant = smoke(tiny_model_dir, **{"model.load_in_4bit": True})
    keys = {
        base,
        job_key(ident, other.model, other.ttft, [SMALL[0]]),
        job_key(ident, seeded.model, seeded.ttft, [SMALL[0]]),
        job_key(ident, quant.model, quant.ttft, [SMALL[0]]),
        job_key(ident, cfg.model, cfg.ttft, [SMALL[1]]),
        job_key("other-model", cfg.model, cfg.ttft, [SMALL[0]]),
    }
    assert len(keys) == 6


def test_task_that_fits_no_sample_fails_with_its_id(tiny_model_dir):
    cfg = smoke(tiny_model_dir, **{"ttft.samples.max_seq_len": 20})
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=1)
    with pytest.raises(ValueError, match=f"task {SMALL[0].id}: no training sample fits"):
        ft.train(FinetuneJob("e" * 32, [SMALL[0]]), "/nonexistent")
    two_pairs = next(t for t in SMALL if len(t.train) == 2)
    n2 = smoke(tiny_model_dir, **{"ttft.samples.mode": "n-2"})
    ft2 = Finetuner(n2.model, n2.ttft, torch_threads=1)
    with pytest.raises(ValueError, match=f"task {two_pairs.id}: samples.mode=n-2 needs at least 3 train"):
        ft2.train(FinetuneJob("f" * 32, [two_pairs]), "/nonexistent")


def test_cli_finetune_registers_then_reuses(tiny_model_dir, tmp_path):
    reg = tmp_path / "registry"
    cmd = [
        sys.executable,
        "-m",
        "ttft.cli",
        "finetune",
        "--config",
        "jobs/configs/smoke.yaml",
        "--data",
        "arc1/evaluation",
        "--task",
        SMALL[2].id,
        "--registry",
        str(reg),
        "--model",
        str(tiny_model_dir),
        "--set",
        "ttft.optim.steps=4",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "registered" in first.stdout and '"val_loss_after"' in first.stdout
    ls = subprocess.run(
        [sys.executable, "-m", "ttft.cli", "registry", "ls", str(reg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert SMALL[2].id in ls.stdout and "1 adapters" in ls.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "nothing to train" in again.stdout
    assert len(AdapterRegistry(str(reg)).query()) == 1
