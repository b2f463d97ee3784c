"""Server-sent events: the live job event stream (a tuneforge extension of OpenAI's events list).

`GET /v1/fine_tuning/jobs/{id}/events?stream=true` sends every stored event oldest first, then
polls the store for new ones. Each frame carries the event id, so a browser (or any client) that
reconnects with `Last-Event-ID` gets exactly the events it missed: a page reload or a server
restart redraws the same points, never a blank chart. Reading is incremental (by the store's
sequence number); nothing re-reads a log or holds a worker's pipe.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from tuneforge.api.deps import get_store
from tuneforge.api.errors import APIError

TERMINAL = ("succeeded", "failed", "cancelled")
POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 15.0
RETRY_MS = 2000
MAX_STREAMS = 64  # open event streams per server; each costs one poll every POLL_SECONDS
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(data: dict[str, Any], *, event: str, id: str | None = None) -> str:
    """One SSE frame. JSON has no raw newlines, so one `data:` line always suffices."""
    head = f"id: {id}\n" if id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def job_event_stream(request: Request, job_id: str, last_event_id: str | None) -> Any:
    from tuneforge.api.fine_tuning import event_object, job_object

    state = request.app.state
    if getattr(state, "open_streams", 0) >= MAX_STREAMS:
        raise APIError(
            503,
            f"Too many open event streams ({MAX_STREAMS}); close other tabs or read the events "
            "page by page (without stream=true)",
            code="too_many_streams",
        )
    store = get_store(request)

    async def events() -> AsyncIterator[str]:
        # Counted while the generator runs: a client that leaves before it starts costs nothing.
        state.open_streams = getattr(state, "open_streams", 0) + 1
        after = last_event_id
        last_status: str | None = None
        last_sent = time.monotonic()
        quiet_after_end = 0  # the final events are written just after the final status
        try:
            yield f"retry: {RETRY_MS}\n\n"
            while True:
                job = await run_in_threadpool(store.get_job, job_id)
                if job is None:  # deleted while we streamed
                    return
                rows = await run_in_threadpool(store.events_since, job_id, after=after)
                for row in rows:
                    yield frame(event_object(row), event=row["type"] or "message", id=row["id"])
                    after = row["id"]
                if job["status"] != last_status:
                    last_status = job["status"]
                    yield frame(job_object(job), event="status")
                    rows = rows or [job]
                if rows:
                    last_sent = time.monotonic()
                    quiet_after_end = 0
                elif job["status"] in TERMINAL:
                    quiet_after_end += 1
                    if quiet_after_end >= 2:
                        return
                if time.monotonic() - last_sent > HEARTBEAT_SECONDS:
                    yield ": heartbeat\n\n"
                    last_sent = time.monotonic()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(POLL_SECONDS)
        finally:
            state.open_streams -= 1

    return StreamingResponse(events(), media_type="text/event-stream", headers=HEADERS)
