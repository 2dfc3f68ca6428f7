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


def test_memory_lean_step_gives_the_same_losses_as_the_full_logits_step(tiny_model_dir, tmp_path):
    """Same seed: target-only chunked loss + gradient checkpointing == HF's full-vocabulary loss."""
    over = {"ttft.optim.steps": 6, "ttft.optim.batch_size": 2, "ttft.optim.grad_accum": 2}
    old = smoke(tiny_model_dir, **over)
    lean = smoke(tiny_model_dir, **over, **{"model.gradient_checkpointing": True})
    a = Finetuner(old.model, old.ttft, torch_threads=2, full_logits=True)
    b = Finetuner(lean.model, lean.ttft, torch_threads=2)
    assert b.model.is_gradient_checkpointing and not a.model.is_gradient_checkpointing
    ra = a.train(FinetuneJob("g" * 32, [SMALL[0]]), tmp_path / "old")
    rb = b.train(FinetuneJob("g" * 32, [SMALL[0]]), tmp_path / "lean")
    assert ra.train_losses == pytest.approx(rb.train_losses, rel=1e-5, abs=1e-6)
    assert ra.val_loss_before == pytest.approx(rb.val_loss_before, rel=1e-6)
    assert ra.val_loss_after == pytest.approx(rb.val_loss_after, rel=1e-5)
    assert ra.train_losses[-1] != ra.train_losses[0]  # it trained: the comparison is not vacuous
    x, y = adapter_tensors(tmp_path / "old"), adapter_tensors(tmp_path / "lean")
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=1e-4, atol=1e-6)


def test_chunked_target_loss_and_grads_equal_the_hf_loss(finetuner, monkeypatch):
    from ttft import finetune

    samples = finetuner.samples_for([SMALL[1]], 0)[:3]
    batch = finetuner._batch(samples)  # padded batch of 3
    model = finetuner.attach_lora()
    try:
        model.train()

        def loss_and_grads(full: bool) -> tuple[float, list[torch.Tensor]]:
            model.zero_grad(set_to_none=True)
            loss = finetune.causal_lm_loss(model, batch, full_logits=full)
            loss.backward()
            return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

        with torch.no_grad():  # nonzero B so every LoRA weight gets a gradient
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
        full_loss, full_grads = loss_and_grads(True)
        monkeypatch.setattr(finetune, "LOSS_CHUNK_ELEMENTS", 7 * finetuner.model.config.vocab_size)
        lean_loss, lean_grads = loss_and_grads(False)  # 7 target tokens per chunk: many chunks
    finally:
        finetuner.model = model.unload()
    assert lean_loss == pytest.approx(full_loss, rel=1e-6)
    for g, h in zip(full_grads, lean_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-7)


def test_adapter_is_saved_in_the_training_dtype(tiny_model_dir, tmp_path):
    cfg = smoke(tiny_model_dir, **{"model.dtype": "bfloat16", "ttft.optim.steps": 2})
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=2)
    r = ft.train(FinetuneJob("h" * 32, [SMALL[0]]), tmp_path / "bf16")
    tensors = adapter_tensors(r.adapter_dir)
    assert tensors and {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert r.peak_mem_mb > 0


def test_memory_model_packs_four_qwen05_finetunes_on_a_24gb_card():
    from bench.gpu import QWEN05
    from ttft.memory import actors_per_gpu, gpus_per_worker_for, shape_of

    gpu = ROOT / "jobs/configs/qwen0.5b_arc1_bf16.yaml"
    cfg = load_config(gpu)
    shape = shape_of(QWEN05)
    assert cfg.model.gradient_checkpointing and cfg.ttft.samples.max_seq_len == 8192
    assert actors_per_gpu(cfg.model, cfg.ttft, "L4", shape) >= 4
    assert gpus_per_worker_for(cfg.model, cfg.ttft, "L40S", shape) <= 0.25
    h200, a100 = (actors_per_gpu(cfg.model, cfg.ttft, card, shape) for card in ("H200", 79.1))
    assert h200 > a100 >= 4
    no_gc = load_config(gpu, {"model.gradient_checkpointing": False})
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        actors_per_gpu(no_gc.model, no_gc.ttft, "T4", shape)
    with pytest.raises(ValueError, match="unknown accelerator type"):
        actors_per_gpu(cfg.model, cfg.ttft, "TPU-v5", shape)


def test_memory_model_agrees_with_the_committed_measurements():
    import json

    from bench.gpu import QWEN05
    from ttft.memory import GIB, estimate_peak_bytes, shape_of

    result = json.loads((ROOT / "bench/results/memory.json").read_text())
    assert result["peak_gib"]["8192"] <= 5.0  # the goal
    for row in result["table"]:
        if row["after_gib"] is not None:
            model = estimate_peak_bytes(shape_of(QWEN05), row["seq_len"])["total"] / GIB
            assert model == pytest.approx(row["after_gib"], rel=0.15), row
        if row["before"] == "measured":
            kw = {"gradient_checkpointing": False, "full_logits": True}
            model = estimate_peak_bytes(shape_of(QWEN05), row["seq_len"], **kw)["total"] / GIB
            assert model == pytest.approx(row["before_gib"], rel=0.15), row


def test_card_sizes_from_ray_types_and_torch_properties(tiny_model_dir):
    from types import SimpleNamespace

    from ttft.config import ModelConfig
    from ttft.memory import card_gib, model_shape

    assert card_gib("L40S") == 44.5 and card_gib("A100-80G") == 79.1 and card_gib("A100") == 39.4
    assert card_gib("NVIDIA H200") == 139.8 and card_gib("TPU-v5") is None
    assert card_gib(SimpleNamespace(total_memory=24 * 2**30)) == 24.0  # torch.cuda.get_device_properties
    shape = model_shape(ModelConfig(name=str(tiny_model_dir)))
    assert (shape.hidden, shape.layers, shape.head_dim) == (128, 2, 64)
