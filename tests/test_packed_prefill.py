"""Batched prefill (`inference/packed_prefill.py`): prompts packed into one forward give what
each gives alone (logits and KV cache, fp32, to 1e-5), in one chunk or several, from a reused
prefix or from nothing, and no prompt sees another."""

from __future__ import annotations

import pytest
import torch

from tuneforge.inference.packed_prefill import Piece, packed_mask, prefill

TOLERANCE = {"rtol": 0, "atol": 1e-5}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    yield AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.set_grad_enabled(True)


def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, 40000, (n,), generator=generator).tolist() for n in (23, 9, 41)]


def alone(model, ids: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The reference: one prompt, one plain forward, transformers' own causal mask."""
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    layers = out.cache.layers
    return out.logits[0, -1], [layer.keys for layer in layers], [layer.values for layer in layers]


def test_prompts_prefilled_together_equal_each_prefilled_alone(model):
    packed = prefill(model, [Piece(ids) for ids in prompts()])
    for i, ids in enumerate(prompts()):
        logits, keys, values = alone(model, ids)
        torch.testing.assert_close(packed.logits[i], logits, **TOLERANCE)
        for got, want in zip(packed.keys[i] + packed.values[i], keys + values, strict=True):
            assert got.shape == want.shape == (1, 2, len(ids), 16)
            torch.testing.assert_close(got, want, **TOLERANCE)


def test_a_prompt_does_not_attend_to_the_others_packed_with_it(model):
    """Change the tokens of prompts 0 and 2: prompt 1, between them, keeps its logits; and the
    changed prompts' own logits do change (so the comparison can fail)."""
    first = prompts()
    second = [list(reversed(first[0])), first[1], [t + 1 for t in first[2]]]
    a = prefill(model, [Piece(ids) for ids in first])
    b = prefill(model, [Piece(ids) for ids in second])
    torch.testing.assert_close(a.logits[1], b.logits[1], **TOLERANCE)
    for i in (0, 2):
        assert (a.logits[i] - b.logits[i]).abs().max() > 1e-3


def test_chunks_and_reused_prefixes_continue_exactly_where_the_cache_ends(model):
    """Prompt 2 in three chunks, packed each time with other prompts, one of which starts from
    a reused prefix of its own: each ends with the logits and cache of one plain forward."""
    short, other, long = prompts()
    prefix = prefill(model, [Piece(other[:5])])  # as if kept from an earlier request
    step1 = prefill(model, [Piece(long[:10]), Piece(other[5:], prefix.keys[0], prefix.values[0])])
    step2 = prefill(model, [Piece(short), Piece(long[10:30], step1.keys[0], step1.values[0])])
    step3 = prefill(model, [Piece(long[30:], step2.keys[1], step2.values[1])])
    for got, ids, keys in (
        (step1.logits[1], other, step1.keys[1]),
        (step2.logits[0], short, step2.keys[0]),
        (step3.logits[0], long, step3.keys[0]),
    ):
        want_logits, want_keys, _ = alone(model, ids)
        torch.testing.assert_close(got, want_logits, **TOLERANCE)
        torch.testing.assert_close(keys[1], want_keys[1], **TOLERANCE)


def test_the_mask_lets_a_token_see_its_own_past_and_earlier_tokens_only():
    allowed = packed_mask([2, 0], [2, 3], torch.float32)[0, 0] == 0
    #                 past0 past0 | new0 new0 new1 new1 new1
    expected = [
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1],
    ]
    assert allowed.tolist() == [[bool(v) for v in row] for row in expected]


def test_pieces_must_bring_tokens():
    with pytest.raises(ValueError, match="at least one new token"):
        prefill(None, [Piece([])])
