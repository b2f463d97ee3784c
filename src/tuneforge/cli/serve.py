"""`tuneforge serve`: the OpenAI-compatible server."""

from __future__ import annotations

from typing import Annotated

import typer


def serve_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TUNEFORGE_API_KEY",
            help="Require `Authorization: Bearer KEY` on every route but /health.",
        ),
    ] = None,
    max_concurrent_jobs: Annotated[
        int, typer.Option("--max-concurrent-jobs", min=1, help="Fine-tuning jobs run at once.")
    ] = 1,
) -> None:
    """An OpenAI-compatible server. Files, fine-tuning jobs, models and chat completions."""
    from tuneforge.api.server import run_server
    from tuneforge.cli._common import use_free_cores

    use_free_cores()

    run_server(host=host, port=port, api_key=api_key, max_concurrent_jobs=max_concurrent_jobs)
