"""`tuneforge serve`: the OpenAI-compatible server."""

from __future__ import annotations

from typing import Annotated

import typer

from tuneforge.cli._common import WeightOpt, check_weight_precision

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

PrefillOpt = Annotated[
    str,
    typer.Option(
        "--prefill-precision",
        help="fp32, bf16 or auto. bf16: prompts' linear layers computed in bf16, for a shorter "
        "time to first token on a CPU with AMX or AVX512-BF16 (answers may then differ slightly "
        "from fp32's); auto: bf16 where this CPU has bf16 units and it measures faster. "
        "Decoding stays fp32.",
    ),
]


def prefill_in_bf16(requested: str) -> bool:
    """Resolve --prefill-precision on this CPU (the server's engine runs on the CPU); bf16 on
    a CPU without bf16 units is a usage error that says why."""
    from tuneforge.errors import UsageError
    from tuneforge.models.precision import PrecisionUnavailable, choose_precision

    if requested not in ("fp32", "bf16", "auto"):
        raise UsageError(
            f"--prefill-precision takes fp32, bf16 or auto, not {requested!r}",
            hint="fp32 (the default) answers exactly as `tuneforge generate` does",
        )
    if requested == "fp32":
        return False
    try:
        precision = choose_precision(requested, "cpu")
    except PrecisionUnavailable as exc:
        raise UsageError(f"--prefill-precision bf16: {exc}") from None
    typer.echo(f"prefill precision: {precision.reason.replace('bf16 autocast', 'bf16')}", err=True)
    return precision.bf16


def _serve(
    host: str,
    port: int,
    api_key: str | None,
    jobs: int,
    store: bool = False,
    prefill: str = "fp32",
    weights: str = "auto",
    on_ready=None,
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
        prefill_bf16=prefill_in_bf16(prefill),
        weight_precision=check_weight_precision(weights),
        on_ready=on_ready,
    )


def serve_cmd(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    max_concurrent_jobs: JobsOpt = 1,
    store: StoreOpt = False,
    prefill_precision: PrefillOpt = "fp32",
    weight_precision: WeightOpt = "auto",
) -> None:
    """An OpenAI-compatible server, with the Studio web UI at /.

    Files, fine-tuning jobs, models and chat completions under /v1.
    """
    _serve(host, port, api_key, max_concurrent_jobs, store, prefill_precision, weight_precision)


def studio_cmd(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    max_concurrent_jobs: JobsOpt = 1,
    store: StoreOpt = False,
    prefill_precision: PrefillOpt = "fp32",
    weight_precision: WeightOpt = "auto",
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

    _serve(
        host,
        port,
        api_key,
        max_concurrent_jobs,
        store,
        prefill_precision,
        weight_precision,
        on_ready=ready,
    )
