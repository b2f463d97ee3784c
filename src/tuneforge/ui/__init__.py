"""The Studio: tuneforge's web UI, served by `tuneforge serve` at `/` (the API stays under /v1).

Pages are server-rendered Jinja shells that hold no data: small ES modules (`static/js/`) fill
them from the server's public HTTP API — the routes the `openai` package uses plus the
documented tuneforge extensions — so the UI can never do what the API cannot. Everything ships in
the package (no CDN, no fonts, no build step); the one vendored library is listed in
`static/vendor/VENDOR.md`. User data and model output are set as text (`textContent`), never
parsed as HTML; the pages' Content-Security-Policy allows only this server.

Layering: `ui` imports `api` (to build the app), never the other way round.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from tuneforge.api.app import create_app as create_api_app

STUDIO = "/studio"


def loopback_hosts(host: str) -> frozenset[str]:
    """The names a browser may use for a server bound to `host`: the loopback names, and the
    bound name itself when it is a specific address."""
    names = {"localhost", "127.0.0.1", "[::1]"}
    if host not in ("0.0.0.0", "::", ""):
        names.add(f"[{host}]" if ":" in host else host.lower())
    return frozenset(names)


def create_app(*, host: str | None = None, **api_options: Any) -> FastAPI:
    """The API with the Studio mounted. `host`: the address the server binds; requests whose
    `Host` names anything else are refused (DNS rebinding) unless it binds every interface
    (0.0.0.0 needs an API key, which a rebinding page does not have). None: no Host check, for
    in-process tests."""
    from tuneforge.ui.pages import mount

    allowed = None if host is None or host in ("0.0.0.0", "::") else loopback_hosts(host)
    app = create_api_app(allowed_hosts=allowed, open_prefixes=("/", STUDIO), **api_options)
    mount(app)
    return app
