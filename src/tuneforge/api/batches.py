"""/v1/batches: OpenAI's Batch API, run on this machine.

A batch is a JSONL file of requests (uploaded with purpose `batch`), one per line:
`{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`, all to
one endpoint (`/v1/chat/completions`, `/v1/responses` or `/v1/embeddings`) and one model. Each
line is answered by that endpoint itself: the runner sends the body to this app in-process
(httpx's ASGI transport, with the server's own key and host), so a line gets exactly the answer
— or the 400 naming the field — that the same request sent live gets, from the same engine. A
few lines are in flight at once, so the engine batches their decode steps.

The answers become two files of purpose `batch_output`, in the input's order: `output_file_id`,
one `{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"}, "error": null}`
per answered line, and `error_file_id`, the lines whose request failed (`status_code` 4xx/5xx,
`body` the error the endpoint answered).

Statuses as OpenAI's: in_progress → finalizing → completed. A file that is not one endpoint's
and one model's valid requests fails at once (`failed`, `errors.data`: code, line, message,
param for each bad line; a malformed file is refused at upload already). A cancel goes through
cancelling → cancelled and keeps the lines answered before it; the lines it left unanswered go
to the error file with the error code `batch_cancelled`, so every `custom_id` is accounted for.
A batch the server itself cannot go on with (its database or disk failing) is `failed` with the
same two files: the lines answered before, and the others with the failure's code.

Each answered line is stored with the batch's new counts in one transaction, so a server that
stops mid-batch (Ctrl-C, kill -9) answers only the lines it had not when it starts again. The
output files get ids made from the batch's, so a finalizing that a crash interrupted and that
runs again writes each file once.

Not as on OpenAI: a batch is never expired (it runs to its end however long it takes, so
`expires_at` is null) and costs nothing; the endpoints are the three above (no moderations,
images or legacy completions).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from tuneforge.api import chat, embeddings
from tuneforge.api.background import QueueRunner
from tuneforge.api.deps import get_catalog, get_store
from tuneforge.api.errors import APIError, check_after, error_body, not_found
from tuneforge.api.schemas import Metadata, Strict, cursor_page
from tuneforge.jobs.store import files_dir

router = APIRouter()

PURPOSE = "batch"  # the input file
OUTPUT_PURPOSE = "batch_output"  # the output and error files
ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
MAX_REQUESTS = 50_000  # OpenAI's limit for one batch
MAX_LISTED_ERRORS = 100
REQUESTS_AT_ONCE = 16  # lines in flight at once: the engine batches their decode steps
LINE_FIELDS = ("custom_id", "method", "url", "body")
LIVE = ("in_progress", "finalizing", "cancelling")  # the runner still has work on these


class OutputExpiresAfter(Strict):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class BatchCreate(Strict):
    input_file_id: str = Field(max_length=512)
    endpoint: str = Field(
        max_length=256, description="/v1/chat/completions, /v1/responses or /v1/embeddings"
    )
    completion_window: str = Field(max_length=16, description="24h, the one window")
    metadata: Metadata | None = None
    output_expires_after: OutputExpiresAfter | None = None


# ----------------------------------------------------------------------------------------------
# The input file
# ----------------------------------------------------------------------------------------------


def _problem(code: str, line: int | None, message: str, param: str | None = None) -> dict:
    return {"code": code, "line": line, "message": message, "param": param}


def read_requests(path: Path, filename: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    """The requests of a batch input file, as (line number, request), and the problems found
    (OpenAI's batch errors: code, line, message, param), at most MAX_LISTED_ERRORS of them."""
    requests: list[tuple[int, dict]] = []
    problems: list[dict] = []
    seen: dict[str, int] = {}
    first: dict[str, tuple[int, Any]] = {}  # url and model: the first line's, which all share

    def add(code: str, number: int | None, message: str, param: str | None = None) -> None:
        if len(problems) < MAX_LISTED_ERRORS:
            where = f"{filename} line {number}: " if number else f"{filename}: "
            problems.append(_problem(code, number, where + message, param))

    try:
        with open(path, encoding="utf-8", errors="strict") as lines:
            for number, text in enumerate(lines, start=1):
                if not text.strip():
                    continue
                if len(requests) == MAX_REQUESTS:
                    add(
                        "too_many_requests",
                        number,
                        f"a batch holds at most {MAX_REQUESTS:,} requests; split the file",
                    )
                    break
                try:
                    row = json.loads(text, parse_constant=_no_constant)
                except (ValueError, RecursionError) as exc:
                    why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                    add("invalid_json_line", number, f"not JSON ({why})")
                    continue
                if problem := _line_problem(row, seen, first, number):
                    add(*problem)
                    continue
                seen[row["custom_id"]] = number
                requests.append((number, row))
    except UnicodeDecodeError:
        add("invalid_file_format", None, "not UTF-8 text; save it as UTF-8 JSONL")
    if not requests and not problems:
        add(
            "empty_file",
            None,
            'holds no requests: write one {"custom_id": ..., "method": "POST", "url": '
            '"/v1/chat/completions", "body": {...}} per line',
        )
    return requests, problems


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser takes them; a request could not be sent)."""
    raise ValueError(f"{name} is not a JSON number")


def _line_problem(
    row: Any, seen: dict[str, int], first: dict[str, tuple[int, Any]], number: int
) -> tuple[str, int, str, str | None] | None:
    if not isinstance(row, dict):
        return (
            "invalid_request",
            number,
            'a request is an object {"custom_id", "method", "url", "body"}',
            None,
        )
    for field in LINE_FIELDS:
        if field not in row:
            return "missing_required_parameter", number, f"missing {field!r}", field
    extra = sorted(set(row) - set(LINE_FIELDS))
    if extra:
        return (
            "invalid_request",
            number,
            f"unknown field {extra[0]!r}: a line holds {', '.join(LINE_FIELDS)}",
            extra[0],
        )
    custom_id = row["custom_id"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
        return (
            "invalid_request",
            number,
            "custom_id must be a non-empty string (your id for this request)",
            "custom_id",
        )
    if custom_id in seen:
        return (
            "duplicate_custom_id",
            number,
            f"custom_id {custom_id[:64]!r} is on line {seen[custom_id]} too; each request "
            "needs its own",
            "custom_id",
        )
    if row["method"] != "POST":
        return "invalid_request", number, f"method {row['method']!r}: use 'POST'", "method"
    body = row["body"]
    if not isinstance(body, dict):
        return "invalid_request", number, "body must be the request's JSON object", "body"
    for key, value in (("url", row["url"]), ("model", body.get("model"))):
        if key == "model" and not isinstance(value, str):
            return "missing_required_parameter", number, "body.model must name a model", "body"
        line, wanted = first.setdefault(key, (number, value))
        if value != wanted:
            return (
                f"mismatched_{key}",
                number,
                f"{key} {str(value)[:100]!r} differs from line {line}'s {str(wanted)[:100]!r}: "
                f"a batch sends every request to one {'endpoint' if key == 'url' else key}",
                key if key == "url" else "body.model",
            )
    return None


def check_file(path: Path, filename: str) -> None:
    """What an upload of purpose `batch` must pass: the lines are requests (a 400 naming the
    first bad lines otherwise). The endpoint and model are checked when a batch is created."""
    _, problems = read_requests(path, filename)
    if problems:
        shown = "; ".join(p["message"] for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise APIError(400, shown + more, param="file", code="invalid_file_format")


# ----------------------------------------------------------------------------------------------
# Routes
# ----------------------------------------------------------------------------------------------


def _runner(request: Request) -> BatchRunner:
    return request.app.state.batches


def _stored(request: Request, batch_id: str) -> dict[str, Any]:
    batch = get_store(request).get_batch(batch_id)
    if batch is None:
        raise not_found("batch", batch_id, param="batch_id")
    return batch


def _new_batch(body: BatchCreate, total: int, model: str | None) -> dict[str, Any]:
    return {
        "id": f"batch_{secrets.token_hex(16)}",
        "object": "batch",
        "endpoint": body.endpoint,
        "model": model,
        "errors": None,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": int(time.time()),
        "in_progress_at": None,
        "expires_at": None,  # never expired here: a batch runs to its end
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": total, "completed": 0, "failed": 0},
        "usage": {
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        },
        "metadata": body.metadata or {},
        # not shown: the output files' expiry, in seconds (output_expires_after)
        "_output_expires_after": (
            body.output_expires_after.seconds if body.output_expires_after else None
        ),
    }


def batch_object(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


@router.post("/v1/batches")
async def create_batch(request: Request, body: BatchCreate) -> dict[str, Any]:
    if body.completion_window != "24h":
        raise APIError(
            400,
            f"completion_window {body.completion_window!r}: the one window is '24h' (a batch "
            "here runs to its end however long it takes)",
            param="completion_window",
        )
    if body.endpoint not in ENDPOINTS:
        raise APIError(
            400,
            f"endpoint {body.endpoint!r} is not batched here: use "
            f"{' or '.join(repr(e) for e in ENDPOINTS)}",
            param="endpoint",
        )
    store = get_store(request)
    file = await run_in_threadpool(store.get_file, body.input_file_id)
    if file is None:
        raise not_found("file", body.input_file_id, param="input_file_id")
    if file["purpose"] != PURPOSE:
        raise APIError(
            400,
            f"file {file['id']} has purpose {file['purpose']!r}; upload the requests with "
            f"purpose {PURPOSE!r}",
            param="input_file_id",
        )
    requests, problems = await run_in_threadpool(
        read_requests, Path(file["path"]), file["filename"]
    )
    if not problems and requests[0][1]["url"] != body.endpoint:
        line, first = requests[0]
        problems = [
            _problem(
                "invalid_url",
                line,
                f"{file['filename']} line {line}: url {first['url']!r} is not the batch's "
                f"endpoint {body.endpoint!r}; create the batch with endpoint={first['url']!r} "
                "or change the lines' url",
                "url",
            )
        ]
    model = requests[0][1]["body"]["model"] if requests else None
    if not problems:
        try:
            if body.endpoint == "/v1/embeddings":
                await run_in_threadpool(embeddings.embedder_for, request, model)
            else:
                await run_in_threadpool(get_catalog(request).get, model)
        except APIError as exc:
            line = requests[0][0]
            message = f"{file['filename']} line {line}: {exc.message}"
            problems = [_problem("model_not_found", line, message, "body.model")]
    batch = _new_batch(body, len(requests), model)
    if problems:
        batch |= {
            "status": "failed",
            "failed_at": batch["created_at"],
            "errors": {"object": "list", "data": problems},
        }
    else:
        batch |= {"status": "in_progress", "in_progress_at": batch["created_at"]}
    lines = [] if problems else requests
    await run_in_threadpool(store.add_batch, batch, lines)
    if not problems:
        _runner(request).submit(batch["id"])
    return batch_object(batch)


@router.get("/v1/batches")
def list_batches(
    request: Request,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Newest first, as OpenAI lists them."""
    store = get_store(request)
    check_after(after, after is None or store.get_batch(after) is not None)
    rows = store.list_batches(after=after, limit=limit + 1)
    return cursor_page([batch_object(r) for r in rows], limit)


@router.get("/v1/batches/{batch_id}")
def retrieve_batch(request: Request, batch_id: str) -> dict[str, Any]:
    return batch_object(_stored(request, batch_id))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    store = get_store(request)
    cancelling = await run_in_threadpool(
        store.set_batch_status, batch_id, "cancelling", only_from=("in_progress",)
    )
    if cancelling is None:
        batch = _stored(request, batch_id)
        raise APIError(
            409,
            f"Cannot cancel batch {batch_id}: it is {batch['status']}; only a batch in "
            "progress can be cancelled",
            param="batch_id",
            code="invalid_batch_state",
        )
    _runner(request).cancel(batch_id)
    return batch_object(cancelling)


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------


def output_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file, the same each time it is written."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]


def _usage(body: Any) -> tuple[int, int]:
    """(input, output) tokens of an answer: chat's prompt/completion tokens or the Responses
    API's input/output tokens."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    return (
        int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0),
        int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0),
    )


def _count(batch: dict[str, Any], output: dict[str, Any], failed: bool) -> None:
    batch["request_counts"]["failed" if failed else "completed"] += 1
    spent_in, spent_out = _usage(output["response"]["body"])
    usage = batch["usage"]
    usage["input_tokens"] += spent_in
    usage["output_tokens"] += spent_out
    usage["total_tokens"] += spent_in + spent_out


CANCELLED = {
    "code": "batch_cancelled",
    "message": "The batch was cancelled before this request was answered",
}


class BatchRunner(QueueRunner):
    """Answers queued batches one at a time on the server's event loop."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._in_flight: dict[str, set[asyncio.Task]] = {}
        self._finalizing: set[str] = set()
        self._side_tasks: set[asyncio.Task] = set()  # finalizings started by a cancel

    def _unfinished(self) -> list[str]:
        return [b["id"] for b in self.app.state.store.batches_with_status("in_progress")]

    def start(self) -> None:
        """As QueueRunner's, and a batch a stopped server left finalizing or cancelling is
        finished at once, not behind the batches still to answer."""
        super().start()
        for batch in self.app.state.store.batches_with_status("finalizing", "cancelling"):
            self._finalize_aside(batch["id"])

    def _finalize_aside(self, key: str) -> None:
        task = asyncio.create_task(self._finalize(key))
        self._side_tasks.add(task)  # a reference until it is done
        task.add_done_callback(self._side_tasks.discard)

    async def stop(self) -> None:
        for task in list(self._side_tasks):  # a finalizing cut short runs again at the start
            task.cancel()
        await super().stop()

    def cancel(self, key: str) -> None:
        """Stop the batch's requests in flight; a batch not being answered now is finalized
        at once (its files hold what an earlier run of the server answered)."""
        super().cancel(key)
        for task in self._in_flight.get(key, ()):
            task.cancel()
        if key != self.current:
            self._finalize_aside(key)

    async def _fail(self, key: str, code: str, message: str) -> None:
        """A batch the server could not go on with: `failed`, with the files of what it did
        (the answered lines in the output file, the others in the error file with the error's
        code), so no answer is lost; without them when writing them fails too."""
        self.cancel(key)
        store = self.app.state.store
        files: dict[str, str | None] = {}
        try:
            batch = await run_in_threadpool(store.get_batch, key)
            if batch is not None and batch["status"] in LIVE:
                unanswered = {"code": code, "message": f"The batch failed: {message}"}
                with contextlib.suppress(Exception):  # e.g. the full disk that failed the batch
                    files = await run_in_threadpool(self._write_files, batch, unanswered, True)
            await run_in_threadpool(
                store.set_batch_status,
                key,
                "failed",
                only_from=LIVE,
                errors={"object": "list", "data": [_problem(code, None, message)]},
                **files,
            )
        finally:
            self.stopped.discard(key)

    async def _execute(self, key: str) -> None:
        batch = await run_in_threadpool(self.app.state.store.get_batch, key)
        if batch is None:
            return
        if batch["status"] == "in_progress" and key not in self.stopped:
            await self._answer(batch)
        await self._finalize(key)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://" + self.app.state.internal_headers["host"],
            headers=self.app.state.internal_headers | {chat.BACKGROUND_HEADER: "1"},
            timeout=None,
        )

    async def _answer(self, batch: dict[str, Any]) -> None:
        store = self.app.state.store
        key = batch["id"]
        pending = iter(await run_in_threadpool(store.unanswered_batch_requests, key))
        lock = asyncio.Lock()
        in_flight = self._in_flight.setdefault(key, set())

        async def worker(client: httpx.AsyncClient) -> None:
            for line, request in pending:  # one shared iterator: each line goes to one worker
                if key in self.stopped:
                    return
                task = asyncio.create_task(self._send(client, batch["endpoint"], request))
                in_flight.add(task)
                try:
                    output, failed = await task
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise  # the server is stopping
                    return  # the batch was cancelled
                finally:
                    in_flight.discard(task)
                async with lock:
                    _count(batch, output, failed)
                    snapshot = copy.deepcopy(batch)
                    if not await run_in_threadpool(
                        store.add_batch_output, snapshot, line, output, failed
                    ):
                        self.stopped.add(key)  # cancelled meanwhile

        try:
            # a TaskGroup: a worker that fails stops the others (gather would let them run on)
            async with self._client() as client, asyncio.TaskGroup() as group:
                for _ in range(REQUESTS_AT_ONCE):
                    group.create_task(worker(client))
        finally:
            self._in_flight.pop(key, None)

    async def _send(
        self, client: httpx.AsyncClient, endpoint: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """One line's output line, and whether its request failed."""
        if request["body"].get("stream"):
            status, request_id = 400, None
            body: Any = error_body(
                "stream is not available in a batch: the answers are written to the output "
                "file; leave stream out",
                "invalid_request_error",
                "stream",
            )
        else:
            try:
                response = await client.post(endpoint, json=request["body"])
            except Exception as exc:  # noqa: BLE001 - one line's failure is that line's result
                status, request_id = 500, None
                body = error_body(
                    f"The request could not be sent ({type(exc).__name__}: {exc})",
                    "server_error",
                )
            else:
                status, request_id = response.status_code, response.headers.get("x-request-id")
                try:
                    body = response.json()
                except ValueError:
                    body = error_body(response.text[:500], "server_error")
        output = {
            "id": f"batch_req_{secrets.token_hex(16)}",
            "custom_id": request["custom_id"],
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        return output, status != 200

    async def _finalize(self, key: str) -> None:
        """Write the output and error files and end the batch: completed, or cancelled."""
        if key in self._finalizing:
            return
        self._finalizing.add(key)
        try:
            store = self.app.state.store
            batch = await run_in_threadpool(
                store.set_batch_status, key, "finalizing", only_from=("in_progress",)
            ) or await run_in_threadpool(store.get_batch, key)
            if batch is None or batch["status"] not in ("finalizing", "cancelling"):
                return
            files = await run_in_threadpool(self._write_files, batch)
            end = "completed" if batch["status"] == "finalizing" else "cancelled"
            await run_in_threadpool(
                store.set_batch_status, key, end, only_from=(batch["status"],), **files
            )
        finally:
            self._finalizing.discard(key)
            self.stopped.discard(key)

    def _write_files(
        self, batch: dict[str, Any], unanswered: dict[str, str] = CANCELLED, partial: bool = False
    ) -> dict[str, str | None]:
        """The output and error files of the lines stored so far; a line left unanswered (by
        a cancel, or a failure) goes to the error file with the `unanswered` error. `partial`
        (a failing batch): a file that cannot be written is left out, the other kept."""
        store = self.app.state.store
        answered: list[dict] = []
        failed: list[dict] = []
        for _, request, output, request_failed in store.batch_outputs(batch["id"]):
            if output is None:
                output = {
                    "id": f"batch_req_{secrets.token_hex(16)}",
                    "custom_id": request["custom_id"],
                    "response": None,
                    "error": dict(unanswered),
                }
                request_failed = True
            (failed if request_failed else answered).append(output)
        ids: dict[str, str | None] = {}
        for kind, lines in (("output", answered), ("error", failed)):
            ids[f"{kind}_file_id"] = None
            try:
                ids[f"{kind}_file_id"] = self._write_file(batch, kind, lines) if lines else None
            except Exception:
                if not partial:
                    raise
        return ids

    def _write_file(self, batch: dict[str, Any], kind: str, lines: list[dict]) -> str:
        store = self.app.state.store
        file_id = output_file_id(batch["id"], kind)
        if store.get_file(file_id) is not None:  # written before a crash
            return file_id
        folder = files_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".batch-", suffix=".jsonl", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                for line in lines:
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
            store.add_file(
                file_id,
                Path(tmp),
                filename=f"{batch['id']}_{kind}.jsonl",
                purpose=OUTPUT_PURPOSE,
                expires_after=batch.get("_output_expires_after"),
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()  # renamed away on success
        return file_id
