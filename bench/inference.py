"""Inference: every smoke task x 8 D8 augmentations, one adapter per task, three ways, side by side.

(a) peft:   HF PEFT, task by task: load the task's adapter onto the base (PeftModel), greedy `generate`
            each prompt on its own, unload;
(b) vllm:   one `VllmEngine.generate` call per adapter (that task's requests only);
(c) ttft:   ttft's multi-LoRA pass, `ttft.inference.generate`: all prompts in one engine call, each with
            its adapter and max_tokens.

All three get the same prompts (`ttft.inference.build_prompts`) and the same per-prompt max_tokens, greedy.
The tiny adapters are trained first with a `Finetuner` (a few steps). (b) and (c) share one engine, built
as `ttft.orchestrate` builds it; its start and a warm-up that loads every adapter once are measured but not
timed, and vLLM's prefix cache is reset before each timed pass, so neither reuses the other's work.
The random tiny model often stops early, so the work is what was generated: output tokens/s count the
tokens actually produced (EOS included), and the table shows them per alternative.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import RESULTS, ROOT, CpuMonitor, machine, quiet_hf, ratio, verdict, write_json

SMOKE = ROOT / "jobs" / "configs" / "smoke.yaml"
TARGET_VS_PEFT, TARGET_VS_PER_ADAPTER = 5.0, 2.0


def train_adapters(cfg, tasks, work: Path, threads: int):
    """One tiny adapter per task (a few steps); returns ({task_id: Adapter}, seconds)."""
    from ttft.finetune import Finetuner, make_jobs
    from ttft.inference import Adapter
    from ttft.model import base_model_path, model_identity

    t0 = time.perf_counter()
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=threads)
    adapters = {}
    for job in make_jobs(tasks, model_identity(base_model_path(cfg.model)), cfg.model, cfg.ttft):
        path = work / "adapters" / job.key
        ft.train(job, path)
        adapters[job.task_ids[0]] = Adapter(job.key, str(path))
    return adapters, time.perf_counter() - t0


def run_peft(model_dir: str, prompts, threads: int) -> dict[str, Any]:
    """(a) HF PEFT: per task, load its adapter onto the base, greedy-generate each prompt, unload."""
    import torch
    from peft import PeftModel

    from ttft.model import load_base_model

    torch.set_num_threads(threads)
    base, tok = load_base_model(model_dir, dtype="float32")
    base.eval()
    eos = tok.eos_token_id
    by_task: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_task.setdefault(p.task_id, []).append(i)
    texts: list[str] = [""] * len(prompts)
    tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx in by_task.values():
            adapter = prompts[idx[0]].adapter
            model = PeftModel.from_pretrained(base, adapter.path) if adapter else base
            model.eval()
            for i in idx:
                ids = tok(prompts[i].text, add_special_tokens=False, return_tensors="pt").input_ids
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=prompts[i].max_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=tok.pad_token_id,
                )
                gen = out[0, ids.shape[1] :].tolist()
                if eos in gen:
                    gen = gen[: gen.index(eos) + 1]
                tokens += len(gen)
                texts[i] = tok.decode([t for t in gen if t != eos], skip_special_tokens=True)
            if adapter:
                base = model.unload()
    return {"seconds": time.perf_counter() - t0, "output_tokens": tokens, "texts": texts}


def run_per_adapter(engine, prompts) -> dict[str, Any]:
    """(b) one VllmEngine.generate call per adapter, with that task's requests only."""
    from ttft.vllm_engine import GenRequest

    by_task: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_task.setdefault(p.task_id, []).append(i)
    texts: list[str] = [""] * len(prompts)
    tokens = 0
    t0 = time.perf_counter()
    for idx in by_task.values():
        reqs = [GenRequest(prompts[i].text, prompts[i].adapter.path, prompts[i].adapter.key) for i in idx]
        max_tokens = {prompts[i].max_tokens for i in idx}
        assert len(max_tokens) == 1, "one task's prompts share max_tokens"
        outs = engine.generate(reqs, max_tokens=max_tokens.pop())
        for i, out in zip(idx, outs):
            texts[i] = out[0].text
            tokens += out[0].n_tokens
    return {
        "seconds": time.perf_counter() - t0,
        "output_tokens": tokens,
        "texts": texts,
        "calls": len(by_task),
    }


def run_ttft(engine, prompts, inf_cfg) -> dict[str, Any]:
    """(c) ttft's multi-LoRA pass: ttft.inference.generate over every prompt."""
    from ttft.inference import generate

    t0 = time.perf_counter()
    results = generate(engine, prompts, inf_cfg)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "output_tokens": sum(r[0].n_tokens for r in results),
        "texts": [r[0].text for r in results],
        "calls": 1,
    }


def _reset_cache(engine) -> None:
    reset = getattr(engine._llm, "reset_prefix_cache", None)
    if reset is not None:
        reset()


def run(
    adapter_steps: int = 8,
    out: Path | None = RESULTS / "inference.json",
    limit: int | None = None,
    alternatives: str = "peft,vllm,ttft",
    max_loras: int | None = None,
) -> dict[str, Any]:
    """Train the adapters, run the selected alternatives, print ratios, write the JSON result."""
    quiet_hf()
    from transformers import AutoTokenizer

    from ttft.config import load_config, vllm_max_lora_rank
    from ttft.inference import build_prompts
    from ttft.model import base_model_path
    from ttft.tasks import load_tasks
    from ttft.vllm_engine import VllmEngine

    info, monitor = machine(), CpuMonitor()
    threads = os.cpu_count() or 1
    alts = {a.strip() for a in alternatives.split(",") if a.strip()}
    overrides: dict[str, Any] = {"ttft.optim.steps": adapter_steps}
    if max_loras is not None:
        overrides["inference.max_loras"] = max_loras
    cfg = load_config(SMOKE, overrides)
    tasks = load_tasks(cfg.data.source, max_side=cfg.data.max_side, limit=limit).tasks
    model_dir = base_model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    result: dict[str, Any] = {
        "benchmark": "inference",
        "machine": info,
        "tasks": len(tasks),
        "source": f"{cfg.data.source} max_side={cfg.data.max_side}",
        "augmentations": len(cfg.inference.d8),
        "adapter_steps": adapter_steps,
        "torch_threads": threads,
        "alternatives": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-inf-") as tmp:
        adapters, train_s = train_adapters(cfg, tasks, Path(tmp), threads)
        result["adapter_training_s"] = round(train_s, 3)
        prompts, skipped = build_prompts(
            tasks,
            adapters,
            cfg.inference,
            cfg.ttft.samples.encoder,
            lambda s: len(tok(s, add_special_tokens=False).input_ids),
        )
        result["prompts"] = len(prompts)
        result["skipped"] = skipped
        result["max_tokens_values"] = sorted({p.max_tokens for p in prompts})
        result["max_tokens_sum"] = sum(p.max_tokens for p in prompts)
        print(
            f"inference: {len(tasks)} tasks, {len(prompts)} prompts, adapters trained in {train_s:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        runs: dict[str, dict[str, Any]] = {}
        if "peft" in alts:
            runs["peft"] = run_peft(model_dir, prompts, threads)
            print(f"  (a) peft done in {runs['peft']['seconds']:.1f}s", file=sys.stderr, flush=True)
        if alts & {"vllm", "ttft"}:
            inf = cfg.inference
            n_adapters = len({a.key for a in adapters.values()})
            t0 = time.perf_counter()
            engine = VllmEngine(  # as ttft.orchestrate._predict_local builds it
                model_dir,
                enable_lora=True,
                max_lora_rank=vllm_max_lora_rank(cfg.ttft.lora.rank),
                max_loras=max(1, min(inf.max_loras, n_adapters)),
                max_cpu_loras=inf.max_cpu_loras or n_adapters,
                max_model_len=inf.max_model_len,
                gpu_memory_utilization=inf.gpu_memory_utilization,
                seed=inf.seed,
            )
            result["engine_start_s"] = round(time.perf_counter() - t0, 3)
            result["engine"] = {
                k: v for k, v in engine.engine_kwargs.items() if k not in ("model", "tokenizer")
            }
            try:
                from ttft.vllm_engine import GenRequest

                t0 = time.perf_counter()  # warm-up: every adapter loaded once, compiled paths hit once
                engine.generate(
                    [GenRequest(prompts[0].text, a.path, a.key) for a in adapters.values()], max_tokens=1
                )
                result["engine_warmup_s"] = round(time.perf_counter() - t0, 3)
                for name, fn in (
                    ("ttft", lambda: run_ttft(engine, prompts, cfg.inference)),
                    ("vllm", lambda: run_per_adapter(engine, prompts)),
                ):
                    if name in alts:
                        _reset_cache(engine)
                        runs[name] = fn()
                        print(f"  {name} done in {runs[name]['seconds']:.1f}s", file=sys.stderr, flush=True)
            finally:
                engine.close()
    labels = {
        "peft": "(a) HF PEFT generate, task by task, one prompt at a time",
        "vllm": "(b) vLLM, one generate call per adapter",
        "ttft": "(c) ttft multi-LoRA pass (ttft.inference.generate)",
    }
    ref = runs.get("ttft", {}).get("texts")
    for name, r in runs.items():
        result["alternatives"][name] = {
            "what": labels[name],
            "seconds": round(r["seconds"], 3),
            "output_tokens": r["output_tokens"],
            "tokens_per_s": round(r["output_tokens"] / r["seconds"], 1) if r["seconds"] else None,
            "prompts_per_s": round(len(prompts) / r["seconds"], 2) if r["seconds"] else None,
            "generate_calls": r.get("calls", len(prompts)),
            "same_text_as_ttft": (
                round(sum(a == b for a, b in zip(r["texts"], ref)) / len(ref), 3) if ref else None
            ),
        }
    tps = {k: v["tokens_per_s"] for k, v in result["alternatives"].items()}
    secs = {k: v["seconds"] for k, v in result["alternatives"].items()}
    # headline ratios are of throughput (output tokens/s): fair even where the token counts differ a little
    result["multilora_vs_peft"] = ratio(tps.get("ttft"), tps.get("peft"))
    result["multilora_vs_per_adapter"] = ratio(tps.get("ttft"), tps.get("vllm"))
    result["wall_ratios"] = {
        "peft_over_ttft": ratio(secs.get("peft"), secs.get("ttft")),
        "vllm_over_ttft": ratio(secs.get("vllm"), secs.get("ttft")),
    }
    result["targets"] = {
        "multilora_vs_peft": {
            "target": TARGET_VS_PEFT,
            "value": result["multilora_vs_peft"],
            "verdict": verdict(result["multilora_vs_peft"], TARGET_VS_PEFT),
        },
        "multilora_vs_per_adapter": {
            "target": TARGET_VS_PER_ADAPTER,
            "value": result["multilora_vs_per_adapter"],
            "verdict": verdict(result["multilora_vs_per_adapter"], TARGET_VS_PER_ADAPTER),
        },
    }
    result.update(monitor.load_fields(info["loadavg"]))
    print(text(result))
    if out is not None:
        write_json(out, result)
    return result


def text(result: dict[str, Any]) -> str:
    """A readable table of one inference result."""
    lines = [
        f"inference: {result['tasks']} tasks x {result['augmentations']} augmentations = {result['prompts']} "
        f"prompts (max_tokens {result['max_tokens_values']}), "
        f"vLLM engine start {result.get('engine_start_s')}s "
        f"(not timed)"
    ]
    for v in result["alternatives"].values():
        lines.append(
            f"  {v['what'][:60]:<60} {v['seconds']:7.1f}s {v['output_tokens']:7d} tok "
            f"{v['tokens_per_s']:8.1f} tok/s  ({v['generate_calls']} generate calls)"
        )
    for key, t in result["targets"].items():
        lines.append(f"  {key}: {t['value']}x (target >= {t['target']}x: {t['verdict']})")
    if result.get("load_warning"):
        lines.append(f"  WARNING: {result['load_warning']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter-steps", type=int, default=8)
    p.add_argument("--max-loras", type=int, help="vLLM LoRA slots per batch (default: the smoke config's)")
    p.add_argument("--limit", type=int, default=None, help="only the first N smoke tasks")
    p.add_argument("--alternatives", default="peft,vllm,ttft")
    p.add_argument("--out", default=str(RESULTS / "inference.json"))
    args = p.parse_args(argv)
    run(args.adapter_steps, Path(args.out), args.limit, args.alternatives, args.max_loras)
    return 0


if __name__ == "__main__":
    sys.exit(main())
