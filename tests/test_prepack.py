"""The serving engine's two CPU speed-ups keep the numbers: oneDNN-packed linear layers give
what `nn.Linear` gives (to fp32 rounding), also under peft's LoRA layers, and the in-place
growing KV cache holds exactly what transformers' concatenating cache holds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuneforge.api.engine import _BatchCache, _full_attention_only, _GrowingLayer
from tuneforge.inference.prepack import can_prepack, is_packed, prepack_linears, unpack_linears

pytestmark = pytest.mark.skipif(
    not can_prepack(nn.Linear(2, 2)), reason="this torch build has no oneDNN linear ops"
)


@pytest.mark.parametrize("shape", [(1, 96), (8, 96), (3, 5, 96), (300, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_linear_computes_what_nn_linear_computes(shape, bias):
    torch.manual_seed(0)
    layer = nn.Linear(96, 200, bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():  # as in generation: no autograd, so the packed op runs
        expected = layer(x)
        assert prepack_linears(layer) == 1 and is_packed(layer)
        got = layer(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # The packed copy is frozen: a changed weight shows only after unpacking.
        layer.weight.mul_(2)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        unpack_linears(layer)
        assert not is_packed(layer)
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_a_packed_model_and_lora_on_it_give_the_same_logits(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(
        base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    ).save_pretrained(tmp_path)
    ids = torch.randint(0, 1000, (2, 17))

    def logits(pack: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        if pack:
            # 2 layers × 7 projections + the LM head (its weight is tied to the embeddings).
            assert prepack_linears(model) == 2 * 7 + 1
        with torch.no_grad():
            plain = model(input_ids=ids).logits
            lora = PeftModel.from_pretrained(model, tmp_path).eval()
            return plain, lora(input_ids=ids).logits

    (plain, lora), (plain_packed, lora_packed) = logits(False), logits(True)
    torch.testing.assert_close(plain_packed, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lora_packed, lora, rtol=1e-4, atol=1e-4)
    assert (lora - plain).abs().max() > 1e-2  # the adapter matters, so the check can fail


def test_prepack_leaves_models_it_cannot_speed_up():
    assert prepack_linears(nn.Linear(4, 4).to(torch.float64)) == 0
    assert prepack_linears(nn.Sequential()) == 0


def test_the_growing_cache_holds_what_the_concatenating_cache_holds():
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    ours, theirs = _GrowingLayer(), DynamicLayer()
    chunks = [torch.randn(3, 2, 40, 8)] + [torch.randn(3, 2, 1, 8) for _ in range(150)]
    for step, chunk in enumerate(chunks):
        k, v = ours.update(chunk, chunk * 2)
        k_ref, v_ref = theirs.update(chunk, chunk * 2)
        assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
        if step == 70:  # the engine drops a row and cuts columns: it assigns new tensors
            for layer in (ours, theirs):
                layer.keys = layer.keys[[0, 2], :, 5:]
                layer.values = layer.values[[0, 2], :, 5:]
            chunks[71:] = [c[:2] for c in chunks[71:]]
    # One buffer serves many steps: reallocations are rare, not one per step.
    assert ours._key_buffer is not None and ours._key_buffer.shape[2] >= k.shape[2]


def test_the_growing_cache_is_used_only_where_every_layer_sees_the_whole_context():
    from transformers import LlamaConfig, MistralConfig

    assert _full_attention_only(LlamaConfig())
    assert not _full_attention_only(MistralConfig(sliding_window=16))
    cache = _BatchCache()
    cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)
    assert isinstance(cache.layers[0], _GrowingLayer) and cache.get_seq_length() == 3


def test_a_packed_layer_that_trains_falls_back_to_the_plain_one():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    prepack_linears(layer)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()  # the oneDNN op has no backward: this must not use it
    assert x.grad is not None and layer.weight.grad is not None and layer.bias.grad is not None
    torch.testing.assert_close(layer.bias.grad, torch.full((8,), 4.0))
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, 16).detach())
