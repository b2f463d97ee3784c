"""The one chat-template path: training, evaluation, serving and export all render through here.

Templates are Jinja programs shipped inside model folders, i.e. code from outside. We render them
in Jinja's immutable sandbox (as transformers does) and add limits on output size and time, so a
hostile template or message cannot hang or flood the process.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tuneforge.data.conversation import Conversation, Message
from tuneforge.errors import DataError, ModelError

MAX_RENDER_CHARS = 4_000_000  # far above any context window in characters
MAX_RENDER_SECONDS = 5.0


class TemplateError(DataError):
    """The chat template failed on this conversation (or hit a limit)."""


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@dataclass
class ChatTemplate:
    """A compiled chat template plus the special tokens templates refer to."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise ModelError(f"the model's chat template does not compile: {exc}") from exc
        # Templates that know about tools render `tool_calls` themselves; for the others we fold
        # calls into the assistant text (see `template_messages`).
        self.supports_tools = "tool_calls" in self.source

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatTemplate:
        source = getattr(tokenizer, "chat_template", None)
        if not source:
            raise ModelError(
                "this model has no chat template",
                hint="use an instruct/chat model, or a folder whose tokenizer_config.json or "
                "chat_template.jinja defines one",
            )
        if isinstance(source, dict):  # some tokenizers ship several named templates
            source = source.get("default") or next(iter(source.values()))
        return cls(source, tokenizer.bos_token or "", tokenizer.eos_token or "")

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        start = time.monotonic()
        size = 0
        pieces = []
        try:
            for piece in self._template.generate(
                messages=messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            ):
                size += len(piece)
                pieces.append(piece)
                if size > MAX_RENDER_CHARS:
                    raise TemplateError(
                        f"the rendered conversation exceeds {MAX_RENDER_CHARS:,} characters"
                    )
                if time.monotonic() - start > MAX_RENDER_SECONDS:
                    raise TemplateError(f"rendering took over {MAX_RENDER_SECONDS:.0f} s")
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"the chat template tried an unsafe operation: {exc}") from exc
        except Exception as exc:  # the template is foreign code: any failure is its failure
            raise TemplateError(f"the chat template failed on this conversation: {exc}") from exc
        return "".join(pieces)

    def render_conversation(
        self, conversation: Conversation, *, add_generation_prompt: bool = False
    ) -> str:
        return self.render(
            template_messages(conversation.messages, conversation.tools, self.supports_tools),
            tools=list(conversation.tools) if conversation.tools and self.supports_tools else None,
            add_generation_prompt=add_generation_prompt,
        )


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def format_tool_calls(tool_calls: tuple[dict[str, Any], ...]) -> str:
    """Tool calls as text for templates without tool support (the Hermes/Qwen convention)."""
    blocks = []
    for call in tool_calls:
        fn = call["function"]
        args = json.loads(fn["arguments"])
        blocks.append(
            f"{TOOL_CALL_OPEN}\n"
            + json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False)
            + f"\n{TOOL_CALL_CLOSE}"
        )
    return "\n".join(blocks)


def tool_call_prefix(name: str | None = None) -> str:
    """The start of a `format_tool_calls` block, to put after the generation prompt so that the
    model answers with a call (of `name`, when given): how the server honours `tool_choice`."""
    if name is None:
        return f'{TOOL_CALL_OPEN}\n{{"name": "'
    return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": '


@dataclass(frozen=True)
class ParsedAnswer:
    """A generated answer split as OpenAI returns it: text, and function calls."""

    content: str | None
    calls: tuple[tuple[str, str], ...]  # (function name, arguments as a JSON string)


def parse_tool_calls(text: str) -> ParsedAnswer | None:
    """The inverse of `format_tool_calls`: the `<tool_call>` blocks of a generated answer.

    Returns None when the answer is plain text: no block, a block left open (generation stopped
    inside it) or a block that is not `{"name": str, "arguments": object}`, so nothing the model
    wrote is dropped. The content is the text before the first block without its trailing
    whitespace (the "\n" `template_messages` puts there), plus any text after the blocks.
    """
    blocks = list(_TOOL_CALL_BLOCK.finditer(text))
    if not blocks or TOOL_CALL_OPEN in text[blocks[-1].end() :]:
        return None
    calls = []
    for block in blocks:
        try:
            call = json.loads(block.group(1))
        except json.JSONDecodeError:
            return None
        if not (
            isinstance(call, dict)
            and isinstance(call.get("name"), str)
            and call["name"]
            and isinstance(call.get("arguments"), dict)
        ):
            return None
        calls.append((call["name"], json.dumps(call["arguments"], ensure_ascii=False)))
    content = text[: blocks[0].start()].rstrip()
    ends = [b.end() for b in blocks]
    starts = [b.start() for b in blocks[1:]] + [len(text)]
    rest = "".join(text[a:b] for a, b in zip(ends, starts, strict=True))
    if rest.strip():
        content = f"{content}\n{rest.strip()}" if content else rest.strip()
    return ParsedAnswer(content or None, tuple(calls))


def tool_call_objects(calls: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """Parsed calls in OpenAI's chat-completions `tool_calls` shape, each with a new `call_` id."""
    return [
        {
            "id": f"call_{secrets.token_hex(12)}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for name, arguments in calls
    ]


def template_messages(
    messages: tuple[Message, ...] | list[Message],
    tools: tuple[dict[str, Any], ...] | None = None,
    supports_tools: bool = False,
) -> list[dict[str, Any]]:
    """Canonical messages → the dicts a chat template expects.

    For templates that know nothing of tools, tool calls become `<tool_call>` text in the
    assistant turn and tool definitions are appended to the system message, so that the model
    is trained and prompted on exactly the same text.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        content = m.content or ""
        d: dict[str, Any] = {"role": m.role, "content": content}
        if m.tool_calls:
            if supports_tools:
                d["tool_calls"] = [dict(c) for c in m.tool_calls]
            else:
                d["content"] = (content + "\n" if content else "") + format_tool_calls(m.tool_calls)
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    if tools and not supports_tools:
        described = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        note = (
            'You may call these tools. Answer with <tool_call>{"name": ..., "arguments": ...}'
            f"</tool_call>.\n<tools>\n{described}\n</tools>"
        )
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{note}"}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out
