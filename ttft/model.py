"""Base model loading (HF id, local dir or object-store path, optional 4-bit) and the tiny test model.

The tiny model is a randomly initialised Qwen2 causal LM (head_dim 64, which vLLM's CPU attention
supports) with a character-level ARC tokenizer: one token per character of ``formats.ALPHABET``, one per
template marker in ``formats.MARKERS``, plus ``<pad>``, ``<eos>``, ``<unk>`` and ``<bos>``. It is saved as
a Hugging Face directory that transformers, PEFT and vLLM all load, so every stage can be tested on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ttft.formats import ALPHABET, MARKERS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PAD, EOS, UNK, BOS = "<pad>", "<eos>", "<unk>", "<bos>"
SPECIAL_TOKENS = (PAD, EOS, UNK, BOS)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_COMPLETE = ".ttft-complete"
_MIB = 1 << 20


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2/Qwen byte-level alphabet: each byte maps to one printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _tiny_vocab() -> dict[str, int]:
    """Special tokens, then one byte-level token per ALPHABET character (markers are added tokens)."""
    if any(len(c.encode()) != 1 for c in ALPHABET):
        raise ValueError(f"ALPHABET must hold single-byte characters only, got {ALPHABET!r}")
    byte_chars = _byte_to_unicode()
    tokens = [*SPECIAL_TOKENS, *(byte_chars[ord(c)] for c in ALPHABET)]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"duplicate tokens in the tiny vocabulary: {tokens!r}")
    return {t: i for i, t in enumerate(tokens)}


def build_tiny_tokenizer():
    """Character-level ARC tokenizer: every ALPHABET character is one token, each marker is one token.

    It is a Qwen2 byte-level BPE without merges, so a pre-token like ``"012"`` falls apart into single
    characters. It has to be a Qwen2Tokenizer: transformers' AutoTokenizer (and so vLLM) always builds
    Qwen2Tokenizer's own pre-tokenizer/decoder for ``model_type == "qwen2"`` and ignores the pipeline in
    tokenizer.json. ``decode(encode(s)) == s`` holds for any text made of ALPHABET characters and
    MARKERS; characters outside ALPHABET are dropped (the byte-level BPE has no unknown token).
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        vocab=_tiny_vocab(),
        merges=[],
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    # Markers are ordinary (non-special) added tokens so that skip_special_tokens never drops them.
    tokenizer.add_tokens([AddedToken(m, normalized=False, special=False) for m in MARKERS])
    return tokenizer


def init_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    layers: int = 2,
    intermediate_size: int | None = None,
    initializer_range: float = 0.1,
) -> Path:
    """Build a random tiny Qwen2ForCausalLM with the ARC character tokenizer and save it to ``out_dir``.

    head_dim is 64 (num_attention_heads = hidden_size // 64), max_position_embeddings 4096, tied
    embeddings. Writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
    generation_config.json. Deterministic for a given seed; returns the directory.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if hidden_size % 64 != 0 or hidden_size <= 0:
        raise ValueError(f"hidden_size must be a positive multiple of 64 (head_dim 64), got {hidden_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = hidden_size // 64
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD]
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _split_revision(model: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; no ``@`` -> revision None."""
    if "@" in model:
        repo, rev = model.rsplit("@", 1)
        return repo, rev or None
    return model, None


def default_cache_dir() -> Path:
    """Where downloaded models live: $TTFT_CACHE_DIR/models or ~/.cache/ttft/models."""
    root = os.environ.get("TTFT_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "ttft") / "models"


def _download_model(uri: str, dest: Path) -> Path:
    """Download every object under ``uri`` into ``dest`` once; a completed copy is reused as is.

    Files land in a temporary sibling directory that is renamed into place when complete, so a crashed
    download never leaves a half-filled ``dest``. Raises FileNotFoundError if nothing is under ``uri``.
    """
    from ttft import objstore

    if (dest / _COMPLETE).exists():
        return dest
    filesystem, path = objstore.filesystem_from_uri(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        if not objstore.download_dir(filesystem, path, tmp):
            raise FileNotFoundError(f"no model files under {uri}")
        (tmp / _COMPLETE).write_text(uri + "\n")
        if dest.exists() and not (dest / _COMPLETE).exists():
            shutil.rmtree(dest)  # a stale partial copy from an older layout
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / _COMPLETE).exists():  # not another process winning the race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model_path(model: str, cache_dir: str | Path | None = None) -> str:
    """Turn a model reference into something ``from_pretrained`` (and vLLM) can load.

    - a local directory -> its absolute path;
    - ``s3://bucket/prefix`` -> downloaded once into ``cache_dir`` (default :func:`default_cache_dir`),
      endpoint from ``AWS_ENDPOINT_URL``, credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``;
      a completed download is reused as is;
    - anything else (a Hugging Face id such as ``Qwen/Qwen2.5-0.5B-Instruct``) passes through unchanged.
    """
    if model.startswith("s3://"):
        key = hashlib.sha256(model.rstrip("/").encode()).hexdigest()[:16]
        name = model.rstrip("/").rsplit("/", 1)[-1] or "model"
        dest = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return str(_download_model(model.rstrip("/"), dest / f"{name}-{key}"))
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise NotADirectoryError(f"model path {model!r} is a file, expected a model directory")
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        raise FileNotFoundError(f"model directory {model!r} does not exist")
    return model


def ensure_tiny_model(out_dir: str | Path, *, seed: int = 0) -> Path:
    """The tiny model in ``out_dir``, built there when missing (atomically; safe with concurrent callers).

    ``.ttft-tiny.json`` records the seed a directory was built with; one built with another seed is
    rebuilt. A model directory without that stamp (e.g. from ``ttft init-tiny``) is used as it is; any
    other non-empty directory is an error, never overwritten.
    """
    out = Path(out_dir).expanduser().resolve()
    recipe = {"seed": seed}
    stamp = out / ".ttft-tiny.json"

    def built() -> bool:
        return stamp.is_file() and json.loads(stamp.read_text()) == recipe

    if built() or (not stamp.exists() and (out / "config.json").is_file()):
        return out
    if out.exists() and not stamp.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty and not a tiny model directory; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        init_tiny_model(tmp, seed=seed)
        (tmp / stamp.name).write_text(json.dumps(recipe))
        if out.exists() and not built():
            shutil.rmtree(out)  # ours (stamped) with another seed, or empty
        try:
            os.replace(tmp, out)
        except OSError:
            if not built():  # unless another process built the same model meanwhile
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def base_model_path(model_cfg) -> str:
    """What to load for a ``config.ModelConfig``.

    ``name == "tiny"``: the tiny model's dir (built on first use, see :func:`ensure_tiny_model`); a local
    dir or s3:// path: a local dir (see :func:`resolve_model_path`); an HF id: the id, as ``id@revision``
    when a revision is set.
    """
    from ttft.config import TINY_MODEL

    if model_cfg.name == TINY_MODEL:
        return str(ensure_tiny_model(model_cfg.tiny_dir, seed=model_cfg.tiny_seed))
    path = resolve_model_path(model_cfg.name)
    if model_cfg.revision and not Path(path).is_dir():
        path = f"{_split_revision(path)[0]}@{model_cfg.revision}"
    return path


def _torch_dtype(dtype: str):
    import torch

    if dtype == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}") from None


def load_base_model(
    model: str,
    *,
    load_in_4bit: bool = False,
    dtype: str = "float32",
    device: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a HF id (``id`` or ``id@revision``), local or s3:// dir.

    ``load_in_4bit`` quantizes linear layers to bitsandbytes NF4 (QLoRA; compute in ``dtype``), with
    bitsandbytes' CPU inference repack turned off (see :func:`disable_cpu_4bit_repack`).
    ``device`` defaults to ``cuda`` when available, else ``cpu``. The tokenizer gets a pad token (eos)
    if it has none.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = resolve_model_path(model, cache_dir)
    name, revision = (path, None) if Path(path).is_dir() else _split_revision(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _torch_dtype(dtype)
    kwargs: dict = {"dtype": torch_dtype, "revision": revision, "device_map": {"": device}}
    if load_in_4bit:
        compute = torch.float32 if torch_dtype == "auto" else torch_dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
    tokenizer = load_tokenizer(path)
    loaded = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    if load_in_4bit:
        disable_cpu_4bit_repack(loaded)
    return loaded, tokenizer


def load_tokenizer(model: str, cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """A model's tokenizer (HF id, ``id@revision``, local or s3:// dir); pad token: eos if it has none."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model, cache_dir)
    name, revision = (path, None) if Path(path).is_dir() else _split_revision(path)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def disable_cpu_4bit_repack(model) -> int:
    """Keep bitsandbytes' 4-bit weights in their training layout on CPUs with AVX512-BF16.

    bitsandbytes 0.50 ``Linear4bit.forward`` repacks its NF4 weight in place into a CPU inference layout
    (``_convert_weight_packed_for_cpu``) on the first forward that runs on CPU in eval mode with an input
    that does not require grad, when ``support_avx512bf16_for_cpu`` is set (read once, at construction,
    from the CPU). A val-loss pass before training is exactly such a forward; training afterwards fails
    ("a view of a leaf Variable that requires grad is being used in an in-place operation") or changes
    the frozen weights. Clearing the flag keeps the portable kernel on every CPU. Returns the number of
    layers changed.
    """
    n = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def _hash_file_sample(path: Path, h) -> None:
    """Feed name, size and the first and last MiB of ``path`` into hash ``h``."""
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as f:
        h.update(f.read(_MIB))
        if size > 2 * _MIB:
            f.seek(size - _MIB)
            h.update(f.read(_MIB))
        elif size > _MIB:
            h.update(f.read())


def _hf_cached_commit(repo_id: str, revision: str) -> str | None:
    """Commit hash that ``revision`` points to in the local HF cache, without network; None if unknown."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def model_ref(model_cfg) -> str:
    """The base model's name without loading it: built tiny dir, local dir, s3:// URI or HF id@rev."""
    from ttft.config import TINY_MODEL

    if model_cfg.name == TINY_MODEL or not model_cfg.name.startswith("s3://"):
        return base_model_path(model_cfg)
    return model_cfg.name.rstrip("/")


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def resolve_hf_commit(repo_id: str, revision: str | None) -> str:
    """The commit sha a Hugging Face revision points to: given, from the local cache, or asked of the Hub.

    Raises ValueError when it cannot be known (offline and not cached): pin ``model.revision`` to a sha.
    """
    revision = revision or "main"
    if _COMMIT.match(revision):
        return revision
    cached = _hf_cached_commit(repo_id, revision)
    if cached:
        return cached
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(repo_id, revision=revision).sha
    except Exception as e:
        raise ValueError(
            f"model {repo_id}@{revision}: cannot resolve the revision to a commit ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); set model.revision to a 40-hex commit sha"
        ) from None
    if not sha:
        raise ValueError(f"model {repo_id}@{revision}: the Hub returned no commit sha")
    return sha


def pin_model(model_cfg):
    """(model config pinned to exact weights, identity), resolved once by the driver for a whole run.

    An HF id gets ``revision`` set to the commit sha its revision points to now, so every worker downloads
    the same commit and adapter keys cannot change mid-run; local dirs, ``tiny`` and s3:// prefixes are
    identified by content (see :func:`model_identity`).
    """
    import dataclasses

    ref = model_ref(model_cfg)
    if ref.startswith("s3://") or Path(ref).is_dir():
        return model_cfg, model_identity(ref)
    repo_id, rev = _split_revision(ref)
    sha = resolve_hf_commit(repo_id, rev or model_cfg.revision)
    return dataclasses.replace(model_cfg, revision=sha), f"hf:{repo_id}@{sha}"


def _s3_listing_identity(uri: str) -> str:
    """Identity of a model under an s3:// prefix from its listing: every file's name, size and mtime."""
    from ttft import objstore

    filesystem, path = objstore.filesystem_from_uri(uri)
    infos = objstore.list_files(filesystem, path)
    if not any(i.path.endswith("config.json") for i in infos):
        raise FileNotFoundError(f"{uri}: no config.json under it, not a model directory")
    h = hashlib.sha256()
    for i in sorted(infos, key=lambda i: i.path):
        mtime = i.mtime.isoformat() if i.mtime is not None else ""
        h.update(f"{i.path[len(path) :]}\0{i.size}\0{mtime}\n".encode())
    return f"s3sha256:{h.hexdigest()}"


def model_identity(model: str) -> str:
    """Stable identity of a base model, used in adapter registry keys.

    s3:// prefixes: ``"s3sha256:<hex>"`` over the listing (names, sizes, mtimes), without downloading.
    Local directories: ``"sha256:<hex>"`` over config.json, tokenizer files
    and each weight file's name, size and first/last MiB. HF ids: ``"hf:<id>@<revision>"`` where the
    revision is the commit hash when the local HF cache knows it, else the given revision or ``main``.
    """
    if model.startswith("s3://"):
        return _s3_listing_identity(model.rstrip("/"))
    path = resolve_model_path(model)
    directory = Path(path)
    if not directory.is_dir():
        repo_id, revision = _split_revision(path)
        revision = revision or "main"
        commit = _hf_cached_commit(repo_id, revision)
        return f"hf:{repo_id}@{commit or revision}"
    config = directory / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: missing, not a model directory")
    h = hashlib.sha256()
    h.update(json.dumps(json.loads(config.read_text()), sort_keys=True).encode())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (directory / name).is_file():
            h.update(name.encode() + b"\0" + (directory / name).read_bytes())
    weights = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise FileNotFoundError(f"{directory}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for w in weights:
        _hash_file_sample(w, h)
    return f"sha256:{h.hexdigest()}"
