"""Token by token: only assistant content and the end-of-turn token are trained.

The expected mask is computed a second, independent way: SmolLM2's template writes every turn as
`<|im_start|>{role}\\n{content}<|im_end|>\\n`, so a regular expression over the rendered text
finds each assistant body; a token is expected to be trained iff it overlaps one.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuneforge.data.chat_template import (
    ParsedAnswer,
    parse_tool_calls,
    template_messages,
    tool_call_prefix,
)
from tuneforge.data.conversation import Conversation, Message
from tuneforge.data.formats import parse_record
from tuneforge.data.tokenize import IGNORE_INDEX, encode

TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?<\|im_end\|>)", re.S)


def expected_labels(text: str, tokenizer, trained_flags: list[bool]) -> list[int]:
    """Independent oracle: regex the assistant bodies, map to tokens by offsets."""
    spans = []
    assistant_index = 0
    for match in TURN.finditer(text):
        if match.group(1) != "assistant":
            continue
        if trained_flags[assistant_index]:
            spans.append(match.span(2))
        assistant_index += 1
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(e > a and s < b for a, b in spans)
        labels.append(tok if inside else IGNORE_INDEX)
    return labels


def conv(raw: dict) -> Conversation:
    parsed = parse_record(raw, "openai-chat")
    assert parsed.errors == []
    return parsed.conversation


CASES = {
    "multi_turn": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    },
    "system_less": {
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
        ]
    },
    "weight_zero": {
        "messages": [
            {"role": "user", "content": "Say A"},
            {"role": "assistant", "content": "B", "weight": 0},
            {"role": "user", "content": "No, say A"},
            {"role": "assistant", "content": "A", "weight": 1},
        ]
    },
    "tool_calls": {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
            {"role": "assistant", "content": "It is 18 °C in Paris."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_only_assistant_content_and_end_of_turn_are_trained(case, tokenizer, template):
    conversation = conv(CASES[case])
    enc = encode(conversation, tokenizer, template)
    flags = [m.trained for m in conversation.messages if m.role == "assistant"]
    assert enc.labels == expected_labels(enc.text, tokenizer, flags)
    # Read back what is trained: exactly each trained assistant body followed by <|im_end|>.
    runs, current = [], []
    for tok, label in zip(enc.input_ids, enc.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == tok
            current.append(tok)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    assert len(runs) == sum(flags)
    for run in runs:
        assert run.endswith("<|im_end|>")
        assert "<|im_start|>" not in run and "user" not in run.split("\n")[0][:5]


def test_system_less_conversation_gets_the_template_default_but_no_loss(tokenizer, template):
    enc = encode(conv(CASES["system_less"]), tokenizer, template)
    # SmolLM2's template injects its default system prompt; it is context, not trained.
    assert enc.text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    trained = tokenizer.decode(
        [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    )
    assert trained == "Blue.<|im_end|>"


def test_weight_zero_turn_is_context_only(tokenizer, template):
    enc = encode(conv(CASES["weight_zero"]), tokenizer, template)
    trained = tokenizer.decode(
        [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    )
    assert trained == "A<|im_end|>"
    assert "<|im_start|>assistant\nB<|im_end|>" in enc.text


def test_tool_calls_are_trained_as_the_assistant_turn(tokenizer, template):
    enc = encode(conv(CASES["tool_calls"]), tokenizer, template)
    trained = tokenizer.decode(
        [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    )
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    assert trained == f"<tool_call>\n{call}\n</tool_call><|im_end|>It is 18 °C in Paris.<|im_end|>"
    # The tool result and the tool definitions are context.
    assert '{"temp_c": 18}' in enc.text and "get_weather" in enc.text.split("<|im_end|>")[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
calls_strategy = st.lists(
    st.tuples(
        st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
        st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    ),
    min_size=1,
    max_size=3,
)


@given(content=st.text(max_size=20).filter(lambda t: "<tool_call>" not in t), calls=calls_strategy)
def test_parse_tool_calls_inverts_the_trained_text(content, calls):
    """What the server reads back from an answer is what training wrote for the calls."""
    as_openai = tuple(
        {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
        for i, (n, a) in enumerate(calls)
    )
    message = template_messages([Message("assistant", content or None, tool_calls=as_openai)])
    parsed = parse_tool_calls(message[0]["content"])
    assert parsed is not None
    assert [(n, json.loads(a)) for n, a in parsed.calls] == calls
    assert parsed.content == (content.rstrip() or None)


@pytest.mark.parametrize(
    "text",
    [
        "Just words.",
        '<tool_call>\n{"name": "f", "arguments": {"a": 1}}',  # cut off inside the block
        '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>',  # bad JSON
        '<tool_call>\n{"name": "f", "arguments": "a=1"}\n</tool_call>',  # not an object
        '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name"',
    ],
)
def test_answers_that_are_not_well_formed_calls_stay_text(text):
    assert parse_tool_calls(text) is None


def test_text_after_the_calls_is_kept_in_the_content():
    text = 'Checking.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\nDone.'
    parsed = parse_tool_calls(text)
    assert parsed == ParsedAnswer("Checking.\nDone.", (("f", "{}"),))


def test_the_forced_opening_is_the_start_of_the_trained_text():
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    trained = template_messages([Message("assistant", None, tool_calls=(call,))])[0]["content"]
    assert trained.startswith(tool_call_prefix("get_weather"))
    assert trained.startswith(tool_call_prefix())


def test_truncation_keeps_labels_aligned(tokenizer, template):
    conversation = Conversation((Message("user", "x " * 50), Message("assistant", "answer " * 20)))
    full = encode(conversation, tokenizer, template)
    cut = encode(conversation, tokenizer, template, max_seq_len=full.n_tokens - 5)
    assert cut.n_tokens == full.n_tokens - 5 and cut.truncated
    assert cut.labels == full.labels[: cut.n_tokens]
    assert cut.full_trained == full.n_trained > cut.n_trained


def test_hostile_template_is_sandboxed_and_limited():
    from tuneforge.data.chat_template import ChatTemplate, TemplateError

    attack = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateError):
        attack.render([{"role": "user", "content": "x"}])
    flood = ChatTemplate(
        "{% for i in range(90000) %}{% for j in range(90000) %}xxxxxxxxxx{% endfor %}{% endfor %}"
    )
    with pytest.raises(TemplateError, match="exceeds"):
        flood.render([])
    refuses = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="roles must alternate"):
        refuses.render([])
    too_big = ChatTemplate("{% for i in range(10**9) %}x{% endfor %}")
    with pytest.raises(TemplateError, match="Range too big"):
        too_big.render([])


def test_the_fast_tokenizer_load_is_what_autotokenizer_loads(default_model_dir, tmp_path):
    """`load_tokenizer` loads a folder saved as `TokenizersBackend` with that class directly
    (no torch import, ~4 s less per CLI command): the tokenizer AutoTokenizer gives, the same ids,
    special tokens and chat template. A folder declaring another class goes through
    AutoTokenizer."""
    import shutil
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from tuneforge.models.registry import _saved_as_tokenizers_backend, load_tokenizer

    ours, auto = (
        load_tokenizer(str(default_model_dir)),
        AutoTokenizer.from_pretrained(default_model_dir),
    )
    assert type(ours) is type(auto)
    texts = ["Hello world", " space", "naïve café 東京 🙂", "<|im_start|>user\nhi<|im_end|>"]
    for text in texts:
        assert ours(text)["input_ids"] == auto(text)["input_ids"]
    for name in ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length"):
        assert getattr(ours, name) == getattr(auto, name), name
    assert ours.padding_side == auto.padding_side and len(ours) == len(auto)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert ours.apply_chat_template(chat, tokenize=False) == auto.apply_chat_template(
        chat, tokenize=False
    )

    other = tmp_path / "other"
    shutil.copytree(default_model_dir, other, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "X"}))
    assert _saved_as_tokenizers_backend(default_model_dir)
    assert not _saved_as_tokenizers_backend(other)

    # The point of it: a command that only needs the tokenizer does not import torch.
    code = (
        "import sys; from tuneforge.models.registry import load_tokenizer; "
        f"load_tokenizer({str(default_model_dir)!r}); print('torch' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.stdout.strip() == "False", found.stderr[-2000:]
