r"""Serving throughput: `tuneforge serve` under concurrent clients against sequential
`model.generate`, on the same model, prompts and token budget.

Run (a few minutes on a small CPU; `--quick` only checks that the script works):

    .venv/bin/python bench/serve_throughput.py
    .venv/bin/python bench/serve_throughput.py --requests 16 --max-tokens 64
    .venv/bin/python bench/serve_throughput.py --concurrency 1,8,64   # + 64 streaming clients
    .venv/bin/python bench/serve_throughput.py --quick

What runs, in this order, one machine:

1. Baseline: the model loaded the way `tuneforge generate` loads it (fp32), then plain
   transformers `model.generate` on one request at a time, greedy, `max_new_tokens` = the
   budget, stopping at the end-of-turn token. Output tokens/s = generated tokens ÷ wall time.
2. The server: `python -m tuneforge.cli serve` in a subprocess (its own TUNEFORGE_HOME, whose
   models folder links to the real one so nothing converts again), one warm-up request, then the
   same prompts as streaming chat completions (temperature 0, `max_tokens` = the budget) from
   C concurrent clients for C in `--concurrency` (default 1 and 8). Each client takes the next
   prompt when its previous answer ends; a level with more clients than `--requests` sends one
   request per client (more demo prompts), so all C stream at once. Output tokens/s = the
   completion tokens the server reports (`usage`) ÷ wall time from the first request to the
   last answer; time to first token = from sending a request to receiving its first non-empty
   content chunk (p50, and p95 by nearest rank: with 16 requests, the slowest one);
   `completed` = requests whose stream ended with usage. `--prefill-precision fp32,bf16` repeats
   this step with a second server whose prompts are prefilled in bf16 (CPUs with bf16 units);
   `--weight-precision auto,bf16` likewise with a server whose kernel reads the weights rounded
   to bf16; `--decode-step ours,transformers` likewise with a server whose decode steps run
   through transformers' forward rather than `inference/decode_step.py` (every combination of
   the three lists is one server, in order).

Prompts: the user messages of the demo data (`generate_examples(seed=0)`), with the demo's
system prompt, so answers are realistic lengths. Both sides decode greedily with the same
template, so they generate the same tokens (`same_answers` counts it, over the first
`--requests` prompts, the ones the baseline ran). The client runs on the same CPU as the server;
the numbers include HTTP, JSON and SSE. The server measures which GEMM runs at which row count
on first use (`inference/small_gemm.py`); the result names the limit it chose.

The final line of stdout is one JSON object; it is also written to
bench/results/serve_throughput.json (`--quick` writes to the work dir unless `--out` is given,
so it never overwrites real results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serve_throughput.json"
# Issue 14's targets, at 8 clients: output tokens/s ≥ 5× sequential generate, and time to first
# token p50 ≤ 0.3 s, p95 ≤ 0.8 s.
TARGET_CONCURRENCY = 8
TARGETS = {"speedup": 5.0, "ttft_p50_s": 0.3, "ttft_p95_s": 0.8}
# CPU features that decide which GEMM is fastest (recorded with the results).
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=16, help="prompts per measurement")
    parser.add_argument("--max-tokens", type=int, default=64, help="token budget per answer")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/OpenMP threads for the baseline and the server (default: torch's choice); "
        "1 keeps numbers stable on a machine whose other cores are busy",
    )
    parser.add_argument(
        "--prefill-precision",
        default="fp32",
        help="the server's --prefill-precision; comma-separated (fp32,bf16) measures one server "
        "per value in this run, against the same baseline",
    )
    parser.add_argument(
        "--weight-precision",
        default="auto",
        help="the server's --weight-precision; comma-separated (auto,bf16) as above",
    )
    parser.add_argument(
        "--decode-step",
        default="ours",
        help="ours (inference/decode_step.py, where it applies) or transformers (its forward, "
        "TUNEFORGE_DECODE_STEP=transformers); comma-separated as above",
    )
    parser.add_argument("--quick", action="store_true", help="4 requests, 8 tokens: a smoke run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.precisions = args.prefill_precision.split(",")
    args.weights = args.weight_precision.split(",")
    for name, values in (("prefill", args.precisions), ("weight", args.weights)):
        if not set(values) <= {"fp32", "bf16", "auto"}:
            parser.error(f"--{name}-precision takes fp32, bf16 or auto (comma-separated)")
    args.decodes = args.decode_step.split(",")
    if not set(args.decodes) <= {"ours", "transformers"}:
        parser.error("--decode-step takes ours or transformers (comma-separated)")
    args.servers = [(p, w, d) for p in args.precisions for w in args.weights for d in args.decodes]
    if args.quick:
        args.requests, args.max_tokens = 4, 8
        args.out = args.out or Path(tempfile.gettempdir()) / "serve_throughput.quick.json"
    args.out = args.out or RESULTS
    args.levels = [int(c) for c in args.concurrency.split(",")]
    return args


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.partition(":")[2].split())
                return [flag for flag in RELEVANT_FLAGS if flag in present]
    except OSError:
        pass
    return []


def prompts(n: int) -> list[list[dict[str, str]]]:
    from tuneforge.data.demo import generate_examples

    out = []
    for example in generate_examples(n, seed=0):
        messages = example["messages"]
        out.append([m for m in messages if m["role"] in ("system", "user")])
    return out


# ----------------------------------------------------------------------------------------------
# 1. Sequential transformers generate
# ----------------------------------------------------------------------------------------------


def baseline(model: str, conversations: list, max_tokens: int) -> dict[str, Any]:
    import torch

    from tuneforge.data.conversation import Message
    from tuneforge.inference.load import load_for_inference

    loaded = load_for_inference(model)
    eos = loaded.tokenizer.eos_token_id
    answers, tokens = [], 0
    start = time.perf_counter()
    for conversation in conversations:
        ids = loaded.text.prompt_ids([Message(m["role"], m["content"]) for m in conversation])
        with torch.no_grad():
            out = loaded.model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        new = out[0, len(ids) :].tolist()
        tokens += len(new)
        answers.append(loaded.tokenizer.decode(new, skip_special_tokens=True))
    seconds = time.perf_counter() - start
    return {
        "output_tokens": tokens,
        "seconds": round(seconds, 3),
        "output_tokens_per_s": round(tokens / seconds, 2),
        "answers": answers,
    }


# ----------------------------------------------------------------------------------------------
# 2. The server
# ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    home: Path,
    threads: int | None,
    prefill: str = "fp32",
    weights: str = "auto",
    decode: str = "ours",
) -> tuple[subprocess.Popen, str]:
    import httpx

    from tuneforge.paths import models_dir

    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(models_dir(), target_is_directory=True)
    port = free_port()
    env = os.environ | {"TUNEFORGE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if decode == "transformers":
        env["TUNEFORGE_DECODE_STEP"] = "transformers"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tuneforge.cli", "serve", "--port", str(port)),
            *("--prefill-precision", prefill),
            *("--weight-precision", weights),
        ],
        env=env,
        stdout=(home / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit((home / "server.log").read_text())
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("the server did not start in 180 s")


async def one_request(client: Any, url: str, body: dict) -> tuple[float | None, int, str]:
    """(time to first token, completion tokens, answer) of one streamed completion."""
    sent = time.perf_counter()
    first = None
    usage = 0
    pieces = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                content = choice["delta"].get("content")
                if content:
                    first = first or time.perf_counter() - sent
                    pieces.append(content)
    return first, usage, "".join(pieces)


async def load_test(url: str, model: str, conversations: list, max_tokens: int, clients: int):
    import httpx

    from tuneforge.eval.evaluate import percentile

    queue = list(enumerate(conversations))
    results: dict[int, tuple[float | None, int, str]] = {}
    failures: list[str] = []

    async def client_loop(client: Any) -> None:
        while queue:
            index, messages = queue.pop(0)
            body = {
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            try:
                results[index] = await one_request(client, url, body)
            except Exception as exc:  # counted as not completed; the others go on
                failures.append(f"request {index}: {type(exc).__name__}: {exc}")

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        seconds = time.perf_counter() - start
    ttft = [r[0] for r in results.values() if r[0] is not None]
    tokens = sum(r[1] for r in results.values())
    return {
        "concurrency": clients,
        "requests": len(conversations),
        "completed": sum(1 for r in results.values() if r[1] > 0),
        "failures": failures[:5],
        "output_tokens": tokens,
        "seconds": round(seconds, 3),
        "output_tokens_per_s": round(tokens / seconds, 2),
        "ttft_p50_s": round(statistics.median(ttft), 4) if ttft else None,
        "ttft_p95_s": round(percentile(ttft, 95), 4) if ttft else None,
        "answers": [results[i][2] if i in results else None for i in range(len(conversations))],
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    conversations = prompts(max(args.requests, *args.levels))
    print(f"baseline: sequential generate, {args.requests} requests …", file=sys.stderr)
    base = baseline(args.model, conversations[: args.requests], args.max_tokens)
    print(f"  {base['output_tokens_per_s']} output tokens/s", file=sys.stderr)
    servers: dict[tuple[str, str, str], dict[str, Any]] = {}
    for precision, weights, decode in args.servers:
        levels = servers[precision, weights, decode] = {}
        with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
            home = Path(tmp) / "home"
            proc, url = start_server(home, args.threads, precision, weights, decode)
            try:
                asyncio.run(load_test(url, args.model, conversations[:1], 4, 1))  # load weights
                for clients in args.levels:
                    print(
                        f"server (prefill {precision}, weights {weights}, decode step "
                        f"{decode}): {clients} concurrent client(s) …",
                        file=sys.stderr,
                    )
                    sent = conversations[: max(args.requests, clients)]
                    result = asyncio.run(load_test(url, args.model, sent, args.max_tokens, clients))
                    print(f"  {result['output_tokens_per_s']} output tokens/s", file=sys.stderr)
                    levels[str(clients)] = result
                kernel_rows = [
                    json.loads(path.read_text()) for path in (home / "kernels").glob("rows-*.json")
                ]
                log = (home / "server.log").read_text().splitlines()
                prefill_line = [line for line in log if line.startswith("prefill precision:")]
                packed_line = [line for line in log if "linear layers packed" in line]
            finally:
                proc.terminate()
                proc.wait(timeout=60)
        for result in levels.values():
            result["prefill_precision"] = prefill_line[0] if prefill_line else precision
            result["weight_precision"] = weights
            result["decode_step"] = decode
            result["packed"] = packed_line[0].partition("tuneforge.inference.engine: ")[2]
            answers = result.pop("answers")[: args.requests]
            result["same_answers"] = sum(
                a == b for a, b in zip(answers, base["answers"], strict=True)
            )
            result["speedup_vs_generate"] = round(
                result["output_tokens_per_s"] / base["output_tokens_per_s"], 2
            )
    base.pop("answers")
    first = args.servers[0]
    levels = servers[first]

    def label(precision: str, weights: str, decode: str) -> str:
        parts = [f"prefill_{precision}"] if precision != first[0] else []
        parts += [f"weights_{weights}"] if weights != first[1] else []
        return "_".join(parts + ([f"decode_{decode}"] if decode != first[2] else []))

    others = {label(*server): servers[server] for server in args.servers[1:]}
    top = str(TARGET_CONCURRENCY if str(TARGET_CONCURRENCY) in levels else max(args.levels))
    speedup = levels[top]["output_tokens_per_s"] / base["output_tokens_per_s"]
    report = {
        "benchmark": "serve_throughput",
        "model": args.model,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "quick": args.quick,
        "threads": args.threads,
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "kernel_max_rows": [
            {"kernel_rows": record.get("kernel_rows"), "timings": record.get("timings")}
            for record in kernel_rows
        ],
        "baseline_sequential_generate": base,
        "server": levels,  # the first of each option's values; the others below
        **{f"server_{name}": levels for name, levels in others.items()},
        f"speedup_at_concurrency_{top}": round(speedup, 2),
        "targets": TARGETS,
        "target_met": {
            "speedup": speedup >= TARGETS["speedup"],
            "ttft_p50_s": (levels[top]["ttft_p50_s"] or 1e9) <= TARGETS["ttft_p50_s"],
            "ttft_p95_s": (levels[top]["ttft_p95_s"] or 1e9) <= TARGETS["ttft_p95_s"],
        },
        **{
            f"target_met_{name}": {
                "speedup": other[top]["speedup_vs_generate"] >= TARGETS["speedup"],
                "ttft_p50_s": (other[top]["ttft_p50_s"] or 1e9) <= TARGETS["ttft_p50_s"],
                "ttft_p95_s": (other[top]["ttft_p95_s"] or 1e9) <= TARGETS["ttft_p95_s"],
            }
            for name, other in others.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
