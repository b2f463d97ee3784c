"""How hard is the demo task, and what did fine-tuning buy? A small check ahead of
`tuneforge compare`: set-F1 of greedy answers on held-out demo test examples for the base model
zero-shot, the base model with 3 training examples in the prompt, and a fine-tuned run.

Run (after bench/train_throughput.py, whose work dir holds the data and the tuneforge run):
    .venv/bin/python bench/demo_answers.py --data /tmp/tfb/full/data \\
        --run /tmp/tfb/full/tuneforge-run-* -n 10
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tuneforge.data.formats import load_conversations
from tuneforge.eval.metrics import json_valid, set_f1
from tuneforge.inference.generate import generate
from tuneforge.inference.load import load_for_inference


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="folder with train/test.jsonl")
    parser.add_argument("--run", type=Path, required=True, help="a fine-tuned run directory")
    parser.add_argument("-n", type=int, default=10, help="test examples")
    args = parser.parse_args()
    shots = [
        m
        for ex in load_conversations(args.data / "train.jsonl")[:3]
        for m in ex.conversation.messages[1:]
    ]
    test = load_conversations(args.data / "test.jsonl")[: args.n]
    base = load_for_inference("smollm2-135m-instruct")
    tuned = load_for_inference(args.run)
    for name, model, with_shots in (
        ("zero-shot", base, False),
        ("3-shot", base, True),
        ("fine-tuned", tuned, False),
    ):
        scores, parsed = [], 0
        for ex in test:
            system, user, reference = ex.conversation.messages
            messages = [system, *(shots if with_shots else []), user]
            answer, _ = generate(model, messages, max_new_tokens=120)
            # Scored as `tuneforge compare` scores (the references are JSON lists).
            scores.append(set_f1(answer, reference.content) or 0.0)
            parsed += json_valid(answer, reference.content) == 1.0
        print(
            f"{name:>10}: mean set-F1 {statistics.mean(scores):.2f}, "
            f"JSON lists {parsed}/{len(test)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
