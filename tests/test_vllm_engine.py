"""ttft.vllm_engine on the tiny model: base and multi-LoRA generation; vLLM greedy == HF PEFT greedy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ttft.config import InferenceConfig, ModelConfig
from ttft.formats import build_prompt
from ttft.tasks import Pair
from ttft.vllm_engine import GenRequest, GenResult, serving_dtype

pytestmark = pytest.mark.vllm

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_TOKENS = 12
PROMPTS = (
    build_prompt([Pair([[0, 1, 2], [3, 4, 5]], [[5, 4, 3], [2, 1, 0]])], [[7, 8], [9, 0]]),
    build_prompt([Pair([[1]], [[1, 1]]), Pair([[2]], [[2, 2]])], [[3]], "shape"),
    "<in>\n5\n<out>\n",
)


def _make_adapter(base_dir: Path, out_dir: Path, seed: int) -> Path:
    """A PEFT LoRA adapter with random (non-zero) A and B, saved as safetensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=LORA_TARGETS, init_lora_weights=False, task_type="CAUSAL_LM"
    )
    get_peft_model(model, config).save_pretrained(out_dir, safe_serialization=True)
    assert (out_dir / "adapter_model.safetensors").is_file()
    return out_dir


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "test_vllm_engine/A": _make_adapter(tiny_model_dir, root / "A", seed=1),
        "test_vllm_engine/B": _make_adapter(tiny_model_dir, root / "B", seed=2),
    }


def _hf_greedy(base_dir: Path, adapter: Path | None, prompts, max_tokens: int) -> list[GenResult]:
    """Reference: HF (PEFT) greedy ``generate`` in float32, as GenResults."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    results = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )
        new = out.sequences[0, ids.shape[1] :].tolist()
        logprob = sum(
            float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, new, strict=True)
        )
        stopped = bool(new) and new[-1] == tok.eos_token_id
        results.append(
            GenResult(
                text=tok.decode(new, skip_special_tokens=True),
                logprob=logprob,
                n_tokens=len(new),
                finish_reason="stop" if stopped else "length",
            )
        )
    return results


def test_base_greedy(vllm_engine):
    results = vllm_engine.generate([GenRequest(p) for p in PROMPTS], max_tokens=MAX_TOKENS)
    assert len(results) == len(PROMPTS)
    for per_prompt in results:
        assert len(per_prompt) == 1
        r = per_prompt[0]
        assert isinstance(r, GenResult)
        assert math.isfinite(r.logprob) and r.logprob <= 0
        assert 0 < r.n_tokens <= MAX_TOKENS
        assert r.finish_reason in ("stop", "length")
        assert r.finish_reason == "stop" or r.n_tokens == MAX_TOKENS


def test_default_serving_dtype_is_the_training_dtype():
    """A run serves in model.dtype unless inference.dtype says otherwise ("auto" = vLLM's own choice)."""
    assert serving_dtype(ModelConfig().dtype, InferenceConfig().dtype) == ModelConfig().dtype == "float32"
    assert serving_dtype("bfloat16") == "bfloat16"
    assert serving_dtype("float32", "auto") == "auto"
    assert serving_dtype("float32", "bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be"):
        serving_dtype("float64")


def test_multi_lora_greedy_matches_hf_peft(
    vllm_engine, tiny_model_dir: Path, adapters: dict[str, Path], record_property
):
    """ONE batch mixing adapter A, adapter B and the base model == HF PEFT greedy per adapter.

    vLLM runs in the default serving dtype (the training dtype, float32 for the tiny model on CPU) and
    PEFT in float32, the dtype adapters are trained in: texts, token counts and finish reasons are equal.
    """
    dtype = vllm_engine.engine_kwargs["dtype"]
    assert dtype == serving_dtype(ModelConfig().dtype, InferenceConfig().dtype), "not the default path"
    record_property("compared_dtype", f"vLLM {dtype} vs PEFT float32")
    print(f"compared: vLLM {dtype} vs HF PEFT float32 (training dtype {ModelConfig().dtype})")
    choices = [*adapters.items(), (None, None)]
    requests, keys = [], []
    for i, prompt in enumerate(PROMPTS):
        for j in range(len(choices)):  # interleave adapters differently per prompt
            name, path = choices[(i + j) % len(choices)]
            requests.append(GenRequest(prompt, str(path) if path else None, name))
            keys.append((name, prompt))
    got = vllm_engine.generate(requests, max_tokens=MAX_TOKENS)
    assert [len(r) for r in got] == [1] * len(requests)

    expected = {}
    for name, path in choices:
        for prompt, res in zip(PROMPTS, _hf_greedy(tiny_model_dir, path, PROMPTS, MAX_TOKENS), strict=True):
            expected[name, prompt] = res
    for key, [res] in zip(keys, got, strict=True):
        want = expected[key]
        assert (res.text, res.n_tokens, res.finish_reason) == (
            want.text,
            want.n_tokens,
            want.finish_reason,
        ), (key, dtype)
        assert res.logprob == pytest.approx(want.logprob, abs=1e-3), (key, dtype)
    # the adapters really change the output (the comparison above could not tell otherwise)
    for prompt in PROMPTS:
        texts = {expected[name, prompt].text for name, _ in choices}
        assert len(texts) == len(choices), (prompt, texts)


def test_adapter_ids_stable_and_validated(vllm_engine, adapters: dict[str, Path], tmp_path: Path):
    (name_a, path_a), (name_b, path_b) = adapters.items()
    prompt = PROMPTS[0]
    [first] = vllm_engine.generate([GenRequest(prompt, str(path_a), name_a)], max_tokens=4)
    ids = dict(vllm_engine._lora_ids)
    again = vllm_engine.generate(
        [GenRequest(prompt, str(path_b), name_b), GenRequest(prompt, str(path_a), name_a)], max_tokens=4
    )
    assert again[1] == first
    assert {k: vllm_engine._lora_ids[k] for k in ids} == ids
    assert vllm_engine._lora_ids[name_a] != vllm_engine._lora_ids[name_b]

    with pytest.raises(ValueError, match="already bound"):
        vllm_engine.generate([GenRequest(prompt, str(path_b), name_a)], max_tokens=4)
    with pytest.raises(ValueError, match="both adapter_path and adapter_name"):
        vllm_engine.generate([GenRequest(prompt, str(path_a))], max_tokens=4)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        vllm_engine.generate([GenRequest(prompt, str(tmp_path), "test_vllm_engine/empty")], max_tokens=4)


def test_per_request_max_tokens_in_one_call_match_separate_calls(vllm_engine):
    limits = [2, MAX_TOKENS, 5]
    together = vllm_engine.generate([GenRequest(p) for p in PROMPTS[:3]], max_tokens=limits)
    for prompt, limit, [got] in zip(PROMPTS, limits, together):
        [[alone]] = vllm_engine.generate([GenRequest(prompt)], max_tokens=limit)
        assert got.n_tokens <= limit and (got.text, got.n_tokens) == (alone.text, alone.n_tokens)
    with pytest.raises(ValueError, match="2 values for 3 requests"):
        vllm_engine.generate([GenRequest(p) for p in PROMPTS[:3]], max_tokens=[4, 4])


def test_sampling_n_and_arguments(vllm_engine):
    [results] = vllm_engine.generate([GenRequest(PROMPTS[2])], max_tokens=6, n=3, temperature=1.0)
    assert len(results) == 3
    assert all(math.isfinite(r.logprob) and 0 < r.n_tokens <= 6 for r in results)
    assert vllm_engine.generate([], max_tokens=4) == []
    with pytest.raises(ValueError, match="temperature"):
        vllm_engine.generate([GenRequest(PROMPTS[2])], max_tokens=4, n=2)
    with pytest.raises(ValueError, match="max_tokens"):
        vllm_engine.generate([GenRequest(PROMPTS[2])], max_tokens=0)


def test_token_id_prompts_are_what_the_model_sees(vllm_engine, tiny_model_dir: Path):
    """A prompt given as token ids generates exactly what its text does (the tiny tokenizer adds nothing),
    and ids the text would not produce change the output: vLLM really uses the ids."""
    from ttft.samples import prompt_token_ids

    tok = vllm_engine.tokenizer
    ids = [tuple(prompt_token_ids(tok, p)) for p in PROMPTS]
    by_text = vllm_engine.generate([GenRequest(p) for p in PROMPTS], max_tokens=MAX_TOKENS)
    by_ids = vllm_engine.generate(
        [GenRequest(p, prompt_token_ids=i) for p, i in zip(PROMPTS, ids)], max_tokens=MAX_TOKENS
    )
    assert by_ids == by_text
    other = tuple(prompt_token_ids(tok, PROMPTS[1]))
    [[swapped]] = vllm_engine.generate(
        [GenRequest(PROMPTS[0], prompt_token_ids=other)], max_tokens=MAX_TOKENS
    )
    assert swapped == by_text[1][0]  # the text field is ignored when ids are given


def test_stop_strings_end_generation_before_the_string(vllm_engine, adapters: dict[str, Path]):
    """Greedy output cut at the first occurrence of a stop string, which is not returned."""
    choices = [GenRequest(p) for p in PROMPTS] + [
        GenRequest(p, str(path), name) for name, path in adapters.items() for p in PROMPTS
    ]
    free = vllm_engine.generate(choices, max_tokens=40)
    # a request whose output has a character first appearing after the start (the random tiny model
    # repeats itself a lot, the random adapters less)
    req, text, stop = next(
        (r, out.text, ch)
        for r, [out] in zip(choices, free)
        for ch in dict.fromkeys(out.text)
        if out.text.index(ch) > 0
    )
    [[cut]] = vllm_engine.generate([req], max_tokens=40, stop=[stop, "<never>"])
    assert cut.text == text[: text.index(stop)]
    assert cut.finish_reason == "stop" and 0 < cut.n_tokens < 40


def test_progress_reports_every_finished_request_with_tokens_per_s(vllm_engine):
    """vLLM's use_tqdm hook: one report per finished request, done counts up to total, a tokens/s."""
    calls = []
    reqs = [GenRequest(p) for p in PROMPTS]
    got = vllm_engine.generate(reqs, max_tokens=6, progress=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == list(range(1, len(reqs) + 1))
    assert all(c[1] == len(reqs) and c[2] >= 0 for c in calls)
    done, total, elapsed, tokens_per_s = calls[-1]
    assert tokens_per_s is not None and tokens_per_s == pytest.approx(
        sum(r[0].n_tokens for r in got) / elapsed, rel=0.2
    )
    # n completions per request: the totals count completions
    calls.clear()
    vllm_engine.generate(reqs[:2], max_tokens=4, n=2, temperature=1.0, progress=lambda *a: calls.append(a))
    assert calls[-1][0] == calls[-1][1] and calls[-1][1] in (2, 4)
