"""Batched generation for the server: one thread owns the models, requests share forward passes.

Why our own decode loop rather than `model.generate` per request: on a CPU (or a GPU with a small
model) a decode step is bound by reading the weights, so eight rows cost little more than one.
The loop does continuous batching. New requests wait in their base model's prefill queue; each
turn of the loop runs one prefill chunk, then one decode step of the running batch:

- a chunk is one forward over up to `PREFILL_CHUNK_TOKENS` prompt tokens of the waiting requests
  of one adapter, packed into one row with a mask that keeps each prompt to itself
  (`inference/packed_prefill.py`: no padding, so no masked rows that could poison the cache).
  Requests that arrive together are prefilled together; a long prompt takes several chunks,
  and the running requests get a decode step between any two, so they are never stalled for a
  whole long prefill;
- a request whose prompt is complete gets its first token, and its KV cache is left-padded and
  joined to the running batch; finished or cancelled rows leave between steps.

Prompt prefixes are reused: a prompt that starts like a recent one (the same system prompt, few-
shot examples or earlier turns of a chat) on the same adapter continues from that one's KV cache
(`_Prefix`), or from a prompt still being prefilled; a waiting prompt that shares its start with
one in the current chunk waits a chunk to reuse it rather than compute it twice.

Three things make a batched step cheap on a CPU, each measured (BENCHMARKS.md, "Serving
throughput"): the base model's linear layers run with weights packed once for a few-row GEMM
(`inference/prepack.py`: our AVX2 kernel for the row counts where it beats MKL on this machine,
measured once; else oneDNN), the KV cache grows in place in a buffer with room to spare
(`GrowingLayer`) instead of being copied whole by `torch.cat` at every step, and a decode step
of a Llama-family model on our kernel runs in plain calls (`inference/decode_step.py`: q/k/v and
gate/up in one kernel call each, the same logits to the bit; transformers' forward elsewhere,
or everywhere with `TUNEFORGE_DECODE_STEP=transformers`). On a CPU with bf16
units, `prefill_bf16` (`tuneforge serve --prefill-precision bf16`) computes the prompts' linear
layers in bf16 (a prefill chunk 1.5-1.75× faster on an AVX512-BF16 EPYC), for a shorter time to
first token; decode steps stay fp32, but the prompt's KV cache is bf16-rounded, so answers may
differ from fp32's. `weight_precision` (`--weight-precision`) has our kernel read the weights in
bf16 (`prepack.use_bf16_weights`: half the bytes per decode step, fp32 arithmetic): "auto", the
default, where the model's weights are bf16 values already, so nothing is rounded and answers
stay the fp32 kernel's; "bf16" for any model (weights rounded); "fp32" never.

Models with sliding-window (or other not-full) attention layers keep transformers' own cache and
are prefilled one request per forward, with no prefix reuse.

LoRA: every base model is loaded once. Fine-tuned models are peft adapters on it, and one batch
mixes them: peft's `adapter_names=[...]` runs each row through its own adapter ("__base__" for
none), so requests to different `ft:` models still share each forward pass. The LoRA layers
compute that with `inference/lora_rows.py`: peft's arithmetic without its per-call Python.

`tuneforge chat` and `generate` answer through the same loop in their own thread (`InPlace`,
kept on the `LoadedModel`), so they answer as the server does.

GRPO's trainer samples through the same loop without the thread: `generate_in_place(model, …)`
runs it in the caller's thread on the model being trained (its own active adapter, no prepacked
weights, no prefix kept between calls), until every answer is done.

Results travel to the request's asyncio loop as events on a queue: `Delta(text)`, then
`Finished(reason, completion_tokens, token_ids)`, or `Failed(error)`; with
`SamplingParams.logprobs`, each carries the `TokenLogprob`s of its tokens.
`Generation.cancel()` (the client went away) removes its row at the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneforge.inference import packed_prefill, small_gemm
from tuneforge.inference.constrained import Constraint
from tuneforge.inference.decode_step import DecodeStep
from tuneforge.inference.kv_cache import BatchCache, full_attention_only, left_pad
from tuneforge.inference.lora_rows import use_lora_rows
from tuneforge.inference.prepack import (
    WEIGHT_PRECISIONS,
    add_bf16_copies,
    apply_weight_precision,
    bf16_linears,
    is_packed,
    kernel_rows,
    packed_kind,
    prepack_linears,
)
from tuneforge.models.text import TextSide

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
MAX_BATCH_SIZE = 32
PREFIX_ENTRIES = 8  # prompts whose KV cache each base model keeps for reuse
PREFIX_TOKENS = 8192  # and at most this many of their tokens in all (135M model: 46 KB a token)
MIN_PREFIX = 8  # shorter shared prefixes are not worth a lookup
# Prompt tokens per prefill forward. A CPU prefill is compute-bound (~0.9 ms a token for the 135M
# model on 2 Xeon cores), so a chunk of 256 stalls the running rows' next decode step for
# ~0.25 s; larger chunks save a little per-forward overhead but stall longer and make the
# first of several requests that arrive together wait for the others' prompts.
PREFILL_CHUNK_TOKENS = 256
# `TUNEFORGE_DECODE_STEP=transformers`: decode steps through transformers' forward even where
# `DecodeStep` applies (for A/B measurements, bench/serve_throughput.py --decode-step)
DECODE_ENV = "TUNEFORGE_DECODE_STEP"
BACKGROUND_SHARE = 0.5  # of the batch's rows, the most that background work (SamplingParams) holds


@dataclass(frozen=True)
class Target:
    """Which weights answer: a base model, optionally with a LoRA adapter folder on it."""

    model_id: str
    base: str
    adapter: Path | None = None


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Log-probabilities: None for none; else each generated token's, with this many of the
    # most likely tokens at its position (OpenAI's logprobs / top_logprobs, 0-20)
    logprobs: int | None = None
    # Structured output: an llguidance grammar (`inference/constrained.py`) the answer follows
    grammar: str | None = None
    # OpenAI's repetition penalties, subtracted from a token's logit before sampling: presence
    # once a token is in the answer so far, frequency times how often (`penalize`)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Background work (a batch's line, an eval run's row): admitted after the live requests
    # waiting, and on at most BACKGROUND_SHARE of the batch's rows (even with no live request),
    # so a live request is never queued behind a large batch's waiting rows
    background: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_p == 0

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model's own distribution (the logits'
    log-softmax, before temperature and top_p, as OpenAI and vLLM report it), and the `top`
    most likely tokens at its position with theirs, most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens generated since the last Delta


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length"
    completion_tokens: int
    token_ids: tuple[int, ...] = ()  # the answer's tokens, with the end-of-turn token on "stop"
    # with params.logprobs: every token of the answer's text (none for the end-of-turn token,
    # none past a stop string)
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Delta | Finished | Failed


class Generation:
    """The `n` choices of one request, seen from the request's event loop: events arrive on
    `events` as (choice index, event)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.n = n
        self.events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self._loop = loop
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def put(self, index: int, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (index, event))
        except RuntimeError:  # the request's loop is gone (server shutting down)
            self.cancel()


@dataclass
class _Row:
    generation: Generation
    index: int
    target: Target
    text: TextSide
    params: SamplingParams
    prompt: list[int]
    generator: torch.Generator | None
    adapter: str = BASE_ADAPTER
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the answer already sent
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per id, with params.logprobs
    logprobs_sent: int = 0
    byte_ends: list[int] = field(default_factory=list)  # with logprobs: the answer's bytes so far
    constraint: Constraint | None = None  # with params.grammar, made at its first token

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.ids)


@dataclass
class _Prefix:
    """A prefilled prompt's KV cache, per layer (1, kv heads, tokens, head dim), kept so that a
    later prompt starting with the same tokens (the same system prompt, few-shot examples or
    earlier turns of a chat) on the same adapter prefills only what differs. Nothing writes into
    these tensors (rows that reuse them slice and copy), so they are shared, not cloned."""

    adapter: str
    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def done(self) -> int:  # tokens with a KV cache, as `_Prefilling.done`
        return len(self.ids)


def _common_length(a: list[int], b: list[int]) -> int:
    """How many tokens two prompts share from their start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _Prefilling:
    """A row whose prompt is being prefilled, over one chunk or several: the KV cache of its
    first `done` prompt tokens, per layer (1, kv heads, done, head dim). Before its first chunk
    (`started` False) it has looked for no reusable prefix yet."""

    row: _Row
    started: bool = False
    done: int = 0
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return len(self.row.prompt) - self.done

    @property  # `adapter` and `ids` as a `_Prefix` has them: both are sources of reuse
    def adapter(self) -> str:
        return self.row.adapter

    @property
    def ids(self) -> list[int]:
        return self.row.prompt


@dataclass
class _Slot:
    """A base model in memory, its adapters, and the batch running on it."""

    model: Any
    growing_cache: bool = False  # every layer full attention: use `BatchCache`
    # A model being trained (`generate_in_place`): its active adapter answers every row, so no
    # per-row `adapter_names` (its adapter is "default", not one of ours).
    own_adapter: bool = False
    adapters: dict[str, str] = field(default_factory=dict)  # model id → peft adapter name
    unloaded: set[str] = field(default_factory=set)  # adapters to delete once no row uses them
    rows: list[_Row] = field(default_factory=list)
    # in arrival order, live rows before background ones
    prefilling: list[_Prefilling] = field(default_factory=list)
    prefixes: deque[_Prefix] = field(default_factory=lambda: deque(maxlen=PREFIX_ENTRIES))
    cache: Any = None  # the batch's DynamicCache: per layer (B, heads, T, head_dim)
    # Decode steps in plain calls where the model allows (`inference/decode_step.py`)
    decode: DecodeStep | None = None
    mask: torch.Tensor = field(default_factory=lambda: torch.ones(0, 0, dtype=torch.long))

    @property
    def is_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    @property
    def routes_adapters(self) -> bool:
        """Whether each forward names its rows' adapters (peft's `adapter_names`)."""
        return self.is_peft and not self.own_adapter

    @property
    def occupied(self) -> int:
        """Rows running or being prefilled: they count against the batch size."""
        return len(self.rows) + len(self.prefilling)

    @property
    def background(self) -> int:
        """Of those, the rows of background work."""
        rows = self.rows + [state.row for state in self.prefilling]
        return sum(row.params.background for row in rows)


def _first_background(prefilling: list[_Prefilling]) -> int:
    """Where the first background row waits to be prefilled (the end when none does)."""
    return next(
        (i for i, state in enumerate(prefilling) if state.row.params.background), len(prefilling)
    )


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that may be the start of a stop string (or of a
    character whose bytes are still incomplete) and must not be sent yet."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, 1)
    return hold


def _generator(params: SamplingParams, choice: int) -> torch.Generator | None:
    """Choice `choice`'s sampling generator: seeded with seed + choice when a seed is set."""
    if params.greedy:
        return None
    seed = (params.seed + choice) if params.seed is not None else secrets.randbits(63)
    return torch.Generator().manual_seed(seed % (1 << 63))


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability in one row's logits, and the `top` most likely tokens'."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = logprobs.topk(top) if top else None
    alternatives = (
        tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best else ()
    )
    return TokenLogprob(token, float(logprobs[token]), alternatives)


def penalize(logits: torch.Tensor, answer: list[int], params: SamplingParams) -> torch.Tensor:
    """OpenAI's presence and frequency penalties on one row's logits, from the tokens of the
    answer so far (not the prompt): logit[j] − c[j]·frequency − (c[j] > 0)·presence."""
    if not answer or not params.penalized:
        return logits
    counts = torch.bincount(torch.tensor(answer), minlength=logits.shape[-1])[: logits.shape[-1]]
    counts = counts.to(device=logits.device, dtype=torch.float32)
    penalty = counts * params.frequency_penalty + (counts > 0).float() * params.presence_penalty
    return logits.float() - penalty


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row's logits: greedy, or temperature + nucleus (top_p) sampling."""
    if params.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class InferenceEngine:
    """The generation thread: continuous batching over every model the server answers for.

    It owns the loaded base models, their peft adapters, each base model's running batch and KV
    cache, and the prompt-prefix caches; only its own thread ("tuneforge-engine") touches them.
    The server's lifespan (`api/app.py`) starts and stops it, and `api/chat.py` calls `submit`
    (`api/models.py` calls `unload` for a deleted model) from any thread; results arrive on the
    request's `Generation`.
    """

    def __init__(
        self,
        max_batch_size: int = MAX_BATCH_SIZE,
        *,
        prepack: bool = True,
        prefill_bf16: bool = False,
        weight_precision: str = "auto",
    ) -> None:
        if weight_precision not in WEIGHT_PRECISIONS:
            raise ValueError(
                f"weight_precision is one of {WEIGHT_PRECISIONS}, not {weight_precision!r}"
            )
        self.max_batch_size = max_batch_size
        self.prepack = prepack  # oneDNN-packed linear layers (`inference/prepack.py`)
        # Prompts prefilled with the packed layers' bf16 copies (`prepack.add_bf16_copies`; the
        # LM head stays fp32, decode steps too): for CPUs with bf16 units, answers may differ
        self.prefill_bf16 = prefill_bf16 and prepack
        self.weight_precision = weight_precision
        # CPU only for now: the per-row sampling generators are CPU generators, and serving on
        # CUDA has not been measured or tested.
        self.device = torch.device("cpu")
        self._inbox: queue.Queue[_Row | Callable[[], None] | None] = queue.Queue()
        self._waiting: deque[_Row] = deque()
        self._slots: dict[str, _Slot] = {}
        self._names = itertools.count()
        self._thread: threading.Thread | None = None
        self._running = False
        self.steps = 0  # decode steps run (the bench reads it)
        self.prefill_forwards = 0  # prefill forwards (chunks) run
        self.prefix_tokens_reused = 0  # prompt tokens not prefilled thanks to `_Prefix`

    # -- public, any thread ------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="tuneforge-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._inbox.put(None)
        if self._thread:
            self._thread.join(timeout=30)

    def submit(
        self,
        target: Target,
        text: TextSide,
        prompt: list[int],
        params: SamplingParams,
        *,
        n: int = 1,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Generation:
        """Queue `n` choices for one prompt. Choice i samples with seed + i when a seed is set."""
        generation = Generation(loop or asyncio.get_running_loop(), n)
        for i in range(n):
            row = _Row(generation, i, target, text, params, list(prompt), _generator(params, i))
            self._inbox.put(row)
        return generation

    @property
    def active(self) -> int:
        """Choices being generated or waiting (approximate: read from another thread)."""
        running = sum(slot.occupied for slot in list(self._slots.values()))
        return running + len(self._waiting) + self._inbox.qsize()

    def unload(self, model_id: str) -> None:
        """Forget a deleted model's adapter and its checkpoints' (`model_id:ckpt-step-N`);
        requests already running on them finish first."""
        self._inbox.put(lambda: self._unload(model_id))

    # -- the thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while self._running:
            self._turn()

    def _turn(self) -> None:
        """Take new requests (waiting for one when idle), then per base model one prefill chunk
        and one decode step: a long prefill never holds back the running rows for more than a
        chunk."""
        busy = any(slot.occupied for slot in self._slots.values())
        try:
            self._take_inbox(block=not busy and not self._waiting)
            self._admit()
            for slot in list(self._slots.values()):
                if slot.prefilling:
                    self._prefill_chunk(slot)
                if slot.rows:
                    self._step(slot)
        except Exception as exc:  # a failed step must not kill the server's generation
            log.exception("generation step failed")
            self._fail_all(exc)

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, _Row):
                self._waiting.append(item)
            elif item is not None:  # None only wakes the loop (stop)
                item()
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _fail_all(self, exc: Exception) -> None:
        for slot in self._slots.values():
            for row in slot.rows + [state.row for state in slot.prefilling]:
                row.generation.put(row.index, Failed(exc))
            slot.rows, slot.prefilling, slot.cache = [], [], None

    # -- models ------------------------------------------------------------------------------
    def _slot(self, base: str) -> _Slot:
        if base not in self._slots:
            from tuneforge.models import load_model

            model = load_model(base, dtype=torch.float32).to(self.device).eval()
            if self.prepack:
                packed = prepack_linears(model)
                head = model.get_output_embeddings()
                how = apply_weight_precision(model, self.weight_precision)
                if how is None and self.weight_precision == "bf16":
                    log.warning("%s: our kernel is not in use: weights stay fp32", base)
                if packed_kind(head) == "small_gemm":
                    kind = f"our AVX2 kernel at {small_gemm.describe(kernel_rows(head))}, else MKL"
                elif packed_kind(head) == "small_gemm_bf16w":
                    rows = small_gemm.describe(kernel_rows(head))
                    kind = f"our AVX2 kernel on bf16 weights ({how}) at {rows}, else MKL"
                else:
                    kind = packed_kind(head) or "the LM head not packed"
                log.info("%s: %d linear layers packed (%s)", base, packed, kind)
                if self.prefill_bf16 and (copies := add_bf16_copies(model, skip=[head])):
                    log.info("%s: prompts prefilled in bf16 (%d layers)", base, copies)
                elif self.prefill_bf16:
                    log.warning("%s: no packed layers, so prompts are prefilled in fp32", base)
            slot = _Slot(model, growing_cache=full_attention_only(model.config))
            if self.prepack and slot.growing_cache and os.environ.get(DECODE_ENV) != "transformers":
                slot.decode = DecodeStep.for_model(model)
                if slot.decode is not None:
                    log.info("%s: decode steps in plain calls (q/k/v and gate/up fused)", base)
            self._slots[base] = slot
        return self._slots[base]

    def _adapter(self, slot: _Slot, target: Target) -> str:
        if target.adapter is None:
            return BASE_ADAPTER
        if target.model_id not in slot.adapters:
            name = f"adapter_{next(self._names)}"
            if slot.is_peft:
                slot.model.load_adapter(target.adapter, adapter_name=name)
            else:
                from peft import PeftModel

                slot.model = PeftModel.from_pretrained(
                    slot.model, target.adapter, adapter_name=name
                )
            slot.model.eval()
            use_lora_rows(slot.model)  # peft's LoRA math with less Python per layer
            if slot.decode is not None:
                slot.decode.refresh()
            slot.adapters[target.model_id] = name
        return slot.adapters[target.model_id]

    def _unload(self, model_id: str) -> None:
        for slot in self._slots.values():
            for key in [k for k in slot.adapters if k == model_id or k.startswith(model_id + ":")]:
                slot.unloaded.add(slot.adapters.pop(key))
            self._collect(slot)

    def _collect(self, slot: _Slot) -> None:
        """Delete unloaded adapters that no running row still uses."""
        for name in list(slot.unloaded):
            rows = slot.rows + [state.row for state in slot.prefilling]
            if not any(row.adapter == name for row in rows):
                slot.model.delete_adapter(name)
                slot.unloaded.discard(name)
                if slot.decode is not None:
                    slot.decode.refresh()
                for entry in [e for e in slot.prefixes if e.adapter == name]:
                    slot.prefixes.remove(entry)

    # -- admission: waiting requests into their base model's prefill queue ---------------------
    def _admit(self) -> None:
        """Move waiting rows into their base model's batch, in arrival order with live rows
        before background ones, while the batch has room (background rows: their share)."""
        deferred: deque[_Row] = deque()
        waiting = deque(sorted(self._waiting, key=lambda row: row.params.background))  # stable
        background_cap = max(1, int(self.max_batch_size * BACKGROUND_SHARE))
        while waiting:
            row = waiting.popleft()
            if row.generation.cancelled:
                continue
            try:
                slot = self._slot(row.target.base)
                full = slot.occupied >= self.max_batch_size or (
                    row.params.background and slot.background >= background_cap
                )
                if full:
                    deferred.append(row)
                    continue
                row.adapter = self._adapter(slot, row.target)
                if slot.growing_cache:
                    queue = slot.prefilling  # a live prompt goes ahead of background ones
                    at = len(queue) if row.params.background else _first_background(queue)
                    queue.insert(at, _Prefilling(row))
                else:
                    self._prefill_alone(slot, row)
            except Exception as exc:
                log.warning("cannot generate with %s: %s", row.target.model_id, exc)
                row.generation.put(row.index, Failed(exc))
        self._waiting = deferred

    def _forward(self, slot: _Slot, rows: list[_Row], **inputs: Any) -> Any:
        if slot.routes_adapters:
            inputs["adapter_names"] = [row.adapter for row in rows]
        return slot.model(use_cache=True, logits_to_keep=1, **inputs)

    # -- prefill: one chunk of waiting prompts, packed into one forward ----------------------
    def _prefill_chunk(self, slot: _Slot) -> None:
        """Prefill up to `PREFILL_CHUNK_TOKENS` prompt tokens of the waiting rows on the adapter
        of the longest-waiting one, in arrival order (a prompt that does not fit continues in
        the next chunk). Rows whose prompt is complete take their first token and join the
        running batch."""
        slot.prefilling = [state for state in slot.prefilling if not state.row.generation.cancelled]
        if not slot.prefilling:
            return
        adapter = slot.prefilling[0].row.adapter
        chunk: list[tuple[_Prefilling, int]] = []  # each with how many tokens it computes now
        budget = PREFILL_CHUNK_TOKENS
        for state in slot.prefilling:
            if budget == 0:
                break
            if state.row.adapter != adapter:
                continue
            if not state.started:
                if self._should_wait(slot, state, chunk):
                    continue
                self._start(slot, state)
            take = min(state.remaining, budget)
            chunk.append((state, take))
            budget -= take
        pieces = [
            packed_prefill.Piece(
                state.row.prompt[state.done : state.done + take], state.keys, state.values
            )
            for state, take in chunk
        ]
        with bf16_linears(self.prefill_bf16):
            out = packed_prefill.prefill(
                slot.model, pieces, adapter=adapter if slot.routes_adapters else None
            )
        self.prefill_forwards += 1
        joining = []
        for i, (state, take) in enumerate(chunk):
            state.keys, state.values, state.done = out.keys[i], out.values[i], state.done + take
            if state.remaining:
                continue
            slot.prefilling.remove(state)
            self._remember(slot, state)
            row = state.row
            logits = out.logits[i]
            if not self._advance(row, self._choose(row, logits), logits):
                joining.append(state)
        if joining:
            self._join(slot, joining)

    def _reusable_prefix(self, slot: _Slot, row: _Row) -> tuple[int, _Prefix | _Prefilling | None]:
        """The longest start of this prompt whose KV cache is at hand on this adapter: a kept
        `_Prefix`, or a prompt being prefilled (its tokens done so far). Returns (length, the
        `_Prefix` or `_Prefilling` that has it); at least the last prompt token is always left
        to compute (its logits are needed), and shorter than `MIN_PREFIX` counts as none."""
        best, length = None, 0
        sources: list[_Prefix | _Prefilling] = list(slot.prefixes)
        sources += [state for state in slot.prefilling if state.started and state.row is not row]
        for source in sources:
            if source.adapter != row.adapter:
                continue
            common = min(_common_length(source.ids, row.prompt), source.done, len(row.prompt) - 1)
            if common > length:
                best, length = source, common
        if length < MIN_PREFIX:
            return 0, None
        return length, best

    def _should_wait(
        self, slot: _Slot, state: _Prefilling, chunk: list[tuple[_Prefilling, int]]
    ) -> bool:
        """Whether a prompt not started yet should wait for the next chunk because one in this
        chunk computes a start they share (at least `MIN_PREFIX` tokens more than it could
        reuse now): next time it reuses that instead of computing it twice."""
        now, _ = self._reusable_prefix(slot, state.row)
        for other, take in chunk:
            shared = _common_length(other.row.prompt, state.row.prompt)
            shared = min(shared, other.done + take, len(state.row.prompt) - 1)
            if shared >= now + MIN_PREFIX:
                return True
        return False

    def _start(self, slot: _Slot, state: _Prefilling) -> None:
        """Begin a row's prefill from the longest reusable start of its prompt."""
        length, source = self._reusable_prefix(slot, state.row)
        state.started = True
        if source is None:
            return
        if isinstance(source, _Prefix):
            slot.prefixes.remove(source)
            slot.prefixes.appendleft(source)  # most recently used first
        state.keys = [keys[:, :, :length] for keys in source.keys]
        state.values = [values[:, :, :length] for values in source.values]
        state.done = length
        self.prefix_tokens_reused += length

    def _remember(self, slot: _Slot, state: _Prefilling) -> None:
        """Keep a prefilled prompt's KV cache for prompts that start alike (within the budget)."""
        if len(state.row.prompt) > PREFIX_TOKENS:
            return
        entry = _Prefix(state.row.adapter, list(state.row.prompt), state.keys, state.values)
        slot.prefixes.appendleft(entry)
        while sum(len(entry.ids) for entry in slot.prefixes) > PREFIX_TOKENS:
            slot.prefixes.pop()  # the least recently used

    def _join(self, slot: _Slot, states: list[_Prefilling]) -> None:
        """Append prefilled rows to the running batch: every cache left-padded to one width."""
        lengths = [len(state.row.prompt) for state in states]
        width = max([slot.mask.shape[1] if slot.rows else 0, *lengths])
        masks = [left_pad(torch.ones(1, n, dtype=torch.long), width, 1) for n in lengths]
        if not slot.rows:
            slot.cache, slot.mask = BatchCache(), torch.cat(masks)
            for layer in range(len(states[0].keys)):
                slot.cache.update(
                    torch.cat([left_pad(state.keys[layer], width, 2) for state in states]),
                    torch.cat([left_pad(state.values[layer], width, 2) for state in states]),
                    layer,
                )
        else:
            for layer, mine in enumerate(slot.cache.layers):
                mine.keys = torch.cat(
                    [left_pad(mine.keys, width, 2)]
                    + [left_pad(state.keys[layer], width, 2) for state in states]
                )
                mine.values = torch.cat(
                    [left_pad(mine.values, width, 2)]
                    + [left_pad(state.values[layer], width, 2) for state in states]
                )
            slot.mask = torch.cat([left_pad(slot.mask, width, 1), *masks])
        slot.rows.extend(state.row for state in states)

    def _prefill_alone(self, slot: _Slot, row: _Row) -> None:
        """A model with sliding-window (or other not-full) attention: one forward for the whole
        prompt, in transformers' own cache, then joined to the batch."""
        ids = torch.tensor([row.prompt], device=self.device)
        mask = torch.ones_like(ids)
        with bf16_linears(self.prefill_bf16):
            out = self._forward(slot, [row], input_ids=ids, attention_mask=mask)
        self.prefill_forwards += 1
        logits = out.logits[0, -1]
        if self._advance(row, self._choose(row, logits), logits):
            return
        if not slot.rows:
            slot.cache, slot.mask = out.cache, mask
        else:
            width = max(slot.mask.shape[1], mask.shape[1])
            for mine, new in zip(slot.cache.layers, out.cache.layers, strict=True):
                mine.keys = torch.cat([left_pad(mine.keys, width, 2), left_pad(new.keys, width, 2)])
                mine.values = torch.cat(
                    [left_pad(mine.values, width, 2), left_pad(new.values, width, 2)]
                )
            slot.mask = torch.cat([left_pad(slot.mask, width, 1), left_pad(mask, width, 1)])
        slot.rows.append(row)

    # -- one decode step for a whole batch ---------------------------------------------------
    def _step(self, slot: _Slot) -> None:
        rows = slot.rows
        mask = torch.cat([slot.mask, slot.mask.new_ones(len(rows), 1)], dim=1)
        ids = torch.tensor([row.ids[-1] for row in rows], device=self.device)
        positions = torch.tensor([row.length - 1 for row in rows], device=self.device)
        names = [row.adapter for row in rows] if slot.routes_adapters else None
        logits = None
        if slot.decode is not None:  # None where it does not apply: transformers' forward
            try:
                logits = slot.decode(ids, positions, mask, slot.cache, names)
            except Exception:
                # The cache may hold this step's columns in some layers: the batch fails (as
                # any failed step does), and later steps run through transformers' forward.
                slot.decode = None
                raise
        if logits is None:
            out = self._forward(
                slot,
                rows,
                input_ids=ids[:, None],
                attention_mask=mask,
                position_ids=positions[:, None],
                cache=slot.cache,
            )
            logits = out.logits[:, -1, :]
        self.steps += 1
        slot.mask = mask
        greedy = logits.argmax(dim=-1).tolist()
        keep = []
        for i, row in enumerate(rows):
            if row.generation.cancelled:
                continue
            plain = row.params.greedy and row.params.grammar is None and not row.params.penalized
            token = greedy[i] if plain else self._choose(row, logits[i])
            if not self._advance(row, token, logits[i]):
                keep.append(i)
        if len(keep) < len(rows):
            self._drop_rows(slot, keep)

    def _drop_rows(self, slot: _Slot, keep: list[int]) -> None:
        slot.rows = [slot.rows[i] for i in keep]
        if not keep:
            slot.cache = None
        else:
            index = torch.tensor(keep, device=self.device)
            mask = slot.mask.index_select(0, index)
            # Columns that are padding in every remaining row are dead weight: cut them.
            start = int(mask.any(dim=0).nonzero()[0])
            slot.mask = mask[:, start:]
            for layer in slot.cache.layers:
                layer.keys = layer.keys.index_select(0, index)[:, :, start:]
                layer.values = layer.values.index_select(0, index)[:, :, start:]
        self._collect(slot)

    # -- one new token for one row -----------------------------------------------------------
    def _choose(self, row: _Row, logits: torch.Tensor) -> int:
        """The row's next token from its logits: penalized for repeats (with presence or
        frequency penalties), within its grammar if it has one. Log-probabilities stay the
        model's own (`_advance` reads the logits as they came)."""
        logits = penalize(logits, row.ids, row.params)
        if row.params.grammar is None:
            return sample(logits, row.params, row.generator)
        if row.constraint is None:
            row.constraint = Constraint(row.params.grammar, row.text.tokenizer, row.text.eos_ids)
        token = sample(row.constraint.mask(logits), row.params, row.generator)
        row.constraint.take(token)
        return token

    def _advance(self, row: _Row, token: int, logits: torch.Tensor | None = None) -> bool:
        """Take a token (sampled from `logits`): send the text that is safe to send; say
        whether the row finished."""
        text_side, params = row.text, row.params
        decode = text_side.tokenizer.decode
        if token in text_side.eos_ids:
            self._send(row, decode(row.ids, skip_special_tokens=True))  # what was held back
            return self._finish(row, "stop", len(row.ids) + 1, token)
        row.ids.append(token)
        if params.logprobs is not None and logits is not None:
            row.logprobs.append(token_logprob(logits, token, params.logprobs))
            start = row.byte_ends[-1] if row.byte_ends else 0
            row.byte_ends.append(start + len(text_side.token_bytes(token)))
        text = decode(row.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
        if cut >= 0:
            if row.logprobs:  # only the tokens that start before the stop string (in bytes:
                # a character split over tokens keeps all of them)
                limit = len(text[:cut].encode("utf-8"))
                keep = sum(1 for end in [0, *row.byte_ends[:-1]] if end < limit)
                del row.logprobs[keep:], row.byte_ends[keep:]
            self._send(row, text[:cut])
            return self._finish(row, "stop", len(row.ids))
        if len(row.ids) >= params.max_tokens or row.length >= text_side.context_length:
            self._send(row, text)
            return self._finish(row, "length", len(row.ids))
        self._send(row, text[: len(text) - _holdback(text, params.stop)])
        return False

    def _send(self, row: _Row, text: str) -> None:
        """Send the answer's text up to `text`'s end, with the logprobs of the tokens it holds
        whole (a token held back as a possible stop string goes with the text it ends)."""
        if len(text) > row.sent:
            shipped = row.logprobs_sent
            if row.logprobs:
                size = len(text.encode("utf-8"))
                while shipped < len(row.logprobs) and row.byte_ends[shipped] <= size:
                    shipped += 1
            fresh = tuple(row.logprobs[row.logprobs_sent : shipped])
            row.generation.put(row.index, Delta(text[row.sent :], fresh))
            row.sent = len(text)
            row.logprobs_sent = shipped

    def _finish(
        self, row: _Row, reason: str, completion_tokens: int, end: int | None = None
    ) -> bool:
        ids = tuple(row.ids) if end is None else (*row.ids, end)
        finished = Finished(reason, completion_tokens, ids, tuple(row.logprobs))
        row.generation.put(row.index, finished)
        return True


class _Collected(Generation):
    """A `Generation` for `generate_in_place`: events are kept, not sent to an event loop."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._cancelled = threading.Event()
        self.finished: list[Finished | None] = [None] * n
        self.error: BaseException | None = None

    def put(self, index: int, event: Event) -> None:
        if isinstance(event, Finished):
            self.finished[index] = event
        elif isinstance(event, Failed):
            self.error = event.error

    @property
    def done(self) -> bool:
        return self.error is not None or all(f is not None for f in self.finished)


def generate_in_place(
    model: Any,
    text: TextSide,
    prompts: list[list[int]],
    params: list[SamplingParams],
    *,
    n: int = 1,
    max_batch_size: int = MAX_BATCH_SIZE,
) -> list[list[Finished]]:
    """`n` answers to each prompt from an in-memory model, in the calling thread, with the
    serving loop's batching: the GRPO trainer's sampler (the role vLLM plays for TRL). Every
    prompt's choices share one batch, copies of a prompt are prefilled once (prefix reuse), and
    the model is used as it is now — the trainer's live LoRA adapter, no copy, no reload after
    an update. Nothing is kept between calls (a prefix cache would hold the previous weights'
    keys and values). Choice i of a prompt samples with its params' seed + i.

    CPU only, like the server's engine; no weight packing (the weights are being trained)."""
    if len(params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
    engine = InferenceEngine(max_batch_size, prepack=False)
    target = Target("in-place", "in-place")
    engine._slots[target.base] = _Slot(
        model, growing_cache=full_attention_only(model.config), own_adapter=True
    )
    collected = []
    for prompt, p in zip(prompts, params, strict=True):
        generation = _Collected(n)
        collected.append(generation)
        for i in range(n):
            row = _Row(generation, i, target, text, p, list(prompt), _generator(p, i))
            engine._waiting.append(row)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            while not all(g.done for g in collected):
                engine._turn()
    finally:
        model.train(was_training)
    for generation in collected:
        if generation.error is not None:
            raise generation.error
    return [[f for f in g.finished if f is not None] for g in collected]


class _Streamed(Generation):
    """A `Generation` for `InPlace.answer`: events are kept in order for the calling thread."""

    def __init__(self) -> None:
        self.n = 1
        self._cancelled = threading.Event()
        self.pending: deque[Event] = deque()

    def put(self, index: int, event: Event) -> None:
        self.pending.append(event)


IN_PLACE = "in-place"  # the one base of an in-place engine


class InPlace:
    """The server's loop for one in-memory model on the CPU, run in the calling thread (one
    caller at a time): what `tuneforge chat` and `generate` answer with (`generate.py`), so they
    answer as `tuneforge serve` does — its prefill, packed layers as the model has them,
    `DecodeStep`, sampling and stop strings. Kept with the loaded model, its prompt-prefix
    cache serves a chat's next turn (it starts with the conversation so far)."""

    def __init__(self, model: Any) -> None:
        from peft import PeftModel

        self.model = model
        self.engine = InferenceEngine(1, prepack=False)
        # a peft model here answers with its active adapter (no per-row adapter names)
        slot = _Slot(
            model,
            growing_cache=full_attention_only(model.config),
            own_adapter=isinstance(model, PeftModel),
        )
        head = model.get_output_embeddings()
        if slot.growing_cache and is_packed(head) and os.environ.get(DECODE_ENV) != "transformers":
            slot.decode = DecodeStep.for_model(model)
        slot.prefixes = deque(maxlen=1)  # the last prompt: a chat's next turn starts with it
        self.engine._slots[IN_PLACE] = slot
        # False once an answer was cut short (Ctrl-C, an error): its batch may be half-stepped
        self.usable = True

    @property
    def slot(self) -> _Slot:
        return self.engine._slots[IN_PLACE]

    def answer(
        self, text: TextSide, prompt: list[int], params: SamplingParams, *, reuse: bool = True
    ) -> Iterator[Event]:
        """One answer's events as they come, `Delta`s then `Finished`. `reuse`: continue from
        the KV cache of the last prompt where this one starts alike (a chat); without it the
        whole prompt is computed, so the answer does not depend on what was asked before.
        Closing the iterator early cancels the answer, and this engine is no longer `usable`."""
        if not self.usable:
            raise RuntimeError("an answer was cut short here: make a new InPlace")
        if not reuse:
            self.slot.prefixes.clear()
        engine, generation = self.engine, _Streamed()
        target = Target(IN_PLACE, IN_PLACE)
        row = _Row(generation, 0, target, text, params, list(prompt), _generator(params, 0))
        engine._waiting.append(row)
        finished = False
        try:
            while not finished:
                if not engine._waiting and not self.slot.occupied:
                    raise RuntimeError("the answer ended without its last event")  # never block
                with torch.no_grad():
                    engine._turn()
                while generation.pending:
                    event = generation.pending.popleft()
                    if isinstance(event, Failed):
                        raise event.error
                    finished = isinstance(event, Finished)
                    yield event
        finally:
            if not finished:
                generation.cancel()
                self.usable = False
