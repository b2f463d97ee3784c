"""Readers for the formats people have, each a pure function row → `Conversation` or issues.

Reading is streaming: `read_records` yields one record per line (or CSV row) with its line number,
so files of any size validate in bounded memory, and every problem names its line and field.

Issue names follow OpenAI's cookbook chat data-prep notebook where it has one (`data_type`,
`missing_messages_list`, `message_missing_key`, `message_unrecognized_key`, `unrecognized_role`,
`missing_content`, `example_missing_assistant_message`); the rest are ours.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.conversation import ROLES, Conversation, Message
from tuneforge.errors import UsageError

FORMATS: tuple[str, ...] = (
    "openai-chat",
    "prompt-completion",
    "alpaca",
    "sharegpt",
    "openai-dpo",
    "prompt-chosen-rejected",
    "columns",
)

# A line longer than this is reported and skipped instead of being parsed: one runaway line must
# not take the whole machine's memory.
MAX_LINE_BYTES = 16 * 1024 * 1024

MESSAGE_KEYS = ("role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call")
CHAT_EXAMPLE_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")

# ShareGPT speaker names seen in the wild → our roles.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
}


@dataclass(frozen=True)
class Issue:
    """One problem in one example. `name` is a stable key for counting; `message` says the fix."""

    name: str
    message: str
    field: str | None = None
    line: int | None = None

    def at(self, line: int) -> Issue:
        return Issue(self.name, self.message, self.field, line)

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "name": self.name, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "example"
        if self.field:
            where += f", field `{self.field}`"
        return f"{where}: {self.message}"


@dataclass
class Record:
    """One raw example as read from a file: a parsed value, or the issue that stopped parsing."""

    line: int
    value: Any = None
    issue: Issue | None = None


@dataclass
class Parsed:
    """The result of parsing one record: a conversation when there are no errors."""

    conversation: Conversation | None
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise UsageError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a data file", hint="name a .jsonl or .csv file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from exc


def is_csv(path: Path) -> bool:
    return path.suffix.lower() in (".csv", ".tsv")


def read_records(path: str | Path) -> Iterator[Record]:
    """Yield every example of a JSONL, JSON-array or CSV file with its 1-based line number."""
    path = Path(path)
    _check_readable(path)
    if is_csv(path):
        yield from _read_csv(path)
    elif path.suffix.lower() == ".json" and _starts_with(path, b"["):
        yield from _read_json_array(path)
    else:
        yield from _read_jsonl(path)


def _starts_with(path: Path, prefix: bytes) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(prefix)


def _read_jsonl(path: Path) -> Iterator[Record]:
    with path.open("rb") as f:
        line_no = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                # Skip the rest of the runaway line without holding it in memory.
                while True:
                    chunk = f.readline(MAX_LINE_BYTES)
                    if not chunk or chunk.endswith(b"\n"):
                        break
                yield Record(
                    line_no,
                    issue=Issue(
                        "line_too_long",
                        f"the line is longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB; "
                        "put one example per line",
                    ),
                )
                continue
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark, as Windows editors write
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Record(
                    line_no,
                    issue=Issue(
                        "encoding",
                        f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}); "
                        "re-save the file as UTF-8",
                    ),
                )
                continue
            if not text.strip():
                continue  # blank lines carry no example; tolerated like OpenAI does
            yield _parse_json_line(text, line_no)


# `"\ud83d"` without its pair decodes to a lone UTF-16 surrogate: Python holds it, but it is not
# text; it can't be written as UTF-8, hashed or tokenized. Escapes are only checked when present.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:  # iterative: values may be nested as deep as the JSON parser allows
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _lone_surrogate_issue() -> Issue:
    return Issue(
        "encoding",
        "a \\uD800-\\uDFFF escape without its other half is not text; fix or remove it",
    )


def _too_many_digits_issue() -> Issue:
    return Issue(
        "invalid_json",
        f"a number has more than {sys.get_int_max_str_digits()} digits; write it as a string",
    )


def _parse_json_line(text: str, line_no: int) -> Record:
    # Without its line break: a line cut short would otherwise fail at "line 2, column 1".
    text = text.rstrip("\r\n")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = exc.msg.removesuffix(" at")  # "Invalid control character at"
        if reason.startswith("Unterminated string"):
            message = (
                f"invalid JSON: the string that starts at column {exc.pos + 1} is not closed "
                f"before the line ends at column {len(text)}; is the line cut short?"
            )
        elif exc.pos >= len(text):
            message = (
                f"invalid JSON: the line ends at column {len(text)} before its JSON does "
                f"({reason}); is the line cut short?"
            )
        else:
            message = f"invalid JSON at column {exc.pos + 1}: {reason}"
        return Record(
            line_no,
            issue=Issue("invalid_json", f"{message}; each line must be one JSON object"),
        )
    except RecursionError:
        return Record(
            line_no,
            issue=Issue("invalid_json", "JSON nested too deeply to be an example"),
        )
    except ValueError:  # an integer over Python's digit limit (not a JSONDecodeError)
        return Record(line_no, issue=_too_many_digits_issue())
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        return Record(line_no, issue=_lone_surrogate_issue())
    return Record(line_no, value=value)


def _read_json_array(path: Path) -> Iterator[Record]:
    # A JSON array (as Alpaca ships) is read whole: JSON arrays cannot be streamed with the
    # standard library, and such files are small. Line numbers are the element's index + 1.
    try:
        text = path.read_bytes().decode("utf-8-sig")
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        yield Record(
            1, issue=Issue("encoding", f"not valid UTF-8 ({exc.reason}); re-save as UTF-8")
        )
        return
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else 1
        yield Record(line, issue=Issue("invalid_json", f"invalid JSON: {msg}"))
        return
    except ValueError:  # an integer over Python's digit limit
        yield Record(1, issue=_too_many_digits_issue())
        return
    if not isinstance(data, list):
        yield Record(1, issue=Issue("data_type", "a .json file must hold a list of examples"))
        return
    check_surrogates = _SURROGATE_ESCAPE.search(text) is not None
    for index, item in enumerate(data):
        if check_surrogates and _has_lone_surrogate(item):
            yield Record(index + 1, issue=_lone_surrogate_issue())
        else:
            yield Record(index + 1, value=item)


class _NotUtf8(Exception):
    def __init__(self, line: int, byte: int) -> None:
        super().__init__(line, byte)
        self.line, self.byte = line, byte


def _utf8_lines(text: Iterable[str]) -> Iterator[str]:
    """Physical lines decoded with surrogateescape; the first with an undecodable byte raises.

    (Decoding strictly would fail on the whole 8 KiB chunk being read ahead, blaming an
    earlier line.)
    """
    for line_no, line in enumerate(text, 1):
        if bad := _SURROGATE.search(line):
            raise _NotUtf8(line_no, ord(bad.group()) - 0xDC00)
        yield line


def _read_csv(path: Path) -> Iterator[Record]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(MAX_LINE_BYTES)
    with path.open("rb") as fb:
        try:
            text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
            reader = csv.reader(_utf8_lines(text), delimiter=delimiter)
            header: list[str] | None = None
            start = 1
            for row in reader:
                line_no, start = start, reader.line_num + 1
                if not row or not any(cell.strip() for cell in row):
                    continue
                if header is None:
                    header = [h.strip() for h in row]
                    continue
                if len(row) != len(header):
                    yield Record(
                        line_no,
                        issue=Issue(
                            "csv_columns",
                            f"row has {len(row)} cells but the header has {len(header)}; "
                            "quote cells that contain commas or newlines",
                        ),
                    )
                    continue
                yield Record(line_no, value=dict(zip(header, row, strict=True)))
        except _NotUtf8 as exc:
            yield Record(
                exc.line,
                issue=Issue(
                    "encoding", f"not valid UTF-8 (byte 0x{exc.byte:02x}); re-save as UTF-8"
                ),
            )
        except csv.Error as exc:
            yield Record(start, issue=Issue("csv_syntax", f"CSV syntax error: {exc}"))


def csv_header(path: Path) -> list[str]:
    for record in _read_csv_header_only(path):
        return record
    return []


def _read_csv_header_only(path: Path) -> Iterator[list[str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        for row in csv.reader(f, delimiter=delimiter):
            if row and any(cell.strip() for cell in row):
                yield [h.strip() for h in row]
                return


# --------------------------------------------------------------------------------------------
# Detecting the format
# --------------------------------------------------------------------------------------------


def detect_format_of_value(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    keys = set(value)
    if "messages" in keys:
        return "openai-chat"
    if "preferred_output" in keys or "non_preferred_output" in keys:
        return "openai-dpo"
    if "chosen" in keys and "rejected" in keys:
        return "prompt-chosen-rejected"
    if "conversations" in keys or "conversation" in keys:
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "prompt-completion"
    return None


def detect_format(path: str | Path, *, probe: int = 50) -> str:
    """Guess the format from the first examples that parse. Raises UsageError when it can't."""
    path = Path(path)
    seen_keys: set[str] = set()
    saw_object = False
    for i, record in enumerate(read_records(path)):
        if i >= probe:
            break
        if not isinstance(record.value, dict):
            continue
        saw_object = True
        fmt = detect_format_of_value(record.value)
        if fmt:
            return fmt
        if isinstance(record.value, dict):
            seen_keys.update(map(str, record.value))
    if not saw_object and not is_csv(path):
        # No JSON object at all (empty, blank, or every line broken or not an object): read it
        # as OpenAI chat, the default, so each bad line is reported with its line number.
        return "openai-chat"
    if is_csv(path):
        cols = ", ".join(csv_header(path)) or "none"
        raise UsageError(
            f"{path}: cannot tell which columns are the prompt and the answer (columns: {cols})",
            hint="pass a column mapping, e.g. --map prompt=title+ingredients,completion=NER",
        )
    keys = ", ".join(sorted(seen_keys)[:12]) or "no JSON objects"
    raise UsageError(
        f"{path}: cannot detect the data format (keys seen: {keys})",
        hint=f"pass --format (one of {', '.join(FORMATS)}) or --map for custom columns",
    )


# --------------------------------------------------------------------------------------------
# Parsing one record
# --------------------------------------------------------------------------------------------


def parse_mapping(spec: str | None, option: str = "--map") -> dict[str, list[str]] | None:
    """`prompt=title+ingredients,completion=NER[,system=sys]` → {"user": [...], ...}.

    `option` names the setting in error messages (`--map` on the CLI, `column_map` elsewhere).
    """
    if not spec:
        return None
    aliases = {
        "prompt": "user",
        "user": "user",
        "completion": "assistant",
        "assistant": "assistant",
        "response": "assistant",
        "system": "system",
    }
    mapping: dict[str, list[str]] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise UsageError(
                f"{option}: `{part}` is not KEY=COLUMN",
                hint=f"write e.g. {option}{' ' if option.startswith('-') else '='}"
                "prompt=title+ingredients,completion=NER",
            )
        key, cols = (s.strip() for s in part.split("=", 1))
        if key not in aliases:
            raise UsageError(
                f"{option}: unknown key `{key}`",
                hint="use prompt, completion and optionally system",
            )
        columns = [c.strip() for c in cols.split("+") if c.strip()]
        if not columns:
            raise UsageError(f"{option}: `{key}` names no column")
        mapping[aliases[key]] = columns
    for needed in ("user", "assistant"):
        if needed not in mapping:
            want = "prompt" if needed == "user" else "completion"
            raise UsageError(
                f"{option}: missing `{want}=COLUMN`", hint="map both prompt and completion"
            )
    return mapping


def parse_record(
    value: Any, fmt: str, mapping: dict[str, list[str]] | None = None, system: str | None = None
) -> Parsed:
    """Turn one raw example into a conversation, or into issues naming the field and the fix.

    `system`, when given, is prepended as a system message to examples that have none.
    """
    if fmt == "columns" or mapping is not None:
        if mapping is None:
            raise UsageError(
                "format `columns` needs a mapping", hint="pass --map prompt=COL,completion=COL"
            )
        parsed = _parse_columns(value, mapping)
    else:
        parser = _PARSERS.get(fmt)
        if parser is None:
            raise UsageError(f"unknown format `{fmt}`", hint=f"use one of {', '.join(FORMATS)}")
        parsed = parser(value)
    if system and parsed.conversation is not None and not parsed.conversation.has_system:
        conv = parsed.conversation
        parsed.conversation = Conversation(
            (Message("system", system), *conv.messages), conv.tools, conv.rejected
        )
    return parsed


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def _text_content(content: Any, where: str, errors: list[Issue]) -> str | None:
    """OpenAI content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
            else:
                errors.append(
                    Issue(
                        "missing_content",
                        'only text content parts ({"type": "text", "text": "..."}) are supported',
                        f"{where}.content[{j}]",
                    )
                )
                return None
        return "".join(texts)
    if content is not None:  # a number, boolean or object: never silently dropped
        errors.append(
            Issue(
                "missing_content",
                f"content must be a string, got {_type_name(content)}",
                f"{where}.content",
            )
        )
    return None


def _parse_tool_calls(calls: Any, where: str, errors: list[Issue]) -> tuple[dict, ...] | None:
    if not isinstance(calls, list) or not calls:
        errors.append(
            Issue(
                "invalid_tool_call", "`tool_calls` must be a non-empty list", f"{where}.tool_calls"
            )
        )
        return None
    out = []
    for j, call in enumerate(calls):
        here = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        args = fn.get("arguments") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            errors.append(
                Issue(
                    "invalid_tool_call",
                    'each tool call needs {"type": "function", "function": {"name": ..., '
                    '"arguments": ...}}',
                    f"{here}.function.name",
                )
            )
            continue
        if isinstance(args, dict):
            args = json.dumps(args, ensure_ascii=False)  # lenient: OpenAI wants a JSON string
        if not isinstance(args, str):
            errors.append(
                Issue(
                    "invalid_tool_call",
                    "`arguments` must be a JSON string",
                    f"{here}.function.arguments",
                )
            )
            continue
        try:
            json.loads(args)
        except (ValueError, RecursionError):  # ValueError: also an over-long integer
            errors.append(
                Issue(
                    "invalid_tool_call",
                    "`arguments` is not valid JSON",
                    f"{here}.function.arguments",
                )
            )
            continue
        call_id = call.get("id")
        out.append(
            {
                "id": call_id if isinstance(call_id, str) else f"call_{j}",
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
        )
    return tuple(out)


def _parse_chat_messages(
    messages: Any, errors: list[Issue], prefix: str = "messages"
) -> list[Message]:
    """The cookbook's per-message checks, extended for tools and weights."""
    out: list[Message] = []
    for i, message in enumerate(messages):
        where = f"{prefix}[{i}]"
        if not isinstance(message, dict):
            errors.append(
                Issue(
                    "message_missing_key",
                    f"a message must be an object with `role` and `content`, got "
                    f"{_type_name(message)}",
                    where,
                )
            )
            continue
        n_before = len(errors)
        role = message.get("role")
        if role == "developer":
            # OpenAI's newer name for the system message (its reasoning models' examples, and
            # the chat API, send it): read as system, as /v1/chat/completions reads it.
            role = "system"
        has_tool_calls = message.get("tool_calls") is not None or "function_call" in message
        missing = [k for k in ("role", "content") if k not in message]
        if missing and not (missing == ["content"] and has_tool_calls):
            errors.append(
                Issue(
                    "message_missing_key",
                    f"message lacks {' and '.join(f'`{k}`' for k in missing)}",
                    f"{where}.{missing[0]}",
                )
            )
        unknown = [str(k) for k in message if k not in MESSAGE_KEYS]
        if unknown:
            errors.append(
                Issue(
                    "message_unrecognized_key",
                    f"unrecognized key(s) {', '.join(map(repr, unknown[:5]))}; allowed: "
                    f"{', '.join(MESSAGE_KEYS)}",
                    f"{where}.{unknown[0]}",
                )
            )
        if role not in ROLES:
            errors.append(
                Issue(
                    "unrecognized_role",
                    f"role {json.dumps(role)[:40]} is not one of {', '.join(ROLES)} (or "
                    "developer, read as system)",
                    f"{where}.role",
                )
            )
        raw_content = message.get("content")
        content = _text_content(raw_content, where, errors)
        tool_calls = None
        if message.get("tool_calls") is not None:
            if role != "assistant":
                errors.append(
                    Issue("invalid_tool_call", "only assistant messages carry tool_calls", where)
                )
            else:
                tool_calls = _parse_tool_calls(message["tool_calls"], where, errors)
        if (not content and not has_tool_calls) and not any(
            e.name == "missing_content" for e in errors[n_before:]
        ):
            errors.append(
                Issue(
                    "missing_content",
                    "content is missing or empty"
                    if raw_content in (None, "")
                    else f"content must be a string, got {_type_name(raw_content)}",
                    f"{where}.content",
                )
            )
        weight = message.get("weight")
        if "weight" in message:
            if role != "assistant":
                errors.append(
                    Issue(
                        "invalid_weight",
                        "`weight` is only allowed on assistant messages",
                        f"{where}.weight",
                    )
                )
            elif (
                isinstance(weight, bool)
                or weight not in (0, 1)
                or (isinstance(weight, float) and math.isnan(weight))
            ):
                errors.append(
                    Issue(
                        "invalid_weight",
                        f"`weight` must be 0 or 1, got {json.dumps(weight)}",
                        f"{where}.weight",
                    )
                )
        tool_call_id = message.get("tool_call_id")
        if tool_call_id is not None and not isinstance(tool_call_id, str):
            errors.append(
                Issue("wrong_type", "`tool_call_id` must be a string", f"{where}.tool_call_id")
            )
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            errors.append(Issue("wrong_type", "`name` must be a string", f"{where}.name"))
        if len(errors) == n_before:
            out.append(
                Message(
                    role=role,
                    content=content,
                    weight=int(weight) if weight is not None else None,
                    tool_calls=tool_calls,
                    tool_call_id=tool_call_id,
                    name=name,
                )
            )
    return out


def _parse_tools(value: dict, errors: list[Issue], where: str = "tools") -> tuple[dict, ...] | None:
    tools = value.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools
    ):
        errors.append(
            Issue(
                "invalid_tools",
                '`tools` must be a list of {"type": "function", "function": {"name", ...}}',
                where,
            )
        )
        return None
    return tuple(tools)


def _parse_openai_chat(value: Any) -> Parsed:
    if not isinstance(value, dict):
        return Parsed(
            None,
            [Issue("data_type", f"each example must be a JSON object, got {_type_name(value)}")],
        )
    messages = value.get("messages")
    if not messages or not isinstance(messages, list):
        return Parsed(
            None,
            [
                Issue(
                    "missing_messages_list",
                    "the example needs a non-empty `messages` list",
                    "messages",
                )
            ],
        )
    errors: list[Issue] = []
    warnings: list[Issue] = []
    parsed = _parse_chat_messages(messages, errors)
    tools = _parse_tools(value, errors)
    unknown = [str(k) for k in value if k not in CHAT_EXAMPLE_KEYS]
    if unknown:
        warnings.append(
            Issue(
                "example_unrecognized_key",
                f"ignored key(s) {', '.join(map(repr, unknown[:5]))}; they are not trained on",
                unknown[0],
            )
        )
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errors.append(
            Issue(
                "example_missing_assistant_message",
                "the example has no assistant message, so nothing would be trained",
                "messages",
            )
        )
    if errors:
        return Parsed(None, errors, warnings)
    return Parsed(Conversation(tuple(parsed), tools), [], warnings)


def _require_str(
    value: dict, key: str, errors: list[Issue], *, required: bool = True
) -> str | None:
    if key not in value or value[key] is None:
        if required:
            errors.append(Issue("missing_field", f"missing `{key}`", key))
        return None
    got = value[key]
    if not isinstance(got, str):
        errors.append(Issue("wrong_type", f"`{key}` must be a string, got {_type_name(got)}", key))
        return None
    if required and not got.strip():
        errors.append(Issue("missing_content", f"`{key}` is empty", key))
        return None
    return got


def _not_object(value: Any) -> Parsed | None:
    if isinstance(value, dict):
        return None
    return Parsed(
        None, [Issue("data_type", f"each example must be a JSON object, got {_type_name(value)}")]
    )


def _parse_prompt_completion(value: Any) -> Parsed:
    if bad := _not_object(value):
        return bad
    errors: list[Issue] = []
    prompt = _require_str(value, "prompt", errors)
    completion = _require_str(value, "completion", errors)
    if errors:
        return Parsed(None, errors)
    return Parsed(Conversation((Message("user", prompt), Message("assistant", completion))))


def _parse_alpaca(value: Any) -> Parsed:
    if bad := _not_object(value):
        return bad
    errors: list[Issue] = []
    instruction = _require_str(value, "instruction", errors)
    extra = _require_str(value, "input", errors, required=False)
    output = _require_str(value, "output", errors)
    system = _require_str(value, "system", errors, required=False)
    if errors:
        return Parsed(None, errors)
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages = [Message("system", system)] if system else []
    messages += [Message("user", user), Message("assistant", output)]
    return Parsed(Conversation(tuple(messages)))


def _parse_sharegpt(value: Any) -> Parsed:
    if bad := _not_object(value):
        return bad
    key = "conversations"  # ShareGPT's key, named in the error when neither key is there
    if "conversations" not in value and "conversation" in value:
        key = "conversation"  # a few exports use the singular
    turns = value.get(key)
    if not isinstance(turns, list) or not turns:
        return Parsed(
            None, [Issue("missing_messages_list", f"`{key}` must be a non-empty list", key)]
        )
    errors: list[Issue] = []
    messages: list[Message] = []
    system = _require_str(value, "system", errors, required=False)
    if system:
        messages.append(Message("system", system))
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            errors.append(
                Issue("message_missing_key", 'each turn must be {"from": ..., "value": ...}', where)
            )
            continue
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            errors.append(
                Issue(
                    "unrecognized_role",
                    f"`from` {json.dumps(speaker)[:40]} is not one of "
                    f"{', '.join(sorted(SHAREGPT_ROLES))}",
                    f"{where}.from",
                )
            )
            continue
        text = turn.get("value")
        if not isinstance(text, str) or not text:
            errors.append(
                Issue("missing_content", "`value` must be a non-empty string", f"{where}.value")
            )
            continue
        messages.append(Message(role, text))
    if not errors and not any(m.role == "assistant" for m in messages):
        errors.append(
            Issue(
                "example_missing_assistant_message",
                "no gpt/assistant turn, so nothing would be trained",
                key,
            )
        )
    if errors:
        return Parsed(None, errors)
    return Parsed(Conversation(tuple(messages)))


def _parse_openai_dpo(value: Any) -> Parsed:
    if bad := _not_object(value):
        return bad
    errors: list[Issue] = []
    inp = value.get("input")
    if (
        not isinstance(inp, dict)
        or not isinstance(inp.get("messages"), list)
        or not inp["messages"]
    ):
        errors.append(
            Issue(
                "missing_messages_list",
                "`input.messages` must be a non-empty list",
                "input.messages",
            )
        )
        return Parsed(None, errors)
    prompt = _parse_chat_messages(inp["messages"], errors, "input.messages")
    tools = _parse_tools(inp, errors, "input.tools")
    outputs: list[list[Message]] = []
    for key in ("preferred_output", "non_preferred_output"):
        out = value.get(key)
        if not isinstance(out, list) or len(out) != 1:
            errors.append(
                Issue("missing_field", f"`{key}` must be a list with one assistant message", key)
            )
            continue
        msgs = _parse_chat_messages(out, errors, key)
        if msgs and msgs[0].role != "assistant":
            errors.append(
                Issue(
                    "unrecognized_role", f"`{key}` must be an assistant message", f"{key}[0].role"
                )
            )
        outputs.append(msgs)
    if errors:
        return Parsed(None, errors)
    return _preference(prompt, outputs[0], outputs[1], tools, "non_preferred_output")


def _preference(
    prompt: list[Message],
    preferred: list[Message],
    rejected: list[Message],
    tools: tuple[dict, ...] | None,
    rejected_field: str,
) -> Parsed:
    """A preference pair as a conversation; identical answers teach nothing and are an error."""
    same = [(m.content, m.tool_calls) for m in preferred] == [
        (m.content, m.tool_calls) for m in rejected
    ]
    if same:
        return Parsed(
            None,
            [
                Issue(
                    "identical_outputs",
                    "the preferred and non-preferred answers are identical, so there is nothing "
                    "to prefer; fix or remove this pair",
                    rejected_field,
                )
            ],
        )
    return Parsed(Conversation(tuple(prompt + preferred), tools, tuple(rejected)))


def _parse_prompt_chosen_rejected(value: Any) -> Parsed:
    """TRL's preference format: `prompt` (a string or a list of messages), `chosen` and
    `rejected` (a string, or a list holding one assistant message), optional `system`."""
    if bad := _not_object(value):
        return bad
    errors: list[Issue] = []
    raw_prompt = value.get("prompt")
    prompt: list[Message] = []
    if isinstance(raw_prompt, list) and raw_prompt:
        prompt = _parse_chat_messages(raw_prompt, errors, "prompt")
    elif isinstance(raw_prompt, str) and raw_prompt.strip():
        prompt = [Message("user", raw_prompt)]
    else:
        errors.append(
            Issue(
                "missing_field",
                "`prompt` must be a non-empty string or list of messages",
                "prompt",
            )
        )
    system = _require_str(value, "system", errors, required=False)
    if system and not any(m.role == "system" for m in prompt):
        prompt = [Message("system", system), *prompt]
    answers: list[list[Message]] = []
    for key in ("chosen", "rejected"):
        raw = value.get(key)
        if isinstance(raw, str) and raw.strip():
            answers.append([Message("assistant", raw)])
        elif isinstance(raw, list) and len(raw) == 1:
            msgs = _parse_chat_messages(raw, errors, key)
            if msgs and msgs[0].role != "assistant":
                errors.append(
                    Issue("unrecognized_role", f"`{key}` must be an assistant message", key)
                )
            answers.append(msgs)
        else:
            errors.append(
                Issue(
                    "missing_field",
                    f"`{key}` must be a non-empty string or a list with one assistant message",
                    key,
                )
            )
    if errors:
        return Parsed(None, errors)
    return _preference(prompt, answers[0], answers[1], None, "rejected")


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False)  # lists and objects stay JSON, like NER columns


def _parse_columns(value: Any, mapping: dict[str, list[str]]) -> Parsed:
    if bad := _not_object(value):
        return bad
    errors: list[Issue] = []
    parts: dict[str, str] = {}
    for role in ("system", "user", "assistant"):
        columns = mapping.get(role)
        if not columns:
            continue
        texts = []
        for column in columns:
            if column not in value:
                errors.append(Issue("missing_field", f"column `{column}` is missing", column))
                continue
            text = _cell(value[column])
            if text is None or not text.strip():
                if role != "system":
                    errors.append(Issue("missing_content", f"column `{column}` is empty", column))
                continue
            # Several columns in one turn are labelled, e.g. "Title: ...\n\nIngredients: ...".
            texts.append(f"{column[:1].upper()}{column[1:]}: {text}" if len(columns) > 1 else text)
        parts[role] = "\n\n".join(texts)
    if errors:
        return Parsed(None, errors)
    messages = [Message("system", parts["system"])] if parts.get("system") else []
    messages += [Message("user", parts["user"]), Message("assistant", parts["assistant"])]
    return Parsed(Conversation(tuple(messages)))


_PARSERS = {
    "openai-chat": _parse_openai_chat,
    "prompt-completion": _parse_prompt_completion,
    "alpaca": _parse_alpaca,
    "sharegpt": _parse_sharegpt,
    "openai-dpo": _parse_openai_dpo,
    "prompt-chosen-rejected": _parse_prompt_chosen_rejected,
}


# --------------------------------------------------------------------------------------------
# Whole files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """A parsed example with where it came from, and the row's other fields (`row_item`)."""

    line: int
    conversation: Conversation
    item: dict[str, Any] = field(default_factory=dict, compare=False)


def check_mapping_columns(path: Path, mapping: dict[str, list[str]] | None) -> None:
    """For CSV files, a mapped column missing from the header is a usage error, reported once."""
    if mapping is None or not is_csv(path):
        return
    header = csv_header(path)
    missing = [c for cols in mapping.values() for c in cols if c not in header]
    if missing:
        raise UsageError(
            f"{path}: no column(s) {', '.join(map(repr, missing))}; the columns are "
            f"{', '.join(header) or 'none'}",
            hint="fix the names in --map (they are case-sensitive)",
        )


def iter_parsed(
    path: str | Path,
    fmt: str | None = None,
    mapping: dict[str, list[str]] | None = None,
    system: str | None = None,
) -> Iterator[tuple[Record, Parsed]]:
    """Stream (record, parsed) pairs for a file. Issues carry line numbers."""
    path = Path(path)
    _check_readable(path)
    if mapping is not None:
        fmt = "columns"
        check_mapping_columns(path, mapping)
    elif fmt is None:
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise UsageError(f"unknown format `{fmt}`", hint=f"use one of {', '.join(FORMATS)}")
    for record in read_records(path):
        if record.issue is not None:
            yield record, Parsed(None, [record.issue.at(record.line)])
            continue
        parsed = parse_record(record.value, fmt, mapping, system)
        parsed.errors = [e.at(record.line) for e in parsed.errors]
        parsed.warnings = [w.at(record.line) for w in parsed.warnings]
        yield record, parsed


def load_conversations(
    path: str | Path,
    fmt: str | None = None,
    mapping: dict[str, list[str]] | None = None,
    system: str | None = None,
) -> list[Example]:
    """Read a whole file; raise DataError listing the first problems if any example is bad."""
    from tuneforge.errors import DataError

    examples: list[Example] = []
    problems: list[Issue] = []
    for record, parsed in iter_parsed(path, fmt, mapping, system):
        if parsed.conversation is not None:
            examples.append(Example(record.line, parsed.conversation, row_item(record.value)))
        problems.extend(parsed.errors)
    if problems:
        shown = "\n".join(f"  {path}: {p}" for p in problems[:10])
        more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(
            f"{path}: {len(problems)} problem(s) in the data:\n{shown}{more}",
            hint=f"run `tuneforge data validate {path}` for the full report",
        )
    if not examples:
        raise DataError(f"{path}: the file holds no examples", hint="add one example per line")
    return examples


def write_jsonl(path: str | Path, rows: Iterator[dict] | list[dict]) -> int:
    """Write rows as JSONL atomically: a crash never leaves half a file."""
    from tuneforge.atomic import atomic_open

    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# --------------------------------------------------------------------------------------------
# Prompts for reinforcement fine-tuning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptRow:
    """One line of OpenAI's reinforcement fine-tuning JSONL: the prompt (`messages`, ending with
    the user's turn, and `tools`) and every other key, which graders read as `{{ item.key }}`."""

    line: int
    messages: tuple[Message, ...]
    tools: tuple[dict, ...] | None
    item: dict[str, Any]


RFT_RESERVED_KEYS = ("messages", "tools", "parallel_tool_calls")


def row_item(value: Any) -> dict[str, Any]:
    """A row as graders see it (`{{ item.key }}`): every field but the prompt (OpenAI's RFT rule,
    used for GRPO's prompts and for the test rows `compare --grader` scores; a CSV row's fields
    are its columns)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if k not in RFT_RESERVED_KEYS}


def parse_prompt_row(value: Any) -> tuple[PromptRow | None, list[Issue]]:
    if bad := _not_object(value):
        return None, bad.errors
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, [
            Issue(
                "missing_messages_list",
                "a reinforcement example needs a non-empty `messages` list (the prompt)",
                "messages",
            )
        ]
    errors: list[Issue] = []
    parsed = _parse_chat_messages(messages, errors)
    tools = _parse_tools(value, errors)
    if not errors and parsed[-1].role != "user":
        errors.append(
            Issue(
                "last_message_not_user",
                f"the prompt must end with a user message (OpenAI's rule), not "
                f"{parsed[-1].role}; the model writes the answer that follows",
                f"messages[{len(parsed) - 1}].role",
            )
        )
    if errors:
        return None, errors
    return PromptRow(0, tuple(parsed), tools, row_item(value)), []


def load_prompts(path: str | Path, system: str | None = None) -> list[PromptRow]:
    """A whole RFT JSONL file; raise DataError listing the first problems if any row is bad."""
    from tuneforge.errors import DataError

    path = Path(path)
    _check_readable(path)
    rows: list[PromptRow] = []
    problems: list[Issue] = []
    for record in read_records(path):
        if record.issue is not None:
            problems.append(record.issue.at(record.line))
            continue
        row, issues = parse_prompt_row(record.value)
        problems.extend(i.at(record.line) for i in issues)
        if row is not None:
            messages = row.messages
            if system and not any(m.role == "system" for m in messages):
                messages = (Message("system", system), *messages)
            rows.append(PromptRow(record.line, messages, row.tools, row.item))
    if problems:
        shown = "\n".join(f"  {path}: {p}" for p in problems[:10])
        more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(
            f"{path}: {len(problems)} problem(s) in the data:\n{shown}{more}",
            hint='each line: {"messages": [..., {"role": "user", ...}], <fields graders read>}',
        )
    if not rows:
        raise DataError(f"{path}: the file holds no prompts", hint="add one prompt per line")
    return rows
