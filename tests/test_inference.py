"""Inference end to end on the tiny model: fine-tune -> vLLM multi-LoRA -> parse -> invert -> vote."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from ttft.augment import Augmentation
from ttft.config import load_config
from ttft.finetune import FinetuneJob, Finetuner
from ttft.formats import build_target
from ttft.inference import (
    Adapter,
    Prompt,
    augmentations_for,
    build_prompts,
    collect,
    generate,
    max_output_side,
    predict,
)
from ttft.scoring import score_submission, solutions_of, validate_submission
from ttft.tasks import Pair, Task
from ttft.vllm_engine import GenResult
from ttft.voting import Candidate, vote

ROOT = Path(__file__).resolve().parents[1]
G_A = [[1, 2], [3, 4]]
G_B = [[5, 0], [6, 7]]


def constant_task(task_id: str, output: list[list[int]], seed: int) -> Task:
    """A trivial rule: every 2x2 input maps to the same asymmetric 2x2 grid."""
    rng = random.Random(seed)

    def grid() -> list[list[int]]:
        return [[rng.choice([0, 8, 9]) for _ in range(2)] for _ in range(2)]

    train = tuple(Pair(grid(), output) for _ in range(4))
    return Task(task_id, train, (grid(),), (output,))


def tokens(tok):
    return lambda s: len(tok(s, add_special_tokens=False).input_ids)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """Two adapters, each fitted to its own constant-output task (no augmentation: the rule is trivial)."""
    cfg = load_config(
        ROOT / "jobs/configs/smoke.yaml",
        {
            "model.name": str(tiny_model_dir),
            "ttft.optim.steps": 60,
            "ttft.optim.lr": 5e-3,
            "ttft.optim.batch_size": 4,
            "ttft.lora.rank": 16,
            "ttft.lora.alpha": 32,
            "ttft.augment.d8": ["identity"],
            "ttft.augment.color": False,
            "ttft.augment.shuffle_order": False,
            "ttft.samples.mode": "all",
            "inference.color_perms": 0,
        },
    )
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=2)
    out = tmp_path_factory.mktemp("adapters")
    tasks = [constant_task("const-a", G_A, 1), constant_task("const-b", G_B, 2)]
    adapters = {}
    for t, key in zip(tasks, ("a" * 32, "b" * 32)):
        r = ft.train(FinetuneJob(key, [t]), out / key)
        assert r.val_loss_after < 0.05, (t.id, r.val_loss_after, r.train_losses[-5:])
        adapters[t.id] = Adapter(key, str(out / key))
    return cfg, ft, tasks, adapters


@pytest.mark.vllm
def test_adapters_predict_their_tasks_and_candidates_are_inverted(vllm_engine, trained):
    """Wiring proof: training format == inference format, adapters load through vLLM, votes and the
    submission come out right, and every augmented candidate reaches the vote inverted."""
    cfg, ft, tasks, adapters = trained
    count = tokens(ft.tokenizer)
    identity_only = dataclasses.replace(cfg.inference, d8=["identity"])
    preds = predict(vllm_engine, tasks, adapters, identity_only, "minimal", count)
    for t, want in zip(tasks, (G_A, G_B)):
        (best, *_) = preds.attempts[t.id][0]
        assert best.grid == want and best.votes == 1
    sub = preds.submission()
    assert validate_submission(sub, tasks) == []
    assert score_submission(sub, solutions_of(tasks)).mean_score == 1.0

    # All eight D8 prompts per test input go through the same pass; each valid candidate is inverted with its
    # own augmentation before voting. (The inversions themselves are property-tested in test_augment.py.)
    preds = predict(vllm_engine, tasks, adapters, cfg.inference, "minimal", count)
    table = preds.candidates.to_pylist()
    assert len(table) == 2 * 8
    for t in tasks:
        rows = [r for r in table if r["task_id"] == t.id]
        assert {r["adapter_key"] for r in rows} == {adapters[t.id].key}
        assert {r["aug_key"] for r in rows} == {a.key for a in augmentations_for(t, cfg.inference)}
        inverted = [
            Augmentation.from_key(r["aug_key"]).invert_grid(json.loads(r["grid"])) for r in rows if r["grid"]
        ]
        voted = preds.attempts[t.id][0]
        assert sum(
            a.votes
            for a in vote(
                [
                    Candidate(
                        r["aug_key"],
                        json.loads(r["grid"]) if r["grid"] else None,
                        r["logprob"],
                        r["n_tokens"],
                    )
                    for r in rows
                ],
                top_k=None,
            )
        ) == len(inverted)
        assert all(a.grid in inverted for a in voted)
        identity = next(r for r in rows if r["aug_key"] == "identity")
        assert json.loads(identity["grid"]) == (G_A if t.id == "const-a" else G_B)


@pytest.mark.vllm
def test_several_adapters_in_one_pass_each_request_gets_its_own(vllm_engine, trained):
    cfg, ft, tasks, adapters = trained
    a, b = tasks
    prompts, _ = build_prompts(
        tasks, adapters, dataclasses.replace(cfg.inference, d8=["identity"]), "minimal", tokens(ft.tokenizer)
    )
    pa_, pb_ = prompts
    crossed = dataclasses.replace(pa_, adapter=adapters[b.id])  # task A's prompt, task B's adapter
    results = generate(vllm_engine, [pa_, pb_, crossed], cfg.inference)
    texts = [r[0].text for r in results]
    assert texts[:2] == [build_target(G_A), build_target(G_B)], texts
    assert texts[2] != texts[0], texts  # same prompt, other adapter: the request really used B's weights


@pytest.mark.vllm
def test_missing_adapter_falls_back_to_base_model_and_is_flagged(vllm_engine, trained):
    cfg, ft, tasks, adapters = trained
    only_a = dataclasses.replace(cfg.inference, d8=["identity"])
    preds = predict(
        vllm_engine, tasks, {tasks[0].id: adapters[tasks[0].id]}, only_a, "minimal", tokens(ft.tokenizer)
    )
    assert preds.fallback == {tasks[1].id}
    rows = [r for r in preds.candidates.to_pylist() if r["task_id"] == tasks[1].id]
    assert rows and all(r["fallback"] and r["adapter_key"] is None for r in rows)
    assert preds.attempts[tasks[0].id][0][0].grid == G_A


def test_garbage_outputs_become_invalid_candidates():
    task = constant_task("garbage", G_A, 3)
    texts = [
        ("12\n34\n", "stop"),
        ("1x\n34\n", "stop"),
        ("12\n3\n45\n", "stop"),
        ("", "stop"),
        ("\n".join(["0" * 40] * 40) + "\n", "stop"),
        ("12\n34", "length"),
        ("<out>\n<in>", "stop"),
    ]
    prompts = [Prompt(task.id, 0, "identity", "p", 10, None) for _ in texts]
    results = [[GenResult(text, -1.0, 4, reason)] for text, reason in texts]
    preds = collect([task], prompts, results, "minimal")
    rows = preds.candidates.to_pylist()
    errors = [r["error"] for r in rows]
    assert errors[0] is None
    assert errors[1:] == ["stray_characters", "ragged", "empty", "too_large", "truncated", "empty"], errors
    assert [a.grid for a in preds.attempts[task.id][0]] == [G_A]  # only the valid one votes


def test_prompts_cover_tasks_x_augmentations_and_bound_max_tokens(tiny_model_dir, trained):
    cfg, ft, tasks, adapters = trained
    count = tokens(ft.tokenizer)
    prompts, skipped = build_prompts(tasks, adapters, cfg.inference, "minimal", count)
    assert not skipped and len(prompts) == 16
    assert {p.aug_key for p in prompts} == {a.key for a in augmentations_for(tasks[0], cfg.inference)}
    side = max_output_side(tasks[0])
    assert 4 <= side <= 30
    assert all(
        p.max_tokens == count(build_target([[0] * side] * side)) + 2
        for p in prompts
        if p.task_id == tasks[0].id
    )
    big = Task("big", tasks[0].train, ([[0] * 30] * 30,))
    assert max_output_side(big) == 30
