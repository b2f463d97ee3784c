"""`create_app()`: the FastAPI app, its routers, error handlers, guard and lifespan.

The lifespan opens the store, starts the job scheduler (which first recovers jobs a crash left
behind) and the inference engine, and stops both on shutdown: running workers are asked to
checkpoint and exit, and their jobs resume at the next start.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.api import (
    batches,
    chat,
    comparisons,
    embeddings,
    evals,
    exports,
    file_views,
    files,
    fine_tuning,
    forms,
    graders,
    models,
    responses,
    stored_chat,
    uploads,
)
from tuneforge.api.catalog import Catalog
from tuneforge.api.deps import get_engine
from tuneforge.api.errors import APIError, error_body, install_error_handlers
from tuneforge.api.schemas import ErrorResponse
from tuneforge.inference.engine import InferenceEngine
from tuneforge.jobs.comparisons import ComparisonRunner
from tuneforge.jobs.exports import ExportRunner
from tuneforge.jobs.manager import JobManager
from tuneforge.jobs.store import Store

MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # OpenAI's limit for one fine-tuning file
MAX_JSON_BYTES = 16 * 1024 * 1024  # far above any context window's worth of messages
MULTIPART_OVERHEAD = 64 * 1024
OPEN_PATHS = ("/health",)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _with_request_id(send: Send) -> Send:
    """Every response carries `x-request-id`, as OpenAI's do (its SDK shows it as `_request_id`):
    an id to quote from a client's log when asking what the server did."""
    request_id = f"req_{secrets.token_hex(16)}".encode()

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"x-request-id", request_id)]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_id


class Guard:
    """ASGI middleware: the Host check, the API key on every route but the open ones, and a
    cap on body sizes.

    Pure ASGI rather than BaseHTTPMiddleware, so streamed responses and client disconnects pass
    through untouched. Bodies are capped both by Content-Length and while they arrive (chunked
    uploads have no Content-Length). With `allowed_hosts`, a request whose `Host` header names
    another host is refused: a web page elsewhere cannot reach a loopback server by pointing
    its own DNS name at 127.0.0.1 (DNS rebinding). `open_prefixes`: paths served without the
    key (the Studio's pages and assets, which hold no data; the data comes from the API).
    """

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        max_upload_bytes: int,
        allowed_hosts: frozenset[str] | None = None,
        open_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_upload_bytes = max_upload_bytes
        self.allowed_hosts = allowed_hosts
        self.open_prefixes = open_prefixes

    def _open(self, path: str) -> bool:
        return path in OPEN_PATHS or any(
            path == p or (p != "/" and path.startswith(p.rstrip("/") + "/"))
            for p in self.open_prefixes
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_request_id(send)
        path = scope["path"]
        if self.allowed_hosts is not None:
            host = host_name(_header(scope, b"host") or "")
            if host not in self.allowed_hosts:
                await _reject(
                    send,
                    APIError(
                        403,
                        f"Host {host[:100]!r} is not this server's name; open it as "
                        f"http://{sorted(self.allowed_hosts)[0]}:PORT (requests naming other "
                        "hosts are refused against DNS rebinding)",
                        code="host_not_allowed",
                    ),
                )
                return
        if self.api_key and not self._open(path) and not self._authorized(scope):
            await _reject(
                send,
                APIError(
                    401,
                    "Incorrect or missing API key: send `Authorization: Bearer <key>` with the "
                    "key the server was started with (--api-key)",
                    code="invalid_api_key",
                ),
            )
            return
        if path == "/v1/files":
            limit = self.max_upload_bytes + MULTIPART_OVERHEAD
        elif uploads.PART_PATH.fullmatch(path):
            limit = uploads.MAX_PART_BYTES + MULTIPART_OVERHEAD
        else:
            limit = MAX_JSON_BYTES
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _reject(send, _too_large(limit))
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _reject(send, _too_large(limit))

    def _authorized(self, scope: Scope) -> bool:
        value = _header(scope, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            token.strip().encode(), (self.api_key or "").encode()
        )


class _BodyTooLarge(StarletteHTTPException):
    """Raised from `receive`; an HTTPException so that FastAPI's body parsing passes it on
    unchanged (it turns other exceptions into a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit).message)


def host_name(header: str) -> str:
    """The host of a `Host` header, without the port; IPv6 literals keep their brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is over {limit:,} bytes", code="request_too_large")


async def _reject(send: Send, exc: APIError) -> None:
    import json

    body = json.dumps(error_body(exc.message, exc.type, exc.param, exc.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request"),
        (401, "Missing or wrong API key"),
        (403, "Not allowed"),
        (404, "Not found"),
        (409, "Conflict"),
        (413, "Too large"),
        (500, "Server error"),
    )
}


def _preload_libraries() -> None:
    """Import transformers and peft once, up front: their lazy modules are not safe to import
    from two threads at once (the engine and a request thread), and the first request should
    not pay for it."""
    import peft  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def create_app(
    *,
    api_key: str | None = None,
    max_concurrent_jobs: int = 1,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    allowed_hosts: frozenset[str] | None = None,
    open_prefixes: tuple[str, ...] = (),
    store_by_default: bool = False,
    prefill_bf16: bool = False,
    weight_precision: str = "auto",
) -> FastAPI:
    """The API. `allowed_hosts`: the names the `Host` header may carry (None: any, as in tests
    that call the app in-process); `open_prefixes`: paths outside /v1 served without the key;
    `store_by_default`: a chat completion without `store` is kept (`tuneforge serve --store`);
    `prefill_bf16`: the engine prefills prompts in bf16 (`--prefill-precision`, resolved by
    the CLI); `weight_precision`: fp32, bf16 or auto (`--weight-precision`, checked by the CLI;
    `InferenceEngine`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _preload_libraries()
        store = Store()
        store.abort_upload_completions()  # cut off by the last server's end: pending again
        manager = JobManager(store, max_concurrent_jobs=max_concurrent_jobs)
        manager.start()
        engine = InferenceEngine(prefill_bf16=prefill_bf16, weight_precision=weight_precision)
        engine.start()
        export_runner = ExportRunner(store)
        export_runner.start()
        app.state.store = store
        app.state.manager = manager
        app.state.engine = engine
        app.state.catalog = Catalog(store)
        app.state.comparisons = ComparisonRunner()
        app.state.exports = export_runner
        app.state.evals = evals.EvalRunner(app)
        app.state.evals.start()
        app.state.batches = batches.BatchRunner(app)
        app.state.batches.start()
        try:
            yield
        finally:
            await app.state.batches.stop()
            await app.state.evals.stop()
            export_runner.stop()
            engine.stop()
            await run_in_threadpool(manager.stop)

    app = FastAPI(
        title="tuneforge",
        summary="OpenAI-compatible files, fine-tuning jobs, models and chat completions.",
        version="1",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN: off, so that nothing
        # this server serves reaches past it. The schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.max_upload_bytes = max_upload_bytes
    app.state.store_by_default = store_by_default
    # what a batch's requests, sent to this app in-process, present to the Guard
    app.state.internal_headers = {
        "host": sorted(allowed_hosts)[0] if allowed_hosts else "127.0.0.1",
        **({"authorization": f"Bearer {api_key}"} if api_key else {}),
    }
    install_error_handlers(app)

    @app.get("/health")
    def health(request: Request) -> dict[str, Any]:
        """Liveness, open without the API key; `generating` counts choices in flight."""
        return {"status": "ok", "generating": get_engine(request).active}

    modules = (
        files,
        uploads,
        file_views,
        fine_tuning,
        exports,
        graders,
        forms,
        comparisons,
        models,
        chat,
        stored_chat,
        responses,
        embeddings,
        evals,
        batches,
    )
    for module in modules:
        app.include_router(module.router)
    app.add_middleware(
        Guard,  # type: ignore[arg-type]
        api_key=api_key,
        max_upload_bytes=max_upload_bytes,
        allowed_hosts=allowed_hosts,
        open_prefixes=open_prefixes,
    )
    return app
