"""A live chat request's time to first token while a batch runs, with the batch's rows marked
as background work (`SamplingParams.background`: admitted and prefilled after live rows, on at
most half the engine's rows) and without (every row alike, as before), on SmolLM2-135M-Instruct.

The batch is driven as the batch runner drives it: `--in-flight` lines at once (16, the
runner's REQUESTS_AT_ONCE), each answered line replaced by the next, prompts of about
`--batch-prompt` tokens. Meanwhile one live request arrives every `--every` seconds (a short
question, greedy); its time to first token and to its last token are measured. Both modes run
in one process on one engine, alternating, after one warm-up request.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/batch_priority.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--batch-prompt", type=int, default=400, help="tokens per batch line")
    parser.add_argument("--batch-tokens", type=int, default=24, help="answer tokens per line")
    parser.add_argument("--live", type=int, default=12, help="live requests per mode")
    parser.add_argument("--every", type=float, default=1.5, help="seconds between them")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from tuneforge.data.conversation import Message
    from tuneforge.inference.engine import Delta, Finished, InferenceEngine, SamplingParams, Target
    from tuneforge.models import resolve_model
    from tuneforge.models.precision import cpu_info
    from tuneforge.models.text import load_text_side

    text = load_text_side(args.model)
    model = str(resolve_model(args.model))
    target = Target(model, model)
    words = "Summarise this recipe note in one line. " + "flour milk eggs butter sugar " * 200
    batch_ids = text.prompt_ids([Message("user", words)])[: args.batch_prompt]
    engine = InferenceEngine()
    engine.start()

    async def one(ids: list[int], params: SamplingParams) -> tuple[float, float]:
        start = time.perf_counter()
        generation = engine.submit(target, text, ids, params)
        first = None
        while True:
            _, event = await generation.events.get()
            if first is None and isinstance(event, Delta):
                first = time.perf_counter() - start
            if isinstance(event, Finished) or not isinstance(event, Delta):
                return first or (time.perf_counter() - start), time.perf_counter() - start

    async def run(background: bool) -> list[tuple[float, float]]:
        stop = asyncio.Event()

        async def batch_stream() -> None:
            params = SamplingParams(args.batch_tokens, 0.0, background=background)
            while not stop.is_set():
                await one(batch_ids, params)

        streams = [asyncio.create_task(batch_stream()) for _ in range(args.in_flight)]
        await asyncio.sleep(3.0)  # the batch is running
        measured = []
        for i in range(args.live):
            question = text.prompt_ids([Message("user", f"What is {i} plus {i}?")])
            measured.append(await one(question, SamplingParams(16, 0.0)))
            await asyncio.sleep(args.every)
        stop.set()
        await asyncio.gather(*streams)
        return measured

    async def bench() -> None:
        warm = text.prompt_ids([Message("user", "Hello")])
        await one(warm, SamplingParams(4, 0.0))
        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for background in (False, True):
                results[background] += await run(background)
        print(f"cpu: {cpu_info().describe()}; torch threads {torch.get_num_threads()}")
        print(
            f"batch: {args.in_flight} lines in flight, {len(batch_ids)}-token prompts, "
            f"{args.batch_tokens} answer tokens; live: {args.live * args.rounds} requests, "
            f"one every {args.every} s, 16 tokens"
        )
        for background, label in ((False, "batch rows like live ones"), (True, "background")):
            ttft = sorted(r[0] for r in results[background])
            total = sorted(r[1] for r in results[background])
            p95 = ttft[max(0, round(0.95 * len(ttft)) - 1)]
            print(
                f"{label:>26}: live TTFT p50 {statistics.median(ttft):.2f} s, p95 {p95:.2f} s; "
                f"whole answer p50 {statistics.median(total):.2f} s"
            )

    try:
        asyncio.run(bench())
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
