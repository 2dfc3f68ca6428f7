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
from ttft.formats import build_target, split_tokens
from ttft.inference import (
    Adapter,
    Prompt,
    augmentations_for,
    build_prompts,
    collect,
    generate,
    output_budget,
    output_shape_bound,
    predict,
)
from ttft.scoring import score_submission, solutions_of, validate_submission
from ttft.tasks import Pair, Task, load_tasks
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
    assert all(p.token_ids is None for p in prompts)  # no encode given: text only
    # 2x2 -> 2x2 pairs: at most 4x4 (BUDGET_MARGIN 2), i.e. "0000\n" x 4 + EOS + 1 spare
    assert output_shape_bound(tasks[0].train, tasks[0].test_inputs[0]) == (4, 4)
    assert {p.max_tokens for p in prompts} == {count(build_target([[0] * 4] * 4)) + 2} == {22}
    big = [[0] * 30] * 30
    assert output_shape_bound(tasks[0].train, big) == (30, 30)  # capped at MAX_SIDE
    tall = (Pair([[1]], [[1], [2], [3]]),)  # outputs 3x as tall as inputs, as wide
    assert output_shape_bound(tall, [[0, 0]] * 2) == (12, 4)
    assert output_shape_bound(tall, [[0], [0]]) != output_shape_bound(tall, [[0, 0]])  # follows transposes
    # inference.max_tokens overrides the bound
    fixed = dataclasses.replace(cfg.inference, max_tokens=7)
    prompts, _ = build_prompts(tasks, adapters, fixed, "minimal", count, encode=lambda s: [len(s)])
    assert {p.max_tokens for p in prompts} == {7} and all(p.token_ids == (len(p.text),) for p in prompts)


def char_tokens(text: str) -> int:
    """Token count under the tiny tokenizer (one token per character or marker), without loading it."""
    return len(split_tokens(text))


@pytest.mark.parametrize("source", ["arc1/training", "arc1/evaluation", "arc2/training", "arc2/evaluation"])
def test_every_real_test_output_fits_its_budget(source):
    """No task is impossible by construction: under every D8 transform and with both encoders, each test
    output of ARC-AGI-1/2 (+ EOS) fits the max_tokens its prompt gets."""
    from ttft.config import ALL_D8

    tasks = load_tasks(source).tasks
    over = []
    n = 0
    for task in tasks:
        for d8 in ALL_D8:
            t = Augmentation(d8=d8).apply_task(task)
            assert t.test_outputs is not None
            for test_in, test_out in zip(t.test_inputs, t.test_outputs):
                for encoder in ("minimal", "shape"):
                    n += 1
                    need = char_tokens(build_target(test_out, encoder)) + 1
                    if need > output_budget(t.train, test_in, encoder, char_tokens):
                        over.append((task.id, d8, encoder))
    assert n >= len(tasks) * 16 and not over, over[:10]


def test_length_stopped_complete_grid_is_accepted_and_incomplete_one_is_not():
    task = constant_task("cut", G_A, 4)
    texts = [
        ("12\n34\n\n<in>\n12", "length"),  # whole grid, then the model went on: accepted
        ("12\n34\n<in>", "length"),  # whole grid, then a marker
        ("12\n34\n", "length"),  # more rows could have followed: truncated
        ("12\n34", "stop"),  # stopped at a stop string (not in the text): accepted
    ]
    prompts = [Prompt(task.id, 0, "identity", "p", 10, None) for _ in texts]
    results = [[GenResult(text, -1.0, 4, reason)] for text, reason in texts]
    rows = collect([task], prompts, results, "minimal").candidates.to_pylist()
    assert [r["error"] for r in rows] == [None, None, "truncated", None]
    assert [json.loads(r["grid"]) for r in rows if r["grid"]] == [G_A] * 3


def test_skipped_test_inputs_are_recorded_and_reported(tmp_path):
    """A test input whose prompt fits under no augmentation: a row with the reason in predictions.parquet,
    its row in results.parquet, a placeholder in the submission, and a section in the report."""
    import pyarrow.parquet as pq

    from ttft.config import InferenceConfig
    from ttft.inference import write_predictions
    from ttft.report import RunRecord, write_run

    small = constant_task("small", G_A, 5)
    large = Task("large", (Pair([[1] * 12] * 12, [[2] * 12] * 12),), ([[3] * 12] * 12,), ([[2] * 12] * 12,))
    cfg = InferenceConfig(d8=["identity", "rot90"], max_model_len=200)
    prompts, skipped = build_prompts([small, large], {}, cfg, "minimal", char_tokens)
    assert {p.task_id for p in prompts} == {"small"}
    assert [(s["task_id"], s["test_index"], s["aug_key"]) for s in skipped] == [
        ("large", 0, "identity"),
        ("large", 0, "rot90"),
    ]
    assert "max_model_len=200" in skipped[0]["reason"]
    results = [[GenResult(build_target(G_A), -0.5, 5, "stop")] for _ in prompts]
    preds = collect([small, large], prompts, results, "minimal", skipped)
    assert preds.skipped_inputs() == {("large", 0): skipped[0]["reason"]}
    write_predictions(preds, tmp_path)
    rows = pq.read_table(tmp_path / "predictions.parquet").to_pylist()
    skip_rows = [r for r in rows if r["error"] == "skipped"]
    assert len(skip_rows) == 2 and all(r["skip_reason"] == skipped[0]["reason"] for r in skip_rows)
    assert all(r["skip_reason"] is None for r in rows if r["task_id"] == "small")
    sub = preds.submission()
    assert sub["large"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}] and sub["small"][0]["attempt_1"] == G_A
    score = score_submission(sub, solutions_of([small, large]))
    summary = write_run(
        RunRecord("skips", [small, large], {}, None, preds, score, ttft_enabled=False), tmp_path
    )
    results_rows = {r["task_id"]: r for r in pq.read_table(tmp_path / "results.parquet").to_pylist()}
    assert (
        results_rows["large"]["skipped"] == skipped[0]["reason"] and results_rows["small"]["skipped"] is None
    )
    assert summary["skipped"] == [{"task_id": "large", "test_index": 0, "reason": skipped[0]["reason"]}]
    report = (tmp_path / "report.md").read_text()
    from ttft.safetext import markdown

    assert "## Skipped test inputs" in report
    assert f"- large test 0: {markdown(skipped[0]['reason'])}" in report


def test_runs_without_solutions_predict_and_say_not_scored(tmp_path):
    """Kaggle test challenges have no solutions: nothing to score, a report that says so; a mixed set is
    scored on the tasks that have solutions."""
    from ttft.report import RunRecord, write_run
    from ttft.scoring import known_solutions

    solved = constant_task("known", G_A, 6)
    unknown = constant_task("unknown", G_B, 7).with_test_outputs(None)
    prompts = [Prompt(t.id, 0, "identity", "p", 10, None) for t in (solved, unknown)]
    results = [[GenResult(build_target(g), -0.5, 5, "stop")] for g in (G_A, G_B)]
    preds = collect([solved, unknown], prompts, results, "minimal")
    assert known_solutions([unknown]) == {}
    none = write_run(RunRecord("none", [unknown], {}, None, preds, None, ttft_enabled=False), tmp_path / "a")
    assert none["accuracy"] is None and none["scored_tasks"] == 0
    assert "No solutions: not scored" in (tmp_path / "a" / "report.md").read_text()
    sols = known_solutions([solved, unknown])
    assert list(sols) == ["known"]
    score = score_submission(preds.submission(), sols)
    mixed = write_run(
        RunRecord("mixed", [solved, unknown], {}, None, preds, score, ttft_enabled=False), tmp_path / "b"
    )
    assert mixed["accuracy"] == 1.0 and mixed["scored_tasks"] == 1
    assert (
        "Scored 1 of 2 tasks; 1 have no solutions: not scored." in (tmp_path / "b" / "report.md").read_text()
    )


def bos_model_dir(out: Path) -> Path:
    """The tiny model with a tokenizer that, like Llama's or Mistral's, puts <bos> before every text."""
    from ttft.model import BOS, init_tiny_model

    init_tiny_model(out)
    path = out / "tokenizer.json"
    spec = json.loads(path.read_text())
    bos_id = next(t["id"] for t in spec["added_tokens"] if t["content"] == BOS)
    bos = {"SpecialToken": {"id": BOS, "type_id": 0}}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}},
    }
    path.write_text(json.dumps(spec))
    return out


def test_bos_tokenizer_ids_identical_in_training_and_inference(tmp_path):
    """Training (Finetuner -> encode_sample) and inference (the token ids sent to vLLM, with the tokenizer
    vLLM loads) see the same prompt ids, BOS first, for a tokenizer that adds BOS."""
    from vllm.tokenizers import get_tokenizer

    from ttft.finetune import encode_sample
    from ttft.samples import prompt_token_ids, val_samples

    model_dir = bos_model_dir(tmp_path / "bos")
    cfg = load_config(ROOT / "jobs/configs/smoke.yaml", {"model.name": str(model_dir)})
    ft = Finetuner(cfg.model, cfg.ttft, torch_threads=1)
    bos_id = ft.tokenizer.bos_token_id
    assert ft.tokenizer("01").input_ids[0] == bos_id  # the tokenizer really adds BOS
    task = constant_task("bos", G_A, 8)
    (sample,) = val_samples(task, cfg.ttft.samples, ft.count_tokens)
    train_ids, labels = encode_sample(ft.tokenizer, sample)

    engine_tok = get_tokenizer(str(model_dir))  # what vllm.LLM (VllmEngine.tokenizer) loads
    identity = dataclasses.replace(cfg.inference, d8=["identity"])
    (prompt,), _ = build_prompts(
        [task], {}, identity, "minimal", tokens(engine_tok), encode=lambda s: prompt_token_ids(engine_tok, s)
    )
    assert prompt.text == sample.prompt
    n = len(prompt.token_ids)
    assert prompt.token_ids[0] == bos_id and list(prompt.token_ids).count(bos_id) == 1
    assert train_ids[:n] == list(prompt.token_ids) and labels[:n] == [-100] * n
    assert engine_tok(prompt.text).input_ids == list(prompt.token_ids)  # = vLLM's own text tokenization
