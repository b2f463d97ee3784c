r"""What packed linear layers do to `compare`'s evaluation: the same greedy generation with plain
`nn.Linear` (MKL), oneDNN-packed weights, and our AVX2 kernel (`inference/prepack.py`).

Run (a few minutes; nothing else running):

    .venv/bin/python bench/eval_generation.py
    .venv/bin/python bench/eval_generation.py --rounds 1 --batch 4

What runs: the base model (`--model`, default the embedded SmolLM2-135M-Instruct) loaded once;
then, for each round and each of the three modes in turn (so machine drift hits all alike), the
two shapes of work `eval/evaluate.py` does: `--single` prompts answered one at a time (how
`compare` measures latency) and one left-padded batch of `--batch` prompts (how it answers the
rest), with `inference/generate.py`'s `generate_batch`, greedy, `--max-new-tokens` (82: what
`compare` uses on the demo data). Prompts: the demo data's system + user messages. Reported per
mode: the median over rounds of each part's seconds, and whether every mode produced the same
tokens as plain `nn.Linear`.

The final line of stdout is one JSON object (also written to bench/results/eval_generation.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "eval_generation.json"
MODES = ("plain", "onednn", "kernel")


def main() -> None:
    from tuneforge.data.conversation import Message
    from tuneforge.data.demo import generate_examples
    from tuneforge.inference import small_gemm
    from tuneforge.inference.generate import generate_batch
    from tuneforge.inference.load import load_for_inference
    from tuneforge.inference.prepack import prepack_linears, unpack_linears

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=82)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    modes = MODES if small_gemm.available() else MODES[:2]

    loaded = load_for_inference(args.model)
    examples = generate_examples(args.single + args.batch, seed=1)
    prompts = [
        loaded.text.prompt_ids([Message(m["role"], m["content"]) for m in e["messages"][:-1]])
        for e in examples
    ]
    single, batch = prompts[: args.single], prompts[args.single :]
    times: dict[str, dict[str, list[float]]] = {m: {"single": [], "batch": []} for m in modes}
    answers: dict[str, list] = {}
    for _ in range(args.rounds):
        for mode in modes:
            if mode != "plain":
                prepack_linears(loaded.model, kernel=mode == "kernel")
            start = time.perf_counter()
            limit = args.max_new_tokens
            out = [generate_batch(loaded, [p], max_new_tokens=limit)[0] for p in single]
            times[mode]["single"].append(time.perf_counter() - start)
            start = time.perf_counter()
            out += generate_batch(loaded, batch, max_new_tokens=args.max_new_tokens)
            times[mode]["batch"].append(time.perf_counter() - start)
            answers[mode] = out
            unpack_linears(loaded.model)
            print(mode, {k: round(v[-1], 2) for k, v in times[mode].items()}, flush=True)
    report = {
        "benchmark": "eval_generation",
        "model": args.model,
        "rounds": args.rounds,
        "single_prompts": args.single,
        "batch_size": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": [len(p) for p in prompts],
        "generated_tokens": sum(len(a) for a in answers["plain"]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "modes": {
            mode: {
                "single_s": round(statistics.median(times[mode]["single"]), 2),
                "batch_s": round(statistics.median(times[mode]["batch"]), 2),
                "same_tokens_as_plain": answers[mode] == answers["plain"],
            }
            for mode in modes
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
