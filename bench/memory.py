"""`make bench-memory`: peak memory of one fine-tune step, before and after the memory-lean step (CPU only).

The Qwen2.5-0.5B architecture built from its config with random weights (vocab 151,936, hidden 896,
24 layers, 14 heads, 2 KV heads, intermediate 4864, tied embeddings; nothing is downloaded), the GPU
recipe's LoRA (jobs/configs/qwen0.5b_arc1_bf16.yaml: r=32 on the 7 projections, rsLoRA), one real
`ttft.finetune.train_step` through `Finetuner` (the model is saved and loaded as the fine-tuner loads
any base), batch 1, the last 1/8 of the tokens as the target (a 30x30 output grid is ~930 tokens).

How: a TorchDispatchMode sees every tensor an op creates and follows its storage (weakref finalizer)
until it is freed; peak = the model's weights and optimizer state before the step + the peak of the live
bytes created during it (activations, logits, gradients, temporaries). Kernel-internal scratch buffers
are not tensors and are not counted. Memory per token is a property of the graph, so the CPU number is
what a GPU's caching allocator must at least hold (its reserve adds fragmentation on top).

- after  = the lean step: `model.gradient_checkpointing` on, loss on the target positions only (chunked
  fp32 cross-entropy);
- before = the old step: no checkpointing, HF's loss over full-vocabulary fp32 logits at every position
  (`Finetuner(full_logits=True)`).

To fit a shared 2-core, 24 GiB machine, every point is measured with 1 and 2 decoder layers (same width
and vocabulary) and extrapolated to 24 layers (memory is linear in depth: P(24) = P(1) + 23 (P(2) -
P(1))); one 24-layer after-step checks the extrapolation. "before" at 8192 tokens would need ~25-30 GiB:
it is measured at 1024 and 2048 tokens and extrapolated linearly in tokens (said in the output).
Writes bench/results/memory.json (`peak_gib` per length, after) and its table into summary.md.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench import RESULTS, ROOT, machine, quiet_hf, write_json
from ttft.memory import CARD_CLASSES, actors_per_card, estimate_peak_bytes, shape_of

GIB = 2**30
SEQ_LENS = (2048, 4096, 8192)
BEFORE_SEQ_LENS = (1024, 2048)  # the old step at 8k would need ~25-30 GiB of this shared machine
PROBE_LAYERS = (1, 2)
GOAL_GIB = 5.0  # peak per actor at 8192 tokens: four fit a 24 GB card with the CUDA contexts
TARGET_SHARE = 8  # the last 1/8 of the tokens are the target
GPU_CONFIG = ROOT / "jobs" / "configs" / "qwen0.5b_arc1_bf16.yaml"
OUT = RESULTS / "memory.json"
SUMMARY_MD = RESULTS / "summary.md"
MD_BEGIN, MD_END = "<!-- bench-memory -->", "<!-- /bench-memory -->"
METHOD = (
    "live tensor bytes: a TorchDispatchMode follows every storage an op creates until it is freed "
    "(weakref finalizers), plus the weights and optimizer state held before the step"
)


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages created under this mode that are still alive, and their peak.

    Outputs that alias an input (views, in-place ops) add nothing; a storage counts once until freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage()._cdata
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.live or key in inputs:
                continue
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages under `tensors` (tied weights count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s._cdata] = s.nbytes()
    return sum(seen.values())


def cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so a bf16 step is the GPU's graph."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def mem_available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def qwen_config(layers: int, dtype: str, shape: dict[str, Any] | None = None):
    """A Qwen2 config of `shape` (default Qwen2.5-0.5B's, bench.gpu.QWEN05) with `layers` decoder layers."""
    from transformers import Qwen2Config

    from bench.gpu import QWEN05

    return Qwen2Config(**{**(shape or QWEN05), "num_hidden_layers": layers}, dtype=dtype)


def build_model_dir(root: Path, layers: int, dtype: str, shape: dict[str, Any] | None = None) -> Path:
    """Save a random Qwen2 model of `shape` with `layers` layers (and the tiny tokenizer) under root."""
    from transformers import Qwen2ForCausalLM

    from ttft.model import build_tiny_tokenizer

    out = root / f"qwen-{layers}l"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(qwen_config(layers, dtype, shape)).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(out)  # the fine-tuner loads one; the step feeds token ids
    del model
    gc.collect()
    return out


@dataclass
class Variant:
    name: str
    gradient_checkpointing: bool
    full_logits: bool


AFTER = Variant("after", gradient_checkpointing=True, full_logits=False)
BEFORE = Variant("before", gradient_checkpointing=False, full_logits=True)


def batch_of(seq_len: int, vocab: int, pad_id: int) -> dict[str, torch.Tensor]:
    from ttft.finetune import collate

    gen = torch.Generator().manual_seed(seq_len)
    ids = torch.randint(0, vocab, (seq_len,), generator=gen).tolist()
    n_target = max(1, seq_len // TARGET_SHARE)
    labels = [-100] * (seq_len - n_target) + ids[-n_target:]
    return collate([(ids, labels)], pad_id)


def measure(model_dir: Path, dtype: str, variant: Variant, seq_lens: list[int]) -> list[dict[str, Any]]:
    """One tracked train_step per length through a Finetuner of `variant` (after one untracked warm step)."""
    from ttft.config import load_config
    from ttft.finetune import Finetuner, train_step

    cfg = load_config(
        GPU_CONFIG,
        {
            "model.name": str(model_dir),
            "model.dtype": dtype,
            "model.gradient_checkpointing": variant.gradient_checkpointing,
        },
    )
    threads = torch.get_num_threads()
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=threads, full_logits=variant.full_logits)
    vocab = ft.model.config.vocab_size
    layers = ft.model.config.num_hidden_layers
    model = ft.attach_lora()
    rows = []
    try:
        opt, sched = ft.optimizer(model, 1 + len(seq_lens))
        model.train()
        # a short untracked step first: AdamW's state exists from then on, as in every later step
        train_step(model, opt, sched, [batch_of(64, vocab, ft.pad_id)], 1.0, full_logits=variant.full_logits)
        for seq_len in seq_lens:
            batch = batch_of(seq_len, vocab, ft.pad_id)
            gc.collect()
            weights = storage_bytes([p for n, p in model.named_parameters() if "lora_" not in n])
            weights += storage_bytes(model.buffers())
            lora = storage_bytes([p for n, p in model.named_parameters() if "lora_" in n])
            opt_state = storage_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
            t0 = time.perf_counter()
            with LiveTensorBytes() as live:
                loss = train_step(model, opt, sched, [batch], 1.0, full_logits=variant.full_logits)
            seconds = time.perf_counter() - t0
            held = weights + lora + opt_state
            rows.append(
                {
                    "variant": variant.name,
                    "layers": layers,
                    "seq_len": seq_len,
                    "targets": int((batch["labels"] != -100).sum()),
                    "weights_bytes": weights,
                    "lora_and_optimizer_bytes": lora + opt_state,
                    "step_peak_bytes": live.peak,
                    "peak_bytes": held + live.peak,
                    "loss": round(loss, 4),
                    "seconds": round(seconds, 2),
                }
            )
            print(
                f"  {variant.name:>6} {layers:>2} layers {seq_len:>5} tokens: peak "
                f"{rows[-1]['peak_bytes'] / GIB:6.2f} GiB (step {live.peak / GIB:5.2f}), {seconds:5.1f} s",
                flush=True,
            )
            del batch, live
    finally:
        ft.model = model.unload()
        del model, ft
        gc.collect()
    return rows


def extrapolate(rows: list[dict[str, Any]], variant: str, layers: int) -> dict[int, dict[str, float]]:
    """Peak of a `layers`-deep model per length from the 1- and 2-layer measurements (linear in depth)."""
    by = {(r["layers"], r["seq_len"]): r for r in rows if r["variant"] == variant}
    out = {}
    for seq_len in sorted({s for _, s in by}):
        one, two = by.get((1, seq_len)), by.get((2, seq_len))
        if not one or not two:
            continue
        per_layer = two["peak_bytes"] - one["peak_bytes"]
        out[seq_len] = {
            "peak_bytes": one["peak_bytes"] + (layers - 1) * per_layer,
            "per_layer_bytes": per_layer,
            "per_token_per_layer_bytes": per_layer / seq_len,
        }
    return out


def linear_in_tokens(points: dict[int, float], seq_len: int) -> float:
    """Value at `seq_len` on the line through the two largest measured lengths."""
    (t1, p1), (t2, p2) = sorted(points.items())[-2:]
    return p2 + (p2 - p1) / (t2 - t1) * (seq_len - t2)


def run(
    seq_lens: list[int],
    before_lens: list[int],
    full_depth_check: bool,
    dtype: str | None,
    out: Path | None,
    shape: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure, extrapolate, project, print; write `out` and its table into summary.md beside it.

    `shape`: another Qwen2 shape (tests use a tiny one); its num_hidden_layers is the depth projected to.
    """
    quiet_hf()
    t_start = time.perf_counter()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    native = cpu_bf16()
    dtype = dtype or ("bfloat16" if native else "float32")
    if dtype == "bfloat16":
        note = "bf16" + (" (this CPU has AVX512-BF16/AMX)" if native else " (emulated: this CPU has no bf16)")
    else:
        note = "fp32" + ("" if native else " (this CPU has no native bf16: fp32's numbers, ~2x bf16's)")
    full = qwen_config((shape or {}).get("num_hidden_layers", 24), dtype, shape)
    layers = full.num_hidden_layers
    print(
        f"bench.memory: {'Qwen2.5-0.5B' if shape is None else 'Qwen2'} shape ({layers} layers, hidden "
        f"{full.hidden_size}, vocab {full.vocab_size}), random weights, LoRA "
        f"r=32, {note}, {torch.get_num_threads()} threads\n  method: {METHOD}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for n_layers in PROBE_LAYERS:
            model_dir = build_model_dir(Path(tmp), n_layers, dtype, shape)
            rows += measure(model_dir, dtype, AFTER, seq_lens)
            probe = shape_of(qwen_config(n_layers, dtype, shape))
            kw = {"dtype_bytes": _bytes(dtype), "gradient_checkpointing": False, "full_logits": True}
            need = 1.5 * estimate_peak_bytes(probe, max(before_lens), **kw)["total"] / GIB  # + RSS slack
            if need > mem_available_gib() - 2:
                free = mem_available_gib()
                skipped.append(f"before at {n_layers} layers: needs ~{need:.0f} GiB, {free:.0f} free")
            else:
                rows += measure(model_dir, dtype, BEFORE, before_lens)
        if full_depth_check:
            model_dir = build_model_dir(Path(tmp), layers, dtype, shape)
            rows += measure(model_dir, dtype, AFTER, [min(seq_lens)])
    after = extrapolate(rows, "after", layers)
    before = extrapolate(rows, "before", layers)
    lengths = sorted(set(seq_lens) | set(before))
    table = []
    arch = shape_of(full)
    for seq_len in lengths:
        a = after.get(seq_len, {}).get("peak_bytes")
        if seq_len in before:
            b, how = before[seq_len]["peak_bytes"], "measured"
        elif len(before) >= 2:
            b = linear_in_tokens({s: v["peak_bytes"] for s, v in before.items()}, seq_len)
            how = f"extrapolated linearly from {', '.join(map(str, sorted(before)))} tokens"
        else:
            b, how = None, "not measured"
        d = _bytes(dtype)
        model_after = estimate_peak_bytes(arch, seq_len, dtype_bytes=d, lora_rank=32)
        model_before = estimate_peak_bytes(
            arch, seq_len, dtype_bytes=d, lora_rank=32, gradient_checkpointing=False, full_logits=True
        )
        table.append(
            {
                "seq_len": seq_len,
                "before_gib": _gib(b),
                "before": how,
                "after_gib": _gib(a),
                "reduction": round(b / a, 2) if a and b else None,
                "model_before_gib": _gib(model_before["total"]),
                "model_after_gib": _gib(model_after["total"]),
            }
        )
    check = None
    deep = [r for r in rows if r["variant"] == "after" and r["layers"] == layers]
    if deep and deep[0]["seq_len"] in after:
        measured, extrap = deep[0]["peak_bytes"], after[deep[0]["seq_len"]]["peak_bytes"]
        check = {
            "seq_len": deep[0]["seq_len"],
            "measured_full_depth_gib": _gib(measured),
            "extrapolated_gib": _gib(extrap),
            "error": round(extrap / measured - 1, 4),
        }
    cards = {}
    for label, card_gib in CARD_CLASSES.items():
        cards[label] = {
            "card_gib": card_gib,
            "actors_before": {str(r["seq_len"]): _actors(r["before_gib"], card_gib) for r in table},
            "actors_after": {str(r["seq_len"]): _actors(r["after_gib"], card_gib) for r in table},
        }
    peak = {str(r["seq_len"]): r["after_gib"] for r in table if r["after_gib"] is not None}
    result = {
        "benchmark": "memory",
        "machine": machine(),
        "model": f"{'Qwen2.5-0.5B' if shape is None else 'Qwen2'} shape, random weights",
        "dtype": dtype,
        "dtype_note": note,
        "lora": "r=32, alpha 64, rsLoRA, q/k/v/o/gate/up/down (jobs/configs/qwen0.5b_arc1_bf16.yaml)",
        "batch": f"1 sequence, the last 1/{TARGET_SHARE} of the tokens as the target",
        "method": METHOD,
        "depth": f"measured at {PROBE_LAYERS} layers, extrapolated to {layers} (linear in depth)",
        "peak_gib": peak,
        "goal": {"seq_len": 8192, "peak_gib_at_most": GOAL_GIB, "met": (peak.get("8192") or 1e9) <= GOAL_GIB},
        "table": table,
        "full_depth_check": check,
        "cards": cards,
        "per_token_per_layer_bytes": {
            v: {str(s): round(x["per_token_per_layer_bytes"]) for s, x in d.items()}
            for v, d in (("after", after), ("before", before))
        },
        "measurements": rows,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(text(result))
    if out is not None:
        write_json(out, result)
        write_summary(markdown(result), out.parent / SUMMARY_MD.name)
    return result


def _bytes(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def _gib(b: float | None) -> float | None:
    return None if b is None else round(b / GIB, 3)


def _actors(peak_gib: float | None, card_gib: float) -> int | None:
    return None if peak_gib is None else actors_per_card(peak_gib * GIB, card_gib)


def text(result: dict[str, Any]) -> str:
    lines = [
        f"\nPeak per fine-tune actor ({result['dtype_note']}; {result['depth']}):",
        f"{'tokens':>7} {'before GiB':>11} {'after GiB':>10} {'x less':>7} {'model before':>13} "
        f"{'model after':>12}  before",
    ]
    for r in result["table"]:
        lines.append(
            f"{r['seq_len']:>7} {_fmt(r['before_gib']):>11} {_fmt(r['after_gib']):>10} "
            f"{_fmt(r['reduction']):>7} {_fmt(r['model_before_gib']):>13} {_fmt(r['model_after_gib']):>12}  "
            f"{r['before']}"
        )
    c = result["full_depth_check"]
    if c:
        lines.append(
            f"full-depth check at {c['seq_len']} tokens: measured {c['measured_full_depth_gib']} GiB, "
            f"extrapolated {c['extrapolated_gib']} GiB ({c['error']:+.1%})"
        )
    lens = [str(r["seq_len"]) for r in result["table"]]
    lines.append(f"\nActors per card (before -> after) at {', '.join(lens)} tokens:")
    for label, card in result["cards"].items():
        pairs = [f"{_n(card['actors_before'][s])} -> {_n(card['actors_after'][s])}" for s in lens]
        lines.append(f"  {label:>7} ({card['card_gib']} GiB usable): " + ", ".join(pairs))
    g = result["goal"]
    lines.append(
        f"Goal: peak at 8192 tokens <= {g['peak_gib_at_most']} GiB: {result['peak_gib'].get('8192')} GiB, "
        f"{'met' if g['met'] else 'NOT met'} ({result['seconds']} s)"
    )
    lines += [f"  skipped: {s}" for s in result["skipped"]]
    return "\n".join(lines)


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(result: dict[str, Any]) -> str:
    lens = [str(r["seq_len"]) for r in result["table"]]
    lines = [
        "## Memory per fine-tune actor (`make bench-memory`)",
        "",
        f"{result['model']}, LoRA {result['lora']}, {result['dtype_note']}; {result['batch']}. "
        f"{result['method']}; {result['depth']}. before = no gradient checkpointing, full-vocabulary fp32 "
        "logits at every position; after = gradient checkpointing + target-only chunked cross-entropy.",
        "",
        "| tokens | before GiB | after GiB | x less | model after GiB | before |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["table"]:
        lines.append(
            f"| {r['seq_len']} | {_fmt(r['before_gib'])} | {_fmt(r['after_gib'])} | {_fmt(r['reduction'])} | "
            f"{_fmt(r['model_after_gib'])} | {r['before']} |"
        )
    lines += ["", f"Actors per card, before -> after, at {', '.join(lens)} tokens:", ""]
    lines += ["| card | usable GiB | " + " | ".join(lens) + " |", "| --- | --- |" + " --- |" * len(lens)]
    for label, card in result["cards"].items():
        cells = [f"{_n(card['actors_before'][s])} -> {_n(card['actors_after'][s])}" for s in lens]
        lines.append(f"| {label} | {card['card_gib']} | " + " | ".join(cells) + " |")
    g = result["goal"]
    lines.append(
        f"\nGoal: peak at 8192 tokens <= {g['peak_gib_at_most']} GiB: {result['peak_gib'].get('8192')} GiB, "
        f"{'met' if g['met'] else 'NOT met'}."
    )
    return "\n".join(lines)


def write_summary(section: str, path: Path) -> None:
    """Put `section` into summary.md between the bench-memory markers (replacing an older one)."""
    old = path.read_text() if path.exists() else "# ttft benchmarks\n"
    block = f"{MD_BEGIN}\n{section}\n{MD_END}"
    if MD_BEGIN in old and MD_END in old:
        new = old[: old.index(MD_BEGIN)] + block + old[old.index(MD_END) + len(MD_END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-lens", default=",".join(map(str, SEQ_LENS)))
    p.add_argument("--before-seq-lens", default=",".join(map(str, BEFORE_SEQ_LENS)))
    p.add_argument("--no-full-depth-check", action="store_true", help="skip the 24-layer after-step")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default: bf16 if native")
    p.add_argument("--out", default=str(OUT), help="result JSON ('' = do not write)")
    a = p.parse_args(argv)
    run(
        [int(x) for x in a.seq_lens.split(",")],
        [int(x) for x in a.before_seq_lens.split(",")],
        not a.no_full_depth_check,
        a.dtype,
        Path(a.out) if a.out else None,
    )
    return 0  # a missed goal is a finding (printed, in the JSON), not a crash


if __name__ == "__main__":
    sys.exit(main())
