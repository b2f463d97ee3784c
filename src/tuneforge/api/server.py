"""`tuneforge serve`: the app under uvicorn, on loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
import logging

from tuneforge.errors import UsageError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(*, host: str, port: int, api_key: str | None, max_concurrent_jobs: int = 1) -> None:
    """Serve until interrupted. A non-loopback address needs an API key: the server runs
    training and reads files on this machine for whoever can reach it."""
    import uvicorn

    from tuneforge.api.app import create_app

    if not is_loopback(host) and not api_key:
        raise UsageError(
            f"--host {host} would expose the server beyond this machine without an API key",
            hint="add --api-key KEY (or set TUNEFORGE_API_KEY), or keep the default 127.0.0.1",
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(api_key=api_key, max_concurrent_jobs=max_concurrent_jobs)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
