"""DPO on the real SmolLM2-135M-Instruct: a preference the base model does not have.

The task (generated here, no download): arithmetic questions whose preferred answer is
`ANSWER: <n>` and whose non-preferred answer is `The answer is <n>.` — the same, correct number,
so the only thing to learn is the preferred form, which the base model never writes. Held out:
unseen number pairs and one unseen phrasing of the question. We measure, before and after, the
policy's own preference (log π(y⁺|x) > log π(y⁻|x), no reference) on the held-out pairs and the
share of greedy answers in the preferred form. Figures, time and command: BENCHMARKS.md.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
from helpers import write_lines

from tuneforge import run_dir as rd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
TRAIN_PHRASINGS = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Tell me {a} {op} {b}.")
HELD_OUT_PHRASING = "How much is {a} {op} {b}?"
PREFERRED = re.compile(r"^ANSWER: -?\d+$")
# A short system message instead of SmolLM2's default one: ~25 fewer tokens per sequence.
SYSTEM = "Answer the question."


def preference_rows(n_train: int, n_valid: int, seed: int = 0) -> tuple[list, list]:
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(2, 31) for b in range(2, 31)]
    rng.shuffle(pairs)
    valid_pairs, train_pairs = pairs[:n_valid], pairs[n_valid : n_valid + n_train]

    def row(a: int, b: int, phrasing: str) -> dict:
        op = rng.choice(list(OPS))
        answer = OPS[op](a, b)
        return {
            "input": {"messages": [{"role": "user", "content": phrasing.format(a=a, op=op, b=b)}]},
            "preferred_output": [{"role": "assistant", "content": f"ANSWER: {answer}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"The answer is {answer}."}],
        }

    train = [row(a, b, rng.choice(TRAIN_PHRASINGS)) for a, b in train_pairs]
    # Half the held-out questions use a phrasing training never saw.
    valid = [
        row(a, b, HELD_OUT_PHRASING if i % 2 else rng.choice(TRAIN_PHRASINGS))
        for i, (a, b) in enumerate(valid_pairs)
    ]
    return train, valid


def greedy_preferred_rate(model: str | Path, rows: list[dict]) -> tuple[float, list[str]]:
    from tuneforge.data.conversation import Message
    from tuneforge.inference.generate import generate_batch
    from tuneforge.inference.load import load_for_inference

    loaded = load_for_inference(model, packed=True)
    prompts = [
        loaded.text.prompt_ids(
            [Message("system", SYSTEM), Message("user", r["input"]["messages"][0]["content"])]
        )
        for r in rows
    ]
    answers = []
    for start in range(0, len(prompts), 16):
        for ids in generate_batch(loaded, prompts[start : start + 16], max_new_tokens=12):
            answers.append(loaded.tokenizer.decode(ids, skip_special_tokens=True).strip())
    return sum(bool(PREFERRED.match(a)) for a in answers) / len(answers), answers


def run_dpo(tmp_path: Path, run_cli, *settings: str) -> dict:
    """`tuneforge train objective=dpo` on 96 training / 32 held-out pairs; what it measured."""
    train_rows, valid_rows = preference_rows(n_train=96, n_valid=32)
    write_lines(tmp_path / "train.jsonl", train_rows)
    write_lines(tmp_path / "valid.jsonl", valid_rows)
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
        "objective=dpo",
        "epochs=1",
        "batch_size=8",
        # 12 steps at 10x DPO's auto rate (5e-5 is for longer runs) move the ~15-nat gap by
        # which the base model prefers the other answer.
        "learning_rate=5e-4",
        "warmup_ratio=0",
        "eval_every=6",
        "eval_examples=32",
        f"system_prompt={SYSTEM}",
        *settings,
    )
    seconds = time.time() - started
    assert code == 0, err
    status = rd.read_status(out)
    rows = rd.read_metrics(out)
    last = status["final_metrics"]  # the last step's metrics and the full validation
    base_rate, base_answers = greedy_preferred_rate("smollm2-135m-instruct", valid_rows)
    after_rate, after_answers = greedy_preferred_rate(out, valid_rows)
    # The form is what the pairs teach; whether the number is right is the model's arithmetic.
    right = [r["preferred_output"][0]["content"] for r in valid_rows]
    exact = sum(a == r for a, r in zip(after_answers, right, strict=True)) / len(right)
    found = {
        "rows": rows,
        "last": last,
        "base_accuracy": status["initial_valid_preference_accuracy"],
        "after_accuracy": last["full_valid_preference_accuracy"],
        "base_rate": base_rate,
        "after_rate": after_rate,
        "base_answers": base_answers,
        "after_answers": after_answers,
    }
    print(
        f"\nDPO SmolLM2-135M {' '.join(settings)}: {len(rows)} steps in {seconds:.0f} s; "
        f"held-out preference accuracy {found['base_accuracy']:.3f} -> "
        f"{found['after_accuracy']:.3f}; implicit-reward accuracy "
        f"{last['full_valid_rewards/accuracies']:.3f}; "
        f"margin {rows[-1]['valid_rewards/margins']:.3f}; held-out nll of the preferred answer "
        f"{status.get('initial_valid_nll_loss', float('nan')):.3f} -> "
        f"{last['full_valid_nll_loss']:.3f}; "
        f"greedy preferred form {base_rate:.3f} -> {after_rate:.3f} "
        f"(with the right number: {exact:.3f})\n"
        f"  base: {base_answers[:3]}\n  after: {after_answers[:3]}"
    )
    return found


def test_dpo_teaches_smollm2_a_preference_it_lacks(tmp_path, run_cli):
    found = run_dpo(tmp_path, run_cli)
    rows, last = found["rows"], found["last"]
    assert rows[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # ln 2 at step 0
    assert found["base_accuracy"] < 0.5
    assert found["after_accuracy"] >= 0.9
    assert last["full_valid_rewards/accuracies"] >= 0.9
    assert rows[-1]["valid_rewards/margins"] > 0
    assert found["base_rate"] <= 0.1
    # The greedy answers change (their openings), but not to the preferred form: DPO raised
    # log π(ANSWER: n) from about −26 to −11.5 and pushed the other answer down to −70, which
    # ranks the pair right but leaves `ANSWER:` far from being the most likely reply
    # (BENCHMARKS.md). The test below adds the SFT term that fixes it.
    assert found["after_answers"] != found["base_answers"]


def test_dpo_with_the_sft_term_answers_in_the_preferred_form(tmp_path, run_cli):
    """dpo_sft_weight=1 (TRL's loss_type=["sigmoid", "sft"], RPO's α = 1): the same pairs, the
    same 12 steps; now the greedy answers move to the preferred form as well."""
    found = run_dpo(tmp_path, run_cli, "dpo_sft_weight=1")
    rows, last = found["rows"], found["last"]
    # step 0: DPO's ln 2 plus the preferred answers' per-token NLL, as logged
    assert rows[0]["train_loss"] == pytest.approx(0.6931 + rows[0]["nll_loss"], abs=1e-3)
    assert found["base_accuracy"] < 0.5 and found["base_rate"] <= 0.1
    assert found["after_accuracy"] >= 0.9
    assert last["full_valid_rewards/accuracies"] >= 0.9
    assert found["after_rate"] >= 0.9, found["after_answers"]
