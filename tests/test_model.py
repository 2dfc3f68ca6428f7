"""ttft.model: tiny model + tokenizer, HF/PEFT/4-bit loading, QLoRA step, model paths and identity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.s3_server import s3_server  # noqa: F401  (session fixture)
from ttft import objstore
from ttft.config import ModelConfig
from ttft.formats import ALPHABET, MARKERS, build_prompt, build_target
from ttft.model import (
    SPECIAL_TOKENS,
    base_model_path,
    init_tiny_model,
    load_base_model,
    model_identity,
    pin_model,
    resolve_model_path,
)
from ttft.tasks import Pair

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

TRAIN = (
    Pair(input=[[0, 1, 2], [3, 4, 5]], output=[[5, 4, 3], [2, 1, 0]]),
    Pair(input=[[6, 7], [8, 9]], output=[[9, 8], [7, 6]]),
)
TEST_INPUT = [[1, 0], [0, 1], [2, 2]]


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_tiny_model_dir_layout(tiny_model_dir: Path):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    } <= names
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == 64  # vLLM CPU attention needs 64
    assert config["max_position_embeddings"] == 4096
    assert config["vocab_size"] == len(SPECIAL_TOKENS) + len(ALPHABET) + len(MARKERS)
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == config["eos_token_id"]


@pytest.mark.parametrize("encoder", ["minimal", "shape"])
def test_tokenizer_round_trips_real_prompt(tiny_tokenizer, encoder: str):
    text = build_prompt(TRAIN, TEST_INPUT, encoder) + build_target([[1, 2], [0, 0], [3, 3]], encoder)
    assert set(text.replace("<in>", "").replace("<out>", "")) <= set(ALPHABET)
    ids = tiny_tokenizer(text).input_ids
    assert tiny_tokenizer.decode(ids) == text
    # one token per character, one per marker
    n_markers = text.count("<in>") + text.count("<out>")
    assert len(ids) == len(text) - 3 * text.count("<in>") - 4 * text.count("<out>")
    assert sum(i in tiny_tokenizer.convert_tokens_to_ids(list(MARKERS)) for i in ids) == n_markers


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*ALPHABET, *MARKERS]), max_size=80))
def test_tokenizer_round_trip_property(tiny_tokenizer, units: list[str]):
    text = "".join(units)
    ids = tiny_tokenizer(text).input_ids
    assert len(ids) == len(units)
    assert tiny_tokenizer.decode(ids) == text
    assert tiny_tokenizer.unk_token_id not in ids


def test_tokenizer_special_tokens(tiny_tokenizer, tiny_model_dir: Path):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert tiny_tokenizer.eos_token_id == config["eos_token_id"]
    assert tiny_tokenizer.pad_token_id == config["pad_token_id"]
    assert tiny_tokenizer.bos_token_id == config["bos_token_id"]
    assert tiny_tokenizer.unk_token_id is not None
    assert len({tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id, tiny_tokenizer.bos_token_id}) == 3
    assert tiny_tokenizer("<in>\n1").input_ids[0] != tiny_tokenizer.bos_token_id  # no BOS added
    eos = tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode([*tiny_tokenizer("12\n").input_ids, eos], skip_special_tokens=True) == "12\n"
    # markers are not "special": skip_special_tokens keeps them (vLLM detokenizes that way)
    ids = tiny_tokenizer("<out>3").input_ids
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == "<out>3"


def test_init_tiny_model_is_deterministic(tmp_path: Path, tiny_model_dir: Path):
    same = init_tiny_model(tmp_path / "same", seed=0)
    other = init_tiny_model(tmp_path / "other", seed=1)
    assert model_identity(str(same)) == model_identity(str(tiny_model_dir))
    assert model_identity(str(other)) != model_identity(str(tiny_model_dir))


def test_init_tiny_model_rejects_bad_head_dim(tmp_path: Path):
    with pytest.raises(ValueError, match="multiple of 64"):
        init_tiny_model(tmp_path / "bad", hidden_size=96)


def test_hf_load_and_peft_lora(tiny_model_dir: Path):
    from peft import LoraConfig, get_peft_model

    model, tok = load_base_model(str(tiny_model_dir))
    assert model.dtype == torch.float32
    ids = tok(build_prompt(TRAIN, TEST_INPUT), return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS))
    wrapped = {name.rsplit(".", 1)[-1] for name, mod in peft_model.named_modules() if hasattr(mod, "lora_A")}
    assert wrapped == set(LORA_TARGETS)
    n_layers = model.config.num_hidden_layers
    n_lora = sum(1 for _, mod in peft_model.named_modules() if hasattr(mod, "lora_A"))
    assert n_lora == len(LORA_TARGETS) * n_layers


def test_qlora_4bit_training_step(tiny_model_dir: Path):
    """4-bit NF4 base on CPU + LoRA: gradients reach LoRA weights only, and training lowers the loss."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, tok = load_base_model(str(tiny_model_dir), load_in_4bit=True)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_state.quant_type == "nf4"
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    )
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    text = build_prompt(TRAIN, TEST_INPUT) + build_target([[1, 2], [0, 0], [3, 3]])
    ids = tok(text, return_tensors="pt").input_ids
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=1e-2)

    losses = []
    for step in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        assert math.isfinite(loss.item())
        loss.backward()
        if step == 0:
            with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
            assert with_grad and all("lora_" in n for n in with_grad)
            # B starts at zero, so the first gradient lands on every lora_B
            assert all(
                p.grad is not None and p.grad.abs().sum() > 0
                for n, p in model.named_parameters()
                if "lora_B" in n
            )
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p.detach(), frozen_before[n]), f"frozen parameter {n} changed"


def test_qlora_eval_then_train_keeps_4bit_weights_in_training_layout(tiny_model_dir: Path):
    """The product's order (val loss under no_grad in eval mode, then training) on every CPU.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 would repack the NF4 weights into its CPU inference layout
    during the eval forward, and training afterwards would fail or move frozen weights.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, tok = load_base_model(str(tiny_model_dir), load_in_4bit=True)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    print(f"AVX512-BF16 on this CPU: {has_avx512bf16()}")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    frozen = [(n, p, p.detach().clone()) for n, p in model.named_parameters()]  # PEFT keeps these objects
    text = build_prompt(TRAIN, TEST_INPUT) + build_target([[1, 2], [0, 0], [3, 3]])
    ids = tok(text, return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():  # the val loss before training (Finetuner.target_loss)
        before = model(input_ids=ids, labels=ids).loss.item()
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    )
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(before, rel=1e-4) and losses[-1] < losses[0]
    peft_model.eval()
    with torch.no_grad():  # and evaluating again after training still works
        assert math.isfinite(peft_model(input_ids=ids, labels=ids).loss.item())
    for n, p, value in frozen:
        assert torch.equal(p.detach(), value), f"frozen parameter {n} changed"


def test_resolve_model_path_local(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir.resolve())
    monkeypatch.chdir(tiny_model_dir.parent)
    assert resolve_model_path(tiny_model_dir.name) == str(tiny_model_dir.resolve())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        resolve_model_path(str(tmp_path / "file"))


def test_resolve_model_path_hf_id_passes_through():
    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct@abc123") == "Qwen/Qwen2.5-0.5B-Instruct@abc123"


def test_model_identity_local_changes_with_weights(tiny_model_dir: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    ident = model_identity(str(copy))
    assert ident.startswith("sha256:") and ident == model_identity(str(tiny_model_dir))
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # last byte: a weight, not the header
    weights.write_bytes(bytes(data))
    assert model_identity(str(copy)) != ident
    (copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        model_identity(str(copy))


def test_model_identity_hf_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_identity("Qwen/Qwen2.5-0.5B-Instruct") == "hf:Qwen/Qwen2.5-0.5B-Instruct@main"
    assert model_identity("Qwen/Qwen2.5-0.5B-Instruct@v1") == "hf:Qwen/Qwen2.5-0.5B-Instruct@v1"
    refs = tmp_path / "models--Qwen--Qwen2.5-0.5B-Instruct" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0123abcd" * 5)
    assert model_identity("Qwen/Qwen2.5-0.5B-Instruct") == "hf:Qwen/Qwen2.5-0.5B-Instruct@" + "0123abcd" * 5


def test_resolve_model_path_s3(s3_server, tiny_model_dir: Path, tmp_path: Path, monkeypatch):  # noqa: F811
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{s3_server.bucket}/test-model/tiny"
    fs, path = objstore.filesystem_from_uri(uri)
    objstore.upload_dir(tiny_model_dir, fs, path)

    local = Path(resolve_model_path(uri, cache_dir=tmp_path / "cache"))
    assert local.parent == tmp_path / "cache"
    for src in tiny_model_dir.iterdir():
        assert (local / src.name).read_bytes() == src.read_bytes()
    assert model_identity(str(local)) == model_identity(str(tiny_model_dir))
    model, tok = load_base_model(uri, cache_dir=tmp_path / "cache")
    assert model.config.vocab_size == len(tok)

    # a completed download is reused, not fetched again
    (local / "sentinel").write_text("kept")
    assert resolve_model_path(uri + "/", cache_dir=tmp_path / "cache") == str(local)
    assert (local / "sentinel").exists()

    with pytest.raises(FileNotFoundError, match="no model files"):
        resolve_model_path(f"s3://{s3_server.bucket}/test-model/missing", cache_dir=tmp_path / "cache")
    assert not any(p.name.startswith("missing") for p in (tmp_path / "cache").iterdir())


def test_base_model_path(tmp_path: Path, tiny_model_dir: Path):
    from ttft.config import ModelConfig

    cfg = ModelConfig(name="tiny", tiny_dir=str(tmp_path / "tiny"), tiny_seed=0)
    built = Path(base_model_path(cfg))
    assert built == (tmp_path / "tiny").resolve()
    assert model_identity(str(built)) == model_identity(str(tiny_model_dir))
    mtime = (built / "model.safetensors").stat().st_mtime_ns
    assert base_model_path(cfg) == str(built) and (built / "model.safetensors").stat().st_mtime_ns == mtime
    reseeded = Path(base_model_path(ModelConfig(name="tiny", tiny_dir=str(built), tiny_seed=1)))
    assert reseeded == built and model_identity(str(built)) != model_identity(str(tiny_model_dir))
    assert not [p for p in tmp_path.iterdir() if p.name != "tiny"]  # no temp dirs left behind

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing"):
        base_model_path(ModelConfig(name="tiny", tiny_dir=str(tmp_path / "other")))
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"

    assert base_model_path(ModelConfig(name=str(tiny_model_dir))) == str(tiny_model_dir.resolve())
    assert base_model_path(ModelConfig(name="Qwen/Qwen2.5-0.5B-Instruct")) == "Qwen/Qwen2.5-0.5B-Instruct"
    hf = ModelConfig(name="Qwen/Qwen2.5-0.5B-Instruct", revision="r1")
    assert base_model_path(hf) == "Qwen/Qwen2.5-0.5B-Instruct@r1"


def test_pin_model_resolves_an_hf_revision_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The driver pins an HF id to a commit: keys cannot change when actors fill their HF cache mid-run."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(name="Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(ValueError, match="set model.revision to a 40-hex commit"):
        pin_model(cfg)  # offline, nothing cached: refuse rather than key adapters on a moving "main"
    sha = "0123abcd" * 5
    pinned, ident = pin_model(ModelConfig(name="Qwen/Qwen2.5-0.5B-Instruct", revision=sha))
    assert (pinned.revision, ident) == (sha, f"hf:Qwen/Qwen2.5-0.5B-Instruct@{sha}")
    refs = tmp_path / "models--Qwen--Qwen2.5-0.5B-Instruct" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(sha)
    pinned, ident = pin_model(cfg)
    assert pinned.revision == sha and ident == f"hf:Qwen/Qwen2.5-0.5B-Instruct@{sha}"
    # What an actor computes from the pinned config, whatever its own cache holds, is the same identity.
    (refs / "main").write_text("f" * 40)  # "main" moved on after the driver pinned it
    assert model_identity(base_model_path(pinned)) == ident


def test_s3_model_identity_from_its_listing(s3_server, tiny_model_dir: Path, monkeypatch):  # noqa: F811
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{s3_server.bucket}/test-model/ident"
    fs, path = objstore.filesystem_from_uri(uri)
    objstore.upload_dir(tiny_model_dir, fs, path)
    pinned, ident = pin_model(ModelConfig(name=uri))
    assert pinned.name == uri and ident.startswith("s3sha256:") and ident == model_identity(uri + "/")
    objstore.write_bytes(fs, f"{path}/config.json", b'{"changed": true}')
    assert model_identity(uri) != ident
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_identity(f"s3://{s3_server.bucket}/test-model/none")
