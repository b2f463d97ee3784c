"""Structured outputs' constraint (`inference/constrained.py`) on its own: the mask allows only
what the schema allows, and `RowConstraints` keeps transformers' `generate` (GRPO's sampler off
the CPU) on the schema row by row."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.data.chat_template import format_tool_calls, parse_tool_calls, tool_call_prefix
from tuneforge.inference.constrained import (
    Constraint,
    Function,
    RowConstraints,
    check,
    json_grammar,
    tool_grammar,
)
from tuneforge.models.text import load_text_side

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["yes", "no"]}},
    "required": ["label"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def text(tiny_model_dir):
    return load_text_side(str(tiny_model_dir))


def test_the_mask_allows_only_what_the_schema_allows_next(text):
    constraint = Constraint(json_grammar(SCHEMA), text.tokenizer, text.eos_ids)
    logits = torch.zeros(len(text.tokenizer))
    allowed = torch.isfinite(constraint.mask(logits)).nonzero().flatten().tolist()
    assert allowed and all(text.tokenizer.decode([t]).startswith("{") for t in allowed)
    for token in text.tokenizer.encode('{"label": "yes"}', add_special_tokens=False):
        assert torch.isfinite(constraint.mask(logits)[token]), text.tokenizer.decode([token])
        constraint.take(token)
    done = torch.isfinite(constraint.mask(logits)).nonzero().flatten().tolist()
    assert set(done) <= set(text.eos_ids) and done  # complete: only the end of the turn
    assert check(json_grammar({"type": "objekt"}), text.tokenizer, text.eos_ids)
    assert check(json_grammar(SCHEMA), text.tokenizer, text.eos_ids) is None


def test_row_constraints_keep_each_row_of_generate_on_the_schema(text, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = text.tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    eos = sorted(text.eos_ids)
    ids = torch.tensor([prompt] * 4)
    rows = RowConstraints(json_grammar(SCHEMA), text.tokenizer, text.eos_ids, 4, len(prompt))
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=True,
            top_k=0,
            eos_token_id=eos,
            pad_token_id=eos[0],
            logits_processor=[rows],
        )
    for row in out[:, len(prompt) :].tolist():
        answer = text.tokenizer.decode(row, skip_special_tokens=True)
        assert json.loads(answer)["label"] in ("yes", "no"), answer


WEATHER = Function(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Oslo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
    strict=True,
)
LOOSE = Function("lookup", {"type": "object", "properties": {"q": {"type": "string"}}}, False)


def call(name: str, arguments: dict) -> str:
    """A call as training data writes it (`format_tool_calls`)."""
    block = {"function": {"name": name, "arguments": json.dumps(arguments)}}
    return format_tool_calls((block,))


def follows(grammar: str, text, answer: str) -> bool:
    """Whether the grammar lets `answer` through token by token and then lets the turn end."""
    constraint = Constraint(grammar, text.tokenizer, text.eos_ids)
    logits = torch.zeros(len(text.tokenizer))
    for token in text.tokenizer.encode(answer, add_special_tokens=False):
        if not torch.isfinite(constraint.mask(logits)[token]):
            return False
        constraint.take(token)
    eos = sorted(text.eos_ids)
    return bool(torch.isfinite(constraint.mask(logits)[eos]).any())


@pytest.mark.parametrize(
    ("choice", "answer", "ok"),
    [
        # auto: free text, and any <tool_call> block is a well-formed call of a tool
        ("auto", "It is sunny, no call needed.", True),
        ("auto", call("get_weather", {"city": "Paris"}), True),
        ("auto", "Let me check.\n" + call("get_weather", {"city": "Oslo"}), True),
        ("auto", call("get_weather", {"city": "Rome"}), False),  # not in the enum
        ("auto", call("get_weather", {"city": "Paris", "unit": "c"}), False),  # extra key
        ("auto", call("get_weather", {}), False),  # a required key missing
        ("auto", call("get_time", {}), False),  # no such tool
        ("auto", call("lookup", {"anything": [1, 2]}), True),  # not strict: any object
        ("auto", '<tool_call>\n{"name": "lookup", "arguments": "q"}\n</tool_call>', False),
        ("auto", "<tool_call> is how I call tools", False),
        # required: one call or more, nothing else, after the prefix the prompt ends with
        (
            "required",
            call("get_weather", {"city": "Paris"}) + "\n" + call("lookup", {"q": "rain"}),
            True,
        ),
        ("required", call("get_weather", {"city": "Rome"}), False),
        ("required", call("get_weather", {"city": "Paris"}) + "\nThat is all.", False),
        # a named function: its arguments, after the prefix naming it
        ("get_weather", call("get_weather", {"city": "Oslo"}), True),
        ("get_weather", call("get_weather", {"city": "Rome"}), False),
    ],
)
def test_strict_tools_hold_every_call_to_its_function(text, choice, answer, ok):
    """OpenAI's `strict` function calling: the calls an answer can write, for each tool_choice.
    required and named choices begin after `tool_call_prefix` (in the prompt), so the answer
    here is the text after it."""
    prefix = {"auto": ""}.get(choice, tool_call_prefix(None if choice == "required" else choice))
    assert answer.startswith(prefix)
    grammar = tool_grammar([WEATHER, LOOSE], choice)
    assert check(grammar, text.tokenizer, text.eos_ids) is None
    assert follows(grammar, text, answer.removeprefix(prefix)) is ok
    if ok and "<tool_call>" in answer:
        assert parse_tool_calls(answer) is not None  # the server reads it back as calls


def test_without_parallel_calls_an_answer_makes_one_call_at_most(text):
    two = call("get_weather", {"city": "Paris"}) + "\n" + call("lookup", {"q": "rain"})
    prefix = tool_call_prefix()
    for choice, answer in (("auto", two), ("required", two.removeprefix(prefix))):
        assert follows(tool_grammar([WEATHER, LOOSE], choice), text, answer)
        assert not follows(tool_grammar([WEATHER, LOOSE], choice, parallel=False), text, answer)
        one = answer[: answer.index("</tool_call>") + len("</tool_call>")]
        assert follows(tool_grammar([WEATHER, LOOSE], choice, parallel=False), text, one)
    single = tool_grammar([WEATHER, LOOSE], "auto", parallel=False)
    assert follows(single, text, "Let me check.\n" + call("get_weather", {"city": "Oslo"}))
    assert follows(single, text, "No call needed.")


def test_a_strict_function_without_parameters_takes_an_empty_object(text):
    grammar = tool_grammar([Function("now", None, strict=True)], "now")
    assert follows(grammar, text, "{}}\n</tool_call>")
    assert not follows(grammar, text, '{"tz": "UTC"}}\n</tool_call>')


def test_strict_parameters_are_an_object(text):
    """Arguments come back as an object (`parse_tool_calls` reads only those): strict
    parameters of another type are refused, untyped ones held to an object."""
    with pytest.raises(ValueError, match="parameters of type 'string'"):
        tool_grammar([Function("f", {"type": "string"}, strict=True)], "auto")
    untyped = Function("f", {"properties": {"a": {"type": "integer"}}}, strict=True)
    grammar = tool_grammar([untyped], "f")
    assert follows(grammar, text, '{"a": 1}}\n</tool_call>')
    assert not follows(grammar, text, "5}\n</tool_call>")
