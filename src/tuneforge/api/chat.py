"""/v1/chat/completions: OpenAI's chat API on the base model, fine-tuned models and checkpoints.

The prompt is rendered with the model's own chat template through `ChatTemplate` (the sandboxed
path training uses), so a fine-tuned model sees exactly the text shape it was trained on. The
request is checked against the context before any generation: prompt + max_tokens over the
context is a 400 `context_length_exceeded`, as OpenAI answers it. Generation happens in the
engine's batch; the client going away (stream or not) cancels its rows.

Tools: the definitions go into the prompt as training put them there (`template_messages`), and
the answer's `<tool_call>` blocks, the text a tool-call fine-tune was trained to write, come back
as OpenAI's `tool_calls`. `tool_choice` "required" or a named function starts the answer with
the block's opening (`tool_call_prefix`); without `strict` tools a model that then writes no
well-formed call answers in plain text (the caller sees what it wrote), with one the grammar of
`inference/constrained.py tool_grammar` holds every call to its function from there. A `stop`
string still applies on top of the grammar: one that cuts a call leaves it as plain text.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from tuneforge.api import stored_chat
from tuneforge.api.deps import get_catalog, get_engine
from tuneforge.api.errors import APIError, error_body, from_tuneforge
from tuneforge.api.schemas import ChatCompletion, ChatCompletionRequest, NamedToolChoice
from tuneforge.data.chat_template import (
    TOOL_CALL_OPEN,
    TemplateError,
    parse_tool_calls,
    tool_call_objects,
)
from tuneforge.data.conversation import Message
from tuneforge.errors import TuneforgeError
from tuneforge.inference import constrained
from tuneforge.inference.engine import (
    Delta,
    Event,
    Failed,
    Finished,
    Generation,
    SamplingParams,
    TokenLogprob,
)
from tuneforge.models.text import TextSide

router = APIRouter()

DISCONNECT_POLL_SECONDS = 0.5
CLIENT_CLOSED = 499  # nginx's status for "the client went away"; nobody reads it
# Sent by the batch runner with each line: the engine admits such rows after live requests.
BACKGROUND_HEADER = "x-tuneforge-background"


def is_background(request: Any) -> bool:
    """Whether a request is background work: a batch's line (BACKGROUND_HEADER) or an eval
    run's row (its `background.Caller`)."""
    if isinstance(request, Request):
        return request.headers.get(BACKGROUND_HEADER) == "1"
    return bool(getattr(request, "background", False))


def to_messages(body: ChatCompletionRequest) -> list[Message]:
    out = []
    for m in body.messages:
        out.append(
            Message(
                "system" if m.role == "developer" else m.role,
                m.text(),
                tool_calls=tuple(c.model_dump() for c in m.tool_calls) if m.tool_calls else None,
                tool_call_id=m.tool_call_id,
                name=m.name,
            )
        )
    return out


def _prompt_ids(text: TextSide, body: ChatCompletionRequest) -> list[int]:
    """`TextSide.prompt_ids`; a template that cannot render the messages is a 400."""
    try:
        return text.prompt_ids(to_messages(body), body.prompt_tools(), body.forced_call() or "")
    except TemplateError as exc:
        raise APIError(
            400,
            f"The model's chat template could not render these messages: {exc.message}",
            param="messages",
            code="invalid_messages",
        ) from None


def _strict_tools(body: ChatCompletionRequest) -> list[constrained.Function]:
    """The tools, as the grammar takes them, when one of them is strict and they are in the
    prompt; else none (free text, as without tools)."""
    tools = body.tools or []
    if body.prompt_tools() is None or not any(t.function.strict for t in tools):
        return []
    return [
        constrained.Function(t.function.name, t.function.parameters, bool(t.function.strict))
        for t in tools
    ]


def _grammar(text: TextSide, body: ChatCompletionRequest) -> str | None:
    """The grammar the answer follows: a JSON `response_format`'s, or strict tools' (calls whose
    arguments follow their function's parameters); None for free text. A schema that cannot be
    one is a 400 naming it."""
    as_json, schema = body.output_schema()
    strict = _strict_tools(body)
    if not as_json and not strict:
        return None
    if as_json and body.prompt_tools() is not None:
        raise APIError(
            400,
            "A JSON response_format together with tools is not available: the answer's JSON "
            "grammar would rule out the tool calls; send one or the other",
            param="response_format",
        )
    if as_json:
        param = "response_format.json_schema.schema" if schema is not None else "response_format"
        what = "The JSON schema"
    else:
        param, what = "tools", "A strict tool's parameters"
    grammar = ""
    try:
        if as_json:
            grammar = constrained.json_grammar(schema)
        else:
            choice = body.tool_choice
            named = choice.function.name if isinstance(choice, NamedToolChoice) else choice
            grammar = constrained.tool_grammar(strict, named, body.parallel_tool_calls is not False)
        problem = constrained.check(grammar, text.tokenizer, text.eos_ids)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise APIError(400, f"{what} cannot constrain the answer: {problem}", param=param)
    return grammar


def completion_budget(body: ChatCompletionRequest, prompt_tokens: int, context: int) -> int:
    """max_tokens to generate: what was asked, or what fits; 400 when it cannot fit."""
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    requested = body.max_completion_tokens or body.max_tokens
    room = context - prompt_tokens
    if room <= 0:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is None:
        return room
    if requested > room:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} "
            f"in the completion). Please reduce the length of the messages or {param}.",
            param=param,
            code="context_length_exceeded",
        )
    return requested


@dataclass
class Answer:
    """One choice's text as it is generated. With tools, the stream sends the text before the
    first `<tool_call>` (holding back what may be the start of one, and trailing whitespace)
    and the calls at the end, so that streamed and whole answers say the same."""

    text: str  # starts with the forced call opening, if any
    tools: bool
    sent: int = 0  # characters of content streamed so far
    # the whole answer once made: its tool calls' ids are random, and what is streamed, returned
    # and stored must carry the same ones
    _final: tuple[str | None, list[dict[str, Any]] | None] | None = None

    def streamable(self) -> str:
        if not self.tools:
            safe = self.text
        else:
            at = self.text.find(TOOL_CALL_OPEN)
            if at < 0:
                at = len(self.text) - _open_started(self.text)
            safe = self.text[:at].rstrip()
        piece = safe[self.sent :]
        self.sent = max(self.sent, len(safe))
        return piece

    def final(self, parallel: bool) -> tuple[str | None, list[dict[str, Any]] | None]:
        """The content and the tool calls (None without any) of the whole answer (made once:
        call it when the text is complete)."""
        if self._final is None:
            parsed = parse_tool_calls(self.text) if self.tools else None
            if parsed is None:
                self._final = (self.text, None)
            else:
                calls = parsed.calls if parallel else parsed.calls[:1]
                self._final = (parsed.content, tool_call_objects(calls))
        return self._final


def _open_started(text: str) -> int:
    """Length of the longest end of `text` that `<tool_call>` starts with."""
    for size in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:]):
            return size
    return 0


def api_failure(error: BaseException) -> APIError:
    if isinstance(error, TuneforgeError):
        return from_tuneforge(error, param="model")
    return APIError(
        500,
        f"Generation failed on the server ({error.__class__.__name__}); it is logged",
        type="server_error",
        code="internal_error",
    )


async def next_event(generation: Generation, request: Request) -> tuple[int, Event] | None:
    """The next event, or None once the client has gone (the generation is then cancelled)."""
    while True:
        try:
            return await asyncio.wait_for(generation.events.get(), DISCONNECT_POLL_SECONDS)
        except TimeoutError:
            if await request.is_disconnected():
                generation.cancel()
                return None


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Started:
    """A generation the engine has begun: its first event is in hand."""

    generation: Generation
    first: tuple[int, Event]
    prompt_tokens: int
    text: TextSide


def logprobs_json(text: TextSide, entries: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """OpenAI's `logprobs.content`: per token its text, log-probability, bytes and the most
    likely tokens at its position. A token that holds part of a character is shown as
    `bytes:\\xNN…`, as OpenAI shows one; its `bytes` are the exact ones."""

    def one(token: int, logprob: float) -> dict[str, Any]:
        raw = text.token_bytes(token)
        try:
            shown = raw.decode("utf-8")
        except UnicodeDecodeError:
            shown = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        return {"token": shown, "logprob": logprob, "bytes": list(raw)}

    return [
        one(e.token, e.logprob) | {"top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries
    ]


async def start(request: Request, body: ChatCompletionRequest) -> Started | Response:
    """Check the request against the model, render the prompt and submit it to the engine, then
    wait for the first event, so that a model that fails to load gets a proper status code
    instead of an error inside a 200 stream. The route of `/v1/responses` starts here too."""
    catalog = get_catalog(request)
    engine = get_engine(request)
    served = await run_in_threadpool(catalog.get, body.model)
    text = await run_in_threadpool(catalog.text_side, served.target.base)
    if problem := body.tool_choice_problem():
        raise APIError(400, problem, param="tool_choice")
    if problem := body.logprobs_problem():
        raise APIError(400, problem, param="top_logprobs")
    grammar = await run_in_threadpool(_grammar, text, body)
    prompt = await run_in_threadpool(_prompt_ids, text, body)
    params = SamplingParams(
        max_tokens=completion_budget(body, len(prompt), text.context_length),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_list(),
        logprobs=body.logprobs_wanted(),
        grammar=grammar,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        background=is_background(request),
    )
    generation = engine.submit(served.target, text, prompt, params, n=body.n or 1)
    try:
        first = await next_event(generation, request)
    except BaseException:  # cancelled while waiting (a batch cancelled, the server stopping)
        generation.cancel()
        raise
    if first is None:
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(first[1], Failed):
        generation.cancel()
        raise api_failure(first[1].error)
    return Started(generation, first, len(prompt), text)


async def collect(
    started: Started, request: Request, answers: list[Answer]
) -> dict[int, Finished] | None:
    """Every choice's whole answer (into `answers`) and how it finished; None once the client
    has gone. A failure raises the APIError it maps to."""
    generation = started.generation
    finished: dict[int, Finished] = {}
    item: tuple[int, Event] | None = started.first
    try:
        while True:
            if item is None:
                return None
            index, event = item
            if isinstance(event, Failed):
                raise api_failure(event.error)
            if isinstance(event, Delta):
                answers[index].text += event.text
            else:
                finished[index] = event
                if len(finished) == generation.n:
                    return finished
            item = await next_event(generation, request)
    finally:
        if len(finished) < generation.n:
            generation.cancel()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
    started = await start(request, body)
    if isinstance(started, Response):
        return started
    meta = {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": None,
        "service_tier": "default",  # every request is served alike
    }
    tools = body.prompt_tools() is not None
    answers = [Answer(body.forced_call() or "", tools) for _ in range(started.generation.n)]
    parallel = body.parallel_tool_calls is not False
    if body.stream:
        return StreamingResponse(
            _stream(started, request, body, meta, answers, parallel),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    finished = await collect(started, request, answers)
    if finished is None:
        return Response(status_code=CLIENT_CLOSED)
    completion = _completion(started, meta, answers, finished, parallel, bool(body.logprobs))
    await stored_chat.save(request, body, completion, is_background(request))
    return completion


def _completion(
    started: Started,
    meta: dict[str, Any],
    answers: list[Answer],
    finished: dict[int, Finished],
    parallel: bool,
    with_logprobs: bool,
) -> dict[str, Any]:
    """The chat.completion object of finished answers (returned, or stored after a stream)."""
    choices = []
    for i, answer in enumerate(answers):
        content, calls = answer.final(parallel)
        message = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        reason = "tool_calls" if calls else finished[i].reason
        logprobs = None
        if with_logprobs:
            content_logprobs = logprobs_json(started.text, finished[i].logprobs)
            logprobs = {"content": content_logprobs, "refusal": None}
        choices.append(
            {"index": i, "message": message, "logprobs": logprobs, "finish_reason": reason}
        )
    completion_tokens = sum(f.completion_tokens for f in finished.values())
    return {
        **meta,
        "object": "chat.completion",
        "choices": choices,
        "usage": _usage(started.prompt_tokens, completion_tokens),
    }


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _stream(
    started: Started,
    request: Request,
    body: ChatCompletionRequest,
    meta: dict[str, Any],
    answers: list[Answer],
    parallel: bool,
) -> AsyncIterator[str]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    with_logprobs = bool(body.logprobs)
    # with logprobs: the entries of each choice not sent yet, and how many were sent
    pending: list[list[TokenLogprob]] = [[] for _ in answers]
    sent = [0] * len(answers)

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        logprobs = None
        if with_logprobs and "content" in delta and pending[index]:
            logprobs = {"content": logprobs_json(started.text, pending[index]), "refusal": None}
            sent[index] += len(pending[index])
            pending[index] = []
        body = {
            **meta,
            "object": "chat.completion.chunk",
            "choices": [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if include_usage:
            body["usage"] = None
        return _sse(body)

    generation = started.generation
    finished: dict[int, Finished] = {}
    item: tuple[int, Event] | None = started.first
    try:
        for index in range(generation.n):
            yield chunk(index, {"role": "assistant", "content": ""})
        while True:
            if item is None:
                return
            index, event = item
            if isinstance(event, Failed):
                failure = api_failure(event.error)
                yield _sse(error_body(failure.message, failure.type, failure.param, failure.code))
                return
            answer = answers[index]
            if isinstance(event, Delta):
                answer.text += event.text
                pending[index] += event.logprobs
                if piece := answer.streamable():
                    yield chunk(index, {"content": piece})
            else:
                content, calls = answer.final(parallel)
                pending[index] = list(event.logprobs[sent[index] :])  # a stop string's are cut
                rest = (content or "")[answer.sent :]
                if rest or pending[index]:
                    yield chunk(index, {"content": rest})
                for j, call in enumerate(calls or ()):
                    yield chunk(index, {"tool_calls": [{"index": j, **call}]})
                yield chunk(index, {}, "tool_calls" if calls else event.reason)
                finished[index] = event
                if len(finished) == generation.n:
                    break
            item = await next_event(generation, request)
        completion = _completion(started, meta, answers, finished, parallel, with_logprobs)
        try:
            await stored_chat.save(request, body, completion, is_background(request))
        except APIError as failure:
            yield _sse(error_body(failure.message, failure.type, failure.param, failure.code))
            return
        completion_tokens = completion["usage"]["completion_tokens"]
        if include_usage:
            yield _sse(
                {
                    **meta,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": _usage(started.prompt_tokens, completion_tokens),
                }
            )
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel()  # a no-op when finished; stops the rows when the client left
