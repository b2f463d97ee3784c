r"""Few-row fp32 GEMMs: our AVX2 kernel (`inference/small_gemm.c`) against oneDNN (packed
weight, what the engine used before) and MKL (`nn.Linear`), on the weights of a decode step.

Run (under a minute; nothing else running):

    .venv/bin/python bench/small_gemm.py
    .venv/bin/python bench/small_gemm.py --rows 1,8,128 --threads 1

What it times: the 210 projection weights of SmolLM2-135M's 30 layers (q, k, v, o: 576→576,
576→192, 576→192, 576→576; gate, up: 576→1536; down: 1536→576; random values, the real shapes)
plus its 49152×576 LM head, multiplied by R rows of activations, one weight after another as a
decode step does — 537 MB of weights, more than any cache, so each pass reads them from memory.
For each R: milliseconds per pass (best of 5 after a warm-up), the weight bytes read per second,
and the largest difference from MKL's result. `memory_read_gb_per_s` is a plain `sum()` over
400 MB: about what the memory gives. On a CPU with bf16 units (AMX-BF16 or AVX512-BF16) a fourth
contender, `bf16`: the same weights and rows in bf16 through `F.linear` (oneDNN), reading half
the bytes — whether bf16 weights would make a decode step faster here (issue 14). On every
machine, `ours_bf16w`: our kernel on the weights stored in bf16 and widened to fp32 in registers
(`tuneforge serve --decode-weights bf16`), also half the bytes, fp32 arithmetic; its difference
is reported both from MKL on the fp32 weights and from MKL on the bf16-rounded weights (what it
computes).

The final line of stdout is one JSON object (also written to bench/results/small_gemm.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneforge.inference import small_gemm
from tuneforge.models.precision import cpu_info

RESULTS = Path(__file__).resolve().parent / "results" / "small_gemm.json"
LAYERS = 30
SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
HEAD = (49152, 576)


def best_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if not small_gemm.available():
        raise SystemExit("the kernel is not available here (see inference/small_gemm.py)")
    torch.manual_seed(0)
    weights = [torch.randn(*shape) * 0.02 for _ in range(LAYERS) for shape in SHAPES]
    weights.append(torch.randn(*HEAD) * 0.02)
    gigabytes = sum(w.numel() for w in weights) * 4 / 1e9
    panels = [small_gemm.pack(w) for w in weights]
    bf16_panels = [small_gemm.pack_bf16(w) for w in weights]
    rounded = [w.to(torch.bfloat16).float() for w in weights]
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w, 8) for w in weights]
    cpu = cpu_info()
    kinds = ("mkl", "onednn", "ours", "ours_bf16w") + (("bf16",) if cpu.bf16_units else ())
    halves = [w.to(torch.bfloat16) for w in weights] if cpu.bf16_units else weights

    big = torch.randn(100_000_000)
    memory = 0.4 / (best_ms(big.sum) / 1000)
    del big

    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        inputs = {k: torch.randn(rows, k) for k in {w.shape[1] for w in weights}}

        def run(kind: str, inputs: dict = inputs) -> list[torch.Tensor]:
            out = []
            layers = zip(weights, panels, onednn, halves, bf16_panels, rounded, strict=True)
            for w, p, d, h, b, r in layers:
                x = inputs[w.shape[1]]
                if kind == "mkl_rounded":
                    out.append(F.linear(x, r))
                elif kind == "ours_bf16w":
                    out.append(small_gemm.linear(x, b, None, w.shape[0]))
                elif kind == "bf16":
                    out.append(F.linear(x.to(torch.bfloat16), h).float())
                elif kind == "mkl":
                    out.append(F.linear(x, w))
                elif kind == "onednn":
                    out.append(torch.ops.mkldnn._linear_pointwise(x, d, None, "none", [], ""))
                else:
                    out.append(small_gemm.linear(x, p, None, w.shape[0]))
            return out

        reference = run("mkl")
        row = {"rows": rows}
        for kind in kinds:
            ms = best_ms(lambda kind=kind: run(kind))
            pairs = zip(run(kind), reference, strict=True)
            error = max((a - b).abs().max().item() for a, b in pairs)
            read = gigabytes / 2 if kind in ("bf16", "ours_bf16w") else gigabytes
            row[kind] = {"ms": round(ms, 2), "gb_per_s": round(read / ms * 1000, 1)}
            row[kind]["max_abs_diff_vs_mkl"] = float(f"{error:.2g}")
            if kind == "ours_bf16w":
                pairs = zip(run(kind), run("mkl_rounded"), strict=True)
                error = max((a - b).abs().max().item() for a, b in pairs)
                row[kind]["max_abs_diff_vs_mkl_on_rounded_weights"] = float(f"{error:.2g}")
        row["ours_vs_onednn"] = round(row["onednn"]["ms"] / row["ours"]["ms"], 2)
        row["ours_vs_mkl"] = round(row["mkl"]["ms"] / row["ours"]["ms"], 2)
        row["ours_bf16w_vs_ours"] = round(row["ours"]["ms"] / row["ours_bf16w"]["ms"], 2)
        print(
            f"{rows:4d} rows: MKL {row['mkl']['ms']:7.1f} ms  oneDNN {row['onednn']['ms']:7.1f} ms"
            f"  ours {row['ours']['ms']:7.1f} ms ({row['ours']['gb_per_s']} GB/s)"
            f"  ours_bf16w {row['ours_bf16w']['ms']:7.1f} ms ({row['ours_bf16w']['gb_per_s']} GB/s)"
            + (
                f"  bf16 {row['bf16']['ms']:7.1f} ms ({row['bf16']['gb_per_s']} GB/s)"
                if "bf16" in row
                else ""
            )
        )
        results.append(row)
    report = {
        "benchmark": "small_gemm",
        "weights_gb": round(gigabytes, 3),
        "memory_read_gb_per_s": round(memory, 1),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu.model,
            "cpu_flags": sorted(f for f in cpu.flags if f.startswith(("avx", "amx", "fma"))),
            "bf16_units": cpu.bf16_units,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
