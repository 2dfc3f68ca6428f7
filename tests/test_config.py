"""Run config: YAML loading, validation errors that name the key, overrides, extends, every shipped config."""

from pathlib import Path

import pytest
import yaml

from ttft.config import (
    VLLM_LORA_RANKS,
    ConfigError,
    load_config,
    parse_duration,
    parse_override,
    ttft_hash,
    vllm_max_lora_rank,
)

CONFIGS = sorted(Path("jobs/configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path: Path) -> None:
    if "pretrain" in yaml.safe_load(path.read_text()):  # a pretraining config: run config + `pretrain:`
        from ttft.pretrain import load_pretrain_config

        cfg, _ = load_pretrain_config(path)
    else:
        cfg = load_config(path)
        assert cfg.name == path.stem
    assert cfg.name


def test_seed_ablations_differ_where_the_seed_says() -> None:
    n1, geo, color = (
        load_config(f"jobs/configs/{n}.yaml") for n in ("n-1", "n-1_geometric", "n-1_geometric_color")
    )
    assert n1.ttft.augment.d8 == ["identity"] and not n1.ttft.augment.color
    assert len(geo.ttft.augment.d8) == 8 and not geo.ttft.augment.color
    assert len(color.ttft.augment.d8) == 8 and color.ttft.augment.color
    assert load_config("jobs/configs/n-2.yaml").ttft.samples.mode == "n-2"
    assert load_config("jobs/configs/preserve_colors.yaml").ttft.augment.preserve_colors
    assert not load_config("jobs/configs/baseline.yaml").ttft.enabled
    assert len({ttft_hash(c.ttft) for c in (n1, geo, color)}) == 3


@pytest.mark.parametrize(
    "text, key",
    [
        ("ttft:\n  optim:\n    lr: fast\n", "ttft.optim.lr: expected float, got str"),
        ("ttft:\n  optim:\n    stepz: 3\n", "ttft.optim.stepz: unknown key"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("ttft:\n  lora:\n    rank: 8.5\n", "ttft.lora.rank: expected int, got float"),
        ("ttft:\n  augment:\n    d8: [rot45]\n", "ttft.augment.d8: unknown D8 transform 'rot45'"),
        ("ttft:\n  samples:\n    mode: n-3\n", "ttft.samples.mode: 'n-3' is not one of"),
        ("ttft:\n  enabled: 1\n", "ttft.enabled: expected bool, got int"),
        ("orchestrate:\n  budget: soon\n", "orchestrate.budget: cannot parse duration"),
        ("data: [1, 2]\n", "data: expected a mapping"),
        ("ttft:\n  optim:\n    steps: 0\n", "ttft.optim.steps: must be >= 1"),
        ("orchestrate:\n  gpus_per_worker: some\n", "orchestrate.gpus_per_worker: expected a number or"),
        ("orchestrate:\n  gpus_per_worker: -1\n", "orchestrate.gpus_per_worker: must be >= 0"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert key in str(e.value)
    assert str(path) in str(e.value)


def test_extends_merges_nested_sections(tmp_path: Path) -> None:
    write(tmp_path, "name: base\nttft:\n  optim: {lr: 0.1, steps: 7}\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nname: child\nttft:\n  optim: {lr: 0.5}\n")
    cfg = load_config(child)
    assert (cfg.name, cfg.ttft.optim.lr, cfg.ttft.optim.steps) == ("child", 0.5, 7)


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_overrides_any_value_and_validate() -> None:
    cfg = load_config(
        "jobs/configs/smoke.yaml",
        dict([parse_override("ttft.optim.lr=3e-4"), parse_override("ttft.augment.d8=[identity]")]),
    )
    assert cfg.ttft.optim.lr == pytest.approx(3e-4)
    assert cfg.ttft.augment.d8 == ["identity"]
    with pytest.raises(ConfigError, match="ttft.optim.nope: unknown key"):
        load_config(None, dict([parse_override("ttft.optim.nope=1")]))


@pytest.mark.parametrize(
    "text, seconds", [("11h30m", 41400), ("45m", 2700), ("90s", 90), ("2.5h", 9000), (30, 30)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_lora_rank_vllm_cannot_serve_is_refused_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, "ttft:\n  lora:\n    rank: 24\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "ttft.lora.rank: 24" in msg
    assert "1, 8, 16, 32, 64, 128, 256, 320, 512" in msg
    with pytest.raises(ConfigError, match="ttft.lora.rank: 24"):
        load_config(None, {"ttft.lora.rank": 24})
    for rank in VLLM_LORA_RANKS:
        assert load_config(None, {"ttft.lora.rank": rank}).ttft.lora.rank == rank


def test_vllm_max_lora_rank_rounds_up_to_a_served_rank() -> None:
    assert [vllm_max_lora_rank(r) for r in (1, 8, 16, 32, 300, 512)] == [8, 8, 16, 32, 320, 512]
    with pytest.raises(ConfigError, match="largest LoRA rank 512"):
        vllm_max_lora_rank(1024)


def test_gpus_per_worker_accepts_auto_and_numbers() -> None:
    assert load_config(None, {"orchestrate.gpus_per_worker": "auto"}).orchestrate.gpus_per_worker == "auto"
    assert load_config(None, {"orchestrate.gpus_per_worker": 0.25}).orchestrate.gpus_per_worker == 0.25
    assert load_config(None, {"orchestrate.gpus_per_worker": 1}).orchestrate.gpus_per_worker == 1.0
    assert load_config(None).model.gradient_checkpointing is False
