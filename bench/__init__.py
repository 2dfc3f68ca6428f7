"""Benchmarks: each one runs the alternatives side by side in one process tree and prints ratios.

`make bench` (`python -m bench.run`) runs the CPU benchmarks (finetune_schedule, inference, registry) and
writes bench/results/*.json plus summary.json / summary.md. `bench/gpu.py` is for a machine with a GPU.
Speed claims live here, never in timed tests. See bench/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import resource
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


class CpuMonitor:
    """CPU time other processes used while a benchmark ran (Linux: /proc/stat minus this process tree).

    This tree = this process and the children it waited for (their own children included when those
    were waited for in turn): subprocesses, vLLM's engine, the S3 server, a local Ray started here.
    """

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.monotonic(), _busy_s(), _own_s()

    def others_share(self) -> float | None:
        """Fraction of all cores' time used by other processes since creation (None if unknown)."""
        busy = _busy_s()
        if busy is None or self.busy0 is None:
            return None
        wall = time.monotonic() - self.t0
        other = (busy - self.busy0) - (_own_s() - self.own0)
        return round(max(0.0, other) / max(1e-9, wall * (os.cpu_count() or 1)), 3)

    def load_fields(self, start_loadavg: list[float] | tuple[float, ...]) -> dict[str, Any]:
        """A result's load record: load average at the end, other processes' CPU share, the warning."""
        share = self.others_share()
        return {
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "cpu_others_share": share,
            "load_warning": load_warning(start_loadavg, share),
        }


def _busy_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def load_warning(
    start: list[float] | tuple[float, ...], others_share: float | None = None, cpus: int | None = None
) -> str | None:
    """A note when other processes were busy: load average above the cores at the start, or other
    processes using more than 15% of the machine's CPU time during the run."""
    cpus = cpus or os.cpu_count() or 1
    notes = []
    if start and start[0] > cpus + 0.5:
        notes.append(f"load average {start[0]:.1f} on {cpus} cores at the start")
    if others_share is not None and others_share > 0.15:
        notes.append(f"other processes used {others_share:.0%} of the CPU time during the run")
    if notes:
        return "; ".join(notes) + ": numbers may be polluted (rerun)"
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
