"""`make bench`: the CPU benchmarks in sequence, each in a fresh subprocess, then the summary.

Runs bench.finetune_schedule, bench.inference and bench.registry (their tables go to stdout, their
progress and library chatter to bench/results/<name>.log), then prints every ratio against its target
(met / NOT met) and writes bench/results/summary.json and bench/results/summary.md.
bench/gpu.py is not run here (it needs a GPU): run `python -m bench.gpu` on a GPU machine.
Exits non-zero only if a benchmark crashed; a missed target is a finding, not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench import RESULTS, ROOT, machine, write_json

BENCHMARKS = ("finetune_schedule", "inference", "registry")
# summary key -> (benchmark, key in its result, target, "min" (at least) | "max" (at most), unit)
TARGETS = {
    "ray_vs_loop": ("finetune_schedule", "ray_vs_loop", 1.5, "min", "x"),
    "ray_vs_reload": ("finetune_schedule", "ray_vs_reload", 3.0, "min", "x"),
    "multilora_vs_peft": ("inference", "multilora_vs_peft", 5.0, "min", "x"),
    "multilora_vs_per_adapter": ("inference", "multilora_vs_per_adapter", 2.0, "min", "x"),
    "registry_exists_400_s": ("registry", "registry_exists_400_s", 1.0, "max", "s"),
}


def run_one(name: str, args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run `python -m bench.<name>` in a fresh process; stdout shown, stderr to bench/results/<name>.log."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"{name}.log"
    print(f"\n== bench.{name} {' '.join(args)} (log: {log.relative_to(ROOT)})", flush=True)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }
    t0 = time.perf_counter()
    with open(log, "w") as err:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", f"bench.{name}", *args],
                cwd=ROOT,
                stderr=err,
                env=env,
                timeout=timeout_s,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = time.perf_counter() - t0
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(
            f"bench.{name} FAILED ({code}) after {wall:.0f}s; end of its log:\n" + "\n".join(tail), flush=True
        )
    return {"exit": code, "wall_s": round(wall, 1)}


def summarize(runs: dict[str, dict[str, Any]], total_s: float, info: dict[str, Any]) -> dict[str, Any]:
    """summary.json: the headline numbers, each with its target and verdict, and the benchmarks' walls."""
    results = {}
    for name in BENCHMARKS:  # a benchmark not run this time (--only) counts with its last result, if any
        path = RESULTS / f"{name}.json"
        if runs.get(name, {"exit": 0})["exit"] == 0 and path.exists():
            results[name] = json.loads(path.read_text())
            if name not in runs:
                runs[name] = {
                    "exit": 0,
                    "wall_s": None,
                    "note": f"not run now: {path.name} from {results[name].get('machine', {}).get('time')}",
                }
    summary: dict[str, Any] = {"machine": info, "make_bench_s": round(total_s, 1), "benchmarks": runs}
    targets = {}
    for key, (bench, field, target, kind, unit) in TARGETS.items():
        value = results.get(bench, {}).get(field)
        summary[key] = value
        if value is None:
            verdict = "n/a"
        else:
            verdict = "met" if (value >= target if kind == "min" else value <= target) else "NOT met"
        targets[key] = {
            "value": value,
            "target": f"{'>=' if kind == 'min' else '<'} {target}{unit}",
            "verdict": verdict,
        }
    summary["targets"] = targets
    fs, inf, reg = (results.get(n, {}) for n in BENCHMARKS)
    details: dict[str, Any] = {}
    if fs:
        details["finetune_schedule"] = {
            "ray_vs_loop_with_ray_start": fs.get("ray_vs_loop_with_ray_start"),
            "ray_vs_reload_with_ray_start": fs.get("ray_vs_reload_with_ray_start"),
            "wall_s": {k: v["wall_s"] for k, v in fs["alternatives"].items()},
            "per_task_overhead_s": {k: v["per_task_overhead_s"] for k, v in fs["alternatives"].items()},
            "ray_init_s": fs["alternatives"].get("ray", {}).get("ray_init_s"),
        }
    if inf:
        details["inference"] = {
            "tokens_per_s": {k: v["tokens_per_s"] for k, v in inf["alternatives"].items()},
            "output_tokens": {k: v["output_tokens"] for k, v in inf["alternatives"].items()},
            "engine_start_s": inf.get("engine_start_s"),
            "prompts": inf.get("prompts"),
        }
    if reg:
        details["registry"] = {
            name: {
                "puts_per_s_alone": b["puts_alone"]["puts_per_s"],
                "puts_per_s_concurrent": b["puts_concurrent"]["puts_per_s"],
                "exists_cold_s": b["exists_cold_s"],
                "exists_warm_s": b["exists_warm_s"],
                "exists_cold_uncompacted_s": b["exists_cold_uncompacted_s"],
                "query_cold_s": b["query_cold_s"],
                "list_keys_s": b["listing"]["list_keys_s"],
                "list_all_objects_s": b["listing"]["list_all_objects_s"],
            }
            for name, b in reg.get("backends", {}).items()
        }
    summary["details"] = details
    summary["load_warnings"] = {n: r["load_warning"] for n, r in results.items() if r.get("load_warning")}
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: the targets table and the main numbers."""
    m = summary["machine"]
    lines = [
        "# ttft benchmarks",
        "",
        f"{m['time']}, {m['cpus']} CPUs, load average at start {m['loadavg']}; `make bench` "
        f"{summary['make_bench_s']:.0f} s.",
        "",
        "| metric | value | target | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for key, t in summary["targets"].items():
        lines.append(f"| {key} | {t['value']} | {t['target']} | {t['verdict']} |")
    d = summary["details"]
    if "finetune_schedule" in d:
        f = d["finetune_schedule"]
        lines += [
            "",
            "## Fine-tune scheduling",
            "",
            "| alternative | wall s | overhead per task s |",
            "| --- | --- | --- |",
        ]
        for k, v in f["wall_s"].items():
            lines.append(f"| {k} | {v} | {f['per_task_overhead_s'][k]} |")
        lines.append(
            f"\nRay start {f['ray_init_s']} s (not in (c)'s wall); with it: ray_vs_loop "
            f"{f['ray_vs_loop_with_ray_start']}x, ray_vs_reload {f['ray_vs_reload_with_ray_start']}x."
        )
    if "inference" in d:
        i = d["inference"]
        lines += [
            "",
            "## Inference",
            "",
            f"{i['prompts']} prompts; vLLM engine start {i['engine_start_s']} s (not timed).",
            "",
            "| alternative | output tokens | tokens/s |",
            "| --- | --- | --- |",
        ]
        for k, v in i["tokens_per_s"].items():
            lines.append(f"| {k} | {i['output_tokens'][k]} | {v} |")
    if "registry" in d:
        lines += [
            "",
            "## Registry (10k rows)",
            "",
            "| backend | puts/s alone | puts/s 8 writers | exists cold s | exists warm s | exists before "
            "compaction s | query cold s | list keys s | list all objects s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for k, v in d["registry"].items():
            lines.append(
                f"| {k} | {v['puts_per_s_alone']} | {v['puts_per_s_concurrent']} | {v['exists_cold_s']} | "
                f"{v['exists_warm_s']} | {v['exists_cold_uncompacted_s']} | {v['query_cold_s']} | "
                f"{v['list_keys_s']} | {v['list_all_objects_s']} |"
            )
    for n, w in summary["load_warnings"].items():
        lines.append(f"\n**{n}**: {w}")
    failed = [n for n, r in summary["benchmarks"].items() if r["exit"] != 0]
    if failed:
        lines.append(f"\n**failed**: {', '.join(failed)} (see bench/results/<name>.log)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ", ".join(BENCHMARKS)
    )
    p.add_argument("--timeout-s", type=float, default=900.0, help="per benchmark")
    args = p.parse_args(argv)
    info = machine()
    t0 = time.perf_counter()
    runs = {name: run_one(name, [], args.timeout_s) for name in args.only.split(",") if name}
    summary = summarize(runs, time.perf_counter() - t0, info)
    write_json(RESULTS / "summary.json", summary)
    (RESULTS / "summary.md").write_text(markdown(summary))
    print("\n== summary (bench/results/summary.json, summary.md)")
    for key, t in summary["targets"].items():
        print(f"  {key:<26} {str(t['value']):>8}  target {t['target']:<8} {t['verdict']}")
    for n, w in summary["load_warnings"].items():
        print(f"  WARNING {n}: {w}")
    print(f"  make bench: {summary['make_bench_s']:.0f}s")
    return 0 if all(r["exit"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
