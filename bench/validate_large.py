"""Streaming validation of large files: wall time and peak memory for 10k and 100k examples.

Bounded memory means the peak RSS barely grows from 10k to 100k examples: the validator keeps
per-example token counts (8 bytes each) and 8-byte hashes, never the examples themselves.

Run:  .venv/bin/python bench/validate_large.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_file(path: Path, n: int) -> None:
    """n distinct chat examples: the demo recipes, repeated with a numbered system prompt."""
    from tuneforge.data.demo import generate_examples

    base = generate_examples(2000, seed=0)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            example = json.loads(json.dumps(base[i % len(base)]))
            example["messages"][0]["content"] += f" (batch {i // len(base)})"
            f.write(json.dumps(example) + "\n")


def run(path: Path) -> tuple[float, float, dict]:
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuneforge.cli",
            "data",
            "validate",
            str(path),
            "--json",
            "--no-estimate",
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return seconds, peak_mib, json.loads(done.stdout)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="tuneforge-validate-bench-"))
    for n in (10_000, 100_000):
        path = folder / f"{n}.jsonl"
        make_file(path, n)
        seconds, peak, report = run(path)
        print(
            f"{n:>7} examples ({path.stat().st_size / 2**20:.0f} MiB): {seconds:6.1f} s, "
            f"{n / seconds:7.0f} examples/s, peak RSS so far {peak:6.0f} MiB, "
            f"valid {report['n_valid_examples']}, ok={report['ok']}"
        )


if __name__ == "__main__":
    main()
