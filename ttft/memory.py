"""GPU memory of one fine-tune: what a training step needs, and how many fit on a card."""

from __future__ import annotations

CUDA_CONTEXT_GIB = 0.5  # CUDA context + cuBLAS workspace of one process, outside the caching allocator
