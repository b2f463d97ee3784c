r"""Does bf16 training learn as well as fp32? The quickstart's LoRA run in each precision.

Run (about 10 minutes on a 2-core CPU with AMX; on a CPU without bf16 units the bf16 run is
refused, as `precision: bf16` is there):

    .venv/bin/python bench/precision_quality.py
    .venv/bin/python bench/precision_quality.py --precisions fp32,bf16 --out r.json

What runs, one machine, one process after the other: the quickstart's demo data
(`write_demo(n=600)`, its default seed: 480 train / 60 validation / 60 test), the quickstart's
LoRA settings (`tuneforge.quickstart.FULL.train`: 24 steps of 8, lr 1e-3, warmup 10%, rank
16), trained once with `precision=fp32` and once with `precision=bf16` (same seed, same data
order). For each:

- train seconds (`elapsed_seconds` of the last step, evaluation included, as the run reports);
- the final validation loss over the whole validation split (`full_valid_loss`: the recipe's
  evaluator, which runs in the run's own precision) and the same loss recomputed in fp32 by the
  reference evaluator of `bench/train_throughput.py` on the saved adapter, so both runs are
  scored alike;
- the fine-tuned set-F1 on the quickstart's 20 held-out requests: `tuneforge eval RUN --test
  test.jsonl --limit 20 --json --no-loss` (greedy, fp32 generation, as `compare` scores it).

The issue's bar: bf16's validation loss within 2% of fp32's and its set-F1 within 0.02. The last
line of stdout is one JSON object, also written to bench/results/precision_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "precision_quality.json"
TEST_REQUESTS = 20


def train_one(data: dict[str, Path], precision: str, out: Path) -> dict[str, Any]:
    import torch
    from peft import PeftModel

    from tuneforge import run_dir as rd
    from tuneforge.config import build_config
    from tuneforge.models import DEFAULT_MODEL, load_model
    from tuneforge.quickstart import FULL
    from tuneforge.train.plan import make_plan
    from tuneforge.train.recipe import train

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import reference_valid_loss

    config = build_config(
        {
            "model": DEFAULT_MODEL,
            "train_file": str(data["train"]),
            "validation_file": str(data["validation"]),
            "output_dir": str(out),
            **FULL.train,
            "precision": precision,
        }
    )
    plan = make_plan(config)
    steps: list[dict[str, Any]] = []
    run, last = train(plan, on_step=steps.append)
    status = rd.read_status(run) or {}
    base = load_model(DEFAULT_MODEL, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(run / "model")).eval()
    reference = reference_valid_loss(reloaded, plan.validation)
    evaluation = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuneforge.cli",
            "eval",
            str(run),
            "--test",
            str(data["test"]),
            "--limit",
            str(TEST_REQUESTS),
            "--json",
            "--no-loss",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    scores = json.loads(evaluation.stdout)
    return {
        "precision": status.get("precision"),
        "precision_reason": status.get("precision_reason"),
        "steps": len(steps),
        "train_seconds": steps[-1]["elapsed_seconds"],
        "full_valid_loss": last.get("full_valid_loss"),
        "reference_valid_loss_fp32": reference,
        "set_f1": scores["metrics"]["set_f1"],
        "eval": scores["metrics"],
        "run_dir": str(run),
    }


def machine_record(cpu: Any) -> dict[str, Any]:
    """The CPU (model, bf16 units, AVX/AMX flags) and torch a result was measured with."""
    import torch

    return {
        "cpu": cpu.model,
        "bf16_units": cpu.bf16_units,
        "cpu_flags": sorted(f for f in cpu.flags if f.startswith(("avx", "amx"))),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import torch

    from tuneforge.data.demo import write_demo
    from tuneforge.models.precision import cpu_info

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tuneforge-precision-"))
    data = write_demo(workdir / "data", n=600)
    cpu = cpu_info()
    print(f"cpu: {cpu.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    results: dict[str, Any] = {}
    for precision in args.precisions.split(","):
        start = time.perf_counter()
        results[precision] = train_one(data, precision, workdir / f"run-{precision}")
        r = results[precision]
        print(
            f"{precision}: {r['train_seconds']:.1f} s training, full_valid_loss "
            f"{r['full_valid_loss']:.4f}, reference (fp32) {r['reference_valid_loss_fp32']:.4f}, "
            f"set-F1 {r['set_f1']:.3f} ({time.perf_counter() - start:.0f} s in all)",
            flush=True,
        )
    report: dict[str, Any] = {
        "machine": machine_record(cpu),
        "runs": results,
    }
    if {"fp32", "bf16"} <= results.keys():
        fp32, bf16 = results["fp32"], results["bf16"]
        report["valid_loss_relative_difference"] = (
            bf16["reference_valid_loss_fp32"] - fp32["reference_valid_loss_fp32"]
        ) / fp32["reference_valid_loss_fp32"]
        report["set_f1_difference"] = bf16["set_f1"] - fp32["set_f1"]
        report["training_speedup"] = fp32["train_seconds"] / bf16["train_seconds"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
