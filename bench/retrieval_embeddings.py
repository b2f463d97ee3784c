r"""compare's retrieval baseline: embedding the training examples, unsorted vs length-sorted
batches, and a second compare reading them back from `$TUNEFORGE_HOME/embeddings/`.

Run (under a minute; nothing else heavy at the same time):

    .venv/bin/python bench/retrieval_embeddings.py
    .venv/bin/python bench/retrieval_embeddings.py --examples 480 --repeats 3

The documents are those `compare` embeds (`baselines.documents`) for the demo data's training
split (`tuneforge data demo`). Contenders, alternating, in one process:

- `unsorted`: batches of 64 in file order, each padded to its longest text (the code before
  commit 8c39d7a);
- `sorted`: `Embeddings._embed`, batches of texts of similar length (what compare does now);
- `cached`: a retriever built over the same texts again, reading the kept file.

The largest difference between the unsorted and sorted embeddings is printed (they must agree
to float rounding). The last line of stdout is one JSON object, also written to
bench/results/retrieval_embeddings.json.
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

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "retrieval_embeddings.json"


def unsorted_embed(retriever, texts: list[str]):
    """The former `Embeddings._embed`: batches of 64 in the given order."""
    import torch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), retriever.batch_size):
            batch = retriever.tokenizer(
                texts[start : start + retriever.batch_size],
                padding=True,
                truncation=True,
                max_length=retriever.max_length,
                return_tensors="pt",
            )
            hidden = retriever.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(chunks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=480, help="demo training examples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tuneforge-embeddings-"))
    os.environ["TUNEFORGE_HOME"] = str(work / "home")  # an empty cache

    import torch

    from tuneforge.data.demo import write_demo
    from tuneforge.data.formats import detect_format, load_conversations
    from tuneforge.eval import baselines
    from tuneforge.eval.evaluate import to_request
    from tuneforge.models.precision import cpu_info

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from precision_quality import machine_record

    folder = baselines.embedding_model_folder()
    if folder is None:
        print("the all-MiniLM-L6-v2 package is not installed (bash scripts/setup.sh)")
        return 2
    # write_demo's n is the whole set; 80% of it is the training split compare embeds
    write_demo(work / "data", seed=0, n=round(args.examples / 0.8))
    train_file = work / "data" / "train.jsonl"
    requests = [
        to_request(e, str(train_file))
        for e in load_conversations(train_file, detect_format(train_file))
    ]
    docs = baselines.documents(requests)

    first = baselines.Embeddings(docs, folder)  # embeds once (sorted) and keeps the file
    times: dict[str, list[float]] = {"unsorted": [], "sorted": [], "cached": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        old = unsorted_embed(first, docs)
        times["unsorted"].append(time.perf_counter() - started)
        started = time.perf_counter()
        new = first._embed(docs)
        times["sorted"].append(time.perf_counter() - started)
        started = time.perf_counter()
        again = baselines.Embeddings(docs, folder)
        times["cached"].append(time.perf_counter() - started)
    assert torch.equal(again.docs, first.docs)
    tokens = first.tokenizer(docs, truncation=True, max_length=first.max_length)["input_ids"]
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "examples": len(docs),
        "tokens": sum(len(t) for t in tokens),
        "longest": max(len(t) for t in tokens),
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "sorted_speedup": round(median["unsorted"] / median["sorted"], 2),
        "max_abs_difference": float((old - new).abs().max()),
        "repeats": args.repeats,
        "machine": machine_record(cpu_info()),
        "command": "python bench/retrieval_embeddings.py " + " ".join(argv or sys.argv[1:]),
    }
    print(
        f"{len(docs)} documents, {result['tokens']} tokens: unsorted {median['unsorted']:.2f} s, "
        f"sorted {median['sorted']:.2f} s ({result['sorted_speedup']}x), kept file read "
        f"(retriever built again) {median['cached']:.2f} s; max |difference| "
        f"{result['max_abs_difference']:.2e}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
