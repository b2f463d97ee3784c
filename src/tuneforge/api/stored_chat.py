"""Stored chat completions: OpenAI's `store: true` on /v1/chat/completions, read back.

A request with `store: true` is kept, once every choice has finished (streamed or not), in the
server's database: the completion object as returned, the request's settings and `metadata`
beside it, and the request's messages. The routes are OpenAI's (`client.chat.completions.list /
retrieve / update / delete`, `client.chat.completions.messages.list`), so code that logs its
traffic this way runs unchanged. What the logs are for here is what they are for on OpenAI's
dashboard: an eval run grades them (`source.type: stored_completions`, `api/evals.py`) and the
Studio's Logs page turns the chosen ones into a training file (the distillation workflow).

`tuneforge serve --store` keeps every live chat completion that does not say `store: false`
(OpenAI's organisation setting that logs completions by default): an application pointed at
the server, unchanged, then collects its own training data.

Unlike OpenAI (30 days), nothing expires: the logs are the user's data, deleted when they say.
A client that goes away before the answer is finished, or an answer that fails, stores nothing;
one that asked for `store: true` and cannot be stored (a full disk) is a 507 `store_failed`, or,
streamed, that error event in place of `[DONE]`: a client that asked for its answer to be kept
is told it was not (one kept only by `--store` is answered, and the failure logged).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from tuneforge.api.deps import get_store
from tuneforge.api.errors import APIError, check_after, not_found
from tuneforge.api.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Metadata,
    Strict,
    cursor_page,
)
from tuneforge.eval.graders import message_sample

router = APIRouter()
log = logging.getLogger("tuneforge.api")

# The request's settings a stored completion carries (OpenAI's list shows them), as sent.
_SETTINGS = (
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "tool_choice",
    "response_format",
)


def stored_object(completion: dict[str, Any], body: ChatCompletionRequest) -> dict[str, Any]:
    """The completion as stored and read back: as returned, with the request's metadata,
    sampling settings and tools (`None` where the request left them out)."""
    settings = body.model_dump(include=set(_SETTINGS))
    returned = ChatCompletion.model_validate(completion).model_dump(mode="json")
    return {
        **returned,
        "metadata": body.metadata or {},
        **settings,
        "tools": [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
    }


def wanted(request: Any, body: ChatCompletionRequest, background: bool) -> bool:
    """Whether a completion is kept: `store` as the request sets it; left out, as the server
    was started (`tuneforge serve --store`, OpenAI's "log by default" setting) — for live
    traffic, not a batch's lines."""
    if body.store is not None:
        return body.store
    return bool(getattr(request.app.state, "store_by_default", False)) and not background


async def save(
    request: Any, body: ChatCompletionRequest, completion: dict[str, Any], background: bool
) -> None:
    """Keep a finished completion when it is `wanted`."""
    if not wanted(request, body, background):
        return
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    try:
        await run_in_threadpool(
            get_store(request).add_chat_completion, stored_object(completion, body), messages
        )
    except (sqlite3.Error, OSError) as exc:  # a full disk, a broken database
        if body.store is None:  # kept by the server's --store, not asked for: answer anyway
            log.warning("chat completion %s not stored: %s", completion["id"], exc)
            return
        raise APIError(
            507,
            f"The answer was made but could not be stored ({exc}); free some disk space "
            "and send the request again, or leave store out",
            type="server_error",
            code="store_failed",
        ) from exc


# An eval row of a stored completion (`source.type: stored_completions`): `item.input` the
# request's messages (an `item_reference` a new model answers), `item.output_text` the stored
# answer (a reference to compare a new answer with); `sample` the stored answer itself.
EVAL_ITEM_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "model": {"type": "string"},
        "metadata": {"type": "object"},
        "input": {"type": "array"},
        "output_text": {"type": "string"},
    },
}


def eval_row(stored: dict[str, Any]) -> dict[str, Any]:
    """{"item", "sample"} of a stored completion ({"body", "messages"}): its first choice."""
    body = stored["body"]
    message = body["choices"][0]["message"]
    text = message.get("content") or ""
    sample = message_sample(text, message.get("tool_calls") or [])
    sample["choices"][0]["finish_reason"] = body["choices"][0]["finish_reason"]
    # the messages with text parts joined, as a prompt of an eval run is written
    messages = [
        {k: v for k, v in m.items() if k not in ("id", "content_parts")}
        for m in message_objects(body["id"], stored["messages"])
    ]
    return {
        "item": {
            "id": body["id"],
            "model": body["model"],
            "metadata": body.get("metadata") or {},
            "input": messages,
            "output_text": text,
        },
        "sample": sample | {"model": body["model"], "usage": body.get("usage")},
        "_stored": True,  # not shown: how the runner tells a stored row from a jsonl one
        "_tools": body.get("tools"),  # the logged tools, for a model that answers anew
    }


def _stored(request: Request, completion_id: str) -> dict[str, Any]:
    stored = get_store(request).get_chat_completion(completion_id)
    if stored is None:
        raise not_found(
            "stored chat completion",
            completion_id,
            param="completion_id",
        )
    return stored


def metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters (how OpenAI's SDK sends a metadata filter)."""
    found = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            found[name[len("metadata[") : -1]] = value
        elif name == "metadata":
            raise APIError(
                400,
                "metadata filters are written metadata[key]=value, one parameter per pair",
                param="metadata",
            )
    return found


@router.get("/v1/chat/completions")
def list_chat_completions(
    request: Request,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "asc",
    model: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """Stored completions, oldest first (OpenAI's default), filtered by model and by
    `metadata[key]=value` pairs (all must match)."""
    store = get_store(request)
    check_after(after, after is None or store.get_chat_completion(after) is not None)
    rows = store.list_chat_completions(
        after=after,
        limit=limit + 1,
        oldest_first=order == "asc",
        model=model,
        metadata=metadata_filter(request),
    )
    return cursor_page(rows, limit)


@router.get("/v1/chat/completions/{completion_id}")
def retrieve_chat_completion(request: Request, completion_id: str) -> dict[str, Any]:
    return _stored(request, completion_id)["body"]


class CompletionUpdate(Strict):
    metadata: Metadata | None


@router.post("/v1/chat/completions/{completion_id}")
def update_chat_completion(
    request: Request, completion_id: str, body: CompletionUpdate
) -> dict[str, Any]:
    """Replace the metadata (the one thing OpenAI lets you change); null clears it."""
    updated = get_store(request).update_chat_completion_metadata(completion_id, body.metadata or {})
    if updated is None:
        raise not_found("stored chat completion", completion_id, param="completion_id")
    return updated


@router.delete("/v1/chat/completions/{completion_id}")
def delete_chat_completion(request: Request, completion_id: str) -> dict[str, Any]:
    if not get_store(request).delete_chat_completion(completion_id):
        raise not_found("stored chat completion", completion_id, param="completion_id")
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


def message_objects(completion_id: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's messages as OpenAI lists them: an id each, text content as one string and
    the parts as sent in `content_parts`."""
    out = []
    for i, message in enumerate(messages):
        content = message.get("content")
        parts = content if isinstance(content, list) else None
        text = "".join(p.get("text", "") for p in parts) if parts is not None else content
        out.append(
            {"id": f"{completion_id}-{i}"} | message | {"content": text, "content_parts": parts}
        )
    return out


@router.get("/v1/chat/completions/{completion_id}/messages")
def list_messages(
    request: Request,
    completion_id: str,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "asc",
) -> dict[str, Any]:
    """The request's messages (the prompt; the answer is the completion's choices)."""
    messages = message_objects(completion_id, _stored(request, completion_id)["messages"])
    if order == "desc":
        messages.reverse()
    ids = [m["id"] for m in messages]
    check_after(after, after is None or after in ids)
    start = ids.index(after) + 1 if after is not None else 0
    return cursor_page(messages[start : start + limit + 1], limit)
