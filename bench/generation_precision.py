r"""Should generation (eval, compare, serve) run in bf16? Speed and sameness, one machine.

Run (a few minutes; on a CPU without bf16 units bf16 is emulated and the figures say so):

    .venv/bin/python bench/generation_precision.py --run RUN_DIR --data DATA_DIR
    .venv/bin/python bench/generation_precision.py            # the embedded default model

`RUN_DIR` is a fine-tuned run (e.g. the fp32 run `bench/precision_quality.py --workdir W` keeps in
`W/run-fp32`) and `DATA_DIR` the folder with its `test.jsonl`; without them the embedded default
model answers the quickstart demo's test requests (`write_demo(n=600)`).

What is compared, the same model loaded once and run three ways:

- `fp32`: the weights and activations as `tuneforge generate` and `compare` use them today;
- `bf16-autocast`: fp32 weights, matmuls under `torch.autocast(bfloat16)` (what training uses);
- `bf16-weights`: the model cast to bf16 (half the bytes read per decoded token);

and, loaded a second time as `generate`, `eval` and `compare` load it (`packed=True`: linear
layers on our few-row kernel where it can run):

- `fp32-packed`: what those commands run today;
- `bf16-weights-kernel`: the same after `prepack.use_bf16_weights` (the linear weights rounded
  to bf16 and read by the kernel at half the bytes, fp32 arithmetic: `serve --weight-precision
  bf16`). Skipped where the kernel cannot run.

For each: greedy answers (transformers' `generate`, up to 120 new tokens) to the first `-n` test
requests one at a time, decode tokens/s, and batched 8 at a time; "the same" is measured as the
number of requests whose greedy token ids equal fp32's exactly, the first differing position,
and the mean set-F1 of the answers against the references (the quickstart's metric). The last line
of stdout is one JSON object, also written to bench/results/generation_precision.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "generation_precision.json"
MAX_NEW = 120


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a run directory (default: base)")
    parser.add_argument("--data", type=Path, default=None, help="folder with test.jsonl")
    parser.add_argument("-n", type=int, default=20, help="test requests")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import torch

    from tuneforge.data.demo import write_demo
    from tuneforge.data.formats import load_conversations
    from tuneforge.eval.metrics import set_f1
    from tuneforge.inference.generate import generate_batch
    from tuneforge.inference.load import load_for_inference
    from tuneforge.models import DEFAULT_MODEL
    from tuneforge.models.precision import cpu_info

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from precision_quality import machine_record

    data = args.data or write_demo(Path(tempfile.mkdtemp()) / "data", n=600)["test"].parent
    test = load_conversations(data / "test.jsonl")[: args.n]
    loaded = load_for_inference(args.run or DEFAULT_MODEL)
    if hasattr(loaded.model, "merge_and_unload"):
        loaded.model = loaded.model.merge_and_unload()  # one weight matrix per linear, as served
    loaded.model.eval()
    prompts = [loaded.text.prompt_ids(ex.conversation.messages[:-1]) for ex in test]
    references = [ex.conversation.messages[-1].content for ex in test]
    cpu = cpu_info()
    print(f"cpu: {cpu.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    def run(name: str, loaded: Any = loaded) -> dict[str, Any]:
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if name == "bf16-autocast"
            else contextlib.nullcontext()
        )
        if name in ("fp32", "bf16-autocast", "bf16-weights"):
            loaded.model.to(torch.bfloat16 if name == "bf16-weights" else torch.float32)
        generate_batch(loaded, prompts[:1], max_new_tokens=4)  # warm-up
        answers, seconds = [], 0.0
        with autocast:
            for prompt in prompts:
                start = time.perf_counter()
                answers.append(generate_batch(loaded, [prompt], max_new_tokens=MAX_NEW)[0])
                seconds += time.perf_counter() - start
            start = time.perf_counter()
            batched = [
                a
                for i in range(0, len(prompts), 8)
                for a in generate_batch(loaded, prompts[i : i + 8], max_new_tokens=MAX_NEW)
            ]
            batched_seconds = time.perf_counter() - start
        tokens = sum(len(a) for a in answers)
        texts = [loaded.tokenizer.decode(a, skip_special_tokens=True) for a in answers]
        return {
            "answers": answers,
            "tokens": tokens,
            "sequential_tokens_per_second": tokens / seconds,
            "batch8_tokens_per_second": sum(len(a) for a in batched) / batched_seconds,
            "set_f1": statistics.mean(
                set_f1(t, r) or 0.0 for t, r in zip(texts, references, strict=True)
            ),
        }

    results = {}
    packed = None
    for name in ("fp32", "bf16-autocast", "bf16-weights", "fp32-packed", "bf16-weights-kernel"):
        if name == "fp32-packed":
            from tuneforge.inference.prepack import packed_kind, use_bf16_weights

            packed = load_for_inference(args.run or DEFAULT_MODEL, packed=True)
            packed.model.eval()
            print(f"packed: {packed_kind(packed.model.get_output_embeddings())}", flush=True)
        if name == "bf16-weights-kernel" and not use_bf16_weights(packed.model):
            print("bf16-weights-kernel: skipped, our kernel cannot run here", flush=True)
            continue
        results[name] = run(name, packed) if packed is not None else run(name)
        r = results[name]
        print(
            f"{name}: {r['sequential_tokens_per_second']:.1f} tok/s one at a time, "
            f"{r['batch8_tokens_per_second']:.1f} tok/s 8 at a time, set-F1 {r['set_f1']:.3f}",
            flush=True,
        )
    fp32 = results["fp32"]["answers"]
    for name, r in results.items():
        diffs = [first_difference(a, b) for a, b in zip(fp32, r["answers"], strict=True)]
        r["same_as_fp32"] = sum(d is None for d in diffs)
        r["first_differences"] = [d for d in diffs if d is not None]
        r["speedup_vs_fp32"] = (
            r["sequential_tokens_per_second"] / results["fp32"]["sequential_tokens_per_second"]
        )
        del r["answers"]
        print(f"{name}: same greedy answers as fp32 {r['same_as_fp32']}/{len(fp32)}", flush=True)
    report = {
        "machine": machine_record(cpu),
        "model": str(args.run or DEFAULT_MODEL),
        "requests": len(prompts),
        "max_new_tokens": MAX_NEW,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: report[k] for k in ("model", "requests")}
            | {
                n: {k: r[k] for k in ("speedup_vs_fp32", "same_as_fp32", "set_f1")}
                for n, r in results.items()
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
