"""Input formats: detection, parsing to the canonical conversation, `data convert`, `--map`,
`--format` and `data preview`.

Every expectation here is written out by hand (roles, contents, output rows), never derived
from the code under test.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import write_lines

from tuneforge.data.conversation import Conversation, Message
from tuneforge.data.formats import detect_format, load_conversations, parse_mapping
from tuneforge.errors import DataError, UsageError

# --------------------------------------------------------------------------------------------
# Sample files, one per format, with the conversations they must become
# --------------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}

CHAT_ROWS: list[Any] = [
    {
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in "},
                    {"type": "text", "text": "Paris?"},
                ],
            },
            {"role": "assistant", "tool_calls": [CALL]},
            {
                "role": "tool",
                "content": "18 C, sunny",
                "tool_call_id": "call_1",
                "name": "get_weather",
            },
            {"role": "assistant", "content": "It is 18 C and sunny in Paris.", "weight": 1},
        ],
        "tools": [WEATHER_TOOL],
    },
    {
        "messages": [
            {"role": "user", "content": "Hi", "name": "alice"},
            {"role": "assistant", "content": "Hello! (old draft)", "weight": 0},
            {"role": "user", "content": "Say it better."},
            {"role": "assistant", "content": "Hello, Alice."},
        ]
    },
]
CHAT_CONVERSATIONS = [
    Conversation(
        (
            Message("system", "You are a weather bot."),
            Message("user", "Weather in Paris?"),
            Message("assistant", None, tool_calls=(CALL,)),
            Message("tool", "18 C, sunny", tool_call_id="call_1", name="get_weather"),
            Message("assistant", "It is 18 C and sunny in Paris.", weight=1),
        ),
        tools=(WEATHER_TOOL,),
    ),
    Conversation(
        (
            Message("user", "Hi", name="alice"),
            Message("assistant", "Hello! (old draft)", weight=0),
            Message("user", "Say it better."),
            Message("assistant", "Hello, Alice."),
        )
    ),
]
CHAT_CONVERTED = [
    {
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {
                "role": "tool",
                "content": "18 C, sunny",
                "tool_call_id": "call_1",
                "name": "get_weather",
            },
            {"role": "assistant", "content": "It is 18 C and sunny in Paris.", "weight": 1},
        ],
        "tools": [WEATHER_TOOL],
    },
    {
        "messages": [
            {"role": "user", "content": "Hi", "name": "alice"},
            {"role": "assistant", "content": "Hello! (old draft)", "weight": 0},
            {"role": "user", "content": "Say it better."},
            {"role": "assistant", "content": "Hello, Alice."},
        ]
    },
]

PROMPT_COMPLETION_ROWS = [
    {"prompt": "2 + 2 =", "completion": " 4"},
    {"prompt": "Capital of France?", "completion": "Paris"},
]

ALPACA_ROWS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Summarise.", "output": "Short.", "system": "Be brief."},
]

SHAREGPT_ROWS = [
    {
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "Hi there"},
            {"from": "gpt", "value": "Hi."},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "Bye."},
        ]
    },
    {
        "system": "Answer in French.",
        "conversations": [
            {"from": "human", "value": "Thanks"},
            {"from": "gpt", "value": "Merci"},
        ],
    },
]

DPO_ROWS = [
    {
        "input": {
            "messages": [
                {"role": "system", "content": "Be polite."},
                {"role": "user", "content": "Tell me the time."},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "It is noon, happy to help."}],
        "non_preferred_output": [{"role": "assistant", "content": "Buy a watch."}],
    },
    {
        "input": {
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [WEATHER_TOOL],
        },
        "preferred_output": [{"role": "assistant", "content": "Let me check.", "weight": 1}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    },
]
DPO_CONVERSATIONS = [
    Conversation(
        (
            Message("system", "Be polite."),
            Message("user", "Tell me the time."),
            Message("assistant", "It is noon, happy to help."),
        ),
        rejected=(Message("assistant", "Buy a watch."),),
    ),
    Conversation(
        (
            Message("user", "Weather in Paris?"),
            Message("assistant", "Let me check.", weight=1),
        ),
        tools=(WEATHER_TOOL,),
        rejected=(Message("assistant", "No idea."),),
    ),
]

# CSV rows: a cell with a comma, quotes and a newline must survive quoting.
CSV_HEADER = ["question", "context", "answer", "notes"]
CSV_ROWS = [
    ["What is 6 x 7?", "arithmetic", "42", "easy"],
    ['Who said "hello, world"?', "first line\nsecond line", "Kernighan", ""],
]
CSV_MAP = "prompt=question+context,completion=answer"

JSONL_MAP_ROWS = [
    {"q": "List two fruits.", "tags": ["apple", "pear"], "id": 1},
    {"q": "How many legs has a cat?", "tags": 4, "id": 2},
]
JSONL_MAP = "prompt=q,completion=tags"


def pairs(*turns: tuple[str, str]) -> Conversation:
    return Conversation(tuple(Message(role, content) for role, content in turns))  # type: ignore[arg-type]


def chat_row(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


# name: (file name, rows, --map or None, detected format or None, conversations, converted rows)
CASES: dict[str, tuple[str, Any, str | None, str | None, list[Conversation], list[dict]]] = {
    "openai-chat": (
        "chat.jsonl",
        CHAT_ROWS,
        None,
        "openai-chat",
        CHAT_CONVERSATIONS,
        CHAT_CONVERTED,
    ),
    "prompt-completion": (
        "pc.jsonl",
        PROMPT_COMPLETION_ROWS,
        None,
        "prompt-completion",
        [
            pairs(("user", "2 + 2 ="), ("assistant", " 4")),
            pairs(("user", "Capital of France?"), ("assistant", "Paris")),
        ],
        [
            chat_row(("user", "2 + 2 ="), ("assistant", " 4")),
            chat_row(("user", "Capital of France?"), ("assistant", "Paris")),
        ],
    ),
    "alpaca-json-array": (
        "alpaca.json",
        ALPACA_ROWS,
        None,
        "alpaca",
        [
            pairs(("user", "Name a primary colour."), ("assistant", "Red.")),
            pairs(("user", "Translate to French.\n\nGood morning"), ("assistant", "Bonjour")),
            pairs(("system", "Be brief."), ("user", "Summarise."), ("assistant", "Short.")),
        ],
        [
            chat_row(("user", "Name a primary colour."), ("assistant", "Red.")),
            chat_row(("user", "Translate to French.\n\nGood morning"), ("assistant", "Bonjour")),
            chat_row(("system", "Be brief."), ("user", "Summarise."), ("assistant", "Short.")),
        ],
    ),
    "sharegpt": (
        "sharegpt.jsonl",
        SHAREGPT_ROWS,
        None,
        "sharegpt",
        [
            pairs(
                ("system", "You are terse."),
                ("user", "Hi there"),
                ("assistant", "Hi."),
                ("user", "Bye"),
                ("assistant", "Bye."),
            ),
            pairs(("system", "Answer in French."), ("user", "Thanks"), ("assistant", "Merci")),
        ],
        [
            chat_row(
                ("system", "You are terse."),
                ("user", "Hi there"),
                ("assistant", "Hi."),
                ("user", "Bye"),
                ("assistant", "Bye."),
            ),
            chat_row(("system", "Answer in French."), ("user", "Thanks"), ("assistant", "Merci")),
        ],
    ),
    "openai-dpo": (
        "dpo.jsonl",
        DPO_ROWS,
        None,
        "openai-dpo",
        DPO_CONVERSATIONS,
        [
            chat_row(
                ("system", "Be polite."),
                ("user", "Tell me the time."),
                ("assistant", "It is noon, happy to help."),
            ),
            {
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": "Let me check.", "weight": 1},
                ],
                "tools": [WEATHER_TOOL],
            },
        ],
    ),
    "csv-map": (
        "qa.csv",
        None,  # written by write_case from CSV_HEADER / CSV_ROWS
        CSV_MAP,
        None,
        [
            pairs(
                ("user", "Question: What is 6 x 7?\n\nContext: arithmetic"),
                ("assistant", "42"),
            ),
            pairs(
                (
                    "user",
                    'Question: Who said "hello, world"?\n\nContext: first line\nsecond line',
                ),
                ("assistant", "Kernighan"),
            ),
        ],
        [
            chat_row(
                ("user", "Question: What is 6 x 7?\n\nContext: arithmetic"),
                ("assistant", "42"),
            ),
            chat_row(
                (
                    "user",
                    'Question: Who said "hello, world"?\n\nContext: first line\nsecond line',
                ),
                ("assistant", "Kernighan"),
            ),
        ],
    ),
    "jsonl-map": (
        "custom.jsonl",
        JSONL_MAP_ROWS,
        JSONL_MAP,
        None,
        [
            pairs(("user", "List two fruits."), ("assistant", '["apple", "pear"]')),
            pairs(("user", "How many legs has a cat?"), ("assistant", "4")),
        ],
        [
            chat_row(("user", "List two fruits."), ("assistant", '["apple", "pear"]')),
            chat_row(("user", "How many legs has a cat?"), ("assistant", "4")),
        ],
    ),
}


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_case(name: str, folder: Path) -> Path:
    file_name, rows, *_ = CASES[name]
    path = folder / file_name
    if name == "csv-map":
        return write_csv(path, CSV_HEADER, CSV_ROWS)
    if file_name.endswith(".json"):
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
        return path
    return write_lines(path, rows)


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mapping_args(spec: str | None) -> list[str]:
    return ["--map", spec] if spec else []


# --------------------------------------------------------------------------------------------
# Detection and parsing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_format_is_detected_and_parsed(name, tmp_path):
    _, _, spec, detected, conversations, _ = CASES[name]
    path = write_case(name, tmp_path)
    if detected is None:
        # Custom columns are never guessed: detection asks for --map (or --format).
        with pytest.raises(UsageError) as exc:
            detect_format(path)
        assert "--map" in (exc.value.hint or "")
    else:
        assert detect_format(path) == detected
    examples = load_conversations(path, mapping=parse_mapping(spec))
    got = [e.conversation for e in examples]
    # Roles and contents first (clearest failure message), then the whole conversation.
    assert [[(m.role, m.content) for m in c.messages] for c in got] == [
        [(m.role, m.content) for m in c.messages] for c in conversations
    ]
    assert got == conversations
    first = 2 if name == "csv-map" else 1  # a CSV header is line 1
    assert [e.line for e in examples] == list(range(first, first + len(conversations)))


def test_a_developer_message_is_read_as_the_system_message(tmp_path):
    """OpenAI's newer name for the system role, which its reasoning models' examples and the
    chat API use: training reads it as /v1/chat/completions does."""
    row = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ]
    }
    path = write_lines(tmp_path / "dev.jsonl", [row])
    (example,) = load_conversations(path)
    assert [(m.role, m.content) for m in example.conversation.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello."),
    ]


def test_csv_line_numbers_count_physical_lines(tmp_path):
    """A quoted cell spanning two lines pushes the next row's line number down by one."""
    rows = [*CSV_ROWS, ["Third?", "ctx", "yes", ""]]
    path = write_csv(tmp_path / "qa.csv", CSV_HEADER, rows)
    examples = load_conversations(path, mapping=parse_mapping(CSV_MAP))
    assert [e.line for e in examples] == [2, 3, 5]


def test_sharegpt_singular_key_and_missing_key(tmp_path):
    rows = [
        {"conversation": [{"from": "user", "value": "Hi"}, {"from": "model", "value": "Hello"}]},
        {"id": 7, "turns": []},
    ]
    path = write_lines(tmp_path / "sg.jsonl", rows)
    assert detect_format(path) == "sharegpt"
    with pytest.raises(DataError) as exc:
        load_conversations(path)
    # Row 2 has neither key: the error names ShareGPT's usual key, `conversations`.
    assert "line 2, field `conversations`: `conversations` must be a non-empty list" in str(
        exc.value
    )
    assert "line 1" not in str(exc.value)
    examples = load_conversations(write_lines(tmp_path / "ok.jsonl", rows[:1]))
    assert [e.conversation for e in examples] == [pairs(("user", "Hi"), ("assistant", "Hello"))]


def test_system_option_and_system_column(tmp_path):
    path = write_csv(
        tmp_path / "s.csv",
        ["q", "a", "sys"],
        [["one?", "1", "Count."], ["two?", "2", ""]],
    )
    examples = load_conversations(path, mapping=parse_mapping("prompt=q,completion=a,system=sys"))
    assert [e.conversation for e in examples] == [
        pairs(("system", "Count."), ("user", "one?"), ("assistant", "1")),
        pairs(("user", "two?"), ("assistant", "2")),
    ]
    # --system fills in only where the example has no system message of its own.
    examples = load_conversations(
        path, mapping=parse_mapping("prompt=q,completion=a,system=sys"), system="Default."
    )
    assert [e.conversation for e in examples] == [
        pairs(("system", "Count."), ("user", "one?"), ("assistant", "1")),
        pairs(("system", "Default."), ("user", "two?"), ("assistant", "2")),
    ]


def test_format_option_forces_the_format(tmp_path, run_cli):
    # Both alpaca and prompt-completion keys: detection picks alpaca, --format overrides it.
    rows = [
        {"instruction": "I1", "output": "O1", "prompt": "P1", "completion": "C1"},
        {"instruction": "I2", "output": "O2", "prompt": "P2", "completion": "C2"},
    ]
    path = write_lines(tmp_path / "both.jsonl", rows)
    assert detect_format(path) == "alpaca"
    assert [e.conversation for e in load_conversations(path)] == [
        pairs(("user", "I1"), ("assistant", "O1")),
        pairs(("user", "I2"), ("assistant", "O2")),
    ]
    assert [e.conversation for e in load_conversations(path, "prompt-completion")] == [
        pairs(("user", "P1"), ("assistant", "C1")),
        pairs(("user", "P2"), ("assistant", "C2")),
    ]
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("data", "convert", path, out, "--format", "prompt-completion")
    assert code == 0, err
    assert read_jsonl(out) == [
        chat_row(("user", "P1"), ("assistant", "C1")),
        chat_row(("user", "P2"), ("assistant", "C2")),
    ]
    # Forcing a format the data is not in reports every row instead of guessing.
    bad_out = tmp_path / "bad.jsonl"
    code, _, err = run_cli("data", "convert", path, bad_out, "--format", "sharegpt")
    assert code == 1
    assert not bad_out.exists()
    assert "line 1, field `conversations`" in err and "line 2, field `conversations`" in err


# --------------------------------------------------------------------------------------------
# data convert
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_convert_each_format_to_openai_chat(name, tmp_path, run_cli):
    _, _, spec, _, _, expected_rows = CASES[name]
    path = write_case(name, tmp_path)
    out = tmp_path / "out" / "converted.jsonl"
    code, stdout, err = run_cli(
        "data", "convert", path, out, "--to", "openai-chat", *mapping_args(spec)
    )
    assert code == 0, err
    assert "Traceback" not in stdout + err
    assert f"wrote {len(expected_rows)} examples" in err
    assert read_jsonl(out) == expected_rows
    # The converted file is canonical openai-chat: detected as such, and converts to itself.
    assert detect_format(out) == "openai-chat"
    again = tmp_path / "again.jsonl"
    code, _, err = run_cli("data", "convert", out, again)
    assert code == 0, err
    assert read_jsonl(again) == expected_rows


def test_openai_chat_round_trips_to_identical_objects(tmp_path, run_cli):
    rows = [
        *CHAT_CONVERTED,
        {
            "messages": [
                {"role": "system", "content": "Échos — ünïcödé 😀 kept as is."},
                {"role": "user", "content": 'quotes " and \\ backslashes\nand newlines'},
                {"role": "assistant", "content": "  leading and trailing spaces  "},
            ]
        },
    ]
    src = write_lines(tmp_path / "canonical.jsonl", rows)
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("data", "convert", src, out, "--to", "openai-chat")
    assert code == 0, err
    assert read_jsonl(out) == rows
    assert "😀" in out.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes


def test_openai_dpo_round_trips(tmp_path, run_cli):
    src = write_lines(tmp_path / "dpo.jsonl", DPO_ROWS)
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("data", "convert", src, out, "--to", "openai-dpo")
    assert code == 0, err
    assert read_jsonl(out) == DPO_ROWS


def test_convert_to_dpo_needs_preference_data(tmp_path, run_cli):
    src = write_case("prompt-completion", tmp_path)
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("data", "convert", src, out, "--to", "openai-dpo")
    assert code == 2
    assert "2 example(s) have no non-preferred output (first at line 1)" in err
    assert "--to openai-chat" in err
    assert not out.exists()


def test_convert_rejects_an_unknown_target(tmp_path, run_cli):
    src = write_case("prompt-completion", tmp_path)
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("data", "convert", src, out, "--to", "yaml")
    assert code == 2 and "--to yaml: unsupported" in err
    assert not out.exists()
    code, _, err = run_cli("data", "convert", src, src)
    assert code == 2 and "overwrite the input" in err


@pytest.mark.parametrize(
    ("name", "bad_row", "line", "field"),
    [
        (
            "openai-chat",
            {
                "messages": [
                    {"role": "robot", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            3,
            "messages[0].role",
        ),
        ("prompt-completion", {"prompt": "q", "completion": 42}, 3, "completion"),
        (
            "sharegpt",
            {"conversations": [{"from": "gpt", "value": ""}]},
            3,
            "conversations[0].value",
        ),
        ("jsonl-map", {"q": "question", "id": 3}, 3, "tags"),
    ],
)
def test_convert_refuses_bad_rows_and_writes_nothing(name, bad_row, line, field, tmp_path, run_cli):
    file_name, rows, spec, *_ = CASES[name]
    src = write_lines(tmp_path / file_name, [*rows, bad_row])
    out = tmp_path / "out.jsonl"
    code, stdout, err = run_cli("data", "convert", src, out, *mapping_args(spec))
    assert code == 1
    assert not out.exists()
    assert list(tmp_path.glob(".out.jsonl.*")) == []  # no temp file left behind either
    assert "Traceback" not in stdout + err
    assert f"{src}: line {line}, field `{field}`" in err
    assert "1 problem(s)" in err


def test_convert_refuses_a_bad_csv_row(tmp_path, run_cli):
    src = write_csv(tmp_path / "qa.csv", CSV_HEADER, [*CSV_ROWS, ["Empty answer?", "ctx", " ", ""]])
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("data", "convert", src, out, "--map", CSV_MAP)
    assert code == 1
    assert not out.exists()
    # Header on line 1, a row with a two-line cell on lines 3-4, so the bad row is on line 5.
    assert f"{src}: line 5, field `answer`" in err


# --------------------------------------------------------------------------------------------
# --map errors and undetectable files: exit 2, with a hint
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("prompt=question,completion=answer,colour=notes", "--map: unknown key `colour`"),
        ("prompt=question", "--map: missing `completion=COLUMN`"),
        ("completion=answer", "--map: missing `prompt=COLUMN`"),
        ("prompt=question,answer", "--map: `answer` is not KEY=COLUMN"),
        ("prompt=question,completion=+", "--map: `completion` names no column"),
    ],
)
def test_bad_mapping_exits_two(spec, message, tmp_path, run_cli):
    src = write_case("csv-map", tmp_path)
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("data", "convert", src, out, "--map", spec)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_mapped_column_missing_from_the_csv_header_lists_the_columns(tmp_path, run_cli):
    src = write_case("csv-map", tmp_path)
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(
        "data", "convert", src, out, "--map", "prompt=Question,completion=answer"
    )
    assert code == 2
    assert "no column(s) 'Question'" in err
    assert "the columns are question, context, answer, notes" in err
    assert "case-sensitive" in err
    assert not out.exists()
    code, _, err = run_cli(
        "data", "validate", src, "--no-estimate", "--map", "prompt=question+ctx,completion=answer"
    )
    assert code == 2
    assert "no column(s) 'ctx'" in err and "question, context, answer, notes" in err


def test_undetectable_jsonl_exits_two_with_a_hint(tmp_path, run_cli):
    src = write_lines(tmp_path / "odd.jsonl", [{"foo": 1, "bar": "x"}, {"foo": 2, "baz": "y"}])
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("data", "convert", src, out)
    assert code == 2
    assert "cannot detect the data format (keys seen: bar, baz, foo)" in err
    assert "--format" in err and "--map" in err
    assert not out.exists()
    code, _, err = run_cli("data", "validate", src, "--no-estimate")
    assert code == 2
    assert "cannot detect the data format" in err and "--format" in err and "--map" in err


def test_undetectable_csv_asks_for_a_mapping(tmp_path, run_cli):
    src = write_case("csv-map", tmp_path)
    code, _, err = run_cli("data", "validate", src, "--no-estimate")
    assert code == 2
    assert "columns: question, context, answer, notes" in err
    assert "--map" in err


# --------------------------------------------------------------------------------------------
# data preview
# --------------------------------------------------------------------------------------------


def test_preview_wraps_exactly_the_trained_text(tmp_path, run_cli):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Hello?"},
                {"role": "assistant", "content": "Hi there, friend."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "First question"},
                {"role": "assistant", "content": "Draft answer", "weight": 0},
                {"role": "user", "content": "Second question"},
                {"role": "assistant", "content": "Final answer [with brackets]"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Not shown"},
                {"role": "assistant", "content": "Third answer"},
            ]
        },
    ]
    path = write_lines(tmp_path / "p.jsonl", rows)
    code, out, err = run_cli("data", "preview", path, "-n", "2")
    assert code == 0, err
    assert re.findall(r"⟦(.*?)⟧", out, flags=re.S) == [
        "Hi there, friend.<|im_end|>",
        "Final answer [with brackets]<|im_end|>",
    ]
    assert out.count("⟦") == 2 and out.count("⟧") == 2
    # Context is shown unwrapped; the weight-0 answer is context too.
    assert "Draft answer<|im_end|>" in out and "⟦Draft" not in out
    assert "<|im_start|>user\nHello?<|im_end|>" in out
    assert "line 1:" in out and "line 2:" in out
    assert "Not shown" not in out and "line 3:" not in out


@pytest.mark.parametrize("extra", [[], ["--map", "prompt=a,completion=b"]])
def test_convert_of_a_missing_file_is_a_usage_error(tmp_path, run_cli, extra):
    missing = tmp_path / "nope.csv"
    code, _, err = run_cli("data", "convert", missing, tmp_path / "out.jsonl", *extra)
    assert code == 2 and "no such file" in err and "internal error" not in err
