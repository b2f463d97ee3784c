"""A model's text side: its tokenizer, chat template, context length and stop tokens, no weights.

Training (the plan), job validation, the quickstart, `tuneforge generate/chat/eval/compare` and
the server all load it with `load_text_side`, so they render, tokenize, truncate and stop alike.
The stop tokens are the tokenizer's eos token plus every `eos_token_id` of the model folder's
`generation_config.json` (some models end a turn with a token the tokenizer does not call its
eos): a path that stopped on the tokenizer's alone could run on past the answer.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.chat_template import ChatTemplate
from tuneforge.data.conversation import Conversation, Message

DEFAULT_CONTEXT = 2048  # for a model whose config names no context length; also `auto`'s cap


def auto_max_seq_len(context: int | None) -> int:
    """`max_seq_len=auto` (TrainConfig: "min(context, 2048)"): the model's context length, at
    most DEFAULT_CONTEXT; DEFAULT_CONTEXT when the model names none."""
    return min(context or DEFAULT_CONTEXT, DEFAULT_CONTEXT)


@dataclass(frozen=True)
class TextSide:
    """What a request needs of a model before its weights: tokens in, text out, limits."""

    tokenizer: Any
    template: ChatTemplate
    context_length: int  # the model's, or DEFAULT_CONTEXT when its config names none
    eos_ids: frozenset[int]  # generation stops on any of these (not part of the answer)
    # The context length the model's config names, None when it names none: the plan checks an
    # explicit max_seq_len only against a real limit, never against DEFAULT_CONTEXT.
    config_context: int | None = None

    def prompt_ids(
        self,
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]] | None = None,
        answer_prefix: str = "",
    ) -> list[int]:
        """Token ids of a chat to answer: the messages (and tool definitions) rendered with the
        model's template (the path training uses), the assistant's generation prompt, and
        `answer_prefix`, text the answer is made to start with. Raises TemplateError."""
        rendered = self.template.render_conversation(
            Conversation(tuple(messages), tuple(tools) if tools else None),
            add_generation_prompt=True,
        )
        return self.tokenizer(rendered + answer_prefix, add_special_tokens=False)["input_ids"]

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (OpenAI's `bytes` of a log-probability; a token can
        hold part of a character). Byte-level BPE tokens (GPT-2's, SmolLM2's, Llama 3's) map
        back through that byte alphabet; SentencePiece byte tokens (`<0x0A>`) are their byte;
        other tokens are their decoded text."""
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            return b""
        if _is_byte_level(self.tokenizer):
            table = _byte_level_table()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            with contextlib.suppress(ValueError):
                return bytes([int(piece[3:5], 16)])
        return self.tokenizer.decode([token]).encode("utf-8")


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"


@functools.cache
def _byte_level_table() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's `bytes_to_unicode`) inverted: character → byte.
    Printable bytes stand for themselves; the others for the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def load_text_side(model: str, *, require_fast: bool = True) -> TextSide:
    """The text side of a registry name, model folder or hub id (a registry model is converted
    into the cache on first use; no weights are loaded).

    `require_fast`: raise ModelError for a tokenizer with no fast (Rust) version, which
    training and data validation need to map trained text to tokens; generation does not.
    """
    from tuneforge.data.tokenize import require_fast_tokenizer
    from tuneforge.models.registry import load_tokenizer, model_context_length, resolve_model

    tokenizer = load_tokenizer(model)
    if require_fast:
        require_fast_tokenizer(tokenizer)
    template = ChatTemplate.from_tokenizer(tokenizer)
    context = model_context_length(model)
    return TextSide(
        tokenizer=tokenizer,
        template=template,
        context_length=context or DEFAULT_CONTEXT,
        eos_ids=_eos_ids(tokenizer, resolve_model(model)),
        config_context=context,
    )


def _eos_ids(tokenizer: Any, source: Path | str) -> frozenset[int]:
    """The tokenizer's eos id and those of the model folder's generation_config.json."""
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    generation_config = Path(source) / "generation_config.json"
    if isinstance(source, Path) and generation_config.is_file():
        configured = json.loads(generation_config.read_text()).get("eos_token_id")
        if configured is not None:
            eos |= set(configured) if isinstance(configured, list) else {configured}
    return frozenset(eos)
