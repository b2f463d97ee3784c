"""Conversation → `input_ids` + `labels`: the loss mask that decides what the model learns.

Labels hold the token id where the token is trained and IGNORE_INDEX (-100) everywhere else.
Trained = the content of assistant messages whose weight is not 0, plus the end-of-turn token
that closes them (so the model learns to stop). Everything else — system, user, tool turns and
the template's role headers — is context only.

How we find the trained text without `{% generation %}` markers (most templates, SmolLM2's
included, have none): for each trained assistant turn i we render the conversation up to turn i
with the generation prompt, and up to and including turn i. The difference is exactly what the
model must produce for that turn (content + end-of-turn, minus trailing whitespace the template
adds after it). We check that each render is a prefix of the full render, then map character
spans to tokens with the fast tokenizer's offsets, so tokenization happens once, on the exact text
training and inference see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.data.chat_template import ChatTemplate, TemplateError, template_messages
from tuneforge.data.conversation import Conversation

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    text: str
    # Character spans [start, end) of the trained text in `text`.
    trained_spans: tuple[tuple[int, int], ...]
    # Token count before truncation, so callers can report what was cut.
    full_length: int
    full_trained: int
    # Character span [start, end) of each kept token in `text`.
    offsets: tuple[tuple[int, int], ...] = ()

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


def trained_spans(
    template: ChatTemplate, conversation: Conversation
) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation; return the text and the character spans that carry loss."""
    messages = template_messages(conversation.messages, conversation.tools, template.supports_tools)
    # Tool definitions folded into the system message add one message at the front.
    shift = len(messages) - len(conversation.messages)
    tools = list(conversation.tools) if conversation.tools and template.supports_tools else None
    full = template.render(messages, tools=tools)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(conversation.messages):
        if not message.trained:
            continue
        j = i + shift
        prefix = template.render(messages[:j], tools=tools, add_generation_prompt=True)
        upto = template.render(messages[: j + 1], tools=tools)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise TemplateError(
                f"message {i} (assistant): the chat template renders this conversation differently "
                "depending on what follows, so the trained tokens can't be located",
                hint="start the conversation with a system or user message",
            )
        end = len(upto.rstrip())  # whitespace after the end-of-turn token is formatting, not output
        if end > len(prefix):
            spans.append((len(prefix), end))
    return full, spans


def encode(
    conversation: Conversation,
    tokenizer: Any,
    template: ChatTemplate,
    max_seq_len: int | None = None,
) -> Encoded:
    """Tokenize one conversation with its loss mask, truncating to `max_seq_len` tokens."""
    text, spans = trained_spans(template, conversation)
    # add_special_tokens=False: the template already wrote any BOS/special tokens as text.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = enc["input_ids"]
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for t, (start, end) in enumerate(offsets):
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        # A token is trained when it overlaps the trained text: a merge across the boundary
        # (e.g. "\n[") must still be predicted, or the answer's first characters go untrained.
        if end > span_start and start < span_end:
            labels[t] = input_ids[t]
    full_length = len(input_ids)
    full_trained = sum(1 for label in labels if label != IGNORE_INDEX)
    if max_seq_len is not None and full_length > max_seq_len:
        input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    kept = tuple(map(tuple, offsets[: len(input_ids)]))
    return Encoded(input_ids, labels, text, tuple(spans), full_length, full_trained, kept)


def encode_pair(
    conversation: Conversation,
    tokenizer: Any,
    template: ChatTemplate,
    max_seq_len: int | None = None,
) -> tuple[Encoded, Encoded]:
    """A preference pair (a conversation with `rejected`) → the preferred and the non-preferred
    sequence. Only the final answer carries loss in each (OpenAI trains DPO on the last
    assistant message only); both share the prompt's tokens exactly."""
    from dataclasses import replace

    if conversation.rejected is None:
        raise ValueError("not a preference pair")
    prompt = tuple(
        replace(m, weight=0) if m.role == "assistant" else m for m in conversation.messages[:-1]
    )
    chosen = Conversation(prompt + conversation.messages[-1:], conversation.tools)
    rejected = Conversation(prompt + conversation.rejected, conversation.tools)
    return (
        encode(chosen, tokenizer, template, max_seq_len),
        encode(rejected, tokenizer, template, max_seq_len),
    )


def trained_runs(enc: Encoded) -> list[tuple[str, bool]]:
    """The kept text as consecutive (piece, trained) runs, token by token: what a preview marks
    (`tuneforge data preview`, and the Studio's trained-token view)."""
    runs: list[tuple[str, bool]] = []
    for (start, end), label in zip(enc.offsets, enc.labels, strict=True):
        trained = label != IGNORE_INDEX
        piece = enc.text[start:end]
        if runs and runs[-1][1] == trained:
            runs[-1] = (runs[-1][0] + piece, trained)
        else:
            runs.append((piece, trained))
    return runs


def require_fast_tokenizer(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", True):
        from tuneforge.errors import ModelError

        raise ModelError(
            "this model's tokenizer has no fast (Rust) version, which tuneforge needs to map "
            "trained text to tokens",
            hint="use a model folder with a tokenizer.json",
        )
