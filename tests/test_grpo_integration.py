"""GRPO on the real SmolLM2-135M-Instruct with a programmatic reward (a python grader, run in its
sandboxed subprocess): answer "Name one <category>." in as few words as possible — reward 1/words
(1 for one word, 0.5 for two, …). The base model answers with a sentence (a first try with an
all-or-nothing one-word reward was stopped by the preflight: every group scored 0). Held-out
categories are disjoint from the training ones. Measured: the greedy held-out mean reward before
(the run's step-0 validation) and after. Figures, time and command: BENCHMARKS.md.
"""

from __future__ import annotations

import time

import pytest
from helpers import write_lines

from tuneforge import run_dir as rd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATEGORIES = (
    "fruit", "vegetable", "color", "animal", "bird", "fish", "tree", "flower", "metal", "planet",
    "country", "city", "river", "ocean", "mountain", "language", "sport", "instrument",
    "vehicle", "tool", "insect", "gemstone", "spice", "herb", "dessert", "drink", "cheese",
    "bread", "fabric", "dance", "weapon", "mammal", "reptile", "season", "weekday", "month",
    "emotion", "shape", "element", "profession",
)  # fmt: skip
ONE_WORD = """
def grade(sample, item):
    words = sample["output_text"].split()
    return 1.0 / len(words) if words else 0.0
"""
SYSTEM = "Be brief."


def rows(categories) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Name one {c}."}], "category": c}
        for c in categories
    ]


def test_grpo_teaches_smollm2_one_word_answers(tmp_path, run_cli):
    import json

    write_lines(tmp_path / "train.jsonl", rows(CATEGORIES[:24]))
    write_lines(tmp_path / "valid.jsonl", rows(CATEGORIES[24:]))
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps({"type": "python", "name": "one_word", "source": ONE_WORD}))
    out = tmp_path / "run"
    started = time.time()
    code, _, err = run_cli(
        "train",
        "-t",
        str(tmp_path / "train.jsonl"),
        "-v",
        str(tmp_path / "valid.jsonl"),
        "--out",
        str(out),
        "objective=grpo",
        f"grader={grader}",
        "batch_size=2",
        "grpo_group_size=6",
        "max_completion_tokens=10",
        "max_steps=16",
        "learning_rate=3e-4",
        "lr_schedule=constant",
        "warmup_ratio=0",
        "eval_every=16",
        f"system_prompt={SYSTEM}",
    )
    seconds = time.time() - started
    assert code == 0, err
    status = rd.read_status(out)
    rows_ = rd.read_metrics(out)
    before = status["initial_valid_reward_mean"]
    after = status["final_metrics"]["full_valid_reward_mean"]
    rewards = [r["reward"] for r in rows_]
    print(
        f"\nGRPO SmolLM2-135M: {len(rows_)} steps in {seconds:.0f} s; preflight reward "
        f"{status['preflight_reward_mean']:.3f}; held-out greedy reward {before:.3f} -> "
        f"{after:.3f}; train reward first 4 {sum(rewards[:4]) / 4:.3f}, last 4 "
        f"{sum(rewards[-4:]) / 4:.3f}; mean length {rows_[0]['completions/mean_length']:.1f} -> "
        f"{rows_[-1]['completions/mean_length']:.1f}"
    )
    assert before <= 0.75  # the base model is mediocre at it
    assert after >= before + 0.25
    assert sum(rewards[-4:]) > sum(rewards[:4])
