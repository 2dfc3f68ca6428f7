"""Benchmarks: each one runs the alternatives side by side in one process tree and prints ratios.

`make bench` (`python -m bench.run`) runs the CPU benchmarks (finetune_schedule, inference, registry) and
writes bench/results/*.json plus summary.json / summary.md. `bench/gpu.py` is for a machine with a GPU.
Speed claims live here, never in timed tests. See bench/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (cores, load average now, Python, host)."""
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def load_warning(start: list[float] | tuple[float, ...], cpus: int | None = None) -> str | None:
    """A note when the 1-minute load average was above the core count before the benchmark started."""
    cpus = cpus or os.cpu_count() or 1
    if start and start[0] > cpus + 0.5:
        return (
            f"load average {start[0]:.1f} on {cpus} cores before the run: other processes were busy, "
            "numbers may be polluted (rerun)"
        )
    return None


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded (None if either is unknown or zero). A speed-up is ratio(slow_seconds, fast_seconds)
    or ratio(fast_rate, slow_rate)."""
    if not a or not b:
        return None
    return round(a / b, 3)


def verdict(value: float | None, target: float, lower_is_better: bool = False) -> str:
    """'met' / 'NOT met' / 'n/a' for a measured value against its target."""
    if value is None:
        return "n/a"
    ok = value <= target if lower_is_better else value >= target
    return "met" if ok else "NOT met"


def quiet_hf() -> None:
    """Turn off the transformers progress bars and advisory chatter in benchmark processes."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # bench.gpu may run where transformers is missing
        pass
