"""ttft.console: third-party logging quiet by default (this process, its children, Ray workers), and all
of it back with --verbose / TTFT_VERBOSE; ttft's own progress lines print in both modes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from ttft import console
from ttft.inference import InferenceProgress

ROOT = Path(__file__).resolve().parents[1]

# A child that emits what third-party libraries emit: a logger without handlers (bitsandbytes), a
# FutureWarning, and a grandchild that warns too (vLLM's spawned engine process inherits the environment).
NOISY = textwrap.dedent(
    """
    import logging, subprocess, sys, warnings
    from ttft.console import setup_console
    setup_console({flag})
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("NOISE-LOGGER")
    warnings.warn("NOISE-FUTURE", FutureWarning)
    subprocess.run([sys.executable, "-c", "import warnings; warnings.warn('NOISE-CHILD', FutureWarning)"])
    print("[ttft] own line", file=sys.stderr)
    """
)


def _run(code: str, env_extra: dict[str, str] | None = None, timeout: int = 240):
    env = {k: v for k, v in os.environ.items() if k != console.VERBOSE_ENV and k not in console.QUIET_ENV}
    env["PYTHONPATH"] = str(ROOT)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_quiet_by_default_silences_loggers_warnings_and_children():
    err = _run(NOISY.format(flag="False")).stderr
    assert "NOISE" not in err, err
    assert "[ttft] own line" in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_verbose_flag_or_env_restores_everything(how):
    flag, env = ("True", None) if how == "flag" else ("False", {console.VERBOSE_ENV: "1"})
    err = _run(NOISY.format(flag=flag), env).stderr
    for noise in ("NOISE-LOGGER", "NOISE-FUTURE", "NOISE-CHILD"):
        assert noise in err, (noise, err)
    assert "[ttft] own line" in err


def test_verbose_on_the_command_line_is_seen_before_argparse():
    """Module-level setup (jobs.common, vLLM's spawned re-import of the entry module) reads sys.argv."""
    code = "import sys; sys.argv += ['--verbose']; " + NOISY.format(flag="None")
    assert "NOISE-LOGGER" in _run(code).stderr


def test_importing_vllm_and_bitsandbytes_prints_nothing_when_quiet():
    """The real libraries: vLLM's import-time Triton note, bitsandbytes' kernels-community warning."""
    proc = _run(
        "from ttft.console import setup_console; setup_console(False)\n"
        "import bitsandbytes, vllm, transformers, peft\n"
        "from vllm import LLM, SamplingParams\n"
    )
    assert proc.stderr.strip() == "" and proc.stdout.strip() == "", proc.stderr


def test_verbose_undoes_quiet_in_this_process(monkeypatch):
    for k in (console.VERBOSE_ENV, *console.QUIET_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # set by the user: quiet mode leaves it alone
    monkeypatch.setattr(console, "_saved", None)
    before = {n: logging.getLogger(n).level for n in console.QUIET_LOGGERS}
    filters = list(warnings.filters)
    try:
        assert console.setup_console(False) is False
        assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
        assert logging.getLogger("bitsandbytes").getEffectiveLevel() == logging.ERROR
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("quiet", FutureWarning, stacklevel=2)
        assert caught == []
        assert console.setup_console(True) is True
        assert os.environ[console.VERBOSE_ENV] == "1"
        assert "VLLM_LOGGING_LEVEL" not in os.environ
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
        assert {n: logging.getLogger(n).level for n in console.QUIET_LOGGERS} == before
        assert warnings.filters == filters
    finally:
        console.verbose()
        monkeypatch.setattr(console, "_saved", None)


def test_ray_init_kwargs_merge_the_callers_runtime_env(monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    kw = console.ray_init_kwargs({"env_vars": {"TTFT_X": "1", "VLLM_LOGGING_LEVEL": "INFO"}})
    env = kw["runtime_env"]
    assert env["worker_process_setup_hook"] == console.SETUP_HOOK
    assert env["env_vars"]["TTFT_X"] == "1" and env["env_vars"]["VLLM_LOGGING_LEVEL"] == "INFO"
    assert env["env_vars"]["TORCH_CPP_LOG_LEVEL"] == "ERROR"
    assert kw["logging_level"] == logging.ERROR
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.ray_init_kwargs({"env_vars": {"TTFT_VERBOSE": "1"}}) == {
        "runtime_env": {"env_vars": {"TTFT_VERBOSE": "1"}}
    }


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_init_kwargs_inside_a_submitted_job_repeat_no_key_of_the_job(monkeypatch, verbose):
    """`ray job submit` drivers: Ray refuses a ray.init runtime_env that repeats a key of the job's."""
    import json

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    if verbose:
        monkeypatch.setenv(console.VERBOSE_ENV, "1")
    job_env = {"working_dir": "gcs://x.zip", "env_vars": {"VLLM_LOGGING_LEVEL": "INFO", "HF_HOME": "/h"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job_env}))
    env = console.ray_init_kwargs({"env_vars": {"HF_HOME": "/h", "TTFT_X": "1"}})["runtime_env"]
    assert not set(env) & (set(job_env) - {"env_vars"})
    assert not set(env["env_vars"]) & set(job_env["env_vars"])
    assert env["env_vars"]["TTFT_X"] == "1"
    if not verbose:
        assert env["worker_process_setup_hook"] == console.SETUP_HOOK
        job_env["worker_process_setup_hook"] = "other.hook"
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job_env}))
        assert "worker_process_setup_hook" not in console.ray_init_kwargs({})["runtime_env"]


@pytest.mark.slow
def test_ray_workers_are_quiet_and_forward_ttft_lines():
    """A local Ray through init_ray: a worker's third-party warnings are gone, its [ttft] lines arrive."""
    code = textwrap.dedent(
        """
        import logging, sys, time, warnings
        from ttft.console import setup_console
        setup_console(False)
        import ray
        from ttft.orchestrate import init_ray
        init_ray(num_cpus=1)

        @ray.remote
        def work():
            logging.getLogger("bitsandbytes.backends.cpu.ops").warning("NOISE-WORKER-LOGGER")
            warnings.warn("NOISE-WORKER-FUTURE", FutureWarning)
            print("[ttft] inference 1/2 prompts from a worker", file=sys.stderr, flush=True)
            return logging.getLogger("bitsandbytes").getEffectiveLevel()

        @ray.remote(num_cpus=0)
        class Engine:
            def report(self):
                for done in (2, 4):
                    print(f"[ttft] inference {done}/4 prompts", file=sys.stderr, flush=True)

        assert ray.get(work.remote()) == logging.ERROR
        engines = [Engine.remote(), Engine.remote()]  # similar lines from two processes: never folded
        ray.get([e.report.remote() for e in engines])
        time.sleep(5)  # let the log monitor forward the workers' stderr
        ray.shutdown()
        """
    )
    proc = _run(code, timeout=300)
    out = proc.stdout + proc.stderr
    assert "NOISE" not in out, out
    assert "Started a local Ray instance" not in out and "Token authentication" not in out, out
    assert "[ttft] inference 1/2 prompts from a worker" in out, out
    assert out.count("[ttft] inference 2/4 prompts") == out.count("[ttft] inference 4/4 prompts") == 2, out
    assert "repeated" not in out, out


def test_inference_progress_lines_interval_and_last_line():
    import io

    buf = io.StringIO()
    prog = InferenceProgress(10, interval_s=3600, out=buf)
    prog(1, 20, 1.0, 5.0)  # totals may count completions (n=2 per prompt): 1/20 -> 0 or 1 prompt
    prog(10, 20, 2.0, 50.0)
    assert buf.getvalue() == ""  # within the interval: nothing
    prog(20, 20, 4.0, 123.4)
    (line,) = buf.getvalue().splitlines()
    assert line == "[ttft] inference 10/10 prompts | 123 tok/s | elapsed 4s | ETA 0s"
    buf2 = io.StringIO()
    prog = InferenceProgress(8, interval_s=0.0, out=buf2)
    prog(2, 8, 1.0, None)
    assert buf2.getvalue().strip() == "[ttft] inference 2/8 prompts | ? tok/s | elapsed 1s | ETA 3s"


def test_inference_progress_prints_about_ten_lines_however_many_prompts():
    import io

    buf = io.StringIO()
    prog = InferenceProgress(1000, interval_s=0.0, out=buf)
    for done in range(1, 1001):
        prog(done, 1000, done / 100, 50.0)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("[ttft] inference 1000/1000 prompts"), lines
