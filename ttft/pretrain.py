"""Base-model pretraining on ARC training tasks: the first half of the seed's recipe, without Ray.

The seed starts TTFT from a model that was first fine-tuned on ARC *training* tasks. This module holds
everything of that step that is plain torch: the `pretrain:` config section, task loading (any
``load_tasks`` source or ``generated:SPLIT:N:SEED``), the per-rank sample stream (the same n-1 splits,
augmentations and prompt format as TTFT, through ``samples.train_samples``), tokenization with the prompt
masked, the training loop of one data-parallel worker, checkpoints, and the export of the merged model.
``jobs/pretrain.py`` runs :func:`train_worker` on every Ray Train worker and supplies the Ray parts
(DDP wrapping, ``report``, the checkpoint to resume from). The optimizer step is ``finetune.train_step``,
the one step TTFT uses too.

Fresh tasks (``pretrain.data: fresh:FAMILY:SPLIT:SEED``, e.g. ``fresh:canary:train:0``): every micro-batch
draws new generated tasks (``ttft.generate.generated_task``; index from step, rank and position, so a resumed
run continues the same stream and ranks never share a task). Each task is one sequence, its demonstrations
then its test pair, with the loss on every output grid and its newline / EOS and the inputs masked
(``task_sequence``); no augmentation (the config must say so), since augmenting maps held-out rule instances
onto trained ones. ``pretrain.max_minutes`` stops at a wall-time budget and the lr schedule then runs over
wall time (progress = the larger of the time and step fractions), down to ``min_lr_ratio`` of the peak.

Data parallelism: every worker builds the same sample list for an epoch (deterministic in the seed and the
epoch, so each epoch draws fresh augmentations), truncates it to a multiple of the world size and takes
every world-size-th sample from its rank on. All shards are equally long, so the stream position
(epoch, offset) is the same on every rank and one number pair in the checkpoint resumes all of them.
``ttft.optim.batch_size`` is per worker: the global batch is batch_size x grad_accum x workers.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ttft.config import (
    ConfigError,
    RunConfig,
    _build,
    _read_yaml,
    apply_overrides,
    config_from_dict,
)
from ttft.finetune import (
    collate,
    enable_gradient_checkpointing,
    encode_sample,
    lr_lambda,
    peft_lora_config,
    train_step,
)
from ttft.formats import build_prompt, build_target, get_encoder
from ttft.generate import FAMILIES, MAX_INPUT_SIDE, MIN_SIDE, SPLITS, generate_tasks, generated_task
from ttft.samples import Sample, train_samples
from ttft.tasks import Pair, Task, load_tasks

GENERATED_RE = re.compile(r"^generated:(train|eval):(\d+):(-?\d+)(?::(\d+))?$")
FRESH_RE = re.compile(rf"^fresh:({'|'.join(FAMILIES)}):({'|'.join(SPLITS)}):(-?\d+)$")
STATE_FILE = "train_state.pt"
SUMMARY_FILE = "pretrain.json"
CHECKPOINT_FORMAT = 1


@dataclass
class PretrainConfig:
    """The `pretrain:` section of a pretraining YAML (the rest of the file is a normal RunConfig).

    model, ttft.samples, ttft.augment, ttft.lora and ttft.optim of the same file describe the pretraining
    (optim.steps = total optimizer steps; optim.batch_size = per worker).
    """

    data: str = "arc1/training"  # any load_tasks source, generated:SPLIT:N:SEED, or fresh:FAMILY:SPLIT:SEED
    solutions: str | None = None  # Kaggle solutions file for `data`
    limit: int | None = None
    max_side: int | None = None
    use_test_outputs: bool = True  # known test pairs of the training tasks become extra train pairs
    mode: str = "full"  # full (all weights) | lora (merged into the base at the end)
    workers: int = 1  # Ray Train workers (data parallel)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int | None = None  # per worker; None: cpus_per_worker (at least 1)
    # Multi-node clusters: use s3:// (or a shared filesystem) for both; rank 0 writes the output.
    output: str | None = None  # merged model dir (local or s3://); None: <out_dir>/<name>/model
    storage: str | None = None  # checkpoints (local or s3://); None: <out_dir>/<name>/checkpoints
    s3_endpoint: str | None = None  # for s3:// output/storage; else AWS_ENDPOINT_URL
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    max_failures: int = 0  # Ray Train restarts the workers from the last checkpoint this many times
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    min_lr_ratio: float = 0.0  # the schedule decays to this fraction of ttft.optim.lr
    max_minutes: float | None = None  # wall-time budget: stop there (or at optim.steps); lr over wall time


def _check_pretrain(p: PretrainConfig) -> None:
    if p.mode not in ("full", "lora"):
        raise ConfigError(f"pretrain.mode: {p.mode!r} is not one of ['full', 'lora']")
    for key in ("workers", "checkpoint_every", "keep_checkpoints", "log_every"):
        if getattr(p, key) < 1:
            raise ConfigError(f"pretrain.{key}: must be >= 1, got {getattr(p, key)}")
    if p.cpus_per_worker <= 0:
        raise ConfigError(f"pretrain.cpus_per_worker: must be > 0, got {p.cpus_per_worker}")
    if p.torch_threads is not None and p.torch_threads < 1:
        raise ConfigError(f"pretrain.torch_threads: must be >= 1, got {p.torch_threads}")
    if p.max_failures < -1:
        raise ConfigError(f"pretrain.max_failures: must be >= -1 (-1: unlimited), got {p.max_failures}")
    if len(p.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in p.adam_betas):
        raise ConfigError(f"pretrain.adam_betas: need two values in [0, 1), got {p.adam_betas}")
    if not 0.0 <= p.min_lr_ratio <= 1.0:
        raise ConfigError(f"pretrain.min_lr_ratio: must be in [0, 1], got {p.min_lr_ratio}")
    if p.max_minutes is not None and not p.max_minutes > 0:
        raise ConfigError(f"pretrain.max_minutes: must be > 0, got {p.max_minutes}")
    if p.data.startswith("fresh:") and not FRESH_RE.match(p.data):
        raise ConfigError(
            f"pretrain.data: {p.data!r}: expected fresh:FAMILY:SPLIT:SEED with FAMILY in {list(FAMILIES)} "
            f"and SPLIT in {list(SPLITS)}, e.g. fresh:canary:train:0"
        )
    m = GENERATED_RE.match(p.data)
    if p.data.startswith("generated:") and not m:
        raise ConfigError(
            f"pretrain.data: {p.data!r}: expected generated:SPLIT:N:SEED[:MAX_SIDE], "
            "e.g. generated:train:200:0"
        )
    if m and m[4] and not MIN_SIDE <= int(m[4]) <= MAX_INPUT_SIDE:
        raise ConfigError(
            f"pretrain.data: {p.data!r}: MAX_SIDE must be in {MIN_SIDE}..{MAX_INPUT_SIDE}, got {m[4]}"
        )


def pretrain_config_from_dict(data: dict[str, Any]) -> tuple[RunConfig, PretrainConfig]:
    """Split a mapping into its RunConfig and its `pretrain:` section, both validated."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    section = data.pop("pretrain", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"pretrain: expected a mapping, got {type(section).__name__} {section!r}")
    pcfg = _build(PretrainConfig, section, "pretrain")
    _check_pretrain(pcfg)
    cfg = config_from_dict(data)
    if cfg.model.load_in_4bit:
        raise ConfigError("model.load_in_4bit: not supported by pretrain (the output is merged full weights)")
    a = cfg.ttft.augment
    if is_fresh(pcfg) and (a.d8 != ["identity"] or a.color or a.shuffle_order or a.per_split != 1):
        raise ConfigError(
            "ttft.augment: fresh task sources train on the tasks as drawn; set d8: [identity], color: false, "
            "shuffle_order: false, per_split: 1"
        )
    return cfg, pcfg


def load_pretrain_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[RunConfig, PretrainConfig]:
    """Load a pretraining YAML (`extends:` works as for run configs) and apply dotted overrides."""
    data = _read_yaml(Path(path)) if path is not None else {}
    try:
        return pretrain_config_from_dict(apply_overrides(data, overrides or {}))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def output_paths(cfg: RunConfig, pcfg: PretrainConfig) -> tuple[str, str]:
    """(model output, checkpoint storage): s3:// URIs as given, local paths made absolute."""

    def absolute(p: str) -> str:
        return p if p.startswith("s3://") else str(Path(p).expanduser().resolve())

    output = pcfg.output or str(cfg.run_dir / "model")
    storage = pcfg.storage or str(cfg.run_dir / "checkpoints")
    return absolute(output), absolute(storage)


# --------------------------------------------------------------------------------------------- data


def is_fresh(pcfg: PretrainConfig) -> bool:
    """Whether `pcfg.data` is a stream of fresh generated tasks (``fresh:FAMILY:SPLIT:SEED``)."""
    return FRESH_RE.match(pcfg.data) is not None


def load_pretrain_tasks(pcfg: PretrainConfig) -> tuple[list[Task], list[str]]:
    """The training tasks of `pcfg.data` and one-line reasons for the invalid ones (skipped).

    ``generated:SPLIT:N:SEED[:MAX_SIDE]`` draws N tasks from ``ttft.generate`` (input sides capped at
    MAX_SIDE, default 8); a ``fresh:`` stream has no fixed list (returns no task; ``FreshTasks`` draws
    them); anything else goes to ``load_tasks``.
    ``limit`` and ``max_side`` select as in ``load_tasks``. Raises ValueError when no task is left.
    """
    if is_fresh(pcfg):
        return [], []
    m = GENERATED_RE.match(pcfg.data)
    errors: list[str] = []
    if m:
        tasks = generate_tasks(m[1], int(m[2]), int(m[3]), int(m[4]) if m[4] else MAX_INPUT_SIDE)
        if pcfg.max_side is not None:
            tasks = [t for t in tasks if t.max_side() <= pcfg.max_side]
        if pcfg.limit is not None:
            tasks = tasks[: pcfg.limit]
    else:
        res = load_tasks(
            pcfg.data, solutions=pcfg.solutions, limit=pcfg.limit, max_side=pcfg.max_side, skip_invalid=True
        )
        tasks, errors = res.tasks, [str(e) for e in res.errors]
    if not tasks:
        raise ValueError(f"pretrain.data: no valid task in {pcfg.data!r}")
    return tasks, errors


def training_view(task: Task, use_test_outputs: bool) -> Task:
    """The task as pretraining sees it: known test pairs appended to the train pairs (if asked)."""
    if not use_test_outputs or not task.test_outputs:
        return task
    extra = tuple(Pair(i, o) for i, o in zip(task.test_inputs, task.test_outputs, strict=True))
    return Task(task.id, task.train + extra, task.test_inputs, task.test_outputs)


def epoch_samples(
    tasks: Sequence[Task], cfg: RunConfig, count_tokens: Callable[[str], int], epoch: int
) -> list[Sample]:
    """All samples of one epoch, shuffled; augmentations are drawn anew per epoch (optim.seed, epoch)."""
    seed = cfg.ttft.optim.seed * 1_000_003 + epoch
    out: list[Sample] = []
    for task in tasks:
        out += train_samples(task, cfg.ttft.samples, cfg.ttft.augment, count_tokens, seed)
    random.Random(f"pretrain:{cfg.ttft.optim.seed}:{epoch}").shuffle(out)
    return out


class SampleStream:
    """This rank's endless stream of samples: epoch after epoch, each epoch sharded by rank.

    Each epoch's list is cut to a multiple of `world_size` so that every shard has the same length and
    `(epoch, offset)` means the same position on every rank (see the module docstring).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        cfg: RunConfig,
        count_tokens: Callable[[str], int],
        *,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        offset: int = 0,
    ):
        self.tasks, self.cfg, self.count_tokens = list(tasks), cfg, count_tokens
        self.rank, self.world_size = rank, world_size
        self.epoch, self.offset = epoch, offset
        self._shard: list[Sample] | None = None
        self._all: tuple[int, list[Sample]] | None = None

    def samples(self, epoch: int) -> list[Sample]:
        """Every rank's samples of `epoch` (the latest epoch's list is kept)."""
        if self._all is None or self._all[0] != epoch:
            self._all = (epoch, epoch_samples(self.tasks, self.cfg, self.count_tokens, epoch))
        return self._all[1]

    def shard(self, epoch: int) -> list[Sample]:
        """This rank's samples of `epoch`."""
        samples = self.samples(epoch)
        n = len(samples) // self.world_size * self.world_size
        if n == 0:
            raise ValueError(
                f"pretrain: {len(samples)} training sample(s) for {self.world_size} workers; need at least "
                f"one per worker (tasks with one train pair give none; samples.max_seq_len="
                f"{self.cfg.ttft.samples.max_seq_len} may be too small)"
            )
        return samples[self.rank : n : self.world_size]

    def take(self, n: int) -> list[Sample]:
        """The next `n` samples, moving on to the next epoch when this one is used up."""
        out: list[Sample] = []
        while len(out) < n:
            if self._shard is None:
                self._shard = self.shard(self.epoch)
            if self.offset >= len(self._shard):
                self.epoch, self.offset, self._shard = self.epoch + 1, 0, None
                continue
            k = min(n - len(out), len(self._shard) - self.offset)
            out += self._shard[self.offset : self.offset + k]
            self.offset += k
        return out


def task_sequence(tokenizer: Any, task: Task, encoder: str) -> tuple[list[int], list[int]]:
    """Token ids and labels of a whole task as one prompt (demonstrations, then the test pair): the loss is on
    every output grid with its newline, and on the closing EOS; inputs and markers are masked (-100).

    The text is ``build_prompt(train, test input) + build_target(test output)``, the layout TTFT and
    inference use; it is tokenized in pieces at the output boundaries.
    """
    if not task.test_outputs:
        raise ValueError(f"task {task.id}: pretraining on whole tasks needs the test output")
    enc = get_encoder(encoder)
    pairs = [*task.train, Pair(task.test_inputs[0], task.test_outputs[0])]
    ids: list[int] = []
    labels: list[int] = []
    for p in pairs:
        shown = tokenizer(build_prompt([], p.input, encoder), add_special_tokens=False).input_ids
        out = tokenizer(build_target(p.output, enc), add_special_tokens=False).input_ids
        ids += shown + out
        labels += [-100] * len(shown) + out
    return ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]


class FreshTasks:
    """This rank's stream of fresh generated tasks (``fresh:FAMILY:SPLIT:SEED``): micro-batch ``m`` of step
    ``s`` on rank ``r`` holds tasks ``1 + ((s * grad_accum + m) * world_size + r) * batch + j``, j < batch."""

    def __init__(self, data: str, batch_size: int, grad_accum: int, rank: int = 0, world_size: int = 1):
        m = FRESH_RE.match(data)
        if m is None:
            raise ValueError(f"pretrain.data: {data!r} is not a fresh:FAMILY:SPLIT:SEED stream")
        self.family, self.split, self.seed = m[1], m[2], int(m[3])
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.rank, self.world_size = rank, world_size

    def batch(self, step: int, micro: int = 0) -> list[Task]:
        """The tasks of micro-batch `micro` of optimizer step `step` (0-based) on this rank."""
        first = 1 + ((step * self.grad_accum + micro) * self.world_size + self.rank) * self.batch_size
        return [
            generated_task(self.split, self.seed, i, self.family)[0]
            for i in range(first, first + self.batch_size)
        ]


def wall_clock_lambda(
    schedule: str, warmup: int, min_ratio: float, progress: Callable[[], float]
) -> Callable[[int], float]:
    """lr multiplier for LambdaLR: linear warmup over `warmup` steps, then `schedule` (cosine / linear /
    constant) over ``progress()`` in [0, 1] (the caller's mix of wall time and steps), 1 -> `min_ratio`."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        p = min(1.0, max(0.0, progress()))
        if schedule == "cosine":
            shape = 0.5 * (1 + math.cos(math.pi * p))
        elif schedule == "linear":
            shape = 1 - p
        else:
            shape = 1.0
        return min_ratio + (1 - min_ratio) * shape

    return f


def total_steps(cfg: RunConfig, samples_per_epoch: int, world_size: int) -> int:
    """Optimizer steps: optim.steps, or ceil(epochs x samples / global batch) when optim.epochs is set."""
    o = cfg.ttft.optim
    if o.epochs is None:
        return o.steps
    return max(1, math.ceil(o.epochs * samples_per_epoch / (o.batch_size * o.grad_accum * world_size)))


# -------------------------------------------------------------------------------------------- model


def build_model(cfg: RunConfig, pcfg: PretrainConfig, model_path: str, device: Any) -> tuple[Any, Any]:
    """Load the base model on `device` and make it trainable: every weight (full) or a seeded LoRA (lora)."""
    from ttft.model import load_base_model

    model, tokenizer = load_base_model(model_path, dtype=cfg.model.dtype, device=str(device))
    torch.manual_seed(cfg.ttft.optim.seed)
    if pcfg.mode == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, peft_lora_config(cfg.ttft.lora))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    return model, tokenizer


def fingerprint(cfg: RunConfig, pcfg: PretrainConfig) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (steps and lr may change, e.g. to train longer)."""
    return {
        "model": cfg.model.name,
        "revision": cfg.model.revision,
        "dtype": cfg.model.dtype,
        "mode": pcfg.mode,
        "lora": asdict(cfg.ttft.lora) if pcfg.mode == "lora" else None,
        "data": pcfg.data,
        "limit": pcfg.limit,
        "max_side": pcfg.max_side,
        "use_test_outputs": pcfg.use_test_outputs,
        "samples": asdict(cfg.ttft.samples),
        "augment": asdict(cfg.ttft.augment),
        "seed": cfg.ttft.optim.seed,
    }


@dataclass
class TrainState:
    """Progress saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    offset: int = 0
    tokens: int = 0
    history: list[list[float]] = field(default_factory=list)  # [step, mean loss since the previous report]
    seconds: float = 0.0  # training wall time so far (the wall-time schedule's clock), across resumes


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    state: TrainState,
    fp: dict[str, Any],
) -> Path:
    """Write the trainable weights, optimizer, scheduler and TrainState to `directory`/train_state.pt."""
    path = Path(directory) / STATE_FILE
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fp,
            "model": _trainable(model),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "state": asdict(state),
        },
        path,
    )
    return path


def load_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    fp: dict[str, Any],
    device: Any = "cpu",
) -> TrainState:
    """Restore what `save_checkpoint` wrote; refuses a checkpoint of another model / data / recipe.

    Loaded with `weights_only=True`: tensors, containers and numbers only, so a checkpoint from a writable
    bucket cannot run code here (a pickle with anything else is refused with a one-line ValueError).
    """
    path = Path(directory) / STATE_FILE
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = " ".join(str(e).split())[:300]
        raise ValueError(f"{path}: refused: not a plain tensors-and-numbers checkpoint ({reason})") from None
    except (RuntimeError, EOFError) as e:  # truncated or not a torch checkpoint at all
        raise ValueError(f"{path}: unreadable checkpoint: {' '.join(str(e).split())[:300]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        ckpt = ckpt if isinstance(ckpt, dict) else {}
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    diff = sorted(
        k for k in fp.keys() | ckpt["fingerprint"].keys() if fp.get(k) != ckpt["fingerprint"].get(k)
    )
    if diff:
        raise ValueError(
            f"{path}: checkpoint was written with another {', '.join(diff)}; use another run name or storage "
            f"(pretrain.storage / --name) or delete the old checkpoints to start over"
        )
    expected = _trainable(model).keys()
    if set(ckpt["model"]) != set(expected):
        missing = sorted(set(expected) - set(ckpt["model"]))[:3]
        raise ValueError(f"{path}: trainable weights do not match the model (e.g. missing {missing})")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in ckpt["model"].items():
            params[name].copy_(value)
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    return TrainState(**ckpt["state"])


def export_model(
    model: torch.nn.Module,
    tokenizer: Any,
    output: str,
    summary: dict[str, Any],
    s3_endpoint: str | None = None,
) -> str:
    """Save the trained model as a plain HF dir (LoRA merged into the base) + tokenizer + pretrain.json.

    `output` is a local dir (replaced as a whole: written beside it, then renamed into place) or an s3://
    prefix (its old objects removed, then uploaded). Returns `output`.
    """
    from ttft import objstore

    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    is_s3 = objstore.is_s3(output)
    parent = Path(tempfile.gettempdir()) if is_s3 else Path(output).parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pretrain-export-", dir=parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if is_s3:
            fs, path = objstore.filesystem_from_uri(output, endpoint=s3_endpoint)
            if objstore.list_files(fs, path):
                fs.delete_dir_contents(path)
            objstore.upload_dir(tmp, fs, path)
        else:
            old = None
            if Path(output).exists():
                old = Path(tempfile.mkdtemp(prefix=".pretrain-old-", dir=parent))
                os.replace(output, old / "model")
            os.replace(tmp, output)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


# ----------------------------------------------------------------------------------------- training


def _mean_across_ranks(values: Sequence[float], device: Any) -> list[float]:
    """The mean of each value over the ranks (one all-reduce): every rank gets the same numbers back."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) / dist.get_world_size() for v in t]


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


Report = Callable[[dict[str, Any], Path | None], None]


def train_worker(
    cfg: RunConfig,
    pcfg: PretrainConfig,
    tasks: Sequence[Task],
    model_path: str,
    output: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: Any = "cpu",
    resume_dir: str | Path | None = None,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    report: Report = lambda metrics, ckpt: None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The training loop of one data-parallel worker; returns the last metrics.

    Resumes from `resume_dir` (a checkpoint of `save_checkpoint`) when given. Every `log_every` steps, every
    `checkpoint_every` steps and at the last step, every rank calls `report(metrics, checkpoint_dir)` at the
    same steps; `checkpoint_dir` is a directory holding the checkpoint on rank 0 at checkpoint steps (valid
    only during the call) and None otherwise. Rank 0 logs progress through `log` and, at the end, exports
    the merged model to `output` (also when the run was already complete: the export is idempotent).
    """
    o = cfg.ttft.optim
    model, tokenizer = build_model(cfg, pcfg, model_path, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    fresh = FreshTasks(pcfg.data, o.batch_size, o.grad_accum, rank, world_size) if is_fresh(pcfg) else None
    stream = None
    if fresh is None:
        views = [training_view(t, pcfg.use_test_outputs) for t in tasks]
        stream = SampleStream(views, cfg, count_tokens, rank=rank, world_size=world_size)
    n_epoch = len(stream.samples(0)) if stream is not None else 0
    steps = total_steps(cfg, n_epoch, world_size) if stream is not None else o.steps
    budget_s = pcfg.max_minutes * 60 if pcfg.max_minutes is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    betas = (pcfg.adam_betas[0], pcfg.adam_betas[1])
    opt = torch.optim.AdamW(params, lr=o.lr, betas=betas, weight_decay=o.weight_decay)
    state = TrainState()
    if budget_s is None and pcfg.min_lr_ratio == 0:
        schedule = lr_lambda(o.schedule, o.warmup_steps, steps)
    else:  # progress: the larger of the time and step fractions (the step fraction after the warmup)

        def progress() -> float:
            by_steps = (state.step - o.warmup_steps) / max(1, steps - o.warmup_steps)
            return max(by_steps, state.seconds / budget_s if budget_s else 0.0)

        schedule = wall_clock_lambda(o.schedule, o.warmup_steps, pcfg.min_lr_ratio, progress)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    fp = fingerprint(cfg, pcfg)
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, model, opt, sched, fp, device)
    start_step = state.step
    main = rank == 0
    if main:
        where = f"resuming at step {start_step}" if resume_dir is not None else "starting at step 0"
        what = (
            f"fresh tasks {pcfg.data}"
            if fresh is not None
            else f"{len(tasks)} tasks, {n_epoch} samples/epoch"
        )
        limit = f" (or {pcfg.max_minutes:g} min)" if budget_s is not None else ""
        log(
            f"[pretrain] {what}, {steps} steps{limit} x {o.batch_size} x {o.grad_accum} x {world_size} "
            f"workers, mode {pcfg.mode}: {where}"
        )
    wrapped = wrap_model(model)
    if stream is not None:
        stream.epoch, stream.offset = state.epoch, state.offset
    t0 = time.monotonic()
    seconds0 = state.seconds
    window: list[float] = []
    metrics: dict[str, Any] = {"step": state.step, "total_steps": steps, "start_step": start_step}
    out_of_time = budget_s is not None and state.seconds >= budget_s
    while state.step < steps and not out_of_time:
        batches = []
        for micro in range(o.grad_accum):
            if fresh is not None:
                encoded = [
                    task_sequence(tokenizer, t, cfg.ttft.samples.encoder)
                    for t in fresh.batch(state.step, micro)
                ]
            else:
                encoded = [encode_sample(tokenizer, s) for s in stream.take(o.batch_size)]
            batch = collate(encoded, pad_id, device)
            state.tokens += int(batch["attention_mask"].sum())
            batches.append(batch)
        loss = train_step(wrapped, opt, sched, batches, o.max_grad_norm)
        # One all-reduce: the mean loss, and the mean clock, so that every rank stops at the same step.
        loss, seconds = _mean_across_ranks([loss, seconds0 + time.monotonic() - t0], device)
        window.append(loss)
        state.step += 1
        state.seconds = seconds
        out_of_time = budget_s is not None and seconds >= budget_s
        if stream is not None:
            state.epoch, state.offset = stream.epoch, stream.offset
        last = state.step == steps or out_of_time
        is_ckpt = state.step % pcfg.checkpoint_every == 0 or last
        if not (is_ckpt or state.step % pcfg.log_every == 0):
            continue
        mean_loss = sum(window) / len(window)
        window = []
        state.history.append([state.step, mean_loss])
        elapsed = time.monotonic() - t0
        rate = (state.step - start_step) / max(elapsed, 1e-9)
        metrics = {
            "step": state.step,
            "total_steps": steps,
            "start_step": start_step,
            "loss": mean_loss,
            "lr": sched.get_last_lr()[0],
            "epoch": state.epoch,
            "tokens": state.tokens * world_size,
            "steps_per_s": rate,
            "elapsed_s": elapsed,
            "train_seconds": state.seconds,
        }
        if main:
            left = (steps - state.step) / rate
            if budget_s is not None:
                left = min(left, budget_s - state.seconds)
            log(
                f"[pretrain] step {state.step}/{steps} loss {mean_loss:.4f} lr {metrics['lr']:.2e} "
                f"epoch {state.epoch} {rate:.2f} steps/s ETA {_fmt_seconds(left)}"
            )
        if is_ckpt and main:
            with tempfile.TemporaryDirectory(prefix="pretrain-ckpt-") as d:
                save_checkpoint(d, model, opt, sched, state, fp)
                report(metrics, Path(d))
        else:
            report(metrics, None)
    if main:
        summary = {
            "base_model": cfg.model.name,
            "mode": pcfg.mode,
            "data": pcfg.data,
            "tasks": len(tasks) if fresh is None else state.step * o.batch_size * o.grad_accum * world_size,
            "samples_per_epoch": n_epoch,
            "steps": state.step,
            "train_seconds": state.seconds,
            "start_step": start_step,
            "workers": world_size,
            "tokens": state.tokens * world_size,
            "history": state.history,
            "config": {"ttft": asdict(cfg.ttft), "pretrain": asdict(pcfg)},
        }
        export_model(model, tokenizer, output, summary, pcfg.s3_endpoint)
        log(f"[pretrain] model written to {output}")
    return metrics
