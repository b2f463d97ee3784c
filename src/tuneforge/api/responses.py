"""/v1/responses: OpenAI's Responses API (`client.responses.create`) on the models chat serves.

A request becomes a chat completion request (`ResponseRequest.messages`: `instructions` first,
then the conversation of `previous_response_id`, then `input`) and runs through the chat route's
own path (`chat.start` / `chat.collect` / `Answer`): the same prompt, budget checks, tool calls
and engine, so the two APIs answer alike. What differs is the shape: output items (a `message`
with `output_text`, `function_call` items) and, when streaming, OpenAI's typed events
(`response.created` … `response.output_text.delta` … `response.completed`).

`store` is on by default, as OpenAI's: the response object and the conversation it ends are kept
in the server's database, for `GET /v1/responses/{id}` (and `/input_items`),
`previous_response_id` and `DELETE /v1/responses/{id}`; `store: false` keeps nothing. As on
OpenAI, the instructions of an earlier response are not carried over.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from tuneforge.api import chat
from tuneforge.api.deps import get_store
from tuneforge.api.errors import APIError, not_found
from tuneforge.api.schemas import MAX_ID, ChatCompletionRequest, ResponseRequest, cursor_page
from tuneforge.eval.graders import message_sample
from tuneforge.inference.engine import Delta, Event, Failed, Finished, TokenLogprob

router = APIRouter()

# chat's parameter names → this API's, for the errors the shared path raises
_PARAMS = {"messages": "input", "max_completion_tokens": "max_output_tokens"}


def _chat_request(body: ResponseRequest, history: list[dict[str, Any]]) -> ChatCompletionRequest:
    messages = [{"role": "system", "content": body.instructions}] if body.instructions else []
    try:
        return ChatCompletionRequest.model_validate(
            {
                "model": body.model,
                "messages": messages + history + body.messages(),
                "temperature": body.temperature,
                "top_p": body.top_p,
                "max_completion_tokens": body.max_output_tokens,
                "tools": body.chat_tools(),
                "tool_choice": body.chat_tool_choice(),
                "parallel_tool_calls": body.parallel_tool_calls,
                "response_format": body.text.format.as_response_format()
                if body.text and body.text.format
                else None,
                "logprobs": body.logprobs_wanted() is not None,
                "top_logprobs": body.logprobs_wanted() or None,
            }
        )
    except ValidationError as exc:  # input that the item checks let through, e.g. a tool role
        first = exc.errors()[0]
        raise APIError(
            400, f"input: {first['msg'].removeprefix('Value error, ')}", param="input"
        ) from None


def _response_object(
    body: ResponseRequest, response_id: str, created: int, *, status: str
) -> dict[str, Any]:
    """The response as OpenAI's SDK types it, without output and usage yet."""
    tool_choice = body.tool_choice or "auto"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "prompt_cache_key": body.prompt_cache_key,
        "safety_identifier": body.safety_identifier,
        "model": body.model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.store is not False,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {
            "format": body.text.format.model_dump(by_alias=True, exclude_none=True)
            if body.text and body.text.format
            else {"type": "text"}
        },
        "tool_choice": tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
        "tools": [t.model_dump() | {"strict": bool(t.strict)} for t in body.tools or ()],
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "top_logprobs": body.top_logprobs,
        "truncation": "disabled",
        "usage": None,
        "user": body.user,
    }


def _message_item(
    item_id: str, text: str, status: str = "completed", logprobs: list | None = None
) -> dict[str, Any]:
    """The answer's text; in_progress: as first announced (no content yet); incomplete: the
    text a max_output_tokens cut left."""
    content = [] if status == "in_progress" else [_text_part(text, logprobs)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _text_part(text: str, logprobs: list | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _logprobs(
    started: chat.Started, body: ResponseRequest, entries: Sequence[TokenLogprob]
) -> list[dict[str, Any]]:
    """OpenAI's `logprobs` of an output_text, when the request asked for them."""
    if body.logprobs_wanted() is None:
        return []
    return chat.logprobs_json(started.text, entries)


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "id": f"fc_{secrets.token_hex(12)}",
        "type": "function_call",
        "status": status,
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"] if status == "completed" else "",
    }


def _incomplete(finished: Finished, calls: list | None) -> bool:
    """Cut by max_output_tokens (an answer of whole calls is complete)."""
    return finished.reason == "length" and not calls


def _finish(
    response: dict[str, Any], finished: Finished, prompt_tokens: int, calls: list | None
) -> None:
    """Status, usage and timing of a response whose output is all there."""
    incomplete = _incomplete(finished, calls)
    response["status"] = "incomplete" if incomplete else "completed"
    response["incomplete_details"] = {"reason": "max_output_tokens"} if incomplete else None
    response["completed_at"] = None if incomplete else int(time.time())
    response["usage"] = {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": finished.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + finished.completion_tokens,
    }


def _answer_message(content: str | None, calls: list | None) -> dict[str, Any]:
    """The answer as a chat message, for the stored conversation."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message


def eval_row(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored response ({"body", "messages"}) as an eval row, as `stored_chat.eval_row`
    makes one of a chat completion: `item.input` the prompt it answered (its instructions as
    the system message, then the conversation), `item.output_text` and the `sample` its
    answer; the request's tools (in chat's shape) for a model that answers it anew."""
    body = stored["body"]
    texts, calls = [], []
    for item in body.get("output") or []:
        if item.get("type") == "message":
            texts += [p.get("text", "") for p in item.get("content") or []]
        elif item.get("type") == "function_call":
            function = {"name": item["name"], "arguments": item["arguments"]}
            calls.append({"id": item["call_id"], "type": "function", "function": function})
    text = "".join(texts)
    sample = message_sample(text, calls)
    incomplete = body.get("status") == "incomplete"
    sample["choices"][0]["finish_reason"] = (
        "length" if incomplete else "tool_calls" if calls else "stop"
    )
    usage = body.get("usage") or {}
    system = (
        [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    )
    tools = [
        {
            "type": "function",
            "function": {
                k: t[k]
                for k in ("name", "description", "parameters", "strict")
                if t.get(k) is not None
            },
        }
        for t in body.get("tools") or []
        if t.get("type") == "function"
    ]
    return {
        "item": {
            "id": body["id"],
            "model": body["model"],
            "metadata": body.get("metadata") or {},
            "input": system + stored["messages"][:-1],  # the last message is the answer
            "output_text": text,
        },
        "sample": sample
        | {
            "model": body["model"],
            "usage": {
                "prompt_tokens": usage.get("input_tokens", 0),
                "completion_tokens": usage.get("output_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            },
        },
        "_stored": True,
        "_tools": tools or None,
    }


def _input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as OpenAI lists it back (`GET /v1/responses/{id}/input_items`):
    every item typed, with an id (the client's, or a new one) and a status."""
    items = [{"role": "user", "content": value}] if isinstance(value, str) else value
    out = []
    for item in items:
        kind = item.get("type", "message")
        given = item.get("id") if isinstance(item.get("id"), str) else None
        if kind == "message":
            role = item["role"]
            part = "output_text" if role == "assistant" else "input_text"
            content = item["content"]
            texts = [content] if isinstance(content, str) else [p["text"] for p in content]
            parts = [{"type": part, "text": text} for text in texts]
            if role == "assistant":
                parts = [p | {"annotations": []} for p in parts]
            entry = {"type": "message", "role": role, "content": parts}
            prefix = "msg"
        elif kind == "function_call":
            entry = {k: item[k] for k in ("type", "call_id", "name", "arguments")}
            prefix = "fc"
        else:  # function_call_output, as input_messages let it through
            entry = {k: item[k] for k in ("type", "call_id", "output")}
            prefix = "fco"
        out.append(
            {"id": given or f"{prefix}_{secrets.token_hex(12)}", **entry} | {"status": "completed"}
        )
    return out


async def _save(
    request: Request, response: dict[str, Any], messages: list[dict], body: ResponseRequest
) -> None:
    if response["store"]:
        items = _input_items(body.input)
        await run_in_threadpool(get_store(request).add_response, response, messages, items)


@router.post("/v1/responses", responses={200: {"content": {"text/event-stream": {}}}})
async def create_response(request: Request, body: ResponseRequest) -> Any:
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        earlier = await run_in_threadpool(
            get_store(request).get_response, body.previous_response_id
        )
        if earlier is None:
            raise APIError(  # a 400, as OpenAI answers it
                400,
                f"Previous response with id '{body.previous_response_id}' not found: it was "
                "deleted, made with store: false, or made by another server",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = earlier["messages"]
    request_chat = _chat_request(body, history)
    try:
        started = await chat.start(request, request_chat)
    except APIError as exc:
        exc.param = _PARAMS.get(exc.param or "", exc.param)
        raise
    if isinstance(started, Response):
        return started
    response = _response_object(
        body, f"resp_{secrets.token_hex(16)}", int(time.time()), status="in_progress"
    )
    conversation = history + body.messages()
    answer = chat.Answer(request_chat.forced_call() or "", request_chat.prompt_tools() is not None)
    parallel = body.parallel_tool_calls is not False
    if body.stream:
        return StreamingResponse(
            _stream(started, request, response, answer, parallel, conversation, body),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    finished = await chat.collect(started, request, [answer])
    if finished is None:
        return Response(status_code=chat.CLIENT_CLOSED)
    content, calls = answer.final(parallel)
    if content or not calls:
        status = "incomplete" if _incomplete(finished[0], calls) else "completed"
        message_id = f"msg_{secrets.token_hex(12)}"
        logprobs = _logprobs(started, body, finished[0].logprobs)
        response["output"].append(_message_item(message_id, content or "", status, logprobs))
    response["output"] += [_call_item(call) for call in calls or ()]
    _finish(response, finished[0], started.prompt_tokens, calls)
    await _save(request, response, conversation + [_answer_message(content, calls)], body)
    return response


class _Events:
    """OpenAI's stream events: `event: <type>` and the JSON with its type and sequence number."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {text}\n\n"


async def _stream(
    started: chat.Started,
    request: Request,
    response: dict[str, Any],
    answer: chat.Answer,
    parallel: bool,
    conversation: list[dict[str, Any]],
    body: ResponseRequest,
) -> AsyncIterator[str]:
    event = _Events()
    message_id = f"msg_{secrets.token_hex(12)}"
    opened = False  # the message item and its text part were announced
    pending: list[TokenLogprob] = []  # logprobs not sent yet (with the text they come with)
    sent = 0

    def text_delta(piece: str) -> str:
        nonlocal pending, sent
        logprobs = _logprobs(started, body, pending)
        sent, pending = sent + len(pending), []
        return event(
            "response.output_text.delta",
            item_id=message_id,
            output_index=0,
            content_index=0,
            delta=piece,
            logprobs=logprobs,
        )

    def open_message() -> list[str]:
        return [
            event(
                "response.output_item.added",
                output_index=0,
                item=_message_item(message_id, "", "in_progress"),
            ),
            event(
                "response.content_part.added",
                item_id=message_id,
                output_index=0,
                content_index=0,
                part=_text_part(""),
            ),
        ]

    item: tuple[int, Event] | None = started.first
    try:
        yield event("response.created", response=response)
        yield event("response.in_progress", response=response)
        while True:
            if item is None:
                return
            _, happened = item
            if isinstance(happened, Failed):  # after the 200 went out: OpenAI's error events
                failure = chat.api_failure(happened.error)
                yield event(
                    "error", code=failure.code, message=failure.message, param=failure.param
                )
                response["status"] = "failed"
                response["error"] = {"code": "server_error", "message": failure.message}
                yield event("response.failed", response=response)
                return
            if isinstance(happened, Delta):
                answer.text += happened.text
                pending += happened.logprobs
                if piece := answer.streamable():
                    if not opened:
                        opened = True
                        for line in open_message():
                            yield line
                    yield text_delta(piece)
                item = await chat.next_event(started.generation, request)
                continue
            content, calls = answer.final(parallel)
            if content or not calls:
                if not opened:
                    for line in open_message():
                        yield line
                text = content or ""
                pending = list(happened.logprobs[sent:])  # a stop string's are cut
                rest = text[answer.sent :]
                if rest or pending:
                    yield text_delta(rest)
                logprobs = _logprobs(started, body, happened.logprobs)
                done = {"item_id": message_id, "output_index": 0, "content_index": 0}
                yield event("response.output_text.done", **done, text=text, logprobs=logprobs)
                part = _text_part(text, logprobs)
                yield event("response.content_part.done", **done, part=part)
                status = "incomplete" if _incomplete(happened, calls) else "completed"
                message = _message_item(message_id, text, status, logprobs)
                yield event("response.output_item.done", output_index=0, item=message)
                response["output"].append(message)
            for call in calls or ():
                index = len(response["output"])
                pending = _call_item(call, "in_progress")
                where = {"item_id": pending["id"], "output_index": index}
                yield event("response.output_item.added", output_index=index, item=pending)
                arguments = call["function"]["arguments"]
                yield event("response.function_call_arguments.delta", **where, delta=arguments)
                yield event(
                    "response.function_call_arguments.done",
                    **where,
                    name=call["function"]["name"],
                    arguments=arguments,
                )
                done_item = pending | {"status": "completed", "arguments": arguments}
                yield event("response.output_item.done", output_index=index, item=done_item)
                response["output"].append(done_item)
            _finish(response, happened, started.prompt_tokens, calls)
            await _save(request, response, conversation + [_answer_message(content, calls)], body)
            kind = "response.incomplete" if response["status"] == "incomplete" else None
            yield event(kind or "response.completed", response=response)
            return
    finally:
        started.generation.cancel()  # a no-op when finished; stops the row when the client left


@router.get("/v1/responses/{response_id}")
async def retrieve_response(request: Request, response_id: str) -> Any:
    stored = await run_in_threadpool(get_store(request).get_response, response_id)
    if stored is None:
        raise not_found("response", response_id, param="response_id")
    return stored["body"]


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    request: Request,
    response_id: str,
    after: Annotated[str | None, Query(max_length=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> Any:
    """The input items of a stored response, newest first unless order=asc (OpenAI's default)."""
    stored = await run_in_threadpool(get_store(request).get_response, response_id)
    if stored is None:
        raise not_found("response", response_id, param="response_id")
    items = stored["input_items"][:: -1 if order == "desc" else 1]
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError(
                400, f"after: {after} is not an input item of {response_id}", param="after"
            )
        items = items[ids.index(after) + 1 :]
    return cursor_page(items, limit)


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Any:
    if not await run_in_threadpool(get_store(request).delete_response, response_id):
        raise not_found("response", response_id, param="response_id")
    return {"id": response_id, "object": "response", "deleted": True}
