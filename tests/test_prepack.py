"""The serving engine's CPU speed-ups keep the numbers: packed linear layers (our AVX2 kernel, or
oneDNN where it cannot be built) give what `nn.Linear` gives (to fp32 rounding), also under
peft's LoRA layers; the kernel builds where it should and its absence is not an error; and the
in-place growing KV cache holds exactly what transformers' concatenating cache holds."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tuneforge.inference import small_gemm
from tuneforge.inference.kv_cache import BatchCache, GrowingLayer, full_attention_only
from tuneforge.inference.prepack import (
    add_bf16_copies,
    bf16_linears,
    can_prepack,
    is_bf16_exact,
    is_packed,
    packed_kind,
    prepack_linears,
    unpack_linears,
    use_bf16_weights,
)

pytestmark = pytest.mark.skipif(
    not can_prepack(nn.Linear(2, 2)), reason="this torch build has no oneDNN linear ops"
)


def _kernel_expected() -> bool:
    """Where the kernel must build: x86-64 Linux with AVX2 and a C compiler (our machines)."""
    import shutil

    return small_gemm._supported_cpu() and bool(shutil.which("cc") or shutil.which("gcc"))


KINDS = ["oneDNN"] + (["small_gemm"] if _kernel_expected() else [])


def pack_as(module: nn.Module, kind: str) -> int:
    """Pack with one kind; the kernel at every row count it takes (not this machine's choice),
    so that a test of the kernel runs the kernel."""
    if kind == "small_gemm":
        return prepack_linears(
            module, kernel=True, kernel_rows=range(1, small_gemm.KERNEL_ROWS + 1)
        )
    return prepack_linears(module, kernel=False)


def test_the_kernel_builds_where_it_can():
    assert small_gemm.available() == _kernel_expected()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 96), (8, 96), (3, 5, 96), (300, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_linear_computes_what_nn_linear_computes(kind, shape, bias):
    torch.manual_seed(0)
    layer = nn.Linear(96, 200, bias=bias)  # 200 outputs: 12.5 panels of 16, a partial one
    x = torch.randn(*shape)
    with torch.no_grad():  # as in generation: no autograd, so the packed op runs
        expected = layer(x)
        assert pack_as(layer, kind) == 1
        assert packed_kind(layer) == kind and is_packed(layer)
        got = layer(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        unpack_linears(layer)
        assert not is_packed(layer)
        layer.weight.mul_(2)  # unpacked, the layer reads its weight again
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


@pytest.mark.skipif(not _kernel_expected(), reason="the kernel needs x86-64 Linux, AVX2 and cc")
@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernel_matches_matmul_at_every_row_count_and_shape(threads):
    """Row counts around the 4-row blocks, K around the 128-value chunks, N around the
    16-column panels, with and without bias, one thread and two."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (1, 2, 3, 4, 5, 8, 13, 64, 128, small_gemm.KERNEL_ROWS):
            for out_features, in_features in ((16, 128), (200, 96), (7, 300), (64, 1)):
                weight = torch.randn(out_features, in_features)
                bias = torch.randn(out_features)
                x = torch.randn(rows, in_features)
                packed = small_gemm.pack(weight)
                for b in (None, bias):
                    got = small_gemm.linear(x, packed, small_gemm.pad_bias(b), out_features)
                    want = nn.functional.linear(x, weight, b)
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="1-256 contiguous fp32 CPU rows"):
        small_gemm.linear(torch.randn(257, 16), small_gemm.pack(torch.randn(16, 16)), None, 16)
    # Sizes the C code would trust are checked first: no read past a tensor's end.
    with pytest.raises(ValueError, match="rows of 16, got \\(2, 32\\)"):
        small_gemm.linear(torch.randn(2, 32), small_gemm.pack(torch.randn(16, 16)), None, 16)
    with pytest.raises(ValueError, match="is not"):
        small_gemm.linear(torch.randn(2, 16), small_gemm.pack(torch.randn(16, 16)), None, 32)
    with pytest.raises(ValueError, match="padded \\(pad_bias\\)"):
        small_gemm.linear(
            torch.randn(2, 16), small_gemm.pack(torch.randn(20, 16)), torch.ones(20), 20
        )


@pytest.mark.skipif(not _kernel_expected(), reason="the kernel needs x86-64 Linux, AVX2 and cc")
@pytest.mark.parametrize("threads", [1, 2])
def test_the_bf16_weight_kernel_computes_in_fp32_with_the_rounded_weights(threads):
    """bf16 panels: each weight widened to the fp32 it stands for, fp32 arithmetic. Against a
    float64 matmul of the bf16-rounded weights (tight: no bf16 rounding of the input or the
    sums), at the sizes that stress the blocks, chunks and panels; and bit for bit the fp32
    kernel's result where the weights are bf16 values already."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (1, 2, 3, 4, 5, 8, 13, 64, small_gemm.KERNEL_ROWS):
            for out_features, in_features in ((16, 256), (200, 96), (7, 300), (64, 1), (37, 600)):
                weight = torch.randn(out_features, in_features)
                rounded = weight.bfloat16().float()
                bias = torch.randn(out_features)
                x = torch.randn(rows, in_features)
                packed = small_gemm.pack_bf16(weight)
                assert packed.dtype == torch.bfloat16
                for b in (None, bias):
                    padded = small_gemm.pad_bias(b)
                    got = small_gemm.linear(x, packed, padded, out_features)
                    want = nn.functional.linear(
                        x.double(), rounded.double(), None if b is None else b.double()
                    )
                    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-4)
                    fp32 = small_gemm.linear(x, small_gemm.pack(rounded), padded, out_features)
                    assert torch.equal(got, fp32)
                # The weights really are read as bf16: not the unrounded result.
                assert not torch.equal(
                    small_gemm.linear(x, packed, None, out_features),
                    nn.functional.linear(x, weight),
                )
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not _kernel_expected(), reason="the kernel needs x86-64 Linux, AVX2 and cc")
def test_bf16_weights_round_the_model_once_for_every_path(monkeypatch):
    """`use_bf16_weights`: the kernel on bf16 panels at its measured row counts, and MKL at the
    others on the same (rounded) weights; `only_exact` changes nothing unless nothing would be
    rounded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 32))
    reference = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 32))
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in reference:
            layer.weight.copy_(layer.weight.bfloat16())
    prepack_linears(model, kernel=True, kernel_rows={1, 2, 3, 4})
    assert not is_bf16_exact(model[0].weight)
    assert use_bf16_weights(model, only_exact=True) == 0
    assert packed_kind(model[0]) == "small_gemm" and not is_bf16_exact(model[0].weight)
    assert use_bf16_weights(model) == 2
    assert packed_kind(model[0]) == "small_gemm_bf16w" and is_bf16_exact(model[0].weight)
    calls = []
    real = small_gemm.linear
    monkeypatch.setattr(small_gemm, "linear", lambda x, *a: calls.append(len(x)) or real(x, *a))
    with torch.no_grad():
        for rows in (1, 4, 5, 300):
            x = torch.randn(rows, 64)
            torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert calls == [1, 1, 4, 4]  # two layers each; 5 and 300 rows went to MKL
    # A model whose weights are bf16 values already: `only_exact` takes it, rounding nothing.
    exact = nn.Sequential(nn.Linear(64, 96))
    exact.load_state_dict(reference[:1].state_dict())
    before = exact[0].weight.clone()
    prepack_linears(exact, kernel=True, kernel_rows={1})
    assert use_bf16_weights(exact, only_exact=True) == 1
    assert torch.equal(exact[0].weight, before)
    # Without the kernel (oneDNN packing) there is nothing to give bf16 panels.
    onednn = nn.Linear(8, 8)
    prepack_linears(onednn, kernel=False)
    assert use_bf16_weights(onednn) == 0 and packed_kind(onednn) == "oneDNN"


def test_without_the_kernel_packing_falls_back_to_onednn(monkeypatch, tmp_path):
    """No compiler (or TUNEFORGE_NO_KERNEL=1): no error, oneDNN packing instead."""
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("TUNEFORGE_KERNEL_DIR", raising=False)  # the home's own folder
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    small_gemm._library.cache_clear()
    try:
        assert not small_gemm.available()
        layer = nn.Linear(32, 32)
        assert prepack_linears(layer) == 1 and packed_kind(layer) == "oneDNN"
        assert not any((tmp_path / "kernels").iterdir())  # no library, no temp file left
        # A compiler that runs and fails (exit 1): the same.
        monkeypatch.setenv("CC", "false --pretend-to-compile")
        small_gemm._library.cache_clear()
        assert not small_gemm.available()
        assert not any((tmp_path / "kernels").iterdir())
        monkeypatch.delenv("CC")
        monkeypatch.setenv("TUNEFORGE_NO_KERNEL", "1")
        small_gemm._library.cache_clear()
        assert not small_gemm.available()
    finally:
        monkeypatch.undo()
        small_gemm._library.cache_clear()


@pytest.mark.parametrize("kind", KINDS)
def test_a_packed_model_and_lora_on_it_give_the_same_logits(kind, tiny_model_dir, tmp_path):
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
            assert pack_as(model, kind) == 2 * 7 + 1
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
    ours, theirs = GrowingLayer(), DynamicLayer()
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

    assert full_attention_only(LlamaConfig())
    assert not full_attention_only(MistralConfig(sliding_window=16))
    cache = BatchCache()
    cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)
    assert isinstance(cache.layers[0], GrowingLayer) and cache.get_seq_length() == 3


@pytest.mark.parametrize("kind", KINDS)
def test_a_packed_layer_that_trains_falls_back_to_the_plain_one(kind):
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    pack_as(layer, kind)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()  # the packed ops have no backward: this must not use them
    assert x.grad is not None and layer.weight.grad is not None and layer.bias.grad is not None
    torch.testing.assert_close(layer.bias.grad, torch.full((8,), 4.0))
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, 16).detach())


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_copies_multiply_in_bf16_only_inside_bf16_linears_and_not_the_skipped(kind):
    """The bf16 prefill: inside `bf16_linears()` a layer with a copy computes exactly what a bf16
    matmul of the bf16-rounded input and weight gives (fp32 out); outside it, or in a layer left
    without a copy (the LM head), or in another thread, the fp32 result as before."""
    import threading

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 32))
    pack_as(model, kind)
    assert add_bf16_copies(model, skip=[model[1]]) == 1
    x, h = torch.randn(40, 64), torch.randn(40, 96)
    bf16 = nn.functional.linear(x.bfloat16(), model[0].weight.bfloat16(), model[0].bias.bfloat16())
    with torch.no_grad():
        fp32 = model[0](x), model[1](h)
        with bf16_linears():
            inside = model[0](x), model[1](h)
            other_thread = []

            def elsewhere() -> None:
                with torch.no_grad():  # thread-local too
                    other_thread.append(model[0](x))

            worker = threading.Thread(target=elsewhere)
            worker.start(), worker.join()
        after = model[0](x)
    assert inside[0].dtype == torch.float32
    torch.testing.assert_close(inside[0], bf16.float(), rtol=0, atol=0)
    assert not torch.equal(inside[0], fp32[0])  # bf16 really rounds
    torch.testing.assert_close(inside[1], fp32[1], rtol=0, atol=0)  # no copy: fp32
    torch.testing.assert_close(other_thread[0], fp32[0], rtol=0, atol=0)
    torch.testing.assert_close(after, fp32[0], rtol=0, atol=0)


@pytest.mark.skipif(not _kernel_expected(), reason="the kernel needs x86-64 Linux, AVX2 and cc")
def test_the_kernel_runs_at_its_row_counts_and_mkl_at_the_others(monkeypatch):
    calls = []
    real = small_gemm.linear
    monkeypatch.setattr(small_gemm, "linear", lambda x, *a: calls.append(len(x)) or real(x, *a))
    torch.manual_seed(0)
    layer = nn.Linear(32, 48)
    with torch.no_grad():
        prepack_linears(layer, kernel=True, kernel_rows={1, *range(4, 17)})
        for rows in (1, 2, 4, 16, 17, 200):
            x = torch.randn(rows, 32)
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    assert calls == [1, 4, 16]
    with pytest.raises(ValueError, match="row counts from 1 to 256"):
        prepack_linears(nn.Linear(4, 4), kernel_rows=[300])


@pytest.mark.skipif(not _kernel_expected(), reason="the kernel needs x86-64 Linux, AVX2 and cc")
def test_the_kernels_row_counts_are_measured_once_per_machine_and_kept(monkeypatch, tmp_path):
    """The first packing measures the kernel against MKL on the model's weights and writes the
    verdicts, with their timings, under the home's kernels folder; the next reads them back."""
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("TUNEFORGE_KERNEL_DIR", raising=False)  # the home's own folder
    monkeypatch.delenv(small_gemm.MAX_ROWS_ENV, raising=False)
    small_gemm._library.cache_clear()
    measured = []
    real = small_gemm._measure
    monkeypatch.setattr(small_gemm, "_measure", lambda layers: measured.append(1) or real(layers))
    try:
        weights = [torch.randn(64, 32), torch.randn(32, 64)]
        pairs = [(w, small_gemm.pack(w)) for w in weights]
        rows = small_gemm.kernel_row_counts(pairs)
        assert rows == small_gemm.kernel_row_counts(pairs) and measured == [1]
        (saved,) = (tmp_path / "kernels").glob("rows-*.json")
        record = json.loads(saved.read_text())
        assert record["kernel_rows"] == small_gemm.ranges(rows)
        assert record["machine"]["shapes"] == [[32, 64], [64, 32]]
        timings = record["timings"]
        assert timings[0]["rows"] == 1
        for timing in timings:  # each verdict follows its timing, and decides its row count
            clear_loss = timing["ours_ms"] > small_gemm.CLEAR_LOSS * timing["mkl_ms"]
            assert timing["kernel"] == (not clear_loss) == (timing["rows"] in rows)
        if len(timings) < len(small_gemm.TUNE_ROWS):  # stopped: MKL won the last two
            assert not timings[-1]["kernel"] and not timings[-2]["kernel"]
            assert max(rows, default=0) < timings[-1]["rows"]
    finally:
        small_gemm._library.cache_clear()


def test_row_counts_read_as_ranges():
    assert small_gemm.ranges({1, 4, 5, 6, 9}) == [[1, 1], [4, 6], [9, 9]]
    assert small_gemm.describe(frozenset({1, 4, 5, 6})) == "1, 4-6 rows"
    assert small_gemm.describe(frozenset()) == "no row count"


@pytest.mark.parametrize("value", ["many", "-1", "257", "1.5"])
def test_a_bad_row_limit_setting_says_what_to_set(monkeypatch, value):
    from tuneforge.errors import UsageError

    monkeypatch.setenv(small_gemm.MAX_ROWS_ENV, value)
    with pytest.raises(UsageError, match="TUNEFORGE_KERNEL_MAX_ROWS=.* is not a row count") as exc:
        small_gemm.kernel_row_counts([])
    assert "from 0 (never our kernel) to 256" in str(exc.value)
    monkeypatch.setenv(small_gemm.MAX_ROWS_ENV, "24")
    assert small_gemm.kernel_row_counts([]) == frozenset(range(1, 25))


def test_the_kernels_folder_is_the_homes_unless_one_is_named(monkeypatch, tmp_path):
    from tuneforge.paths import kernels_dir

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNEFORGE_KERNEL_DIR", raising=False)
    assert kernels_dir() == tmp_path / "home" / "kernels"
    monkeypatch.setenv("TUNEFORGE_KERNEL_DIR", str(tmp_path / "shared"))
    assert kernels_dir() == tmp_path / "shared"


def test_the_timed_sample_has_every_shape_then_fills_to_the_cap(monkeypatch):
    monkeypatch.setattr(small_gemm, "TUNE_BYTES", 3 * 64 * 32 * 4)  # three 64x32 fp32 weights
    big = [torch.randn(64, 32) for _ in range(5)]
    odd = torch.randn(16, 32)
    layers = [(w, None) for w in [*big, odd]]
    sample = [w for w, _ in small_gemm._sample(layers)]
    # The first of each shape (the odd one though it comes last), then the rest up to the cap.
    assert [w.shape[0] for w in sample] == [64, 16, 64, 64]
    assert sample[0] is big[0] and sample[2] is big[1] and sample[3] is big[2]


@pytest.mark.skipif(not _kernel_expected(), reason="the kernel needs x86-64 Linux, AVX2 and cc")
def test_lora_layers_are_packed_but_not_measured(monkeypatch):
    """A base model and its LoRA fine-tunes share one measurement: the adapters' small A/B
    layers are packed too, but the timing (and the cache's key) covers the model's weights."""
    from peft import LoraConfig, get_peft_model

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = nn.Linear(32, 32)
            self.up = nn.Linear(32, 64)

        def forward(self, x):
            return self.up(self.q_proj(x))

    monkeypatch.delenv(small_gemm.MAX_ROWS_ENV, raising=False)
    seen = []
    monkeypatch.setattr(
        small_gemm,
        "kernel_row_counts",
        lambda pairs: seen.append(sorted(tuple(w.shape) for w, _ in pairs)) or frozenset({1}),
    )
    prepack_linears(Block(), kernel=True)
    model = get_peft_model(Block(), LoraConfig(r=4, target_modules=["q_proj"]))
    assert prepack_linears(model, kernel=True) == 4  # q_proj, up, lora_A, lora_B
    assert seen == [[(32, 32), (64, 32)], [(32, 32), (64, 32)]]
    assert all(is_packed(m) for m in model.modules() if type(m) is nn.Linear)


@pytest.mark.skipif(not _kernel_expected(), reason="the kernel needs x86-64 Linux, AVX2 and cc")
def test_generation_reads_a_bf16_checkpoint_in_bf16_with_the_same_logits(
    tiny_model_dir, tmp_path, monkeypatch
):
    """`load_for_inference(packed=True)` (chat, generate, eval, compare): a model whose weights
    are bf16 values gets bf16 panels, and its logits are the fp32 kernel's, bit for bit; a model
    whose weights are not keeps fp32 panels."""
    from helpers import bf16_checkpoint

    from tuneforge.inference.load import load_for_inference

    monkeypatch.setenv("TUNEFORGE_KERNEL_MAX_ROWS", "256")
    folder = tmp_path / "bf16-checkpoint"
    model = bf16_checkpoint(tiny_model_dir, folder)
    prepack_linears(model)  # the fp32 kernel, on the same weights
    loaded = load_for_inference(str(folder), packed=True).model
    assert packed_kind(loaded.get_output_embeddings()) == "small_gemm_bf16w"
    assert packed_kind(model.get_output_embeddings()) == "small_gemm"
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        step = loaded(ids[:, :1]).logits, model(ids[:, :1]).logits  # one row: the decode case
        assert torch.equal(*step)
    original = load_for_inference(str(tiny_model_dir), packed=True).model
    assert packed_kind(original.get_output_embeddings()) == "small_gemm"
    # Asked for (`chat|generate --weight-precision`): bf16 rounds a model that is not exact;
    # fp32 keeps even an exact one in fp32 panels.
    rounded = load_for_inference(str(tiny_model_dir), packed=True, weight_precision="bf16")
    assert packed_kind(rounded.model.get_output_embeddings()) == "small_gemm_bf16w"
    with torch.no_grad():
        assert torch.equal(rounded.model(ids).logits, model(ids).logits)  # the same rounding
    kept = load_for_inference(str(folder), packed=True, weight_precision="fp32").model
    assert packed_kind(kept.get_output_embeddings()) == "small_gemm"
    with pytest.raises(ValueError, match="'bf61' is not one of"):
        load_for_inference(str(folder), packed=True, weight_precision="bf61")
