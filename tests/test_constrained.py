"""Structured outputs' constraint (`inference/constrained.py`) on its own: the mask allows only
what the schema allows, and `RowConstraints` keeps transformers' `generate` (GRPO's sampler off
the CPU) on the schema row by row."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.inference.constrained import Constraint, RowConstraints, check, json_grammar
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
