r"""GRPO's sampling step: the serving engine's batching against transformers' `generate`.

Run (a few minutes; nothing else heavy at the same time):

    .venv/bin/python bench/grpo_sampling.py
    .venv/bin/python bench/grpo_sampling.py --prompts 8 --group 4 --tokens 64 --repeats 3

One GRPO run on the embedded default model (SmolLM2-135M-Instruct, LoRA as `tuneforge train
objective=grpo` builds it) is set up, and its sampler is timed both ways on the same model and
the same prompts ("Name one <category>." as in tests/test_grpo_integration.py):

- `generate`: `SFTRecipe._sample_generate`, one `generate` call of `group` rows per prompt (what
  the trainer does off a CPU);
- `engine`: `SFTRecipe._sample_batched`, every prompt's group in one batch through
  `inference.engine.generate_in_place` (what it does on a CPU).

Sampled answers differ between the two (different random streams), so the figure compared is
answer tokens per second; a greedy pass (the same work both ways) is timed too and its answers
are compared token by token. Repeats alternate the contenders. The last line of stdout is one
JSON object, also written to bench/results/grpo_sampling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "grpo_sampling.json"
CATEGORIES = (
    "fruit", "vegetable", "color", "animal", "bird", "fish", "tree", "flower", "metal", "planet",
    "country", "city", "river", "ocean", "mountain", "language",
)  # fmt: skip
# The reward of tests/test_grpo_integration.py (the preflight needs groups that differ).
ONE_WORD = """
def grade(sample, item):
    words = sample["output_text"].split()
    return 1.0 / len(words) if words else 0.0
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4, help="answers per prompt")
    parser.add_argument("--tokens", type=int, default=64, help="max_completion_tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import torch

    from tuneforge.config import build_config
    from tuneforge.models.precision import cpu_info
    from tuneforge.train.plan import make_plan
    from tuneforge.train.recipe import SFTRecipe

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from precision_quality import machine_record

    work = Path(tempfile.mkdtemp(prefix="tuneforge-grpo-sampling-"))
    rows = [
        {"messages": [{"role": "user", "content": f"Name one {c}."}]}
        for c in CATEGORIES[: args.prompts]
    ]
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = build_config(
        {
            "train_file": str(work / "train.jsonl"),
            "output_dir": str(work / "run"),
            "objective": "grpo",
            "grader": {"type": "python", "name": "one_word", "source": ONE_WORD},
            "grpo_group_size": args.group,
            "max_completion_tokens": args.tokens,
            "precision": "fp32",
        }
    )
    recipe = SFTRecipe(make_plan(config))
    recipe.setup()
    prompts = recipe.plan.train[: args.prompts]
    ways = {"generate": recipe._sample_generate, "engine": recipe._sample_batched}

    def timed(way: str, seed: int, greedy: bool) -> tuple[float, int, list]:
        n = 1 if greedy else args.group
        started = time.perf_counter()
        groups = ways[way](prompts, n, seed, greedy=greedy)
        seconds = time.perf_counter() - started
        return seconds, sum(len(ids) for group in groups for ids, _ in group), groups

    timed("engine", 0, True)  # warm-up: first-call allocations, thread pools
    sampled: dict[str, list[dict]] = {way: [] for way in ways}
    for repeat in range(args.repeats):
        for way in ways if repeat % 2 == 0 else reversed(list(ways)):
            seconds, tokens, _ = timed(way, 1000 * repeat, greedy=False)
            sampled[way].append({"seconds": seconds, "tokens": tokens})
            print(f"sampled  {way:9s} {seconds:6.2f} s  {tokens:5d} tokens", flush=True)
    greedy = {}
    for way in ways:
        seconds, tokens, groups = timed(way, 0, greedy=True)
        greedy[way] = {"seconds": seconds, "tokens": tokens, "answers": groups}
        print(f"greedy   {way:9s} {seconds:6.2f} s  {tokens:5d} tokens", flush=True)

    def rate(runs: list[dict]) -> float:
        return statistics.median(r["tokens"] / r["seconds"] for r in runs)

    same = sum(
        a == b
        for a, b in zip(greedy["generate"]["answers"], greedy["engine"]["answers"], strict=True)
    )
    result = {
        "machine": machine_record(cpu_info()),
        "model": "SmolLM2-135M-Instruct (embedded), LoRA, fp32",
        "prompts": args.prompts,
        "group": args.group,
        "max_completion_tokens": args.tokens,
        "repeats": args.repeats,
        "sampled_tokens_per_s": {way: round(rate(sampled[way]), 1) for way in ways},
        "sampled_runs": sampled,
        "sampled_speedup": round(rate(sampled["engine"]) / rate(sampled["generate"]), 2),
        "greedy_seconds": {way: round(greedy[way]["seconds"], 2) for way in ways},
        "greedy_speedup": round(greedy["generate"]["seconds"] / greedy["engine"]["seconds"], 2),
        "greedy_same_answers": f"{same}/{len(prompts)}",
        "torch_threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
