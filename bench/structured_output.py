"""What structured outputs cost: the JSON-schema constraint (`inference/constrained.py`) per
generated token, alone and inside the serving engine, on SmolLM2-135M-Instruct.

1. The constraint alone: the allowed-token mask and the token fed back, over every token of a
   JSON answer (the tokens json.dumps' text tokenizes to), median of 5 passes.
2. The engine (`InferenceEngine`, as the server runs it): one request, greedy, answered free and
   under a schema, 5 times each, alternating; milliseconds per generated token, and the answers.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/structured_output.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "ingredients": {"type": "array", "items": {"type": "string"}},
        "minutes": {"type": "integer"},
    },
    "required": ["title", "ingredients", "minutes"],
    "additionalProperties": False,
}
ANSWER = {
    "title": "Pancakes",
    "ingredients": ["flour", "milk", "eggs", "sugar", "butter", "baking powder", "salt"],
    "minutes": 20,
}
PROMPT = "Give a pancake recipe as JSON with a title, its ingredients and the minutes it takes."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    from tuneforge.data.conversation import Message
    from tuneforge.inference.constrained import Constraint, json_grammar
    from tuneforge.inference.engine import (
        Delta,
        Finished,
        InferenceEngine,
        SamplingParams,
        Target,
    )
    from tuneforge.models import resolve_model
    from tuneforge.models.precision import cpu_info
    from tuneforge.models.text import load_text_side

    text = load_text_side(args.model)
    grammar = json_grammar(SCHEMA)
    tokens = text.tokenizer.encode(json.dumps(ANSWER), add_special_tokens=False)
    logits = torch.randn(len(text.tokenizer))
    passes = []
    for _ in range(5):
        constraint = Constraint(grammar, text.tokenizer, text.eos_ids)
        start = time.perf_counter()
        for token in tokens:
            constraint.mask(logits)
            constraint.take(token)
        passes.append((time.perf_counter() - start) / len(tokens) * 1000)
    print(f"cpu: {cpu_info().describe()}")
    print(f"constraint alone: {statistics.median(passes):.3f} ms/token over {len(tokens)} tokens")

    engine = InferenceEngine()
    engine.start()
    model = str(resolve_model(args.model))
    prompt = text.prompt_ids([Message("user", PROMPT)])

    async def answer(constrained: bool) -> tuple[float, str, int]:
        params = SamplingParams(
            max_tokens=args.tokens, temperature=0, grammar=grammar if constrained else None
        )
        start = time.perf_counter()
        generation = engine.submit(Target(model, model), text, prompt, params)
        pieces = []
        while True:
            _, event = await generation.events.get()
            if isinstance(event, Delta):
                pieces.append(event.text)
            elif isinstance(event, Finished):
                seconds = time.perf_counter() - start
                return (
                    seconds / event.completion_tokens * 1000,
                    "".join(pieces),
                    event.completion_tokens,
                )
            else:
                raise RuntimeError(event)

    try:
        asyncio.run(answer(False))  # warm-up: loading, the kernel measurement
        results: dict[bool, list[float]] = {False: [], True: []}
        shown = {}
        for _ in range(5):
            for constrained in (False, True):
                ms, out, n = asyncio.run(answer(constrained))
                results[constrained].append(ms)
                shown[constrained] = (out, n)
    finally:
        engine.stop()
    for constrained, label in ((False, "free text"), (True, "json_schema")):
        out, n = shown[constrained]
        runs = ", ".join(f"{ms:.1f}" for ms in results[constrained])
        print(
            f"engine, {label}: median {statistics.median(results[constrained]):.1f} ms/token "
            f"(runs {runs}; {n} tokens, prefill included): {out!r}"
        )


if __name__ == "__main__":
    main()
