"""Evaluate one approach (a model + a way of building prompts) on held-out requests.

Every approach — zero-shot, few-shot, retrieval, a fine-tuned run — is a list of `Request`s (the
prompt messages and the reference answer) answered by a loaded model. The first
`latency_requests` are answered one at a time and timed (latency as a user of this machine sees
it); the rest are answered in batches (same greedy decoding, much faster on CPU).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneforge.data.chat_template import template_messages
from tuneforge.data.conversation import Conversation, Message
from tuneforge.data.formats import Example
from tuneforge.errors import DataError
from tuneforge.eval.metrics import REFERENCE_KEY, Metric, RowMetric, score_all
from tuneforge.inference.generate import generate_batch
from tuneforge.inference.load import LoadedModel

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Request:
    messages: tuple[Message, ...]  # the prompt: everything before the answer
    reference: str  # the answer the data holds (tool calls as the text the model writes)
    # The row as a grader reads it (`{{ item.… }}`): its reference answer and its other fields.
    item: dict[str, Any] = field(default_factory=dict, compare=False)
    tools: tuple[dict[str, Any], ...] | None = None  # the row's tool definitions, in the prompt


@dataclass
class Evaluation:
    metrics: dict[str, float]
    answers: list[str]
    scores: list[dict[str, float | None]]
    prompt_tokens: list[int]
    output_tokens: list[int]
    latencies: list[float]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "prompt_tokens_per_request": statistics.fmean(self.prompt_tokens),
            "output_tokens_per_request": statistics.fmean(self.output_tokens),
            "latency_p50_s": percentile(self.latencies, 50),
            "latency_p95_s": percentile(self.latencies, 95),
        }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every value reported was measured)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def answer_room(tokenizer: Any, answers: list[str]) -> int:
    """Default `max_new_tokens`: the longest known answer plus a quarter, at least 16 tokens —
    room for a right answer without letting a rambling model run on for hundreds of tokens."""
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return max(16, math.ceil(longest * 1.25) + 8)


def to_request(example: Example, path: str) -> Request:
    """Split a test conversation into its prompt and its last assistant answer."""
    messages = example.conversation.messages
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None or not (messages[last].content or messages[last].tool_calls):
        raise DataError(
            f"{path}, line {example.line}: a test example needs an assistant answer to compare "
            "with",
            hint="end each test conversation with the expected assistant message",
        )
    # An answer with tool calls is compared as the text training taught the model to write
    # (`<tool_call>` blocks), the text the server reads its calls back from.
    reference = template_messages(messages[last : last + 1])[0]["content"]
    item = {REFERENCE_KEY: reference} | example.item
    return Request(messages[:last], reference, item, example.conversation.tools)


def reference_loss(loaded: LoadedModel, requests: list[Request], batch_tokens: int = 4096) -> float:
    """Mean per-token cross-entropy of the reference answers given each request's prompt: how
    likely the model finds the right answer, independent of decoding."""
    import torch

    from tuneforge.data.tokenize import IGNORE_INDEX, encode

    encoded = []
    for request in requests:
        # Examples in the prompt (few-shot) are context, not targets: weight 0.
        context = tuple(
            Message(m.role, m.content, weight=0) if m.role == "assistant" else m
            for m in request.messages
        )
        conversation = Conversation(
            (*context, Message("assistant", request.reference)), request.tools
        )
        encoded.append(encode(conversation, loaded.tokenizer, loaded.template))
    model = loaded.model
    device = next(model.parameters()).device
    total, count = 0.0, 0
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].n_tokens)
    batch: list[int] = []

    def flush() -> None:
        nonlocal total, count
        width = max(encoded[i].n_tokens for i in batch)
        pad = loaded.tokenizer.pad_token_id or 0
        ids = [encoded[i].input_ids + [pad] * (width - encoded[i].n_tokens) for i in batch]
        labels = [encoded[i].labels + [IGNORE_INDEX] * (width - encoded[i].n_tokens) for i in batch]
        mask = [[1] * encoded[i].n_tokens + [0] * (width - encoded[i].n_tokens) for i in batch]
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor(ids, device=device),
                attention_mask=torch.tensor(mask, device=device),
            ).logits.float()
        target = torch.tensor(labels, device=device)[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += loss.item()
        count += int((target != IGNORE_INDEX).sum())

    for i in order:
        if batch and (len(batch) + 1) * max(encoded[i].n_tokens, 1) > batch_tokens:
            flush()
            batch = []
        batch.append(i)
    if batch:
        flush()
    return total / max(count, 1)


def evaluate(
    loaded: LoadedModel,
    requests: list[Request],
    metrics: dict[str, Metric | RowMetric],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    latency_requests: int = 8,
    with_loss: bool = True,
    on_progress: Progress | None = None,
) -> Evaluation:
    """Answer every request greedily, score the answers, and measure tokens and latency."""
    prompts = [loaded.text.prompt_ids(r.messages, r.tools) for r in requests]
    answers_ids: list[list[int] | None] = [None] * len(requests)
    latencies: list[float] = []
    done = 0
    timed = min(latency_requests, len(requests))
    for i in range(timed):
        start = time.perf_counter()
        answers_ids[i] = generate_batch(loaded, [prompts[i]], max_new_tokens=max_new_tokens)[0]
        latencies.append(time.perf_counter() - start)
        done += 1
        if on_progress:
            on_progress(done, len(requests))
    # Batch the rest by prompt length, so little of each batch is padding.
    rest = sorted(range(timed, len(requests)), key=lambda i: len(prompts[i]))
    for start in range(0, len(rest), batch_size):
        chunk = rest[start : start + batch_size]
        outs = generate_batch(loaded, [prompts[i] for i in chunk], max_new_tokens=max_new_tokens)
        for i, ids in zip(chunk, outs, strict=True):
            answers_ids[i] = ids
        done += len(chunk)
        if on_progress:
            on_progress(done, len(requests))
    answers = [
        loaded.tokenizer.decode(ids or [], skip_special_tokens=True).strip() for ids in answers_ids
    ]
    references = [r.reference for r in requests]
    items = [r.item for r in requests]
    means, scores, problems = score_all(metrics, answers, references, items)
    if with_loss:
        means["test_loss"] = reference_loss(loaded, requests)
    return Evaluation(
        metrics=means,
        answers=answers,
        scores=scores,
        prompt_tokens=[len(p) for p in prompts],
        output_tokens=[len(ids or []) for ids in answers_ids],
        latencies=latencies,
        notes=problems,
    )
