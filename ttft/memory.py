"""GPU memory of one fine-tune step, and how many fine-tune actors fit on a card.

`estimate_peak_bytes` is a model of the peak bytes of live tensors in one `ttft.finetune.train_step` for
a Qwen2/Llama-style decoder: weights, LoRA weights + gradients + AdamW state, the activations kept for
the backward pass (all layers', or with gradient checkpointing each layer's input plus one layer
recomputed) and the loss (target-only chunked cross-entropy, or full-vocabulary fp32 logits). Its
per-token coefficients were fitted to bench/memory.py's measurements (Qwen2.5-0.5B shape, bf16, LoRA
r=32; that benchmark prints model and measurement side by side).

`gpus_per_worker: auto` (see `gpus_per_worker_for`): k = `actors_per_card` fine-tunes per card, each
asking Ray for 1/k of a GPU; the card's size comes from the Ray accelerator type (`card_gib`) or
`torch.cuda.get_device_properties`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GIB = 2**30
CUDA_CONTEXT_GIB = 0.5  # CUDA context + cuBLAS workspace of one process, outside the caching allocator
ALLOCATOR_SLACK = 1.1  # the caching allocator reserves more than the live peak (fragmentation)
LORA_MODULES = 7  # q, k, v, o, gate, up, down

# Memory torch reports (total_memory) for the cards Ray names by accelerator type, in GiB. First match of
# a key within the type string wins, so longer names come before their prefixes. "A100" alone is the
# 40 GB part (the smaller, so a packing never overcommits an 80 GB one).
CARD_GIB: list[tuple[str, float]] = [
    ("GB300", 268.0),
    ("B300", 268.0),
    ("GB200", 178.0),
    ("B200", 178.0),
    ("H200", 139.8),
    ("H100", 79.1),
    ("H20", 95.0),
    ("A100-80G", 79.1),
    ("A100-40G", 39.4),
    ("A100", 39.4),
    ("L40S", 44.5),
    ("L40", 44.5),
    ("L4", 22.0),
    ("A10G", 22.0),
    ("A10", 22.0),
    ("RTX-PRO-6000", 94.5),
    ("A6000", 47.5),
    ("RTX 4090", 23.5),
    ("V100", 15.8),
    ("T4", 14.6),
    ("P100", 15.9),
    ("MI300X", 191.5),
    ("MI325X", 255.5),
    ("MI250X", 63.9),
]
# The card classes bench/memory.py projects for (nominal GB -> GiB torch reports, the smallest part).
CARD_CLASSES = {"24 GB": 22.0, "48 GB": 44.5, "80 GB": 79.1, "141 GB": 139.8}


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a decoder-only causal LM."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int
    tied: bool = True

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params(self) -> int:
        """Weights of the decoder (attention with q/k/v biases, gated MLP, norms) and the embeddings."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        layer = h * h + 2 * h * kv + h * h + 3 * h * i + h + 2 * kv + 2 * h
        embed = self.vocab * h * (1 if self.tied else 2)
        return self.layers * layer + embed + h

    def lora_params(self, rank: int) -> int:
        """LoRA weights of rank `rank` on the 7 projections of every layer."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)
        return self.layers * rank * per_layer


def shape_of(config: Any) -> Shape:
    """The Shape of a transformers config (or of a config dict)."""
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    c = c.get("text_config") or c
    heads = int(c["num_attention_heads"])
    return Shape(
        hidden=int(c["hidden_size"]),
        intermediate=int(c["intermediate_size"]),
        layers=int(c["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads") or heads),
        vocab=int(c["vocab_size"]),
        head_dim=int(c.get("head_dim") or c["hidden_size"] // heads),
        tied=bool(c.get("tie_word_embeddings", False)),
    )


def estimate_peak_bytes(
    shape: Shape,
    tokens: int,
    *,
    dtype_bytes: int = 2,
    lora_rank: int = 32,
    gradient_checkpointing: bool = True,
    full_logits: bool = False,
    load_in_4bit: bool = False,
    target_share: float = 1 / 8,
) -> dict[str, int]:
    """Peak live bytes of one training step on `tokens` tokens (batch x padded length), by part.

    The parts: weights (4-bit: ~0.56 bytes per linear weight), lora (fp32 weights, gradients, two AdamW
    moments), activations, loss (logits and cross-entropy) and total.
    """
    h, L, V = shape.hidden, shape.layers, shape.vocab
    d = dtype_bytes
    embed = V * h * (1 if shape.tied else 2)
    linear = shape.params - embed
    weights = int(embed * d + linear * (0.5625 if load_in_4bit else d))
    lora = 16 * shape.lora_params(lora_rank)
    layer = layer_activation_bytes(shape, d)
    misc = tokens * h * (d + 4)  # embeddings' output and its grad, final norm
    if full_logits:  # every position's logits, their fp32 copy, log-softmax and gradient
        loss = tokens * V * (d + 10)
    else:  # one chunk of the target-only cross-entropy at a time, the targets' hidden states
        targets = max(1, int(tokens * target_share))
        loss = min(targets, max(1, LOSS_CHUNK_ELEMENTS // V)) * V * (d + 10) + targets * h * (d + 4)
    if gradient_checkpointing:
        # every layer's input is kept; then either the loss or one layer's recompute + backward peaks
        kept = tokens * L * h * d + misc
        peak = max(loss, int(RECOMPUTE * tokens * layer))
        activations, loss = (kept + peak - loss, loss) if peak > loss else (kept, loss)
    else:  # at the start of the backward pass every layer's activations and the logits are live
        activations = tokens * L * layer + misc
    total = weights + lora + activations + loss
    return {
        "weights": weights,
        "lora": lora,
        "activations": int(activations),
        "loss": int(loss),
        "total": int(total),
    }


# Fitted to bench/memory.py's measurements (1 and 2 layers, 1k-8k tokens, intermediate 896 and 4864):
# saved activations of one layer per token = A_H x hidden + A_I x intermediate bytes, by dtype bytes
# (bf16 base + fp32 LoRA weights: norms compute in fp32, LoRA inputs are cast to fp32).
ACTIVATION_COEFFS = {2: (37.6, 10.0), 4: (26.2, 16.0)}
RECOMPUTE = 1.3  # one layer recomputed + its gradients, relative to its saved activations
LOSS_CHUNK_ELEMENTS = 1 << 24  # ttft.finetune's chunk of the target-only cross-entropy (logit elements)


def layer_activation_bytes(shape: Shape, dtype_bytes: int) -> float:
    """Bytes per token one decoder layer keeps for the backward pass (without checkpointing)."""
    a_h, a_i = ACTIVATION_COEFFS.get(dtype_bytes, ACTIVATION_COEFFS[2])
    return a_h * shape.hidden + a_i * shape.intermediate


def actors_per_card(peak_bytes: float, card_gib: float) -> int:
    """Fine-tunes of `peak_bytes` each that fit a card of `card_gib` (+ allocator slack, a CUDA context)."""
    per_actor = peak_bytes * ALLOCATOR_SLACK / GIB + CUDA_CONTEXT_GIB
    return max(0, math.floor(card_gib / per_actor))


def card_gib(accelerator: Any) -> float | None:
    """GiB of a card: a Ray accelerator type ("L40S", "A100-80G", "H200") or torch device properties."""
    total = getattr(accelerator, "total_memory", None)
    if total is not None:
        return total / GIB
    name = str(accelerator).upper()
    for key, gib in CARD_GIB:
        if key.upper() in name:
            return gib
    return None


def peak_bytes_for(model_cfg: Any, ttft_cfg: Any, shape: Shape) -> int:
    """The modelled peak of one fine-tune of `ttft_cfg` (batch x max_seq_len tokens) on `model_cfg`."""
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}.get(model_cfg.dtype, 4)
    tokens = ttft_cfg.optim.batch_size * ttft_cfg.samples.max_seq_len
    return estimate_peak_bytes(
        shape,
        tokens,
        dtype_bytes=dtype_bytes,
        lora_rank=ttft_cfg.lora.rank,
        gradient_checkpointing=model_cfg.gradient_checkpointing,
        load_in_4bit=model_cfg.load_in_4bit,
    )["total"]


def actors_per_gpu(model_cfg: Any, ttft_cfg: Any, card: float | str | Any, shape: Shape | None = None) -> int:
    """How many fine-tunes of this model and recipe fit one GPU (`card`: GiB, Ray type or torch properties).

    `shape` defaults to the model's config (`model_shape`). Raises ValueError for an unknown card type or
    when not even one fits.
    """
    gib = card if isinstance(card, int | float) else card_gib(card)
    if gib is None:
        raise ValueError(f"unknown accelerator type {card!r}: set orchestrate.gpus_per_worker to a number")
    shape = shape or model_shape(model_cfg)
    peak = peak_bytes_for(model_cfg, ttft_cfg, shape)
    k = actors_per_card(peak, gib)
    if k < 1:
        raise ValueError(
            f"one fine-tune needs ~{peak / GIB:.1f} GiB (model {model_cfg.name}, "
            f"max_seq_len {ttft_cfg.samples.max_seq_len}), more than a {gib:.0f} GiB card: enable "
            "model.gradient_checkpointing or lower ttft.samples.max_seq_len"
        )
    return k


def gpus_per_worker_for(
    model_cfg: Any, ttft_cfg: Any, card: float | str | Any, shape: Shape | None = None
) -> float:
    """`orchestrate.gpus_per_worker: auto`: 1/k of a GPU, k = `actors_per_gpu` (Ray's 4-digit precision)."""
    k = actors_per_gpu(model_cfg, ttft_cfg, card, shape)
    return math.floor(10_000 / k) / 10_000


def model_shape(model_cfg: Any) -> Shape:
    """The Shape of `model_cfg`'s base model from its config.json (the tiny model is built if missing)."""
    from transformers import AutoConfig

    from ttft.model import base_model_path

    path = base_model_path(model_cfg)
    name, _, revision = path.partition("@")
    return shape_of(AutoConfig.from_pretrained(name, revision=revision or None))
