"""Pretraining: config section, sample sharding, prompt masking, exact resume (plain torch), and the Ray
Train job end to end (2 workers on a local Ray, checkpoints and model in S3, resume, merged HF model)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from tests.s3_server import s3_server  # noqa: F401  (session fixture)
from ttft.config import ConfigError, config_from_dict
from ttft.pretrain import (
    STATE_FILE,
    SUMMARY_FILE,
    FreshTasks,
    PretrainConfig,
    SampleStream,
    encode_sample,
    epoch_samples,
    load_pretrain_config,
    load_pretrain_tasks,
    pretrain_config_from_dict,
    task_sequence,
    train_worker,
    training_view,
    wall_clock_lambda,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL_TTFT = {
    "samples": {"mode": "n-1", "max_per_task": 4, "max_seq_len": 2048},
    "augment": {"per_split": 2},
    "lora": {"rank": 8, "alpha": 16},
    "optim": {"lr": 1e-3, "steps": 4, "batch_size": 2, "warmup_steps": 0, "schedule": "cosine", "seed": 0},
}


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _result_line(out: str) -> dict:
    """The job's one-line JSON result (worker logs may interleave on the same stream)."""
    return json.loads([line for line in out.splitlines() if line.startswith('{"output"')][-1])


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return any(not torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- config


def test_tiny_config_loads_and_overrides_apply():
    cfg, pcfg = load_pretrain_config(ROOT / "jobs/configs/pretrain_tiny.yaml", {"pretrain.workers": 3})
    assert cfg.model.name == "tiny" and cfg.name == "pretrain_tiny"
    assert pcfg.workers == 3 and pcfg.mode == "full" and pcfg.data.startswith("generated:train:")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"mode": "half"}, "pretrain.mode: 'half' is not one of"),
        ({"workers": 0}, "pretrain.workers: must be >= 1"),
        ({"checkpoint_every": "often"}, "pretrain.checkpoint_every: expected int, got str"),
        ({"nope": 1}, "pretrain.nope: unknown key"),
        ({"data": "generated:train:ten:0"}, "expected generated:SPLIT:N:SEED"),
        ({"data": "generated:train:10:0:9"}, "MAX_SIDE must be in 3..8, got 9"),
        ({"data": "fresh:canary:test:0"}, "expected fresh:FAMILY:SPLIT:SEED"),
        ({"adam_betas": [0.9]}, "pretrain.adam_betas: need two values"),
        ({"min_lr_ratio": 1.5}, "pretrain.min_lr_ratio: must be in"),
        ({"max_minutes": 0}, "pretrain.max_minutes: must be > 0"),
    ],
)
def test_bad_pretrain_section_names_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        pretrain_config_from_dict({"pretrain": section})


def test_rest_of_the_file_is_validated_as_a_run_config():
    with pytest.raises(ConfigError, match="ttft.optim.lr: expected float"):
        pretrain_config_from_dict({"pretrain": {}, "ttft": {"optim": {"lr": "fast"}}})
    with pytest.raises(ConfigError, match="load_in_4bit"):
        pretrain_config_from_dict({"model": {"load_in_4bit": True}})


# --------------------------------------------------------------------------------------------- data


def test_generated_source_and_selection():
    tasks, errors = load_pretrain_tasks(PretrainConfig(data="generated:train:6:1", limit=4))
    assert errors == [] and len(tasks) == 4
    assert all(t.id.startswith("gen-train-") for t in tasks)
    with pytest.raises(ValueError, match="no valid task"):
        load_pretrain_tasks(PretrainConfig(data="generated:train:3:0", max_side=1))
    small, _ = load_pretrain_tasks(PretrainConfig(data="generated:train:6:1:4"))  # input sides <= 4
    assert all(
        max(len(g), len(g[0])) <= 4 for t in small for g in [p.input for p in t.train] + list(t.test_inputs)
    )


def test_training_view_appends_known_test_pairs():
    (task,) = load_pretrain_tasks(PretrainConfig(data="generated:train:1:0"))[0]
    view = training_view(task, use_test_outputs=True)
    assert len(view.train) == len(task.train) + len(task.test_inputs)
    assert view.train[-1].output == task.test_outputs[-1]
    assert training_view(task, use_test_outputs=False) is task


def test_prompt_is_masked_and_eos_learned(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tasks, _ = load_pretrain_tasks(PretrainConfig(data="generated:train:2:0"))
    cfg = config_from_dict({"ttft": SMALL_TTFT})
    sample = epoch_samples(tasks, cfg, lambda s: len(tok(s).input_ids), 0)[0]
    ids, labels = encode_sample(tok, sample)
    n_prompt = len(tok(sample.prompt, add_special_tokens=False).input_ids)
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == sample.target


def test_shards_are_disjoint_equal_and_epochs_redraw_augmentations():
    tasks, _ = load_pretrain_tasks(PretrainConfig(data="generated:train:5:0"))
    cfg = config_from_dict({"ttft": SMALL_TTFT})
    count = len  # characters stand in for tokens here
    full = epoch_samples(tasks, cfg, count, 0)
    shards = [SampleStream(tasks, cfg, count, rank=r, world_size=3).shard(0) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert sum(map(len, shards)) == len(full) // 3 * 3
    keys = [(s.task_id, s.prompt, s.target) for sh in shards for s in sh]
    assert len(set(keys)) == len(keys)
    assert [s.prompt for s in epoch_samples(tasks, cfg, count, 1)] != [s.prompt for s in full]
    stream = SampleStream(tasks, cfg, count, rank=1, world_size=3)
    taken = stream.take(len(shards[1]) + 2)
    assert taken[: len(shards[1])] == shards[1] and (stream.epoch, stream.offset) == (1, 2)
    again = SampleStream(tasks, cfg, count, rank=1, world_size=3, epoch=1, offset=0).take(2)
    assert again == taken[-2:]


# -------------------------------------------------------------------------------- training, no Ray


def _cfgs(tiny_model_dir: Path, **pretrain):
    cfg = config_from_dict({"model": {"name": str(tiny_model_dir)}, "ttft": SMALL_TTFT})
    pcfg = PretrainConfig(data="generated:train:4:0", checkpoint_every=2, log_every=1, **pretrain)
    return cfg, pcfg


def test_resume_continues_exactly_where_the_checkpoint_left_off(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    cfg, pcfg = _cfgs(tiny_model_dir)
    tasks, _ = load_pretrain_tasks(pcfg)
    saved: dict[int, Path] = {}

    def keep(metrics, ckpt):
        assert math.isfinite(metrics["loss"])
        if ckpt is not None:
            saved[metrics["step"]] = Path(shutil.copytree(ckpt, tmp_path / f"ckpt-{metrics['step']}"))

    straight = train_worker(cfg, pcfg, tasks, str(tiny_model_dir), str(tmp_path / "a"), report=keep)
    assert straight["step"] == 4 and sorted(saved) == [2, 4]
    resumed = train_worker(cfg, pcfg, tasks, str(tiny_model_dir), str(tmp_path / "b"), resume_dir=saved[2])
    assert resumed["start_step"] == 2 and resumed["step"] == 4
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert not _differs(a, b), "2 steps + resume + 2 steps must equal 4 steps"
    assert _differs(a, _weights(tiny_model_dir))
    summary = json.loads((tmp_path / "b" / SUMMARY_FILE).read_text())
    assert [h[0] for h in summary["history"]] == [1, 2, 3, 4] and summary["start_step"] == 2

    # A complete checkpoint: nothing to train, the model is exported again.
    done = train_worker(cfg, pcfg, tasks, str(tiny_model_dir), str(tmp_path / "b"), resume_dir=saved[4])
    assert done["start_step"] == 4 and not _differs(a, _weights(tmp_path / "b"))

    # Another recipe must not silently continue from this checkpoint.
    other = dataclasses.replace(pcfg, data="generated:train:5:0")
    with pytest.raises(ValueError, match="another data"):
        train_worker(cfg, other, tasks, str(tiny_model_dir), str(tmp_path / "c"), resume_dir=saved[2])


def test_lora_mode_exports_merged_full_weights(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    cfg, pcfg = _cfgs(tiny_model_dir, mode="lora")
    cfg.ttft.optim.steps = 2
    cfg.ttft.optim.lr = 1e-2
    tasks, _ = load_pretrain_tasks(pcfg)
    train_worker(cfg, pcfg, tasks, str(tiny_model_dir), str(tmp_path / "out"))
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any("adapter" in f for f in files)
    base, out = _weights(tiny_model_dir), _weights(tmp_path / "out")
    assert _differs(base, out)
    assert torch.equal(base["model.embed_tokens.weight"], out["model.embed_tokens.weight"])  # LoRA: no embed


# ------------------------------------------------------------------------------------ Ray Train job


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # address="local": a fresh Ray for this module, even if `ray start` runs elsewhere on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="ttft-pretrain-tests")
    yield
    ray.shutdown()


def test_ray_train_job_checkpoints_to_s3_and_resumes(
    local_ray,
    s3_server,  # noqa: F811
    tiny_model_dir,
    tmp_path,
    capsys,
    monkeypatch,
):
    from jobs.pretrain import main
    from ttft import objstore

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)  # the job forwards AWS_* to its workers
    root = f"s3://{s3_server.bucket}/pretrain-{uuid.uuid4().hex[:8]}"
    config = {
        "name": "pretrain_test",
        "model": {"name": str(tiny_model_dir)},
        "pretrain": {
            "data": "generated:train:10:0",
            "workers": 2,
            "cpus_per_worker": 1,
            "torch_threads": 1,
            "output": f"{root}/model",
            "storage": f"{root}/checkpoints",
            "checkpoint_every": 3,
            "log_every": 3,
        },
        "ttft": SMALL_TTFT,
    }
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    fs, prefix = objstore.filesystem_from_uri(root)

    def fetch_model(local: Path) -> tuple[Path, dict]:
        objstore.download_dir(fs, f"{prefix}/model", local)
        return local, json.loads((local / SUMMARY_FILE).read_text())

    assert main(["--config", str(path), "--steps", "6"]) == 0
    first = _result_line(capsys.readouterr().out)
    assert first["step"] == 6 and first["start_step"] == 0 and math.isfinite(first["loss"])
    assert first["checkpoint"].startswith(f"{prefix}/checkpoints/pretrain_test/")
    assert fs.get_file_info(f"{first['checkpoint']}/{STATE_FILE}").size > 0
    model_6, summary = fetch_model(tmp_path / "model-6")
    assert summary["workers"] == 2 and [h[0] for h in summary["history"]] == [3, 6]
    assert all(math.isfinite(loss) for _, loss in summary["history"])
    after_6 = _weights(model_6)  # a plain HF model dir: transformers loads it
    assert _differs(after_6, _weights(tiny_model_dir))

    # The same command with more steps resumes from the step-6 checkpoint instead of step 0.
    assert main(["--config", str(path), "--steps", "9"]) == 0
    second = _result_line(capsys.readouterr().out)
    assert second["start_step"] == 6 and second["step"] == 9
    model_9, summary = fetch_model(tmp_path / "model-9")
    assert [h[0] for h in summary["history"]] == [3, 6, 9] and summary["start_step"] == 6
    assert _differs(_weights(model_9), after_6)


# ------------------------------------------------------------------------------------ fresh tasks

NO_AUGMENT = {"d8": ["identity"], "color": False, "shuffle_order": False, "per_split": 1}


def test_fresh_source_refuses_augmentations():
    with pytest.raises(ConfigError, match="fresh task sources train on the tasks as drawn"):
        pretrain_config_from_dict({"pretrain": {"data": "fresh:canary:train:0"}})
    _, pcfg = pretrain_config_from_dict(
        {"pretrain": {"data": "fresh:canary:train:0"}, "ttft": {"augment": NO_AUGMENT}}
    )
    assert load_pretrain_tasks(pcfg) == ([], [])


def test_fresh_tasks_are_new_every_step_disjoint_across_ranks_and_replayable():
    ranks = [FreshTasks("fresh:canary:train:3", 4, 2, rank=r, world_size=2) for r in range(2)]
    seen = [t.id for step in range(3) for micro in range(2) for fr in ranks for t in fr.batch(step, micro)]
    assert len(seen) == len(set(seen)) == 3 * 2 * 2 * 4  # every task drawn once
    assert all(i.startswith("gen-canary-train-") for i in seen)
    assert ranks[1].batch(2, 1) == FreshTasks("fresh:canary:train:3", 4, 2, 1, 2).batch(2, 1)  # resume
    assert ranks[0].batch(0) != FreshTasks("fresh:canary:train:4", 4, 2, 0, 2).batch(0)


def test_task_sequence_learns_every_output_grid_and_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    from ttft.formats import build_prompt, build_target

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    (task,) = FreshTasks("fresh:canary:train:0", 1, 1).batch(0)
    ids, labels = task_sequence(tok, task, "minimal")
    text = build_prompt(task.train, task.test_inputs[0], "minimal") + build_target(task.test_outputs[0])
    assert tok.decode(ids[:-1]) == text and ids[-1] == labels[-1] == tok.eos_token_id
    learned = tok.decode([i for i, y in zip(ids[:-1], labels[:-1]) if y != -100])
    outputs = [*(p.output for p in task.train), task.test_outputs[0]]
    assert learned == "".join(build_target(g) for g in outputs)  # every output grid + newline, no input
    assert all(y in (-100, i) for i, y in zip(ids, labels))
    with pytest.raises(ValueError, match="needs the test output"):
        task_sequence(tok, dataclasses.replace(task, test_outputs=None), "minimal")


def test_wall_clock_schedule_warms_up_then_decays_to_the_floor():
    progress = [0.0]
    f = wall_clock_lambda("cosine", 4, 0.05, lambda: progress[0])
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(10) == pytest.approx(1.0)
    progress[0] = 0.5
    assert f(10) == pytest.approx(0.05 + 0.95 * 0.5)
    progress[0] = 2.0  # past the budget: stays at the floor
    assert f(10) == pytest.approx(0.05)
    assert wall_clock_lambda("constant", 0, 0.05, lambda: 0.7)(3) == 1.0


def _fresh_cfgs(tiny_model_dir: Path, **pretrain) -> tuple:
    ttft = {**SMALL_TTFT, "augment": NO_AUGMENT, "samples": {"encoder": "minimal"}}
    cfg = config_from_dict({"model": {"name": str(tiny_model_dir)}, "ttft": ttft})
    pcfg = PretrainConfig(
        data="fresh:canary:train:0", checkpoint_every=2, log_every=1, adam_betas=[0.9, 0.98], **pretrain
    )
    return cfg, pcfg


def test_fresh_stream_resumes_exactly(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    cfg, pcfg = _fresh_cfgs(tiny_model_dir, min_lr_ratio=0.05)
    saved: dict[int, Path] = {}

    def keep(metrics, ckpt):
        if ckpt is not None:
            saved[metrics["step"]] = Path(shutil.copytree(ckpt, tmp_path / f"ckpt-{metrics['step']}"))

    straight = train_worker(cfg, pcfg, [], str(tiny_model_dir), str(tmp_path / "a"), report=keep)
    assert straight["step"] == 4 and straight["lr"] > 0
    train_worker(cfg, pcfg, [], str(tiny_model_dir), str(tmp_path / "b"), resume_dir=saved[2])
    assert not _differs(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    summary = json.loads((tmp_path / "a" / SUMMARY_FILE).read_text())
    assert summary["tasks"] == 4 * 2 and summary["train_seconds"] > 0  # 4 steps x batch 2, fresh each


def test_wall_time_budget_stops_the_run(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    cfg, pcfg = _fresh_cfgs(tiny_model_dir, max_minutes=0.02, min_lr_ratio=0.05)
    cfg.ttft.optim.steps = 10**6
    lrs = []
    last = train_worker(
        cfg, pcfg, [], str(tiny_model_dir), str(tmp_path / "m"), report=lambda m, c: lrs.append(m["lr"])
    )
    assert 1 <= last["step"] < 10**6 and last["train_seconds"] >= 1.2
    assert lrs[-1] < 0.15 * cfg.ttft.optim.lr < lrs[0]  # decayed over the budget, near its 5% floor
    assert (tmp_path / "m" / "model.safetensors").is_file()
