"""Structured outputs: answers that follow a JSON schema (OpenAI's `response_format` of type
`json_schema` or `json_object`), by constrained decoding.

Why a library: a JSON schema becomes a grammar, and at every step the grammar says which tokens
may come next; doing that fast over a 49k-token vocabulary, with every corner of JSON Schema, is
llguidance's whole job (the engine of Guidance, also used by llama.cpp, vLLM and SGLang). It is
one small Rust wheel with no Python dependencies. We use its matcher directly: per step, the
allowed tokens as a bitmask, which the engine turns into -inf on the other logits before it
samples, then the sampled token is fed back.

The grammar travels in `SamplingParams.grammar` (its JSON text), is checked against the
tokenizer before a request is queued (`check`), and each row gets its own `Constraint` when it
joins the engine. The answer stops with the model's end-of-turn token once the JSON is complete
(the matcher allows only that token then); an answer cut by `max_tokens` is incomplete JSON, as
OpenAI's is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_TOKENIZERS: dict[int, tuple[Any, Any]] = {}  # id(tokenizer) → (tokenizer, LLTokenizer)


def _ll_tokenizer(tokenizer: Any, eos_ids: frozenset[int]) -> Any:
    """llguidance's view of a fast tokenizer (~0.4 s to build, so kept per tokenizer)."""
    kept = _TOKENIZERS.get(id(tokenizer))
    if kept is None or kept[0] is not tokenizer:
        import llguidance.hf

        kept = (tokenizer, llguidance.hf.from_tokenizer(tokenizer, eos_token=sorted(eos_ids)))
        _TOKENIZERS[id(tokenizer)] = kept
    return kept[1]


# Between JSON tokens at most one space: compact JSON and json.dumps' ", " / ": " both fit (a
# model fine-tuned on either writes it as it learned), but not the endless run of newlines and
# tabs that an unsure model falls into when any whitespace is allowed.
JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": "[ ]?"}


@dataclass(frozen=True)
class Function:
    """A function tool as the grammar needs it."""

    name: str
    parameters: dict[str, Any] | None
    strict: bool


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The grammar of JSON following `schema`; None: any JSON object (OpenAI's `json_object`)."""
    from llguidance import LLMatcher

    schema = {"type": "object"} if schema is None else schema
    return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


def check(grammar: str, tokenizer: Any, eos_ids: frozenset[int]) -> str | None:
    """Why the grammar cannot constrain this tokenizer's answers (an invalid schema), or None."""
    from llguidance import LLMatcher

    problem = LLMatcher.validate_grammar(grammar, _ll_tokenizer(tokenizer, eos_ids))
    return problem or None


class Constraint:
    """One answer's grammar state: which tokens may come next, and the tokens taken so far."""

    def __init__(self, grammar: str, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        from llguidance import LLMatcher

        self._matcher = LLMatcher(_ll_tokenizer(tokenizer, eos_ids), grammar)
        self._eos = sorted(eos_ids)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (one row) with every token the grammar does not allow next at -inf."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = torch.from_numpy(np.unpackbits(bits, bitorder="little").astype(bool))
        vocab = logits.shape[-1]
        if allowed.numel() < vocab:  # logits padded past the tokenizer's vocabulary
            allowed = torch.cat([allowed, allowed.new_zeros(vocab - allowed.numel())])
        allowed = allowed[:vocab]
        if not allowed.any():  # the matcher is in an error state: end the answer
            allowed[self._eos] = True
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def take(self, token: int) -> None:
        self._matcher.consume_token(token)


class RowConstraints:
    """The same for transformers' `generate` (GRPO's sampler off the CPU): a `logits_processor`
    that keeps one `Constraint` per row of the batch, feeds each the token its row took last,
    and masks its row of the scores, until the row's end-of-turn token."""

    def __init__(
        self, grammar: str, tokenizer: Any, eos_ids: frozenset[int], rows: int, prompt_length: int
    ) -> None:
        self._rows = [Constraint(grammar, tokenizer, eos_ids) for _ in range(rows)]
        self._done = [False] * rows
        self._eos = eos_ids
        self._prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        started = input_ids.shape[1] > self._prompt_length
        for i, constraint in enumerate(self._rows):
            if started and not self._done[i]:
                token = int(input_ids[i, -1])
                if token in self._eos:
                    self._done[i] = True
                else:
                    constraint.take(token)
            if not self._done[i]:
                scores[i] = constraint.mask(scores[i])
        return scores


# Tool calls as `data/chat_template.format_tool_calls` writes them (the text a tool-call
# fine-tune learns): <tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>, blocks
# joined by "\n".
_CALL_OPEN = "<tool_call>"
_CALL_HEAD = _CALL_OPEN + '\n{"name": '
_ARGUMENTS = ', "arguments": '
_CALL_TAIL = "}\n</tool_call>"


def _lark(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _arguments(tool: Function) -> str:
    """A call's arguments in Lark: JSON following the parameters of a strict function, any JSON
    object otherwise (the call is still well formed), with JSON_OPTIONS' whitespace. Arguments
    are an object (what `parse_tool_calls` reads back): strict parameters of another type are a
    ValueError; without a type they are held to an object."""
    schema = tool.parameters if tool.strict and tool.parameters else {"type": "object"}
    if tool.strict and not tool.parameters:  # a function without parameters takes none
        schema = {"type": "object", "properties": {}, "additionalProperties": False}
    if schema.get("type", "object") != "object":
        raise ValueError(
            f"function {tool.name!r}: parameters of type {schema['type']!r}; a function's "
            'parameters are an object ({"type": "object", "properties": {...}})'
        )
    schema = {**schema, "type": "object"}
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS}, ensure_ascii=False)


def tool_grammar(tools: Sequence[Function], choice: str | None, parallel: bool = True) -> str:
    """The grammar of an answer with `tools` (OpenAI's `strict` function calling).

    `choice`: None or "auto" — any text, in which each `<tool_call>` block is a well-formed call
    of one of the tools (its arguments held to the schema when the tool is strict); "required"
    — one or more calls and nothing else; a tool's name — one call of it. For the last two the
    grammar continues the text the answer was started with (`tool_call_prefix`, in the prompt),
    so it begins after `{"name": "` or after `"arguments": `. `parallel` false (OpenAI's
    `parallel_tool_calls`): at most one call.
    """
    lines = ["%llguidance {}"]
    names = [f"fn_{i}" for i in range(len(tools))]
    for rule, tool in zip(names, tools, strict=True):
        head = _lark(json.dumps(tool.name) + _ARGUMENTS)
        lines.append(f"{rule}: {head} {_arguments(tool)} {_lark(_CALL_TAIL)}")
    lines.append(f"call_body: {' | '.join(names)}")
    lines.append(f"call: {_lark(_CALL_HEAD)} call_body")
    if choice in (None, "auto"):
        # Text is free; once it writes "<tool_call>" (lazy: the text ends at the first one) a
        # well-formed call must follow. Without parallel calls the answer ends after one: text
        # after it could hold a second, since only where a call may start is "<tool_call>"
        # taken as one.
        start = "(call_start call_rest)* TEXT" if parallel else "call_start call_rest | TEXT"
        lines += [
            f"start: {start}",
            "TEXT: /(.|\\n)*/",
            f"call_start[lazy]: TEXT {_lark(_CALL_OPEN)}",
            f"call_rest: {_lark(_CALL_HEAD.removeprefix(_CALL_OPEN))} call_body",
        ]
    elif choice == "required":  # after `<tool_call>\n{"name": "`: its opening quote is written
        first = [f"first_{rule}" for rule in names]
        for rule, tool in zip(first, tools, strict=True):
            head = _lark(tool.name + '"' + _ARGUMENTS)
            lines.append(f"{rule}: {head} {_arguments(tool)} {_lark(_CALL_TAIL)}")
        rest = f" ({_lark(chr(10))} call)*" if parallel else ""  # more calls, a line apart
        lines.append(f"start: ({' | '.join(first)}){rest}")
    else:  # after `"arguments": ` of the named function (names are unique: schemas.py)
        tool = next(t for t in tools if t.name == choice)
        lines.append(f"start: {_arguments(tool)} {_lark(_CALL_TAIL)}")
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_lark("\n".join(lines) + "\n")
