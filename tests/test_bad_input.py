"""Bad input never crashes validation, and every bad example is blamed on its own line.

Random bytes, random JSON, deep nesting, huge lines, a wrong value in every field of every format,
random CSV. Each case is checked three ways: the data is rejected (exit status 1, `ok` false),
nothing crashes (no traceback, no "internal error"), and the errors sit exactly on the bad
lines, naming the bad field where there is one, while the valid examples around them still
count. Where a random value happens to be valid, the test says why and requires it accepted.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import good_examples, write_lines
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from tuneforge.data import formats
from tuneforge.data.conversation import ROLES
from tuneforge.data.validate import validate_file

N_GOOD = 12  # valid examples around the bad ones: more than the 10 a file needs
# Python refuses to read integers longer than this (a ValueError, not a JSONDecodeError).
TOO_MANY_DIGITS = sys.get_int_max_str_digits() + 1
needs_digit_limit = pytest.mark.skipif(
    TOO_MANY_DIGITS == 1, reason="PYTHONINTMAXSTRDIGITS=0: integers of any length are read"
)

FAST = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# In-process CLI runs take ~0.5 s each: few examples, and no shrinking (the in-process twin of
# each CLI test shrinks fast).
VIA_CLI = settings(FAST, max_examples=4, phases=[Phase.explicit, Phase.reuse, Phase.generate])


@pytest.fixture
def validated(tokenizer, template) -> Callable[..., dict[str, Any]]:
    """Validate a file in-process (fast enough for hypothesis); the report as the CLI's JSON."""

    def run(path: Path, **kw: Any) -> dict[str, Any]:
        report = validate_file(path, tokenizer, template, model_name="test", max_seq_len=2048, **kw)
        return report.to_json()

    return run


def cli_validate(run_cli, path: Path, *extra: str) -> tuple[int, dict[str, Any] | None, str]:
    code, out, err = run_cli("data", "validate", path, "--json", "--no-estimate", *extra)
    assert "Traceback" not in out + err, out + err
    assert "internal error" not in out + err, err
    return code, (json.loads(out) if out.strip() else None), err


def under(field: str | None, path: str) -> bool:
    """`messages[1].role` is under `messages[1]`, `messages[1].role` — not under `messages[10]`."""
    return field is not None and (
        field == path or field.startswith(path + ".") or field.startswith(path + "[")
    )


def assert_blamed(
    report: dict[str, Any],
    bad: dict[int, tuple[str | None, str | None]],
    n_valid: int | None = N_GOOD,
) -> None:
    """Exactly the lines in `bad` have errors; each has one with the given name and field.

    `bad` maps line → (error name or None for any, field path or None for any).
    """
    assert not report["ok"]
    assert report["file_errors"] == {}, report["file_errors"]
    lines = sorted({e["line"] for e in report["errors"]})
    assert lines == sorted(bad), report["errors"]
    for line, (name, path) in bad.items():
        here = [e for e in report["errors"] if e["line"] == line]
        assert any(
            (name is None or e["name"] == name) and (path is None or under(e["field"], path))
            for e in here
        ), (line, name, path, here)
    if n_valid is not None:
        assert report["n_valid_examples"] == n_valid


def assert_accepted(report: dict[str, Any], n_valid: int) -> None:
    assert report["ok"], report["errors"]
    assert report["n_valid_examples"] == n_valid


# --------------------------------------------------------------------------------------------
# Valid examples of each format, to surround the bad ones
# --------------------------------------------------------------------------------------------


def padding(fmt: str, n: int = N_GOOD) -> list[dict[str, Any]]:
    if fmt == "openai-chat":
        return good_examples(n)
    if fmt == "prompt-completion":
        return [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(n)]
    if fmt == "alpaca":
        return [
            {"instruction": f"Do task {i}.", "input": "", "output": f"Done {i}."} for i in range(n)
        ]
    if fmt == "sharegpt":
        return [
            {
                "conversations": [
                    {"from": "human", "value": f"Hello {i}"},
                    {"from": "gpt", "value": f"Hi {i}"},
                ]
            }
            for i in range(n)
        ]
    if fmt == "columns":
        return [{"q": f"Question {i}?", "a": f"Answer {i}."} for i in range(n)]
    raise AssertionError(fmt)


def write_with(path: Path, fmt: str, bad_rows: list[Any], at: int = 6) -> Path:
    """N_GOOD valid rows with `bad_rows` inserted after the first `at` (so from line at+1)."""
    rows: list[Any] = padding(fmt)
    rows[at:at] = bad_rows
    return write_lines(path, rows)


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

# Strings with a lone UTF-16 surrogate: JSON can spell them (`"\ud800"`), Unicode can't.
lone_surrogate_text = st.builds(
    lambda a, s, b: a + s + b,
    st.text(max_size=3),
    st.characters(categories=["Cs"]),
    st.text(max_size=3),
)
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=10,
)
# Values the parsers treat specially, so that random replacements also hit the valid ones.
special_values = st.sampled_from(
    [None, True, False, 0, 1, 0.0, 1.0, -0.0, 2, -1, 0.5, "", " ", "0", "1", "{}", "[1, 2]",
     "not json", [], {}, [None], {"a": 1}, *ROLES, "human", "gpt"]
)  # fmt: skip
text_parts = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}), max_size=3
)
replacements = special_values | json_values | text_parts


def has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    return False


def content_lines(blob: bytes, first_line: int) -> dict[int, bool]:
    """Line → "is not UTF-8" for each non-blank line of `blob` placed from `first_line` on."""
    out = {}
    for i, piece in enumerate(blob.split(b"\n")):
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            out[first_line + i] = True
            continue
        if text.strip():
            out[first_line + i] = False
    return out


# --------------------------------------------------------------------------------------------
# Random bytes
# --------------------------------------------------------------------------------------------


@FAST
@given(blob=st.binary(max_size=300))
def test_random_bytes_among_valid_lines(blob, tmp_path, validated):
    expected = content_lines(blob, first_line=7)
    assume(expected)  # all blank: nothing to report
    path = tmp_path / "bytes.jsonl"
    head, tail = padding("openai-chat")[:6], padding("openai-chat")[6:]
    path.write_bytes(
        "".join(json.dumps(r) + "\n" for r in head).encode()
        + blob
        + b"\n"
        + "".join(json.dumps(r) + "\n" for r in tail).encode()
    )
    report = validated(path)
    assert_blamed(
        report,
        {line: ("encoding" if not_utf8 else None, None) for line, not_utf8 in expected.items()},
    )


@settings(VIA_CLI, max_examples=3)  # two CLI runs each
@given(blob=st.binary(max_size=300))
def test_random_bytes_file_through_the_cli(blob, tmp_path, run_cli):
    path = tmp_path / "random.jsonl"
    path.write_bytes(blob)
    # Forced format: every non-blank line is reported, and too few examples remain.
    code, report, err = cli_validate(run_cli, path, "--format", "openai-chat")
    assert code == 1, err
    assert report is not None
    stripped = blob[3:] if blob.startswith(b"\xef\xbb\xbf") else blob  # a BOM is allowed
    expected = content_lines(stripped, first_line=1)
    assert sorted({e["line"] for e in report["errors"] if e["line"] is not None}) == sorted(
        expected
    )
    for line, not_utf8 in expected.items():
        if not_utf8:
            assert any(e["line"] == line and e["name"] == "encoding" for e in report["errors"])
    assert report["n_valid_examples"] == 0
    assert report["file_errors"] == ({"too_few_examples": 1} if expected else {"empty_file": 1})
    # Detected format: with no JSON object to detect from, the file is read as OpenAI chat
    # (the default), so the report is the same as with the format forced.
    code, detected, err = cli_validate(run_cli, path)
    assert code == 1, err
    assert detected["errors"] == report["errors"]


# --------------------------------------------------------------------------------------------
# Random JSON values, one per line
# --------------------------------------------------------------------------------------------


def json_line_expectation(value: Any) -> tuple[str, str | None]:
    if has_lone_surrogate(value):
        return ("encoding", None)
    if not isinstance(value, dict):
        return ("data_type", None)
    return ("missing_messages_list", "messages")


random_json_lines = st.lists(
    st.tuples(
        json_values | lone_surrogate_text | st.lists(lone_surrogate_text, max_size=2),
        st.booleans(),  # ensure_ascii: a lone surrogate as a \u escape, or as raw bytes
        st.integers(0, N_GOOD),  # where it goes
    ),
    min_size=1,
    max_size=4,
)


GOOD = object()  # marks a valid row (None is a random JSON value too)


def build_random_json_file(path: Path, items) -> dict[int, tuple[str, str | None]]:
    for value, _, _ in items:
        # A dict with a `messages` list could be a valid chat example: not "random bad JSON".
        assume(not (isinstance(value, dict) and isinstance(value.get("messages"), list)))
    rows: list[Any] = list(padding("openai-chat"))
    marks: list[Any] = [GOOD] * len(rows)
    for value, ascii_only, where in items:
        line = json.dumps(value, ensure_ascii=ascii_only)
        rows.insert(where, line)
        marks.insert(where, value)
    with path.open("wb") as f:
        for row in rows:
            text = row if isinstance(row, str) else json.dumps(row)
            f.write(text.encode("utf-8", "surrogatepass") + b"\n")
    return {i + 1: json_line_expectation(v) for i, v in enumerate(marks) if v is not GOOD}


@FAST
@given(items=random_json_lines)
def test_random_json_values_per_line(items, tmp_path, validated):
    path = tmp_path / "random.jsonl"
    expected = build_random_json_file(path, items)
    assert_blamed(validated(path), expected)


@VIA_CLI
@given(items=random_json_lines)
def test_random_json_values_through_the_cli(items, tmp_path, run_cli):
    path = tmp_path / "random.jsonl"
    expected = build_random_json_file(path, items)
    code, report, err = cli_validate(run_cli, path)
    assert code == 1, err
    assert_blamed(report, expected)


# --------------------------------------------------------------------------------------------
# Deep nesting
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "[" * 100_000,
        '{"a":' * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"messages": ' + "[" * 100_000,
    ],
)
def test_deep_nesting_line_through_the_cli(line, tmp_path, run_cli):
    path = write_with(tmp_path / "deep.jsonl", "openai-chat", [line])
    code, report, err = cli_validate(run_cli, path)
    assert code == 1, err
    assert_blamed(report, {7: ("invalid_json", None)})


def test_deep_json_array_file(tmp_path, validated):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    report = validated(path, fmt="alpaca")
    assert report["format_errors"] == {"invalid_json": 1}
    assert [e["line"] for e in report["errors"] if e["name"] == "invalid_json"] == [1]


# (format, example with a "@@" placeholder, field path at fault, or None where a deep value is
# valid there: ignored keys, tool parameters, JSON-object arguments, a JSON column)
DEEP_SPOTS: list[tuple[str, str, str | None]] = [
    ("openai-chat", '{"messages": [{"role": "user", "content": @@}, {"role": "assistant", "content": "a"}]}', "messages[0].content"),  # noqa: E501
    ("openai-chat", '{"messages": [{"role": @@, "content": "q"}, {"role": "assistant", "content": "a"}]}', "messages[0].role"),  # noqa: E501
    ("openai-chat", '{"messages": [{"role": "user", "content": "q", "name": @@}, {"role": "assistant", "content": "a"}]}', "messages[0].name"),  # noqa: E501
    ("openai-chat", '{"messages": [{"role": "user", "content": "q", "extra": @@}, {"role": "assistant", "content": "a"}]}', "messages[0].extra"),  # noqa: E501
    ("openai-chat", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": @@}]}', "messages[1].weight"),  # noqa: E501
    ("openai-chat", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": @@}]}', "messages[1].tool_calls"),  # noqa: E501
    ("openai-chat", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": @@}}]}]}', "messages[1].tool_calls[0].function.arguments"),  # noqa: E501
    ("openai-chat", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": @@}}]}', None),  # noqa: E501
    ("openai-chat", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "metadata": @@}', None),  # noqa: E501
    ("prompt-completion", '{"prompt": @@, "completion": "a"}', "prompt"),
    ("sharegpt", '{"conversations": [{"from": @@, "value": "q"}, {"from": "gpt", "value": "a"}]}', "conversations[0].from"),  # noqa: E501
    ("columns", '{"q": "question", "a": @@}', None),
]  # fmt: skip


def nested(depth: int, shape: str) -> str:
    if shape == "list":
        return "[" * depth + "1" + "]" * depth
    return '{"k": ' * depth + "1" + "}" * depth


@FAST
@given(
    spot=st.sampled_from(range(len(DEEP_SPOTS))),
    depth=st.integers(1, 30) | st.integers(900, 1100) | st.integers(1, 20_000),
    shape=st.sampled_from(["list", "object"]),
)
def test_deep_values_in_every_position(spot, depth, shape, tmp_path, validated):
    fmt, example, field = DEEP_SPOTS[spot]
    line = example.replace("@@", nested(depth, shape))
    path = write_with(tmp_path / "deep.jsonl", fmt, [line])
    mapping = formats.parse_mapping("prompt=q,completion=a") if fmt == "columns" else None
    report = validated(path, mapping=mapping)
    if report["ok"]:
        # Only where a deep value is legitimately fine: it was read and the example accepted.
        assert field is None or (field.endswith(".arguments") and shape == "object"), report
        assert_accepted(report, N_GOOD + 1)
        return
    assert report["file_errors"] == {}
    assert {e["line"] for e in report["errors"]} == {7}, report["errors"]
    names = {e["name"] for e in report["errors"]}
    assert depth > 100 or "invalid_json" not in names  # moderate nesting must be read
    if names != {"invalid_json"}:  # read fine, but it is no valid value for that field
        assert field is not None and any(under(e["field"], field) for e in report["errors"])
    assert report["n_valid_examples"] == N_GOOD


# --------------------------------------------------------------------------------------------
# Huge lines
# --------------------------------------------------------------------------------------------

MIB = 1024 * 1024


def test_line_over_the_limit_is_reported_and_skipped(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", MIB)
    huge = {
        "messages": [
            {"role": "user", "content": "x " * (MIB // 2 + 100)},
            {"role": "assistant", "content": "a"},
        ]
    }
    rows: list[Any] = padding("openai-chat")
    rows[6:6] = [huge]  # line 7
    rows[13:13] = ['{"bad"']  # line 14: numbering after the skipped line must still be right
    path = write_lines(tmp_path / "huge.jsonl", rows)
    code, report, err = cli_validate(run_cli, path)
    assert code == 1, err
    assert_blamed(report, {7: ("line_too_long", None), 14: ("invalid_json", None)})
    message = next(e["message"] for e in report["errors"] if e["line"] == 7)
    assert "longer than 1 MiB" in message


@pytest.mark.parametrize("newline_after", [True, False])
@pytest.mark.parametrize("extra", [-1, 0, 1, 2, 2 * MIB + 7])
def test_line_length_limit_boundary(extra, newline_after, tmp_path, validated, monkeypatch):
    """A line of exactly MAX_LINE_BYTES (newline not counted) is read; one byte more is not."""
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", MIB)
    length = MIB + extra
    line = '"' + "a" * (length - 2) + '"'  # a JSON string: read fine, but not an example
    path = write_lines(tmp_path / "edge.jsonl", padding("openai-chat"))
    with path.open("a") as f:
        f.write(line + ("\n[]\n" if newline_after else ""))
    report = validated(path)
    expected = {13: ("line_too_long" if length > MIB else "data_type", None)}
    if newline_after:
        expected[14] = ("data_type", None)
    assert_blamed(report, expected)


def test_two_megabyte_line_under_the_real_limit(tmp_path, run_cli):
    assert formats.MAX_LINE_BYTES >= 2_000_000
    big_string = json.dumps("word " * 400_000)  # ~2 MB, valid JSON, not an example
    path = write_with(tmp_path / "big.jsonl", "openai-chat", [big_string])
    code, report, err = cli_validate(run_cli, path)
    assert code == 1, err
    assert_blamed(report, {7: ("data_type", None)})


def test_two_megabyte_example_is_validated(tmp_path, validated):
    long = {
        "messages": [
            {"role": "user", "content": "word " * 400_000},
            {"role": "assistant", "content": "short"},
        ]
    }
    path = write_with(tmp_path / "big.jsonl", "openai-chat", [long])
    report = validated(path)
    assert_accepted(report, N_GOOD + 1)
    assert [w["line"] for w in report["warning_details"] if w["name"] == "over_max_length"] == [7]


def test_csv_cell_over_the_limit(tmp_path, validated, monkeypatch):
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", MIB)
    path = tmp_path / "big.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["q", "a"])
        writer.writerows([r["q"], r["a"]] for r in padding("columns"))
        writer.writerow(["x" * (MIB + 10), "a"])  # line 14
    report = validated(path, mapping=formats.parse_mapping("prompt=q,completion=a"))
    assert_blamed(report, {14: ("csv_syntax", None)})


# --------------------------------------------------------------------------------------------
# A wrong value in every field
# --------------------------------------------------------------------------------------------

VALID = "valid"  # the replacement is legitimately valid: the example must be accepted
SKIP = "skip"  # a valid role name elsewhere changes other rules; not this test's business


Verdict = Callable[[Any], str | None]


def valid_if(rule: Callable[[Any], Any]) -> Verdict:
    """VALID where `rule` holds, else None: the value must be reported under its own path."""
    return lambda v: VALID if rule(v) else None


def skip_if(rule: Callable[[Any], Any]) -> Verdict:
    return lambda v: SKIP if rule(v) else None


def nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def required_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def optional_str(v: Any) -> bool:
    return v is None or isinstance(v, str)  # null means "not given"


def parts_text(v: Any) -> str | None:
    """The text of a list of OpenAI text content parts, or None if `v` is not one."""
    if isinstance(v, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in v
    ):
        return "".join(p["text"] for p in v)
    return None


def valid_content(v: Any) -> bool:
    # A string or text parts, and not empty: null, numbers, objects, other parts are errors.
    return nonempty_str(v) or bool(parts_text(v))


def valid_tool_call_content(v: Any) -> bool:
    # An assistant message that calls tools may have no (or empty) content.
    return optional_str(v) or parts_text(v) is not None


def is_json_text(v: Any) -> bool:
    try:
        json.loads(v)
    except (ValueError, RecursionError):
        return False
    return True


def valid_arguments(v: Any) -> bool:
    # OpenAI wants a JSON string; a JSON object is accepted leniently and serialized.
    return isinstance(v, dict) or (isinstance(v, str) and is_json_text(v))


def valid_function(v: Any) -> bool:
    return (
        isinstance(v, dict) and nonempty_str(v.get("name")) and valid_arguments(v.get("arguments"))
    )


def valid_call(v: Any) -> bool:
    return isinstance(v, dict) and valid_function(v.get("function"))


def valid_tools(v: Any) -> bool:
    return v is None or (
        isinstance(v, list)
        and all(isinstance(t, dict) and isinstance(t.get("function"), dict) for t in v)
    )


def valid_weight(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v in (0, 1)


def role_verdict(original: str) -> Verdict:
    # Another valid role changes which other rules apply (tool calls and weights are for
    # assistants only): not a wrong *type*, so not this test's business.
    return lambda v: VALID if v == original else SKIP if v in ROLES else None


def tool_calls_verdict(v: Any) -> str | None:
    if v is None:  # no tool calls, and no content either: reported at `content`
        return "messages[2].content"
    return VALID if isinstance(v, list) and v and all(valid_call(c) for c in v) else None


def sharegpt_from(original: str) -> Verdict:
    def verdict(v: Any) -> str | None:
        role = formats.SHAREGPT_ROLES.get(v) if isinstance(v, str) else None
        if role == formats.SHAREGPT_ROLES[original]:
            return VALID
        return SKIP if role else None  # another known speaker: see role_verdict

    return verdict


BASE_CHAT: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?", "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_1", "name": "get_weather"},
        {"role": "assistant", "content": "It is 18 C and sunny.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
}
CALL = ("messages", 2, "tool_calls", 0)

# path → verdict(replacement): VALID (must be accepted), SKIP, None (must be reported under the
# path), or another path to be reported under.
CHAT_PATHS: dict[tuple, Verdict] = {
    ("messages",): skip_if(lambda v: isinstance(v, list)),
    ("tools",): valid_if(valid_tools),
    **{("messages", i): skip_if(lambda v: isinstance(v, dict)) for i in range(5)},
    **{
        ("messages", i, "role"): role_verdict(m["role"])
        for i, m in enumerate(BASE_CHAT["messages"])
    },
    **{("messages", i, "content"): valid_if(valid_content) for i in (0, 1, 3, 4)},
    ("messages", 2, "content"): valid_if(valid_tool_call_content),
    ("messages", 4, "weight"): valid_if(valid_weight),
    ("messages", 2, "tool_calls"): tool_calls_verdict,
    CALL: valid_if(valid_call),
    (*CALL, "function"): valid_if(valid_function),
    (*CALL, "function", "name"): valid_if(nonempty_str),
    (*CALL, "function", "arguments"): valid_if(valid_arguments),
    ("messages", 3, "tool_call_id"): valid_if(optional_str),
    ("messages", 1, "name"): valid_if(optional_str),
    ("messages", 3, "name"): valid_if(optional_str),
}
OTHER_BASES: dict[str, tuple[dict[str, Any], dict[tuple, Verdict]]] = {
    "prompt-completion": (
        {"prompt": "Capital of France?", "completion": "Paris."},
        {("prompt",): valid_if(required_str), ("completion",): valid_if(required_str)},
    ),
    "alpaca": (
        {
            "instruction": "Translate.",
            "input": "Good morning",
            "output": "Bonjour",
            "system": "Be terse.",
        },
        {
            ("instruction",): valid_if(required_str),
            ("output",): valid_if(required_str),
            ("input",): valid_if(optional_str),
            ("system",): valid_if(optional_str),
        },
    ),
    "sharegpt": (
        {
            "system": "Be terse.",
            "conversations": [
                {"from": "human", "value": "Hello there"},
                {"from": "gpt", "value": "General Kenobi"},
            ],
        },
        {
            ("system",): valid_if(optional_str),
            ("conversations",): skip_if(lambda v: isinstance(v, list)),
            ("conversations", 0): skip_if(lambda v: isinstance(v, dict)),
            ("conversations", 1): skip_if(lambda v: isinstance(v, dict)),
            ("conversations", 0, "from"): sharegpt_from("human"),
            ("conversations", 1, "from"): sharegpt_from("gpt"),
            ("conversations", 0, "value"): valid_if(nonempty_str),
            ("conversations", 1, "value"): valid_if(nonempty_str),
        },
    ),
}
ALL_PATHS = [("openai-chat", p) for p in CHAT_PATHS] + [
    (fmt, p) for fmt, (_, paths) in OTHER_BASES.items() for p in paths
]


def field_name(path: tuple) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


def replaced(example: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    example = json.loads(json.dumps(example))
    target = example
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return example


def base_and_verdict(fmt: str, path: tuple) -> tuple[dict[str, Any], Callable]:
    if fmt == "openai-chat":
        return BASE_CHAT, CHAT_PATHS[path]
    base, paths = OTHER_BASES[fmt]
    return base, paths[path]


@pytest.mark.parametrize("fmt", ["openai-chat", *OTHER_BASES])
def test_base_examples_are_valid(fmt, tmp_path, validated):
    """The premise of the next test: unchanged, each base example is accepted."""
    base = BASE_CHAT if fmt == "openai-chat" else OTHER_BASES[fmt][0]
    path = write_with(tmp_path / "base.jsonl", fmt, [base])
    assert_accepted(validated(path), N_GOOD + 1)


@settings(FAST, max_examples=250)
@given(spot=st.sampled_from(ALL_PATHS), value=replacements)
def test_wrong_value_in_every_field(spot, value, tmp_path, validated):
    fmt, path = spot
    base, verdict_of = base_and_verdict(fmt, path)
    verdict = verdict_of(value)
    assume(verdict != SKIP)
    bad = write_with(tmp_path / "bad.jsonl", fmt, [replaced(base, path, value)])
    report = validated(bad, fmt=fmt)
    if verdict == VALID:
        assert_accepted(report, N_GOOD + 1)
    else:
        assert_blamed(report, {7: (None, verdict or field_name(path))})


@pytest.mark.parametrize(
    ("fmt", "path", "value", "field"),
    [
        ("openai-chat", ("messages", 1, "role"), 5, "messages[1].role"),
        ("openai-chat", ("messages", 2, "content"), 5, "messages[2].content"),
        ("openai-chat", ("messages", 4, "weight"), "1", "messages[4].weight"),
        ("openai-chat", ("messages", 3, "tool_call_id"), ["call_1"], "messages[3].tool_call_id"),
        ("openai-chat", ("tools",), {"a": 1}, "tools"),
        pytest.param("openai-chat", (*CALL, "function", "arguments"), "1" * TOO_MANY_DIGITS, f"{field_name(CALL)}.function.arguments", marks=needs_digit_limit),  # noqa: E501
        ("prompt-completion", ("completion",), [], "completion"),
        ("alpaca", ("input",), 3, "input"),
        ("sharegpt", ("conversations", 1, "from"), None, "conversations[1].from"),
    ],
)  # fmt: skip
def test_wrong_value_through_the_cli(fmt, path, value, field, tmp_path, run_cli):
    base, _ = base_and_verdict(fmt, path)
    bad = write_with(tmp_path / "bad.jsonl", fmt, [replaced(base, path, value)])
    code, report, err = cli_validate(run_cli, bad)
    assert code == 1, err
    assert report is not None and report["format"] == fmt
    assert_blamed(report, {7: (None, field)})


# --------------------------------------------------------------------------------------------
# Values Python reads but that are not usable text or numbers
# --------------------------------------------------------------------------------------------


@needs_digit_limit
def test_number_with_too_many_digits(tmp_path, run_cli):
    digits = TOO_MANY_DIGITS
    lines = ["1" * digits, '{"messages": [], "n": ' + "9" * digits + "}"]
    path = write_with(tmp_path / "digits.jsonl", "openai-chat", lines)
    code, report, err = cli_validate(run_cli, path)
    assert code == 1, err
    assert_blamed(report, {7: ("invalid_json", None), 8: ("invalid_json", None)})
    array = tmp_path / "digits.json"
    array.write_text('[{"instruction": "i", "output": "o", "n": ' + "1" * digits + "}]")
    code, report, err = cli_validate(run_cli, array, "--format", "alpaca")
    assert code == 1, err
    assert report is not None and report["format_errors"] == {"invalid_json": 1}


def test_lone_surrogate_escapes_are_encoding_errors(tmp_path, run_cli):
    lone = '{"messages": [{"role": "user", "content": "half \\ud83d a pair"}, {"role": "assistant", "content": "a"}]}'  # noqa: E501
    low = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x", "\\udc00": 1}]}'  # noqa: E501
    pair = '{"messages": [{"role": "user", "content": "a whole pair \\ud83d\\ude00"}, {"role": "assistant", "content": "a"}]}'  # noqa: E501
    path = write_with(tmp_path / "surrogates.jsonl", "openai-chat", [lone, low, pair])
    code, report, err = cli_validate(run_cli, path)
    assert code == 1, err
    # The proper pair (😀) is valid text: accepted as the 13th example.
    assert_blamed(report, {7: ("encoding", None), 8: ("encoding", None)}, n_valid=N_GOOD + 1)
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("data", "convert", path, out)
    assert code == 1 and not out.exists() and "internal error" not in err
    assert f"{path}: line 7:" in err
    array = tmp_path / "surrogates.json"
    array.write_text("[" + ",".join([*map(json.dumps, good_examples(12)), lone]) + "]")
    code, report, err = cli_validate(run_cli, array)
    assert code == 1, err
    assert_blamed(report, {13: ("encoding", None)})


# --------------------------------------------------------------------------------------------
# CSV with --map: random bytes, random text
# --------------------------------------------------------------------------------------------

CSV_MAP = "prompt=q,completion=a"
NEVER_UTF8 = [b"\xff", b"\xfe", b"\xc0", b"\xc1", b"\xf8"]  # invalid in any context


def csv_head() -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["q", "a"])
    writer.writerows([r["q"], r["a"]] for r in padding("columns"))  # lines 2-13
    return buf.getvalue().encode()


def first_bad_line(tail: bytes, first_line: int) -> int:
    """The physical line (csv counts \\r, \\n and \\r\\n) holding the first non-UTF-8 byte."""
    try:
        tail.decode("utf-8")
    except UnicodeDecodeError as exc:
        return first_line + len(re.findall(rb"\r\n|\r|\n", tail[: exc.start]))
    raise AssertionError("tail is valid UTF-8")


csv_bytes = st.tuples(st.binary(max_size=200), st.sampled_from(NEVER_UTF8), st.binary(max_size=50))


def check_csv_bytes(report: dict[str, Any], tail: bytes) -> None:
    bad_line = first_bad_line(tail, first_line=14)
    assert not report["ok"] and report["file_errors"] == {}
    encoding = [e for e in report["errors"] if e["name"] == "encoding"]
    assert [e["line"] for e in encoding] == [bad_line], report["errors"]
    # Rows the random bytes made before that are judged on their own; none before line 14.
    assert all(14 <= e["line"] <= bad_line for e in report["errors"]), report["errors"]
    assert {e["name"] for e in report["errors"]} <= {
        "encoding",
        "csv_columns",
        "missing_content",
        "duplicate_example",
    }
    assert report["n_valid_examples"] >= N_GOOD


@FAST
@given(parts=csv_bytes)
def test_random_bytes_csv(parts, tmp_path, validated):
    tail = b"".join(parts)
    path = tmp_path / "random.csv"
    path.write_bytes(csv_head() + tail)
    check_csv_bytes(validated(path, mapping=formats.parse_mapping(CSV_MAP)), tail)


@VIA_CLI
@given(parts=csv_bytes)
def test_random_bytes_csv_through_the_cli(parts, tmp_path, run_cli):
    tail = b"".join(parts)
    path = tmp_path / "random.csv"
    path.write_bytes(csv_head() + tail)
    code, report, err = cli_validate(run_cli, path, "--map", CSV_MAP)
    assert code == 1, err
    assert report is not None
    check_csv_bytes(report, tail)


def expected_csv_errors(tail: str) -> tuple[dict[int, set[str]], int]:
    """Reference reading of the random rows: line → error names, and the count of valid rows."""
    expected: dict[int, set[str]] = {}
    seen = {(r["q"], r["a"]) for r in padding("columns")}
    valid = 0
    reader = csv.reader(io.StringIO(tail, newline=""))
    start = 14
    for row in reader:
        line, start = start, 13 + reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue  # blank rows are skipped
        if len(row) != 2:
            expected.setdefault(line, set()).add("csv_columns")
        elif not row[0].strip() or not row[1].strip():
            expected.setdefault(line, set()).add("missing_content")
        elif tuple(row) in seen:
            expected.setdefault(line, set()).add("duplicate_example")
        else:
            seen.add((row[0], row[1]))
            valid += 1
    return expected, valid


@FAST
@given(tail=st.text(max_size=200))
def test_random_text_csv(tail, tmp_path, validated):
    path = tmp_path / "random.csv"
    path.write_bytes(csv_head() + tail.encode("utf-8"))
    expected, valid = expected_csv_errors(tail)
    report = validated(path, mapping=formats.parse_mapping(CSV_MAP))
    got: dict[int, set[str]] = {}
    for e in report["errors"]:
        got.setdefault(e["line"], set()).add(e["name"])
    assert got == expected
    assert report["n_valid_examples"] == N_GOOD + valid
    assert report["ok"] == (not expected)


@VIA_CLI
@given(text=st.text(max_size=200), column=st.sampled_from(["q", "a"]))
def test_random_text_in_a_csv_cell_through_the_cli(text, column, tmp_path, run_cli):
    """Any text survives CSV quoting; the row with an empty other cell is blamed exactly."""
    assume(text.strip())  # else the whole row is blank, and blank rows are skipped
    path = tmp_path / "cell.csv"
    rows = [[r["q"], r["a"]] for r in padding("columns")]
    rows.insert(6, [text, ""] if column == "q" else ["", text])  # starts on line 8
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["q", "a"])
        writer.writerows(rows)
    code, report, err = cli_validate(run_cli, path, "--map", CSV_MAP)
    assert code == 1, err
    other = "a" if column == "q" else "q"
    assert_blamed(report, {8: ("missing_content", other)})


# --------------------------------------------------------------------------------------------
# The human-readable report
# --------------------------------------------------------------------------------------------


def test_markup_like_text_in_data_does_not_break_the_human_report(tmp_path, run_cli):
    bad = {"messages": [{"role": "[/x]", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_with(tmp_path / "markup.jsonl", "openai-chat", [bad])
    code, out, err = run_cli("data", "validate", path, "--no-estimate")
    assert "internal error" not in err
    assert code == 1
    assert '"[/x]"' in out
