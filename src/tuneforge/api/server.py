"""`tuneforge serve`: the app under uvicorn, on loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tuneforge.errors import UsageError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(
    app_factory: Callable[..., Any],
    *,
    host: str,
    port: int,
    api_key: str | None,
    max_concurrent_jobs: int = 1,
    store_by_default: bool = False,
    prefill_bf16: bool = False,
    weight_precision: str = "auto",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve `app_factory(host=…, api_key=…, max_concurrent_jobs=…, store_by_default=…,
    prefill_bf16=…, weight_precision=…)` until interrupted (the
    CLI passes the Studio's, which mounts the UI on the API). A non-loopback address needs an
    API key: the server runs training and reads files on this machine for whoever can reach it.
    `on_ready(url)` runs once the server answers."""
    import uvicorn

    if not is_loopback(host) and not api_key:
        raise UsageError(
            f"--host {host} would expose the server beyond this machine without an API key",
            hint="add --api-key KEY (or set TUNEFORGE_API_KEY), or keep the default 127.0.0.1",
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = app_factory(
        host=host,
        api_key=api_key,
        max_concurrent_jobs=max_concurrent_jobs,
        store_by_default=store_by_default,
        prefill_bf16=prefill_bf16,
        weight_precision=weight_precision,
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1", "::1") else host
        threading.Thread(
            target=_when_started, args=(server, f"http://{shown}:{port}", on_ready), daemon=True
        ).start()
    server.run()


def _when_started(server: Any, url: str, on_ready: Callable[[str], None]) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.1)
    on_ready(url)
