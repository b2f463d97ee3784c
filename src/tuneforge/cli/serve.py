"""`tuneforge serve`: the OpenAI-compatible server."""

from __future__ import annotations

from typing import Annotated

import typer

HostOpt = Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")]
PortOpt = Annotated[int, typer.Option(min=0, max=65535)]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="TUNEFORGE_API_KEY",
        help="Require `Authorization: Bearer KEY` on every API route but /health.",
    ),
]
JobsOpt = Annotated[
    int, typer.Option("--max-concurrent-jobs", min=1, help="Fine-tuning jobs run at once.")
]
StoreOpt = Annotated[
    bool,
    typer.Option(
        "--store/--no-store",
        help="Keep every chat completion that does not say store: false (the Studio's Logs "
        "page lists them): an application pointed here, unchanged, collects training data.",
    ),
]


def _serve(
    host: str, port: int, api_key: str | None, jobs: int, store: bool = False, on_ready=None
) -> None:
    from tuneforge.api.server import run_server
    from tuneforge.cli._common import use_free_cores
    from tuneforge.ui import create_app

    use_free_cores()
    run_server(
        create_app,
        host=host,
        port=port,
        api_key=api_key,
        max_concurrent_jobs=jobs,
        store_by_default=store,
        on_ready=on_ready,
    )


def serve_cmd(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    max_concurrent_jobs: JobsOpt = 1,
    store: StoreOpt = False,
) -> None:
    """An OpenAI-compatible server, with the Studio web UI at /.

    Files, fine-tuning jobs, models and chat completions under /v1.
    """
    _serve(host, port, api_key, max_concurrent_jobs, store)


def studio_cmd(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    max_concurrent_jobs: JobsOpt = 1,
    store: StoreOpt = False,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the Studio in a web browser.")
    ] = True,
) -> None:
    """The Studio: `tuneforge serve`, then the web UI opened in your browser."""

    def ready(url: str) -> None:
        studio = f"{url}/studio/"
        print(f"tuneforge Studio: {studio}", flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(studio)

    _serve(host, port, api_key, max_concurrent_jobs, store, on_ready=ready)
