"""Smoke runs of the benchmark code paths (tiny sizes, no timing assertions: speed claims live in bench/)."""

from __future__ import annotations

import json

import pytest


def test_gpu_dry_run_measures_every_part_on_cpu(tmp_path):
    from bench import gpu

    out = tmp_path / "gpu.json"
    result = gpu.run(dry_run=True, out=out, ks=[2], window_s=0.5)
    assert json.loads(out.read_text()) == result
    assert result["dry_run"] and result["device"].startswith("cpu")
    assert [r["seq_len"] for r in result["finetune"]] == [64, 128]
    assert all(r["tokens_per_s"] > 0 and r["steps"] == 2 for r in result["finetune"])
    (pack,) = result["packing"]
    assert pack["concurrent"] == 2 and "error" not in pack, pack
    assert len(pack["per_finetune_tokens_per_s"]) == 2 and pack["tokens"] > 0
    tail = result["packing_tail"]
    assert [(p["seq_len"], p["concurrent"]) for p in tail] == [(96, 2), (128, 2)], tail
    assert all("error" not in p and len(p["max_memory_reserved_gib"]) == 2 for p in tail)
    assert result["vllm"]["skipped"] and any("vLLM" in s for s in result["skipped"])
    proj = result["projection"]
    assert proj["tasks"] == 400 and proj["train_tokens_total"] == 400 * proj["tokens_per_task"]
    assert proj["finetune_hours_one_gpu_best_packing"] > 0
    assert result["recipe"]["steps"] == 300  # read from jobs/configs/qwen0.5b_arc1_bf16.yaml


def test_gpu_without_gpu_says_so_and_writes_nothing(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from bench import gpu

    assert gpu.run(dry_run=False, out=tmp_path / "gpu.json") is None
    assert "no CUDA GPU" in capsys.readouterr().out
    assert not (tmp_path / "gpu.json").exists()


def test_gpu_flops_count_a_frozen_base_at_4n_plus_attention():
    from bench.gpu import QWEN05, flops_per_token

    assert flops_per_token(100, {"num_hidden_layers": 2, "hidden_size": 8}, 10) == 4 * 100 + 6 * 2 * 8 * 10
    n = 494_032_768  # Qwen2.5-0.5B: attention adds ~11% to 4N at 1680 tokens
    assert 1.05 < flops_per_token(n, QWEN05, 1680) / (4 * n) < 1.15


def test_gpu_peak_table():
    from bench.gpu import peak_tflops

    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L40S") == 362.0
    assert peak_tflops("Some Future GPU") is None


def test_registry_bench_small_local(tmp_path):
    from bench import registry

    out = tmp_path / "registry.json"
    result = registry.run(rows=200, puts=20, writers=2, backends="local", out=out)
    assert json.loads(out.read_text())["rows"] == 200
    local = result["backends"]["local"]
    assert local["rows_seen"] == 200
    assert local["puts_alone"]["puts"] == 20 and local["puts_concurrent"]["puts"] == 20
    assert local["puts_concurrent"]["writers"] == 2
    assert local["bulk"]["rows"] == 160
    assert local["listing"]["found_shallow"] == local["listing"]["found_deep"] == 200
    assert result["registry_exists_400_s"] == local["exists_cold_s"]


def test_run_summary_reads_results(tmp_path, monkeypatch):
    import bench
    from bench import run

    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    (tmp_path / "inference.json").write_text(
        json.dumps(
            {
                "multilora_vs_peft": 7.0,
                "multilora_vs_per_adapter": 1.2,
                "prompts": 3,
                "engine_start_s": 1.0,
                "alternatives": {"ttft": {"tokens_per_s": 10.0, "output_tokens": 5}},
            }
        )
    )
    summary = run.summarize({"inference": {"exit": 0, "wall_s": 1.0}}, 2.0, bench.machine())
    assert summary["multilora_vs_peft"] == 7.0
    assert summary["targets"]["multilora_vs_peft"]["verdict"] == "met"
    assert summary["targets"]["multilora_vs_per_adapter"]["verdict"] == "NOT met"
    assert summary["targets"]["ray_vs_loop"]["verdict"] == "n/a"
    md = run.markdown(summary)
    assert "| multilora_vs_peft | 7.0 | >= 5.0x | met |" in md


def test_live_tensor_bytes_follows_storages_until_freed():
    import torch

    from bench.memory import LiveTensorBytes

    outside = torch.zeros(1000)
    with LiveTensorBytes() as live:
        a = torch.ones(1000)
        view = a[10:]  # aliases a: nothing new
        outside.add_(1)  # in place on a tensor from before: nothing new
        b = a * 2
        assert live.current == 8000
        del a, view
        assert live.current == 4000
        del b
    assert live.peak == 8000 and live.current == 0


def test_memory_bench_tiny_shape_measures_extrapolates_and_writes(tmp_path):
    from bench import memory
    from bench.gpu import TINY

    out = tmp_path / "memory.json"
    (tmp_path / "summary.md").write_text("# ttft benchmarks\n\nother tables\n")
    shape = {**TINY, "num_hidden_layers": 4}
    result = memory.run([256, 512], [128, 256], True, "float32", out, shape=shape)
    assert json.loads(out.read_text())["peak_gib"] == result["peak_gib"]
    assert set(result["peak_gib"]) == {"256", "512"}
    rows = {r["seq_len"]: r for r in result["table"]}
    assert rows[256]["before"] == "measured" and rows[512]["before"].startswith("extrapolated")
    assert rows[256]["after_gib"] < rows[256]["before_gib"]
    # memory is linear in depth: 1 and 2 layers predict the 4-layer model's measured peak
    check = result["full_depth_check"]
    assert check["seq_len"] == 256 and abs(check["error"]) < 0.02, check
    assert {r["variant"] for r in result["measurements"]} == {"after", "before"}
    md = (tmp_path / "summary.md").read_text()
    assert "other tables" in md and md.count(memory.MD_BEGIN) == 1 and "| 256 |" in md
    memory.write_summary("again", tmp_path / "summary.md")
    md = (tmp_path / "summary.md").read_text()
    assert md.count(memory.MD_BEGIN) == 1 and "again" in md and "| 256 |" not in md
