"""The batching engine: a request answers the same alone or in a mixed batch (other prompts,
other LoRA adapters, arriving mid-generation or together, prefilled in one forward or in chunks),
matches peft's own generate, and stops when its client goes away; running requests keep
decoding while a long prompt is prefilled."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from tuneforge.inference.engine import (
    Delta,
    Finished,
    InferenceEngine,
    SamplingParams,
    Target,
    _holdback,
    sample,
)
from tuneforge.models.text import TextSide, load_text_side


@pytest.fixture(scope="module")
def text(tiny_model_dir) -> TextSide:
    return load_text_side(str(tiny_model_dir))


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> list[Path]:
    """Two random (non-zero) LoRA adapters on the tiny model, so each changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        folder = tmp_path_factory.mktemp(f"adapter{seed}")
        get_peft_model(base, lora).save_pretrained(folder)
        out.append(folder)
    return out


@pytest.fixture
def engine():
    engine = InferenceEngine()
    engine.start()
    yield engine
    engine.stop()


def prompt(text: TextSide, i: int) -> list[int]:
    return text.tokenizer(f"<|im_start|>user\nQuestion {i}: " + "why " * i)["input_ids"]


async def collect(engine, target, text, ids, params, delay=0.0) -> tuple[str, str, int]:
    await asyncio.sleep(delay)
    generation = engine.submit(target, text, ids, params)
    pieces = []
    while True:
        _, event = await generation.events.get()
        if isinstance(event, Delta):
            pieces.append(event.text)
        else:
            assert isinstance(event, Finished), event
            return "".join(pieces), event.reason, event.completion_tokens


def test_a_request_answers_the_same_alone_and_in_a_mixed_batch(
    engine, text, tiny_model_dir, adapters
):
    base = str(tiny_model_dir)
    targets = [
        Target(base, base),
        Target("ft:a", base, adapters[0]),
        Target("ft:b", base, adapters[1]),
        Target("ft:a", base, adapters[0]),
        Target(base, base),
    ]
    requests = [
        (target, prompt(text, i), SamplingParams(max_tokens=6 + 3 * i, temperature=1.0, seed=i))
        for i, target in enumerate(targets)
    ]
    alone = [asyncio.run(collect(engine, t, text, ids, p)) for t, ids, p in requests]

    async def together():
        return await asyncio.gather(
            *(
                collect(engine, t, text, ids, p, delay=0.02 * i)
                for i, (t, ids, p) in enumerate(requests)
            )
        )

    assert asyncio.run(together()) == alone
    assert len({a[0] for a in alone}) == len(alone)  # the adapters really change the answers


def test_an_adapter_row_matches_peft_generate(engine, text, tiny_model_dir, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = prompt(text, 3)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapters[0]
    )
    reference = model.generate(
        input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=2
    )[0, len(ids) :].tolist()
    reference_text = text.tokenizer.decode(
        [t for t in reference if t != 2], skip_special_tokens=True
    )
    base = str(tiny_model_dir)
    answer = asyncio.run(
        collect(engine, Target("ft:a", base, adapters[0]), text, ids, SamplingParams(12, 0.0))
    )
    assert answer[0] == reference_text


def test_a_cancelled_request_stops_generating(engine, text, tiny_model_dir):
    base = str(tiny_model_dir)

    async def start_then_leave():
        generation = engine.submit(
            Target(base, base), text, prompt(text, 1), SamplingParams(2000, 1.0, seed=0)
        )
        await generation.events.get()
        generation.cancel()

    asyncio.run(start_then_leave())
    time.sleep(0.5)  # at most a step or two finish after the cancel
    steps = engine.steps
    time.sleep(0.5)
    assert engine.steps == steps < 100
    assert engine.active == 0


def test_text_that_may_start_a_stop_string_is_held_back():
    assert _holdback("Hello <|e", ("<|end|>",)) == 3
    assert _holdback("Hello", ("<|end|>",)) == 0
    assert _holdback("caf\ufffd", ()) == 1


def test_sampling_rules():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert sample(logits, SamplingParams(1, temperature=0.0), None) == 1
    assert sample(logits, SamplingParams(1, temperature=1.0, top_p=1e-6), None) == 1
    generator = torch.Generator().manual_seed(0)
    drawn = {sample(logits, SamplingParams(1, 1.0, 0.9), generator) for _ in range(200)}
    assert drawn <= {1, 2, 3} and {1, 3} <= drawn  # nucleus 0.9 drops the least likely token


def test_a_prompt_that_starts_like_an_earlier_one_reuses_its_cache_and_answers_the_same(
    engine, text, tiny_model_dir, adapters
):
    """Prefix reuse: the second prompt shares a long start (a system prompt) with the first; it
    is prefilled from the first one's KV cache and still answers exactly as peft's generate."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    system = text.tokenizer("<|im_start|>system\n" + "Be brief and exact. " * 8)["input_ids"]
    first = system + text.tokenizer("<|im_start|>user\nA first question")["input_ids"]
    second = system + text.tokenizer("<|im_start|>user\nAnother one, longer")["input_ids"]
    base = str(tiny_model_dir)
    target = Target("ft:a", base, adapters[0])
    asyncio.run(collect(engine, target, text, first, SamplingParams(4, 0.0)))
    before = engine.prefix_tokens_reused
    answer = asyncio.run(collect(engine, target, text, second, SamplingParams(12, 0.0)))
    assert engine.prefix_tokens_reused - before >= len(system)

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapters[0]
    )
    reference = model.generate(
        input_ids=torch.tensor([second]), max_new_tokens=12, do_sample=False, eos_token_id=2
    )[0, len(second) :].tolist()
    assert answer[0] == text.tokenizer.decode(
        [t for t in reference if t != 2], skip_special_tokens=True
    )
    # The base model (another adapter) does not reuse the adapter's cache.
    before = engine.prefix_tokens_reused
    asyncio.run(collect(engine, Target(base, base), text, second, SamplingParams(2, 0.0)))
    assert engine.prefix_tokens_reused == before


def test_the_prefix_cache_keeps_to_its_token_budget(engine, text, tiny_model_dir, monkeypatch):
    import tuneforge.inference.engine as engine_module

    base = str(tiny_model_dir)
    first, second, third = (prompt(text, i) for i in (8, 9, 10))  # all different
    budget = len(second) + len(third)  # room for the two newest, not for all three
    monkeypatch.setattr(engine_module, "PREFIX_TOKENS", budget)
    for ids in (first, second, third, prompt(text, 3 * budget)):  # the last is over it alone
        asyncio.run(collect(engine, Target(base, base), text, ids, SamplingParams(1, 0.0)))
    kept = [entry.ids for entry in engine._slots[base].prefixes]
    assert kept == [third, second]  # newest first; the oldest went; the oversize one never came


def reference_answer(model, text: TextSide, ids: list[int], max_tokens: int) -> str:
    """What transformers' own greedy generate answers, decoded as the engine decodes."""
    out = model.generate(
        input_ids=torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=2
    )[0, len(ids) :].tolist()
    return text.tokenizer.decode([t for t in out if t != 2], skip_special_tokens=True)


def submit_together(engine, requests, loop) -> list:
    """Queue every request before the engine's thread starts: they arrive together."""
    return [
        engine.submit(target, text, ids, params, loop=loop)
        for target, text, ids, params in requests
    ]


async def answers_of(generations) -> list[str]:
    out = []
    for generation in generations:
        pieces = []
        while not isinstance(event := (await generation.events.get())[1], Finished):
            pieces.append(event.text)
        out.append("".join(pieces))
    return out


@pytest.mark.parametrize("chunk_tokens", [256, 7])
def test_requests_that_arrive_together_are_prefilled_together_and_answer_as_alone(
    text, tiny_model_dir, monkeypatch, chunk_tokens
):
    """Four prompts of different lengths: with room for all, one prefill forward; with 7-token
    chunks, several forwards that split prompts across chunks. Either way each answer is
    transformers' greedy generate of that prompt alone."""
    from transformers import AutoModelForCausalLM

    import tuneforge.inference.engine as engine_module

    monkeypatch.setattr(engine_module, "PREFILL_CHUNK_TOKENS", chunk_tokens)
    base = str(tiny_model_dir)
    prompts = [prompt(text, i) for i in (1, 6, 3, 9)]
    requests = [(Target(base, base), text, ids, SamplingParams(10, 0.0)) for ids in prompts]
    engine = InferenceEngine()

    async def run() -> list[str]:
        generations = submit_together(engine, requests, asyncio.get_running_loop())
        engine.start()
        return await answers_of(generations)

    try:
        answers = asyncio.run(run())
    finally:
        engine.stop()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert answers == [reference_answer(model, text, ids, 10) for ids in prompts]
    tokens = sum(len(ids) for ids in prompts)
    assert engine.prefill_forwards == (1 if chunk_tokens >= tokens else -(-tokens // chunk_tokens))


def test_prompts_arriving_together_with_a_shared_start_compute_it_once(text, tiny_model_dir):
    """Two prompts with the same long system prompt arrive together: the second waits one chunk
    and continues from the first's cache, and both still answer as generate does."""
    from transformers import AutoModelForCausalLM

    system = text.tokenizer("<|im_start|>system\n" + "Be brief and exact. " * 8)["input_ids"]
    prompts = [
        system + text.tokenizer(f"<|im_start|>user\nQuestion {q}")["input_ids"] for q in "ab"
    ]
    base = str(tiny_model_dir)
    engine = InferenceEngine()
    requests = [(Target(base, base), text, ids, SamplingParams(8, 0.0)) for ids in prompts]

    async def run() -> list[str]:
        generations = submit_together(engine, requests, asyncio.get_running_loop())
        engine.start()
        return await answers_of(generations)

    try:
        answers = asyncio.run(run())
    finally:
        engine.stop()
    assert engine.prefix_tokens_reused >= len(system)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert answers == [reference_answer(model, text, ids, 8) for ids in prompts]


def test_running_requests_keep_decoding_while_a_long_prompt_is_prefilled(
    text, tiny_model_dir, monkeypatch
):
    """Driven turn by turn (no thread): a long prompt arrives while a request decodes; at each
    turn it gets one 8-token chunk and the running request one more token."""
    import tuneforge.inference.engine as engine_module

    monkeypatch.setattr(engine_module, "PREFILL_CHUNK_TOKENS", 8)
    base = str(tiny_model_dir)
    loop = asyncio.new_event_loop()
    engine = InferenceEngine()
    engine.submit(
        Target(base, base), text, prompt(text, 0), SamplingParams(100, 1.0, seed=0), loop=loop
    )
    with torch.no_grad():
        while not engine._slots or not engine._slots[base].rows:
            engine._turn()
        slot = engine._slots[base]
        (running,) = slot.rows
        long_prompt = prompt(text, 12)
        engine.submit(Target(base, base), text, long_prompt, SamplingParams(5, 0.0), loop=loop)
        chunks = -(-len(long_prompt) // 8)
        for turn in range(1, chunks):
            tokens = len(running.ids)
            engine._turn()
            assert len(running.ids) == tokens + 1  # the running row did not wait
            assert len(slot.prefilling) == 1 and slot.prefilling[0].done == 8 * turn
        engine._turn()  # the last chunk: the long prompt joins the batch
        assert not slot.prefilling and len(slot.rows) == 2
    loop.close()


def test_background_rows_wait_behind_live_ones_and_keep_to_their_share(text, tiny_model_dir):
    """Driven turn by turn: a batch's rows (background) take at most half of the batch's rows;
    a live request that arrives behind them is admitted at once and prefilled first, while the
    background rows left over keep waiting."""
    base = str(tiny_model_dir)
    loop = asyncio.new_event_loop()
    engine = InferenceEngine(max_batch_size=4)
    target = Target(base, base)
    for i in range(6):
        params = SamplingParams(20, 0.0, background=True)
        engine.submit(target, text, prompt(text, i), params, loop=loop)
    with torch.no_grad():
        engine._take_inbox(block=False)
        engine._admit()
        slot = engine._slots[base]
        assert slot.occupied == slot.background == 2 and len(engine._waiting) == 4
        live = engine.submit(target, text, prompt(text, 9), SamplingParams(5, 0.0), loop=loop)
        engine._take_inbox(block=False)
        engine._admit()
        assert slot.prefilling[0].row.generation is live  # ahead of the batch's prompts
        assert slot.occupied == 3 and slot.background == 2 and len(engine._waiting) == 4

        def running():
            return [r.generation for r in slot.rows + [s.row for s in slot.prefilling]]

        turns = 0
        while live in running():  # 5 tokens, with the batch's 2 rows decoding beside it
            engine._turn()
            turns += 1
            assert slot.background == 2 and len(engine._waiting) == 4
        assert turns <= 6
        while engine._waiting or slot.occupied:  # the rest of the batch, 2 rows at a time
            engine._turn()
            assert slot.background <= 2
    loop.close()


def test_generate_in_place_answers_with_the_live_adapter_as_peft_generate_does(
    text, tiny_model_dir, adapters
):
    """The GRPO trainer's sampler: the model's own active adapter answers (not the base), every
    prompt's group shares one batch (prompts of different lengths: left padding), greedy
    answers equal peft's `generate` one prompt at a time, a seed repeats."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.inference.engine import generate_in_place
    from tuneforge.models.attention import use_varlen_attention

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapters[0], is_trainable=True
    )
    use_varlen_attention(model)  # as the trainer builds it
    model.train()
    prompts = [prompt(text, i) for i in (1, 4, 2)]
    greedy = [SamplingParams(10, 0.0)] * len(prompts)
    answers = generate_in_place(model, text, prompts, greedy, n=2)
    assert model.training  # restored for the next optimizer step
    eos = sorted(text.eos_ids)
    for ids, group in zip(prompts, answers, strict=True):
        reference = model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=eos
        )[0, len(ids) :].tolist()
        end = next((i for i, t in enumerate(reference) if t in eos), None)
        reference = reference if end is None else reference[: end + 1]
        assert [list(f.token_ids) for f in group] == [reference, reference]
        assert all(f.completion_tokens == len(reference) for f in group)
    with model.disable_adapter():
        base = generate_in_place(model, text, prompts, greedy)
    assert [g[0].token_ids for g in base] != [g[0].token_ids for g in answers]

    seeded = [SamplingParams(10, 1.0, seed=7 + 100 * j) for j in range(len(prompts))]
    first = generate_in_place(model, text, prompts, seeded, n=3)
    assert first == generate_in_place(model, text, prompts, seeded, n=3)
    assert len({f.token_ids for f in first[1]}) > 1  # the choices of a prompt differ


def test_chat_and_generate_answer_in_place_as_the_server_does(text, tiny_model_dir, monkeypatch):
    """`tuneforge generate` / `chat` on the CPU: the server's loop in the calling thread. Greedy
    answers are the running server's, token for token, with the decode step where it applies;
    a chat's next turn reuses the conversation's KV cache; `should_stop` and closing the stream
    early cancel the answer (and drop the engine, whose batch may be half-stepped)."""
    from helpers import finished

    from tuneforge.data.conversation import Message
    from tuneforge.errors import UsageError
    from tuneforge.inference import small_gemm
    from tuneforge.inference.generate import generate, stream
    from tuneforge.inference.load import load_for_inference

    monkeypatch.setenv("TUNEFORGE_KERNEL_MAX_ROWS", "256")
    loaded = load_for_inference(str(tiny_model_dir), packed=True)  # as the CLI loads it
    questions = [f"Question {i}: " + "why " * i for i in (1, 5, 3)]
    answers = [generate(loaded, [Message("user", q)], max_new_tokens=10) for q in questions]
    base = str(tiny_model_dir)
    prompts = [loaded.text.prompt_ids([Message("user", q)]) for q in questions]
    requests = [(Target(base, base), text, ids, SamplingParams(10, 0.0)) for ids in prompts]
    server = InferenceEngine()

    async def served() -> list:
        generations = submit_together(server, requests, asyncio.get_running_loop())
        server.start()
        return [list(f.token_ids) for f in await finished(generations)]

    try:
        expected = asyncio.run(served())
    finally:
        server.stop()
    assert [ids for _, ids in answers] == expected
    assert [answer for answer, _ in answers] == [
        text.tokenizer.decode(ids, skip_special_tokens=True) for ids in expected
    ]
    in_place = loaded.in_place
    if small_gemm.available():  # else the layers are packed for oneDNN: no DecodeStep
        assert in_place.slot.decode.steps > 0
    engine = in_place.engine

    # a chat: the second turn starts with the first turn's prompt
    history = [Message("user", questions[1])]
    finish: dict = {}
    first = "".join(stream(loaded, history, max_new_tokens=6, finish=finish))
    assert finish["reason"] in ("stop", "length") and finish["completion_tokens"] > 0
    history += [Message("assistant", first), Message("user", "and then?")]
    reused = engine.prefix_tokens_reused
    "".join(stream(loaded, history, max_new_tokens=6))
    assert engine.prefix_tokens_reused > reused

    finish = {}
    pieces = stream(loaded, history, max_new_tokens=50, should_stop=lambda: True, finish=finish)
    assert len(list(pieces)) <= 1 and finish["reason"] == "cancelled"
    assert not in_place.usable  # cut short: the next answer gets a new one, not a half-step
    pieces = stream(loaded, history, max_new_tokens=50)
    next(pieces)
    assert loaded.in_place is not in_place and loaded.in_place.usable
    pieces.close()
    assert not loaded.in_place.usable
    assert generate(loaded, [Message("user", questions[0])], max_new_tokens=10) == answers[0]

    # the model's context: a prompt that fills it is an error; an answer stops at its end
    context = loaded.text.context_length
    with pytest.raises(UsageError, match=f"reads at most {context}"):
        generate(loaded, [Message("user", "why " * context)], max_new_tokens=4)
    room = 5
    overhead = len(loaded.text.prompt_ids([Message("user", "why")])) - 1  # the template's
    filler = Message("user", " ".join(["why"] * (context - room - overhead)))
    assert len(loaded.text.prompt_ids([filler])) == context - room
    finish = {}
    "".join(stream(loaded, [filler], max_new_tokens=50, finish=finish))
    assert finish == {"reason": "length", "completion_tokens": room}


def test_lean_lora_layers_compute_what_peft_computes(tiny_model_dir, adapters):
    """`lora_rows.LoraRowsForward` (the engine's LoRA layers) gives peft's own numbers, bit for
    bit: rows of two adapters and the base mixed, one adapter for the whole batch, all base; and
    hands anything it does not cover (no adapter_names, training mode) to peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.inference.lora_rows import LoraRowsForward, use_lora_rows

    def load():
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapters[0], adapter_name="a"
        )
        model.load_adapter(adapters[1], adapter_name="b")
        return model.eval()

    peft_model, lean = load(), load()
    assert use_lora_rows(lean) > 0 and use_lora_rows(lean) == 0  # once per layer
    torch.manual_seed(0)
    ids = torch.randint(3, 1000, (4, 7))
    for names in (["a", "b", "__base__", "a"], ["b"] * 4, ["__base__"] * 4, ["a", "a", "b", "b"]):
        with torch.no_grad():
            expected = peft_model(input_ids=ids, adapter_names=names).logits
            got = lean(input_ids=ids, adapter_names=names).logits
        assert torch.equal(got, expected), names
    with torch.no_grad():  # the adapters really differ, so the mix is tested
        a = lean(input_ids=ids, adapter_names=["a"] * 4).logits
        b = lean(input_ids=ids, adapter_names=["b"] * 4).logits
    assert not torch.allclose(a, b)

    layer = next(
        m for m in lean.modules() if isinstance(m.__dict__.get("forward"), LoraRowsForward)
    )
    calls = []
    real = layer.forward.peft_forward
    layer.forward.peft_forward = lambda *a, **k: calls.append(k) or real(*a, **k)
    x = torch.randn(2, 3, layer.in_features)
    with torch.no_grad():
        layer(x)  # no adapter_names: peft's forward with its active adapter
        lean.train()
        layer(x, adapter_names=["a", "b"])
        lean.eval()
        layer(x, adapter_names=["a", "b"])
    assert len(calls) == 2


class _Recorded:
    """A Generation stand-in that keeps the events `_advance` sends."""

    def __init__(self) -> None:
        self.events: list = []
        self.cancelled = False

    def put(self, index: int, event) -> None:
        self.events.append(event)


def advance_all(text: TextSide, answer: str, params: SamplingParams, end: bool) -> list:
    """Feed `answer`'s tokens (then the end-of-turn token) to one row; its events."""
    from tuneforge.inference.engine import _Row

    generation = _Recorded()
    row = _Row(generation, 0, Target("m", "m"), text, params, [1, 2, 3], None)  # type: ignore[arg-type]
    engine = InferenceEngine()
    tokens = text.tokenizer.encode(answer, add_special_tokens=False)
    tokens += [min(text.eos_ids)] if end else []
    logits = torch.zeros(len(text.tokenizer))
    for token in tokens:
        if engine._advance(row, token, logits):
            break
    return generation.events


def logprob_bytes(text: TextSide, entries) -> bytes:
    return b"".join(text.token_bytes(e.token) for e in entries)


def test_a_stop_string_keeps_the_logprobs_of_a_character_split_over_tokens(text):
    """The logprobs of an answer cut by a stop string end where its text ends, in bytes: a
    character written in two tokens keeps both (its second one starts mid-character)."""
    params = SamplingParams(max_tokens=50, stop=("\n",), logprobs=0)
    events = advance_all(text, "Hi 🙂\nmore", params, end=False)
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert logprob_bytes(text, finished.logprobs) == "Hi 🙂".encode()
    streamed = [e for event in events if isinstance(event, Delta) for e in event.logprobs]
    assert streamed == list(finished.logprobs)


def test_streamed_logprobs_wait_for_the_text_they_belong_to(text):
    """A token held back as a possible stop string sends its logprob only with its text, so
    the stream never carries the logprobs of a stop string the answer ends on."""
    params = SamplingParams(max_tokens=50, stop=("\n\nUser:",), logprobs=0)
    events = advance_all(text, "Hi\n\n\n\nUser: more", params, end=False)
    deltas = [event for event in events if isinstance(event, Delta)]
    sent, shipped = b"", []
    for delta in deltas:  # the logprobs sent never run ahead of the text sent
        sent += delta.text.encode()
        shipped += delta.logprobs
        assert sent.startswith(logprob_bytes(text, shipped)), (sent, shipped)
    finished = events[-1]
    assert "".join(d.text for d in deltas) == "Hi\n\n"
    # "Hi", "\n\n\n": the tokens that start before the stop string (the second straddles it)
    assert logprob_bytes(text, finished.logprobs) == b"Hi\n\n\n"
    assert len(shipped) < len(finished.logprobs)  # the straddling one waited for the end


def test_text_held_back_for_a_stop_string_is_sent_when_the_answer_ends_there(text):
    """An answer that ends (end-of-turn token) on what might have begun a stop string sends it:
    it was not a stop string after all."""
    params = SamplingParams(max_tokens=50, stop=("\n\n",))
    events = advance_all(text, "Hi there\n", params, end=True)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "Hi there\n"
    assert isinstance(events[-1], Finished) and events[-1].reason == "stop"
    stopped = advance_all(text, "Hi there\n\nmore", params, end=False)
    assert "".join(e.text for e in stopped if isinstance(e, Delta)) == "Hi there"


def test_a_bf16_prefill_computes_prompts_in_bf16_and_decodes_in_fp32(text, tiny_model_dir):
    """`prefill_bf16`: each answer is greedy decoding in fp32 from the KV cache of a prompt whose
    linear layers ran in bf16 (the LM head in fp32), whether prompts arrive alone or together.
    Compared by the answer tokens' log-probabilities, which bf16 moves far more than the GEMMs'
    fp32 rounding does (the test checks that it does)."""
    from helpers import finished_logprobs
    from transformers import AutoModelForCausalLM

    from tuneforge.inference.prepack import add_bf16_copies, bf16_linears, prepack_linears

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prepack_linears(model)
    add_bf16_copies(model, skip=[model.get_output_embeddings()])

    def reference(ids: list[int], max_tokens: int, bf16: bool) -> list[tuple[int, float]]:
        out = []
        with torch.no_grad():
            with bf16_linears(bf16):
                step = model(input_ids=torch.tensor([ids]), use_cache=True)
            for _ in range(max_tokens):
                logprobs = torch.log_softmax(step.logits[0, -1].float(), dim=-1)
                token = int(logprobs.argmax())
                out.append((token, float(logprobs[token])))
                if token == 2:
                    break
                step = model(
                    input_ids=torch.tensor([[token]]), past_key_values=step.past_key_values
                )
        return out

    base = str(tiny_model_dir)
    prompts = [prompt(text, i) for i in (1, 6, 3, 9, 12)]
    expected = [reference(ids, 8, bf16=True) for ids in prompts]
    fp32 = [reference(ids, 8, bf16=False) for ids in prompts]
    params = SamplingParams(8, 0.0, logprobs=0)
    requests = [(Target(base, base), text, ids, params) for ids in prompts]
    engine = InferenceEngine(prefill_bf16=True)

    async def run() -> list[list[tuple[int, float]]]:
        together = await finished_logprobs(
            submit_together(engine, requests, asyncio.get_running_loop())
        )
        alone = [(await finished_logprobs(submit_together(engine, [r], None)))[0] for r in requests]
        return together + alone

    engine.start()
    try:
        answers = asyncio.run(run())
    finally:
        engine.stop()

    def gap(a, b) -> float:
        assert [t for t, _ in a] == [t for t, _ in b]
        return max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))

    bf16_moves = max(gap(a, b) for a, b in zip(expected, fp32, strict=True))
    assert bf16_moves > 1e-4
    for answer, want in zip(answers, expected + expected, strict=True):
        n = len(answer)  # the end-of-turn token carries no logprob
        assert gap(answer, want[:n]) < bf16_moves / 20


def test_bf16_weights_answer_as_the_rounded_model_and_auto_takes_only_exact_ones(
    text, tiny_model_dir, tmp_path, monkeypatch
):
    """`weight_precision`: "bf16" answers exactly as the fp32 engine answers on a copy of the
    model whose linear weights were rounded to bf16 (same tokens, same log-probabilities, bit for
    bit: the kernel adds the same products in the same order); "auto" reads that copy in bf16 (it
    rounds nothing) but leaves the original model, whose weights are not bf16 values, in fp32."""
    from helpers import bf16_checkpoint

    from tuneforge.inference import small_gemm
    from tuneforge.inference.prepack import packed_kind

    if not small_gemm.available():
        pytest.skip("the kernel needs x86-64 Linux, AVX2 and a C compiler")
    monkeypatch.setenv("TUNEFORGE_KERNEL_MAX_ROWS", "256")  # the kernel wherever it can run
    rounded = tmp_path / "rounded"
    bf16_checkpoint(tiny_model_dir, rounded)

    def answers(folder: Path, precision: str) -> tuple[list, str | None]:
        base = str(folder)
        params = SamplingParams(8, 0.0, logprobs=0)
        requests = [(Target(base, base), text, prompt(text, i), params) for i in (1, 6, 3)]
        engine = InferenceEngine(weight_precision=precision)

        async def run() -> list:
            out = []
            for generation in submit_together(engine, requests, asyncio.get_running_loop()):
                while not isinstance(event := (await generation.events.get())[1], Finished):
                    pass
                out.append([(lp.token, lp.logprob) for lp in event.logprobs])
            return out

        engine.start()
        try:
            got = asyncio.run(run())
            head = engine._slots[base].model.get_output_embeddings()
            return got, packed_kind(head)
        finally:
            engine.stop()

    reference, kind = answers(rounded, "fp32")
    assert kind == "small_gemm"
    assert answers(rounded, "auto") == (reference, "small_gemm_bf16w")
    assert answers(tiny_model_dir, "bf16") == (reference, "small_gemm_bf16w")
    original, kind = answers(tiny_model_dir, "auto")
    assert kind == "small_gemm" and original != reference  # not rounded: fp32 answers
    with pytest.raises(ValueError, match="weight_precision"):
        InferenceEngine(weight_precision="int8")
