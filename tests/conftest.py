"""Shared test fixtures: the tiny model (built once per session) and ONE vLLM engine for the session.

vLLM's engine start costs ~15-25 s on CPU, so every vLLM test shares the ``vllm_engine`` fixture; tests
that use it are marked ``@pytest.mark.vllm`` (deselect them with ``-m "not vllm"``). The ``ray_head``
session fixture (a local ``ray start --head``) comes from tests/ray_cluster.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ray_cluster import ray_head  # noqa: F401  (session fixture used by test_orchestrate.py)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vllm: starts/uses the shared vLLM engine (slow: ~20 s once per session)"
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 model + ARC character tokenizer saved as a HF dir (seed 0), built once."""
    from ttft.model import init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir: Path):
    """ONE VllmEngine on the tiny model with LoRA enabled (rank <= 16, 4 adapters at once), served in the
    default dtype of a run (``serving_dtype`` of the default config: the training dtype, float32)."""
    from ttft.config import InferenceConfig, ModelConfig
    from ttft.vllm_engine import VllmEngine, serving_dtype

    dtype = serving_dtype(ModelConfig().dtype, InferenceConfig().dtype)
    engine = VllmEngine(
        str(tiny_model_dir), max_lora_rank=16, max_loras=4, max_model_len=4096, dtype=dtype, seed=0
    )
    yield engine
    engine.close()
