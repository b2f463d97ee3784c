r"""A serving decode step: transformers' forward vs our `DecodeStep`, one machine, one run.

Run (about two minutes on 2 cores):

    .venv/bin/python bench/decode_step.py
    .venv/bin/python bench/decode_step.py --rows 1,8 --weights fp32     # fewer cases

The embedded SmolLM2-135M-Instruct, its linear layers packed as `tuneforge serve` packs them
(our kernel at every row count measured here, `TUNEFORGE_KERNEL_MAX_ROWS` is ignored), weights
in fp32 and rounded to bf16 (`--weight-precision bf16`). For each row count, a batch of that many
random prompts of ~150 tokens (lengths differ, so rows are left-padded as in the engine) is
prefilled into the engine's `BatchCache`, twice; then each contender decodes `--steps` greedy
steps from its own copy, the two alternating step by step, and the median step time of each is
reported. "The same" is checked on every step: the logits of the two must be equal to the bit
(`torch.equal`), else the run fails. The last line of stdout is one JSON object, also written to
bench/results/decode_step.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "decode_step.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,8,16,32")
    parser.add_argument("--weights", default="fp32,bf16", help="fp32 and/or bf16 (rounded)")
    parser.add_argument("--steps", type=int, default=20, help="timed decode steps per case")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import torch

    from tuneforge.inference import small_gemm
    from tuneforge.inference.decode_step import DecodeStep
    from tuneforge.inference.kv_cache import BatchCache, left_pad
    from tuneforge.inference.prepack import prepack_linears, use_bf16_weights
    from tuneforge.models import DEFAULT_MODEL, load_model
    from tuneforge.models.precision import cpu_info

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from precision_quality import machine_record

    if not small_gemm.available():
        print("our kernel cannot run on this machine: DecodeStep does not apply", file=sys.stderr)
        return 1
    torch.set_grad_enabled(False)
    rows_list = [int(r) for r in args.rows.split(",")]
    results = []
    for weights in args.weights.split(","):
        model = load_model(DEFAULT_MODEL).eval()
        prepack_linears(model, kernel_rows=range(1, small_gemm.KERNEL_ROWS + 1))
        if weights == "bf16":
            use_bf16_weights(model)
        step = DecodeStep.for_model(model)
        assert step is not None, "DecodeStep does not take the embedded model"

        def prefill(
            model: torch.nn.Module, lengths: list[int], seed: int
        ) -> tuple[BatchCache, torch.Tensor]:
            generator = torch.Generator().manual_seed(seed)
            width, caches = max(lengths), []
            for n in lengths:
                cache = BatchCache()
                ids = torch.randint(0, model.config.vocab_size, (1, n), generator=generator)
                model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
                caches.append(cache)
            batch = BatchCache()
            for layer in range(len(caches[0].layers)):
                batch.update(
                    torch.cat([left_pad(c.layers[layer].keys, width, 2) for c in caches]),
                    torch.cat([left_pad(c.layers[layer].values, width, 2) for c in caches]),
                    layer,
                )
            masks = [left_pad(torch.ones(1, n, dtype=torch.long), width, 1) for n in lengths]
            return batch, torch.cat(masks)

        for rows in rows_list:
            lengths = [150 - (17 * i) % 60 for i in range(rows)]
            theirs_cache, mask = prefill(model, lengths, seed=rows)
            ours_cache, _ = prefill(model, lengths, seed=rows)
            ids = torch.full((rows,), 42)
            positions = torch.tensor(lengths)
            times: dict[str, list[float]] = {"transformers": [], "ours": []}
            for i in range(args.steps + 3):
                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
                start = time.perf_counter()
                theirs = model(
                    input_ids=ids[:, None],
                    attention_mask=mask,
                    position_ids=positions[:, None],
                    cache=theirs_cache,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1]
                middle = time.perf_counter()
                ours = step(ids, positions, mask, ours_cache)
                end = time.perf_counter()
                if ours is None or not torch.equal(theirs, ours):
                    print(f"{weights} {rows} rows step {i}: logits differ", file=sys.stderr)
                    return 1
                if i >= 3:  # warm-up
                    times["transformers"].append(middle - start)
                    times["ours"].append(end - middle)
                ids, positions = theirs.argmax(-1), positions + 1
            theirs_ms = statistics.median(times["transformers"]) * 1e3
            ours_ms = statistics.median(times["ours"]) * 1e3
            case = {
                "weights": weights,
                "rows": rows,
                "transformers_ms": round(theirs_ms, 2),
                "ours_ms": round(ours_ms, 2),
                "speedup": round(theirs_ms / ours_ms, 3),
                "logits_equal_steps": args.steps + 3,
            }
            results.append(case)
            print(
                f"{weights:>4} weights, {rows:>2} rows: transformers {theirs_ms:6.1f} ms, "
                f"ours {ours_ms:6.1f} ms ({case['speedup']:.2f}×), logits equal",
                flush=True,
            )
    record = {"machine": machine_record(cpu_info()), "steps": args.steps, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
