r"""CPU threads next to a busy process: what `tuneforge generate`/`chat`/`eval`/`train` gain by
giving torch only the cores that are idle (`models/device.choose_threads`).

Run (about 3 minutes; nothing else running, the script makes its own load):

    .venv/bin/python bench/threads_under_load.py

What runs: the embedded SmolLM2-135M-Instruct loaded once with packed linears (as the CLI
loads it), then greedy `generate` of `--tokens` tokens (the issue's figure: 40) for one demo
prompt, in this order for each round: idle machine with all cores; then with a competitor
process that keeps one core busy (a pure-Python loop, like a second job or a test run), with
torch on all cores, on 1 thread, and on what `choose_threads()` picks while the competitor runs.
Reported: the median seconds per setting over `--rounds`, the threads `choose_threads()` chose,
and whether every setting produced the same tokens.

The final line of stdout is one JSON object (also written to bench/results/threads_under_load.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "threads_under_load.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    from tuneforge.data.conversation import Message
    from tuneforge.data.demo import generate_examples
    from tuneforge.inference.generate import generate
    from tuneforge.inference.load import load_for_inference
    from tuneforge.models.device import choose_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("TUNEFORGE_THREADS", None)
    cores = len(os.sched_getaffinity(0))

    loaded = load_for_inference(args.model, packed=True)
    example = generate_examples(1, seed=5)[0]
    messages = [Message(m["role"], m["content"]) for m in example["messages"][:-1]]

    def timed(threads: int) -> tuple[float, list[int]]:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        _, ids = generate(loaded, messages, max_new_tokens=args.tokens)
        return time.perf_counter() - start, ids

    timed(cores)  # warm-up: first-call allocations, the kernel's first use
    times: dict[str, list[float]] = {
        "idle, all cores": [],
        "busy, all cores": [],
        "busy, 1 thread": [],
        "busy, choose_threads": [],
    }
    tokens: dict[str, list[int]] = {}
    chosen: list[int] = []
    for _ in range(args.rounds):
        seconds, tokens["idle, all cores"] = timed(cores)
        times["idle, all cores"].append(seconds)
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(1.0)  # let it take its core
            for name, threads in (("busy, all cores", cores), ("busy, 1 thread", 1)):
                seconds, tokens[name] = timed(threads)
                times[name].append(seconds)
            threads, _ = choose_threads()
            chosen.append(threads)
            seconds, tokens["busy, choose_threads"] = timed(threads)
            times["busy, choose_threads"].append(seconds)
        finally:
            competitor.kill()
            competitor.wait()
        time.sleep(1.0)
    result = {
        "bench": "threads_under_load",
        "cpu": cpu_model(),
        "cores": cores,
        "torch": torch.__version__,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "median_seconds": {k: round(statistics.median(v), 2) for k, v in times.items()},
        "all_seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "choose_threads_picked": chosen,
        "same_tokens": len({tuple(v) for v in tokens.values()}) == 1,
    }
    for name, seconds in result["median_seconds"].items():
        print(f"{name:>22}: {seconds:6.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
