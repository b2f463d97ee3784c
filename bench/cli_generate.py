r"""`tuneforge generate` / `chat` on the CPU: the server's loop in the calling thread
(`engine.InPlace`, with `DecodeStep`) against transformers' `model.generate`, which they
used before, on the same loaded model. One machine, one run.

Run (about a minute on 2 cores):

    .venv/bin/python bench/cli_generate.py [--requests 6] [--max-tokens 64] [--rounds 2]

The embedded SmolLM2-135M-Instruct loaded as the CLI loads it (`load_for_inference(packed=True)`),
the demo's first requests (system + user), greedy. Each round answers every request once each
way, the two ways alternating; output tokens/s per round, and how many answers have the same
tokens both ways. The last line of stdout is one JSON object, also written to
bench/results/cli_generate.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cli_generate.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    from tuneforge.data.conversation import Message
    from tuneforge.data.demo import generate_examples
    from tuneforge.inference import generate as generation
    from tuneforge.inference.load import load_for_inference
    from tuneforge.models import DEFAULT_MODEL
    from tuneforge.models.precision import cpu_info

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from precision_quality import machine_record

    loaded = load_for_inference(DEFAULT_MODEL, packed=True)
    conversations = [
        [Message(m["role"], m["content"]) for m in example["messages"] if m["role"] != "assistant"]
        for example in generate_examples(args.requests, seed=0)
    ]

    def transformers_generate(messages: list[Message]) -> list[int]:  # what the CLI ran before
        ids = loaded.text.prompt_ids(messages)
        out = generation._generate(loaded, ids, args.max_tokens, 0.0, 1.0)
        return out[0, len(ids) :].tolist()

    def in_place(messages: list[Message]) -> list[int]:  # what it runs now
        return generation.generate(loaded, messages, max_new_tokens=args.max_tokens)[1]

    ways = {"transformers_generate": transformers_generate, "in_place": in_place}
    for way in ways.values():
        way(conversations[0])  # warm-up (and the in-place engine's first use)
    rates: dict[str, list[float]] = {name: [] for name in ways}
    answers: dict[str, list[list[int]]] = {}
    for _ in range(args.rounds):
        for name, way in ways.items():
            start, tokens, answers[name] = time.perf_counter(), 0, []
            for messages in conversations:
                answers[name].append(way(messages))
                tokens += len(answers[name][-1])
            rates[name].append(round(tokens / (time.perf_counter() - start), 2))
    same = sum(
        a == b for a, b in zip(answers["transformers_generate"], answers["in_place"], strict=True)
    )
    for name, values in rates.items():
        print(f"{name:>22}: {', '.join(f'{v:.1f}' for v in values)} output tokens/s")
    print(f"same tokens both ways: {same}/{len(conversations)}")
    record = {
        "machine": machine_record(cpu_info()),
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "tokens_per_s": rates,
        "same_answers": same,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
