"""One LoRA fine-tune on one task (or a group of tasks) -> PEFT adapter + metrics.

`Finetuner` loads the base model once and trains many adapters in turn: each job attaches a fresh,
seeded LoRA, trains on the job's samples (loss on target tokens only), saves the adapter as
safetensors (in the training dtype), and unloads the LoRA so the next job starts from the untouched base.

`train_step` is the one optimizer step of TTFT and of pretraining (ttft.pretrain). It is memory-lean:
`causal_lm_loss` takes the decoder's last hidden states at the target positions only and computes the
logits and the fp32 cross-entropy chunk by chunk under activation checkpointing, so no full-vocabulary
logits of the whole sequence ever exist; `model.gradient_checkpointing` recomputes each layer's
activations in the backward pass. bench/memory.py measures both against the plain HF loss.
"""

from __future__ import annotations

import contextlib
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
import torch.nn.functional as F
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, get_peft_model_state_dict
from torch.utils.checkpoint import checkpoint

from ttft import memory
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


# Logits elements per chunk of the target-only cross-entropy: 2**24 fp32 logits are 64 MiB, ~110 target
# tokens of a 152k vocabulary at once (the tiny model's vocabulary fits in one chunk). One source: the
# memory model uses the same number.
LOSS_CHUNK_ELEMENTS = memory.LOSS_CHUNK_ELEMENTS


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM inside DDP and PEFT wrappers."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant), with input grads for PEFT.

    A frozen base under LoRA has no trainable input to its first layer: the embeddings' output must require
    grad or a reentrant checkpoint would cut the graph; non-reentrant checkpoints do not need it, but the
    hook costs one T x hidden gradient and keeps either kind correct.
    """
    lm = causal_lm(model)
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.enable_input_require_grads()
    lm.config.use_cache = False


def _ce_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, full_logits: bool = False):
    """Mean next-token cross-entropy over the target tokens (labels != -100) of `batch`, as HF computes it.

    The lean path runs the model (through any DDP/PEFT wrapper) for one position of logits only, takes the
    decoder's final hidden states at the positions that predict a target, and computes logits + fp32
    cross-entropy in chunks of LOSS_CHUNK_ELEMENTS under checkpointing: only the selected hidden states are
    kept for the backward pass. `full_logits` is the plain HF loss (full-vocabulary logits at every
    position, upcast to fp32): the pre-issue-13 step, for benchmarks and tests. Models whose logits are not
    `lm_head(hidden)` (final-logit soft-capping or scaling) always take the plain path.
    """
    lm = causal_lm(model)
    cfg = lm.config
    if full_logits or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return model(**batch).loss
    captured: list[torch.Tensor] = []
    hook = lm.get_decoder().register_forward_hook(lambda _m, _a, out: captured.append(out[0]))
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1)
    finally:
        hook.remove()
    hidden = captured[-1][:, :-1]  # position p predicts token p + 1
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    hidden, targets = hidden[mask], targets[mask]
    n = int(targets.numel())
    if n == 0:
        return hidden.sum() * 0.0
    head = lm.get_output_embeddings()
    chunk = max(1, LOSS_CHUNK_ELEMENTS // int(cfg.get_text_config().vocab_size))
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        total = total + checkpoint(
            _ce_sum, head, hidden[i : i + chunk], targets[i : i + chunk], use_reentrant=False
        )
    return total / n


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    batches: Sequence[dict],
    max_grad_norm: float,
    *,
    full_logits: bool = False,
) -> float:
    """One optimizer step over `batches` (gradient accumulation); returns the mean loss (this rank's).

    The one training step of TTFT and pretraining. `model` may be DDP-wrapped: gradients are synchronised
    on the last micro-batch only. `full_logits`: see `causal_lm_loss`.
    """
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        ctx = model.no_sync() if (not last and hasattr(model, "no_sync")) else contextlib.nullcontext()
        with ctx:
            loss = causal_lm_loss(model, batch, full_logits=full_logits) / len(batches)
            loss.backward()
        total += float(loss.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    sched.step()
    return total


def limit_gpu_memory(fraction: float, reserve_gib: float | None = None) -> float | None:
    """Cap this process's CUDA caching allocator at its `fraction` of the card, less the CUDA context.

    Fine-tune actors packed on one GPU (Ray's fractional `num_gpus`) call this once, so one of them cannot
    starve the others. Returns the fraction set, or None without CUDA or when `fraction` is 0 or >= 1.
    """
    if not torch.cuda.is_available() or not 0 < fraction < 1:
        return None
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    reserve = memory.CUDA_CONTEXT_GIB if reserve_gib is None else reserve_gib
    cap = max(0.01, fraction - reserve / total_gib)
    torch.cuda.set_per_process_memory_fraction(cap)
    return cap


def _proc_status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory() -> None:
    """Free cached CUDA blocks and start a new peak (CUDA allocator stats; on Linux CPU also VmHWM)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set size (VmHWM)


def peak_memory_mb() -> float:
    """Peak memory since `reset_peak_memory`: CUDA allocated bytes, or the CPU process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, lifetime peak


class Finetuner:
    """Holds a base model in memory and trains one LoRA adapter per job; no state leaks between jobs."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        ttft_cfg: TTFTConfig,
        *,
        torch_threads: int | None = None,
        gpu_fraction: float | None = None,
        full_logits: bool = False,
    ):
        """Load the base model; `gpu_fraction` caps this process's share of the GPU (`limit_gpu_memory`).

        `full_logits` selects the plain HF loss over full-vocabulary logits (see `causal_lm_loss`).
        """
        if torch_threads:
            torch.set_num_threads(torch_threads)
        if gpu_fraction:
            limit_gpu_memory(gpu_fraction)
        self.model_cfg = model_cfg
        self.cfg = ttft_cfg
        self.full_logits = full_logits
        self.model_path = base_model_path(model_cfg)
        self.model, self.tokenizer = load_base_model(
            self.model_path,
            load_in_4bit=model_cfg.load_in_4bit,
            dtype=model_cfg.dtype,
            device=None if model_cfg.device == "auto" else model_cfg.device,
        )
        # No peft.prepare_model_for_kbit_training for QLoRA: it upcasts the embeddings (and so the tied
        # lm_head and the whole residual stream) and norms to fp32, which training does not need (Qwen2's
        # RMSNorm computes in fp32 anyway); get_peft_model freezes the base. bench/memory.py measures it.
        for p in self.model.parameters():
            p.requires_grad_(False)
        if model_cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.train_dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())
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
            total += float(causal_lm_loss(model, batch, full_logits=self.full_logits)) * n
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

    def attach_lora(self) -> torch.nn.Module:
        """A fresh LoRA (seeded with optim.seed) on the base model; `model.unload()` removes it again.

        The LoRA weights stay fp32 masters (PEFT's default, AdamW's updates are below bf16's resolution);
        `save_adapter` writes them in the training dtype.
        """
        torch.manual_seed(self.cfg.optim.seed)
        return get_peft_model(self.model, peft_lora_config(self.cfg.lora))

    def optimizer(self, model: torch.nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW over the trainable weights and the lr schedule of `optim` for `steps` steps."""
        o = self.cfg.optim
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.schedule, o.warmup_steps, steps))

    def save_adapter(self, model: torch.nn.Module, out_dir: str | Path) -> Path:
        """Write the adapter (PEFT format, safetensors) with its weights in the training dtype."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().to(self.train_dtype) if v.is_floating_point() else v
            for k, v in get_peft_model_state_dict(model).items()
        }
        model.save_pretrained(str(out), safe_serialization=True, state_dict=state)
        return out

    def train(self, job: FinetuneJob, out_dir: str | Path) -> FinetuneResult:
        """Train one adapter for `job` and save it under `out_dir` (PEFT format, safetensors).

        `peak_mem_mb` is this job's peak: cached GPU memory is freed and the peak reset at the start.
        """
        reset_peak_memory()
        t0 = time.perf_counter()
        o = self.cfg.optim
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
        rng = random.Random(o.seed)
        model = self.attach_lora()
        try:
            opt, sched = self.optimizer(model, steps)
            order: list[Sample] = []
            losses: list[float] = []
            tokens = 0
            done = 0
            t_train = time.perf_counter()
            model.train()
            for _ in range(steps):
                if job.max_seconds is not None and time.perf_counter() - t0 > job.max_seconds:
                    break
                batches = []
                for _ in range(o.grad_accum):
                    if len(order) < o.batch_size:
                        epoch = list(samples)
                        rng.shuffle(epoch)
                        order += epoch
                    batch_samples, order = order[: o.batch_size], order[o.batch_size :]
                    batches.append(self._batch(batch_samples))
                    tokens += int(batches[-1]["attention_mask"].sum())
                loss = train_step(model, opt, sched, batches, o.max_grad_norm, full_logits=self.full_logits)
                losses.append(loss)
                done += 1
            del opt, sched
            train_seconds = time.perf_counter() - t_train
            val_after = self.target_loss(model, vals)
            out = self.save_adapter(model, out_dir)
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
            peak_mem_mb=peak_memory_mb(),
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
