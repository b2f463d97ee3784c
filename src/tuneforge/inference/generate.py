"""Chat generation with the training chat template (one template path for train and serve).

`generate` and `stream` (`tuneforge generate`, `chat`, a local judge) answer on the CPU through
the server's own loop in the calling thread (`engine.InPlace`): the same prefill,
decode step (`inference/decode_step.py`), sampling and stop rules as `tuneforge serve`, so the
same answers, and a chat's next turn reuses the KV cache of the conversation so far. On a GPU
(which the engine does not run on) they use transformers' `model.generate`. `generate_batch`
(`eval`, `compare`) keeps `model.generate` on a left-padded batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from threading import Event, Thread
from typing import Any

from tuneforge.data.conversation import Message
from tuneforge.inference.load import LoadedModel


def _eos(loaded: LoadedModel) -> list[int] | None:
    """The ids `model.generate` stops on: the text side's (those the server's engine stops on)."""
    return sorted(loaded.text.eos_ids) or None


def _generate(
    loaded: LoadedModel,
    ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    **extra: Any,
) -> Any:
    """One `model.generate` call on a single prompt; greedy unless temperature > 0."""
    import torch

    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature and temperature > 0
        else {"do_sample": False}  # greedy: reproducible answers by default
    )
    device = next(loaded.model.parameters()).device
    with torch.no_grad():
        return loaded.model.generate(
            input_ids=torch.tensor([ids], device=device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=_eos(loaded),
            **sampling,
            **extra,
        )


def _prompt_ids(loaded: LoadedModel, messages: list[Message]) -> list[int]:
    """The prompt's tokens; a prompt that fills the model's context is an error, not an answer
    cut after one token (or past what the model was trained for)."""
    from tuneforge.errors import UsageError

    ids = loaded.text.prompt_ids(messages)
    context = loaded.text.context_length
    if len(ids) >= context:
        raise UsageError(
            f"the prompt is {len(ids)} tokens and {loaded.name} reads at most {context}",
            hint="shorten it (in `tuneforge chat`, /reset starts the conversation again)",
        )
    return ids


def _in_place(loaded: LoadedModel) -> bool:
    """Whether the server's loop can answer with this model here (it runs on the CPU)."""
    return next(loaded.model.parameters()).device.type == "cpu"


def _answer(
    loaded: LoadedModel,
    ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    *,
    reuse: bool,
) -> Iterator[Any]:
    from tuneforge.inference.engine import InPlace, SamplingParams

    greedy = not (temperature and temperature > 0)  # greedy: reproducible answers by default
    params = SamplingParams(
        max_new_tokens, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p
    )
    in_place = loaded.in_place
    if in_place is None or not in_place.usable or in_place.model is not loaded.model:
        in_place = loaded.in_place = InPlace(loaded.model)
    return in_place.answer(loaded.text, ids, params, reuse=reuse)


def generate(
    loaded: LoadedModel,
    messages: list[Message],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> tuple[str, list[int]]:
    """Return (answer text, answer token ids: the end-of-turn token included when it ended)."""
    from tuneforge.inference.engine import Delta, Finished

    ids = _prompt_ids(loaded, messages)
    if _in_place(loaded):
        pieces, new = [], []
        # not from a cached prefix: a one-off answer (a judge's) must not depend on the last one
        for event in _answer(loaded, ids, max_new_tokens, temperature, top_p, reuse=False):
            if isinstance(event, Delta):
                pieces.append(event.text)
            elif isinstance(event, Finished):
                new = list(event.token_ids)
        return "".join(pieces), new
    out = _generate(loaded, ids, max_new_tokens, temperature, top_p)
    new = out[0, len(ids) :].tolist()
    return loaded.tokenizer.decode(new, skip_special_tokens=True), new


def generate_batch(
    loaded: LoadedModel, prompts: list[list[int]], *, max_new_tokens: int
) -> list[list[int]]:
    """Greedy answers (token ids, up to and including the end-of-turn token) for several prompts
    in one left-padded batch: on CPU a batch of 8 costs little more per step than one prompt,
    because each decoding step is bound by reading the weights, not by arithmetic."""
    import torch

    tokenizer = loaded.tokenizer
    eos = loaded.text.eos_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    device = next(loaded.model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.no_grad():
        out = loaded.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=_eos(loaded),
        )
    answers = []
    for row in out[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in eos), None)
        answers.append(row[: end + 1] if end is not None else row)
    return answers


def stream(
    loaded: LoadedModel,
    messages: list[Message],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    should_stop: Callable[[], bool] | None = None,
    finish: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Yield the answer in text pieces as they are generated: on the CPU in this thread, each
    piece computed when the next is asked for (`engine.InPlace`); on a GPU in a thread
    running `model.generate`.

    Closing the iterator early (or Ctrl-C) cancels the answer; with the thread, it stops the
    thread and waits for it: a process must not exit while that thread is inside torch, or the
    C++ runtime aborts it ("terminate called without an active exception"). `finish`, when
    given, receives `reason` ("stop", "length" or "cancelled") and `completion_tokens` once the
    answer ends.
    """
    ids = _prompt_ids(loaded, messages)
    if _in_place(loaded):
        yield from _stream_in_place(
            loaded, ids, max_new_tokens, temperature, top_p, should_stop, finish
        )
        return
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancelled = Event()
    result: dict[str, Any] = {}

    class _Stop(StoppingCriteria):
        def __call__(self, *_: Any, **__: Any) -> bool:
            return cancelled.is_set() or bool(should_stop and should_stop())

    def run() -> None:
        try:
            result["out"] = _generate(
                loaded,
                ids,
                max_new_tokens,
                temperature,
                top_p,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Stop()]),
            )
        except BaseException:
            streamer.end()  # never leave the reader waiting when generate raised
            raise

    thread = Thread(target=run, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        if thread.is_alive():
            cancelled.set()
        thread.join()
        if finish is not None:
            new = result["out"][0, len(ids) :].tolist() if "out" in result else []
            if cancelled.is_set():
                reason = "cancelled"
            elif len(new) >= max_new_tokens and (not new or new[-1] not in loaded.text.eos_ids):
                reason = "length"
            else:
                reason = "stop"
            finish.update(reason=reason, completion_tokens=len(new))


def _stream_in_place(
    loaded: LoadedModel,
    ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    should_stop: Callable[[], bool] | None,
    finish: dict[str, Any] | None,
) -> Iterator[str]:
    """`stream` through the server's loop in this thread (no generation thread to stop)."""
    from tuneforge.inference.engine import Delta, Finished

    outcome: dict[str, Any] = {"reason": "cancelled", "completion_tokens": 0}
    answer = _answer(loaded, ids, max_new_tokens, temperature, top_p, reuse=True)
    try:
        for event in answer:
            if isinstance(event, Delta) and event.text:
                yield event.text
            elif isinstance(event, Finished):
                outcome = {"reason": event.reason, "completion_tokens": event.completion_tokens}
            if should_stop and should_stop():
                break
    finally:
        answer.close()  # an answer cut short is cancelled
        if finish is not None:
            finish.update(outcome)
