"""`ttft data fit`: do a dataset's prompts and answers fit the config's context and output budgets?

For every test input under every inference augmentation, the prompt is built exactly as inference builds
it (`inference.build_prompts`: the config's encoder, the model's tokenizer, examples dropped to fit
`inference.max_model_len`, `max_tokens` from `inference.output_budget` or `inference.max_tokens`). A test
output is *predictable* when at least one augmentation gives it a prompt whose budget holds the real
answer (+ EOS); without a known answer, when a prompt fits. Users pick `max_model_len` from this table.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ttft.augment import Augmentation
from ttft.config import InferenceConfig
from ttft.formats import build_target
from ttft.inference import build_prompts
from ttft.tasks import Task


@dataclass
class FitReport:
    """Token statistics of one dataset under one config, and what cannot be predicted."""

    source: str
    tasks: int
    test_outputs: int
    augmentations: int
    prompt_tokens: list[int] = field(default_factory=list)  # one per prompt built
    output_tokens: list[int] = field(default_factory=list)  # real answer + EOS, one per prompt (if known)
    budgets: list[int] = field(default_factory=list)  # max_tokens, one per prompt
    dropped: set[tuple[str, int]] = field(default_factory=set)  # test inputs with examples left out
    partly_skipped: set[tuple[str, int]] = field(default_factory=set)  # no prompt under some augmentation
    over_budget: set[tuple[str, int]] = field(default_factory=set)  # answer > budget under some augmentation
    unpredictable: dict[tuple[str, int], str] = field(default_factory=dict)  # why, per test output

    @property
    def predictable(self) -> int:
        return self.test_outputs - len(self.unpredictable)

    def lines(self, max_model_len: int) -> list[str]:
        """The human-readable report; its last line is `N/M test outputs predictable`."""
        n = self.test_outputs
        out = [
            f"{self.source}: {self.tasks} tasks, {n} test outputs, {self.augmentations} augmentations each",
            "",
            "| tokens | median | p90 | max |",
            "|---|---|---|---|",
        ]
        for name, values in (
            ("prompt", self.prompt_tokens),
            ("output (real answer + EOS)", self.output_tokens),
            ("output budget (max_tokens)", self.budgets),
        ):
            out.append(f"| {name} | " + " | ".join(_stats(values)) + " |")
        out += [
            "",
            f"test inputs that drop examples to fit max_model_len={max_model_len}: {len(self.dropped)}/{n}",
            f"test inputs without a prompt under some augmentation: {len(self.partly_skipped)}/{n}",
            f"test outputs over their budget under some augmentation: {len(self.over_budget)}/{n}",
        ]
        out += [
            f"cannot predict {tid} test {i}: {why}" for (tid, i), why in sorted(self.unpredictable.items())
        ]
        out.append(f"{self.predictable}/{n} test outputs predictable")
        return out


def _stats(values: Sequence[int]) -> list[str]:
    if not values:
        return ["-", "-", "-"]
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return [f"{statistics.median(ordered):g}", str(p90), str(ordered[-1])]


def fit_report(
    source: str,
    tasks: Sequence[Task],
    cfg: InferenceConfig,
    encoder: str,
    count_prompt: Callable[[str], int],
    count_text: Callable[[str], int],
) -> FitReport:
    """Build every inference prompt of `tasks` and measure it against the real answers.

    ``count_prompt`` counts a prompt as it is sent (with the tokenizer's leading special tokens);
    ``count_text`` counts generated text (no special tokens; EOS is added here).
    """
    rep = FitReport(source, len(tasks), sum(len(t.test_inputs) for t in tasks), 0)
    prompts, skipped = build_prompts(tasks, {}, cfg, encoder, count_prompt)
    by_id = {t.id: t for t in tasks}
    augs_per_task = {}
    ok: set[tuple[str, int]] = set()
    for p in prompts:
        task, key = by_id[p.task_id], (p.task_id, p.test_index)
        augs_per_task.setdefault(p.task_id, set()).add(p.aug_key)
        rep.prompt_tokens.append(count_prompt(p.text))
        rep.budgets.append(p.max_tokens)
        if p.text.count("<in>") - 1 < len(task.train):
            rep.dropped.add(key)
        if task.test_outputs is None:
            ok.add(key)
            continue
        answer = Augmentation.from_key(p.aug_key).apply_grid(task.test_outputs[p.test_index])
        need = count_text(build_target(answer, encoder)) + 1
        rep.output_tokens.append(need)
        if need > p.max_tokens:
            rep.over_budget.add(key)
        else:
            ok.add(key)
    reasons: dict[tuple[str, int], str] = {}
    for s in skipped:
        augs_per_task.setdefault(s["task_id"], set()).add(s["aug_key"])
        rep.partly_skipped.add((s["task_id"], s["test_index"]))
        reasons.setdefault((s["task_id"], s["test_index"]), s["reason"])
    rep.augmentations = max((len(a) for a in augs_per_task.values()), default=0)
    for t in tasks:
        for i in range(len(t.test_inputs)):
            key = (t.id, i)
            if key not in ok:
                why = [reasons[key]] if key in reasons else []
                why += ["the answer exceeds max_tokens"] if key in rep.over_budget else []
                rep.unpredictable[key] = " or ".join(why) + " under every augmentation"
    return rep
