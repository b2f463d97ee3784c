"""The serving engine's decode step in plain calls (`inference/decode_step.py`) computes what
transformers' forward computes, bit for bit: the logits and the KV cache, with left-padded rows of
different lengths, fp32 and bf16 weights, q/k/v biases (Qwen2), and LoRA adapters mixed in one
batch; and it declines (None, transformers' forward runs) wherever it would not be the same."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tuneforge.inference import small_gemm
from tuneforge.inference.decode_step import DecodeStep
from tuneforge.inference.kv_cache import BatchCache, left_pad
from tuneforge.inference.prepack import prepack_linears, use_bf16_weights

pytestmark = pytest.mark.skipif(
    not small_gemm.available(), reason="the kernel needs x86-64 Linux, AVX2 and a C compiler"
)
ALL_ROWS = range(1, small_gemm.KERNEL_ROWS + 1)


def packed(model, rows=ALL_ROWS):
    prepack_linears(model, kernel=True, kernel_rows=rows)
    return model


def batch(model, lengths: list[int], names: list[str] | None, seed: int):
    """Each prompt prefilled alone, the caches left-padded and joined as the engine joins them;
    returns (cache, mask with the new column, next ids, positions)."""
    generator = torch.Generator().manual_seed(seed)
    width, caches = max(lengths), []
    for i, n in enumerate(lengths):
        cache = BatchCache()
        extra = {} if names is None else {"adapter_names": [names[i]]}
        ids = torch.randint(3, 1000, (1, n), generator=generator)
        model(input_ids=ids, cache=cache, use_cache=True, **extra)
        caches.append(cache)
    joined = BatchCache()
    for layer in range(len(caches[0].layers)):
        joined.update(
            torch.cat([left_pad(c.layers[layer].keys, width, 2) for c in caches]),
            torch.cat([left_pad(c.layers[layer].values, width, 2) for c in caches]),
            layer,
        )
    mask = torch.cat([left_pad(torch.ones(1, n, dtype=torch.long), width, 1) for n in lengths])
    ids = torch.randint(3, 1000, (len(lengths),), generator=generator)
    return joined, mask, ids, torch.tensor(lengths)


def assert_same_steps(model, step, lengths, names=None, steps=3):
    """`steps` greedy decode steps, transformers' forward on one copy of the batch and
    `DecodeStep` on another: equal logits and caches after every step."""
    theirs, mask, ids, positions = batch(model, lengths, names, seed=len(lengths))
    ours, *_ = batch(model, lengths, names, seed=len(lengths))
    extra = {} if names is None else {"adapter_names": names}
    for _ in range(steps):
        mask = torch.cat([mask, mask.new_ones(len(lengths), 1)], dim=1)
        expected = model(
            input_ids=ids[:, None],
            attention_mask=mask,
            position_ids=positions[:, None],
            cache=theirs,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        ).logits[:, -1]
        got = step(ids, positions, mask, ours, names)
        assert got is not None
        assert torch.equal(got, expected)
        for a, b in zip(theirs.layers, ours.layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        ids, positions = expected.argmax(-1), positions + 1


@pytest.fixture
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.mark.parametrize("weights", ["fp32", "bf16"])
@torch.no_grad()
def test_a_decode_step_computes_what_transformers_computes(tiny, weights):
    model = packed(tiny)
    if weights == "bf16":
        use_bf16_weights(model)
    step = DecodeStep.for_model(model)
    assert step is not None
    for lengths in ([9], [9, 4, 7, 9, 2], [6, 6, 6]):  # one row; left padding; none
        assert_same_steps(model, step, lengths)
    assert step.steps == 9
    again = DecodeStep.for_model(model)  # a second one on the same model shares, copies nothing
    assert again.layers[0].qkv.kernel.packed is step.layers[0].qkv.kernel.packed
    assert_same_steps(model, again, [5, 3])


@torch.no_grad()
def test_the_rows_do_not_see_each_other(tiny):
    """A row's logits do not depend on the other rows of the batch (their cache or padding)."""
    model = packed(tiny)
    step = DecodeStep.for_model(model)
    cache, mask, ids, positions = batch(model, [5, 9, 3], None, seed=1)
    mask = torch.cat([mask, mask.new_ones(3, 1)], dim=1)
    together = step(ids, positions, mask, cache)
    alone_cache = BatchCache()
    for layer in cache.layers:  # row 1 of the batch, without its neighbours
        alone_cache.update(layer.keys[1:2, :, :9], layer.values[1:2, :, :9], len(alone_cache))
    alone = step(ids[1:2], positions[1:2], torch.ones(1, 10, dtype=torch.long), alone_cache)
    assert torch.allclose(together[1], alone[0], atol=1e-5)


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
@torch.no_grad()
def test_projections_with_biases(architecture):
    """Qwen2's q, k and v have biases; a Llama with `attention_bias` and `mlp_bias` has them on
    every projection: one kernel call adds each projection its own."""
    from helpers import TINY_SHAPE
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**TINY_SHAPE)).eval()
    else:
        config = LlamaConfig(**TINY_SHAPE, attention_bias=True, mlp_bias=True)
        model = LlamaForCausalLM(config).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            module.bias.normal_()
    packed(model)
    step = DecodeStep.for_model(model)
    assert step is not None
    assert_same_steps(model, step, [8, 3, 6])


def _lora(model_dir, folder, seed: int, **config):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    options = {"r": 4, "target_modules": "all-linear", "init_lora_weights": False} | config
    get_peft_model(base, LoraConfig(**options)).save_pretrained(folder)
    return folder


@torch.no_grad()
def test_an_adapter_of_some_projections_on_bf16_weights(tiny_model_dir, tmp_path):
    """An adapter on k and up only (its deltas land in the middle of the fused outputs), on
    weights read in bf16: peft's numbers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = _lora(tiny_model_dir, tmp_path / "a", 3, target_modules=["k_proj", "up_proj"])
    model = packed(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    use_bf16_weights(model)
    step = DecodeStep.for_model(model)
    model = PeftModel.from_pretrained(model, folder, adapter_name="a").eval()
    assert_same_steps(model, step, [6, 9, 4], ["a", "__base__", "a"])
    assert len(step.adapter_names) == 1 and step.has_lora


@pytest.mark.parametrize("saved", ["model.norm", "layers.1"])
@torch.no_grad()
def test_an_adapter_with_its_own_copy_of_a_module_is_left_to_transformers(
    tiny_model_dir, tmp_path, saved
):
    """peft's `modules_to_save` puts the adapter's own copy of the final norm (or of a whole
    layer) in the model: the step cannot know it, so it declines (peft's forward then refuses
    such an adapter in a mixed batch, as the engine reports)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = _lora(tiny_model_dir, tmp_path / "a", 4, modules_to_save=[saved])
    model = packed(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    step = DecodeStep.for_model(model)
    model = PeftModel.from_pretrained(model, folder, adapter_name="a").eval()
    step.refresh()
    cache, mask, ids, positions = batch(model, [4, 6], None, seed=0)
    mask = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
    assert not step.usable
    assert step(ids, positions, mask, cache, ["a", "__base__"]) is None


@torch.no_grad()
def test_lora_rows_of_several_adapters_in_one_step(tiny_model_dir, tmp_path):
    """Rows of two adapters and the base model in one step, or one adapter for all, compute
    what peft's own forward computes for them (the second adapter with biases on its B
    matrices, peft's `lora_bias`); after an adapter is deleted, its rows are base rows."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folders = [
        _lora(tiny_model_dir, tmp_path / f"a{seed}", seed, lora_bias=seed == 2) for seed in (1, 2)
    ]
    model = packed(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    step = DecodeStep.for_model(model)  # built before the adapters, as the engine does
    model = PeftModel.from_pretrained(model, folders[0], adapter_name="a")
    model.load_adapter(folders[1], adapter_name="b")
    model.eval()
    # no refresh(): a step that names adapters it has not seen reads the layers again
    for names in (["a", "__base__", "b", "a"], ["b", "b"], ["__base__"]):
        assert_same_steps(model, step, [7, 4, 9, 2][: len(names)], names)
    assert step.has_lora and step.adapter_names == {"a", "b"}
    model.delete_adapter("b")
    step.refresh()
    assert_same_steps(model, step, [5, 3], ["a", "__base__"])


@torch.no_grad()
def test_it_declines_where_it_would_not_be_the_same(tiny, tiny_model_dir, tmp_path):
    from helpers import TINY_SHAPE
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        MistralConfig,
        MistralForCausalLM,
    )

    model = packed(tiny, rows=range(1, 3))
    step = DecodeStep.for_model(model)
    cache, mask, ids, positions = batch(model, [4, 5, 6], None, seed=0)
    mask = torch.cat([mask, mask.new_ones(3, 1)], dim=1)
    assert step(ids, positions, mask, cache) is None  # 3 rows: MKL's, not the kernel's
    use_bf16_weights(model)  # new panels after the step was built
    assert step(ids[:1], positions[:1], mask[:1], cache) is None

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=4)).eval()
    assert DecodeStep.for_model(packed(gpt2)) is None
    sliding = MistralConfig(**TINY_SHAPE, sliding_window=4)
    assert DecodeStep.for_model(packed(MistralForCausalLM(sliding).eval())) is None
    assert DecodeStep.for_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir)) is None

    # a DoRA adapter: peft's own forward must run for its rows, also when no names are given
    model = packed(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    step = DecodeStep.for_model(model)
    dora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    dora.eval()
    step.refresh()
    cache, mask, ids, positions = batch(model, [4], None, seed=0)
    mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
    assert step(ids, positions, mask, cache, ["default"]) is None
    assert step(ids, positions, mask, cache, None) is None
    assert step(ids, positions, mask, cache, ["__base__"]) is not None


def test_the_engine_decodes_with_it_and_answers_as_without_it(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Base and fine-tuned requests in one batch, adapters loaded while the engine runs: every
    decode step goes through `DecodeStep`, and the answers (tokens and log-probabilities) are
    those of an engine whose steps run through transformers' forward."""
    from helpers import finished_logprobs

    from tuneforge.inference.engine import DECODE_ENV, InferenceEngine, SamplingParams, Target
    from tuneforge.models.text import load_text_side

    monkeypatch.setenv("TUNEFORGE_KERNEL_MAX_ROWS", "256")
    text = load_text_side(str(tiny_model_dir))
    base = str(tiny_model_dir)
    adapters = [_lora(tiny_model_dir, tmp_path / f"a{seed}", seed) for seed in (1, 2)]
    targets = [
        Target(base, base),
        Target("ft:a", base, adapters[0]),
        Target("ft:b", base, adapters[1]),
        Target("ft:a", base, adapters[0]),
    ]
    prompts = [text.tokenizer(f"Question {i}: " + "why " * i)["input_ids"] for i in (1, 5, 3, 7)]
    params = SamplingParams(10, 0.0, logprobs=0)

    def answers() -> tuple[list, InferenceEngine]:
        engine = InferenceEngine()

        async def run() -> list:
            loop = asyncio.get_running_loop()
            generations = [
                engine.submit(target, text, ids, params, loop=loop)
                for target, ids in zip(targets, prompts, strict=True)
            ]
            engine.start()
            return await finished_logprobs(generations)

        try:
            return asyncio.run(run()), engine
        finally:
            engine.stop()

    ours, engine = answers()
    decode = engine._slots[base].decode
    assert decode is not None and decode.has_lora and decode.steps == engine.steps > 0
    monkeypatch.setenv(DECODE_ENV, "transformers")
    theirs, engine = answers()
    assert engine._slots[base].decode is None
    assert ours == theirs
    assert len({tuple(a) for a in ours}) == len(ours)  # the adapters change the answers


def test_the_engine_decodes_with_it_and_answers_as_generate(tiny_model_dir, monkeypatch):
    from helpers import finished
    from transformers import AutoModelForCausalLM

    from tuneforge.inference.engine import InferenceEngine, SamplingParams, Target
    from tuneforge.models.text import load_text_side

    monkeypatch.setenv("TUNEFORGE_KERNEL_MAX_ROWS", "256")
    text = load_text_side(str(tiny_model_dir))
    base = str(tiny_model_dir)
    prompts = [text.tokenizer(f"Question {i}: " + "why " * i)["input_ids"] for i in (1, 5, 3)]
    engine = InferenceEngine()

    async def run() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        generations = [
            engine.submit(Target(base, base), text, ids, SamplingParams(10, 0.0), loop=loop)
            for ids in prompts
        ]
        engine.start()
        return [list(f.token_ids) for f in await finished(generations)]

    try:
        answers = asyncio.run(run())
    finally:
        engine.stop()
    reference = packed(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    for ids, answer in zip(prompts, answers, strict=True):
        expected = reference.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=2
        )[0, len(ids) :].tolist()
        assert answer == expected
    decode = engine._slots[base].decode
    assert decode is not None and decode.steps == engine.steps > 0
