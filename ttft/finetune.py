"""One LoRA fine-tune on one task (or a group of tasks) -> PEFT adapter + metrics.

`Finetuner` loads the base model once and trains many adapters in turn: each job attaches a fresh,
seeded LoRA, trains on the job's samples (loss on target tokens only), saves the adapter as
safetensors, and unloads the LoRA so the next job starts from the untouched base.
"""

from __future__ import annotations

import json
import math
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, prepare_model_for_kbit_training

from ttft.config import LoraConfig, ModelConfig, TTFTConfig, ttft_hash
from ttft.model import base_model_path, load_base_model
from ttft.registry import adapter_key
from ttft.samples import Sample, encode_prompt_target, train_samples, val_samples
from ttft.tasks import Task


@dataclass
class FinetuneJob:
    """Train one adapter (registry `key`) on `tasks`; `steps` overrides the config (budget reductions)."""

    key: str
    tasks: list[Task]
    steps: int | None = None
    max_seconds: float | None = None  # stop early (and mark reduced) past this

    @property
    def task_ids(self) -> list[str]:
        return [t.id for t in self.tasks]


@dataclass
class FinetuneResult:
    """What one fine-tune produced and measured."""

    key: str
    task_ids: list[str]
    adapter_dir: str
    steps: int
    planned_steps: int
    n_samples: int
    tokens: int
    seconds: float
    train_seconds: float = 0.0  # inside the optimizer steps; seconds - train_seconds is per-job overhead
    train_losses: list[float] = field(default_factory=list)
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    peak_mem_mb: float = 0.0
    reduced: bool = False

    @property
    def train_loss(self) -> float | None:
        """Mean loss over the last quarter of the steps (the curve's end, less noisy than one step)."""
        if not self.train_losses:
            return None
        tail = self.train_losses[-max(1, len(self.train_losses) // 4) :]
        return sum(tail) / len(tail)

    def to_row(self) -> dict:
        row = asdict(self)
        row["train_loss"] = self.train_loss
        return row

    def registry_row(self, run: str, model_cfg: ModelConfig, cfg: TTFTConfig, attempt: int = 1) -> dict:
        """The adapter's metadata row for the registry (curves and extras go to `extra_json`)."""
        extra = {
            k: getattr(self, k)
            for k in ("planned_steps", "n_samples", "train_seconds", "peak_mem_mb", "train_losses")
        }
        return {
            "run": run,
            "task_ids": self.task_ids,
            "base_model": model_cfg.name,
            "base_revision": model_cfg.revision,
            "config_hash": ttft_hash(cfg),
            "config_json": json.dumps(asdict(cfg), sort_keys=True),
            "train_loss": self.train_loss,
            "val_loss_before": self.val_loss_before,
            "val_loss_after": self.val_loss_after,
            "steps": self.steps,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "reduced": self.reduced,
            "attempt": attempt,
            "extra_json": extra,
        }


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step `step` (warmup, then cosine / linear / constant)."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return f


def peft_lora_config(lc: LoraConfig) -> PeftLoraConfig:
    """The PEFT LoRA config of ttft's `ttft.lora` section (causal LM, no bias)."""
    return PeftLoraConfig(
        r=lc.rank,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=list(lc.target_modules),
        use_rslora=lc.use_rslora,
        task_type="CAUSAL_LM",
        bias="none",
    )


def encode_sample(tokenizer: Any, sample: Sample) -> tuple[list[int], list[int]]:
    """Token ids and labels: prompt tokens masked (-100), target + EOS learned (see encode_prompt_target)."""
    return encode_prompt_target(tokenizer, sample.prompt, sample.target)


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, device: Any = "cpu") -> dict:
    """Right-padded batch tensors: input_ids, labels (-100 on padding), attention_mask."""
    width = max(len(ids) for ids, _ in encoded)
    ids = [x + [pad_id] * (width - len(x)) for x, _ in encoded]
    labels = [y + [-100] * (width - len(y)) for _, y in encoded]
    mask = [[1] * len(x) + [0] * (width - len(x)) for x, _ in encoded]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def _peak_mem_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Finetuner:
    """Holds a base model in memory and trains one LoRA adapter per job; no state leaks between jobs."""

    def __init__(self, model_cfg: ModelConfig, ttft_cfg: TTFTConfig, *, torch_threads: int | None = None):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_cfg = model_cfg
        self.cfg = ttft_cfg
        self.model_path = base_model_path(model_cfg)
        self.model, self.tokenizer = load_base_model(
            self.model_path,
            load_in_4bit=model_cfg.load_in_4bit,
            dtype=model_cfg.dtype,
            device=None if model_cfg.device == "auto" else model_cfg.device,
        )
        if model_cfg.load_in_4bit:
            self.model = prepare_model_for_kbit_training(self.model, use_gradient_checkpointing=False)
        self.device = next(self.model.parameters()).device
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _batch(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        return collate([encode_sample(self.tokenizer, s) for s in samples], self.pad_id, self.device)

    @torch.no_grad()
    def target_loss(self, model: torch.nn.Module, samples: Sequence[Sample]) -> float | None:
        """Mean per-token loss on the targets of `samples` (the seed's val loss when they are val samples)."""
        if not samples:
            return None
        model.eval()
        total, count = 0.0, 0
        for s in samples:
            batch = self._batch([s])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
        return total / max(1, count)

    def samples_for(self, tasks: Sequence[Task], seed: int) -> list[Sample]:
        out: list[Sample] = []
        for task in tasks:
            out += train_samples(task, self.cfg.samples, self.cfg.augment, self.count_tokens, seed)
        return out

    def planned_steps(self, n_samples: int) -> int:
        o = self.cfg.optim
        if o.epochs is not None:
            return max(1, math.ceil(o.epochs * n_samples / (o.batch_size * o.grad_accum)))
        return o.steps

    def train(self, job: FinetuneJob, out_dir: str | Path) -> FinetuneResult:
        """Train one adapter for `job` and save it under `out_dir` (PEFT format, safetensors)."""
        t0 = time.perf_counter()
        o, lc = self.cfg.optim, self.cfg.lora
        samples = self.samples_for(job.tasks, o.seed)
        if not samples:
            mode, need = self.cfg.samples.mode, 3 if self.cfg.samples.mode == "n-2" else 2
            few = [t for t in job.tasks if len(t.train) < need]
            if few:
                reason = f"samples.mode={mode} needs at least {need} train pairs, got {len(few[0].train)}"
            else:
                reason = f"no training sample fits samples.max_seq_len={self.cfg.samples.max_seq_len}"
            raise ValueError(f"task {','.join(job.task_ids)}: {reason}")
        vals = [v for t in job.tasks for v in val_samples(t, self.cfg.samples, self.count_tokens)]
        val_before = self.target_loss(self.model, vals)

        planned = self.planned_steps(len(samples))
        steps = min(planned, job.steps) if job.steps is not None else planned
        torch.manual_seed(o.seed)
        rng = random.Random(o.seed)
        model = get_peft_model(self.model, peft_lora_config(lc))
        try:
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.schedule, o.warmup_steps, steps))
            order: list[Sample] = []
            losses: list[float] = []
            tokens = 0
            done = 0
            t_train = time.perf_counter()
            model.train()
            for _ in range(steps):
                if job.max_seconds is not None and time.perf_counter() - t0 > job.max_seconds:
                    break
                opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for _ in range(o.grad_accum):
                    if len(order) < o.batch_size:
                        epoch = list(samples)
                        rng.shuffle(epoch)
                        order += epoch
                    batch_samples, order = order[: o.batch_size], order[o.batch_size :]
                    batch = self._batch(batch_samples)
                    loss = model(**batch).loss / o.grad_accum
                    loss.backward()
                    step_loss += loss.item()
                    tokens += int(batch["attention_mask"].sum())
                torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm)
                opt.step()
                sched.step()
                losses.append(step_loss)
                done += 1
            train_seconds = time.perf_counter() - t_train
            val_after = self.target_loss(model, vals)
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(str(out), safe_serialization=True)
        finally:
            # Remove the LoRA layers (no merge): the base model is exactly as loaded for the next job.
            self.model = model.unload()
        return FinetuneResult(
            key=job.key,
            task_ids=job.task_ids,
            adapter_dir=str(out),
            steps=done,
            planned_steps=planned,
            n_samples=len(samples),
            tokens=tokens,
            seconds=time.perf_counter() - t0,
            train_seconds=train_seconds,
            train_losses=losses,
            val_loss_before=val_before,
            val_loss_after=val_after,
            peak_mem_mb=_peak_mem_mb(),
            reduced=done < planned,
        )


def base_val_losses(
    model_cfg: ModelConfig, cfg: TTFTConfig, tasks: Sequence[Task]
) -> dict[str, float | None]:
    """The seed's val loss of the base model alone (no TTFT) per task: the baseline row's val loss."""
    ft = Finetuner(model_cfg, cfg)
    return {t.id: ft.target_loss(ft.model, val_samples(t, cfg.samples, ft.count_tokens)) for t in tasks}


def job_key(model_identity: str, model_cfg: ModelConfig, cfg: TTFTConfig, tasks: Sequence[Task]) -> str:
    """Registry key of the adapter for `tasks`: base model identity, training config, task content, seed."""
    train_cfg = {"ttft": asdict(cfg), "load_in_4bit": model_cfg.load_in_4bit, "dtype": model_cfg.dtype}
    return adapter_key(model_identity, train_cfg, [t.content_hash() for t in tasks], cfg.optim.seed)


def make_jobs(
    tasks: Sequence[Task], model_identity: str, model_cfg: ModelConfig, cfg: TTFTConfig, group_size: int = 1
) -> list[FinetuneJob]:
    """One job per `group_size` consecutive tasks (group_size >= len(tasks): one adapter for all)."""
    groups = [list(tasks[i : i + group_size]) for i in range(0, len(tasks), group_size)]
    return [FinetuneJob(job_key(model_identity, model_cfg, cfg, g), g) for g in groups]
