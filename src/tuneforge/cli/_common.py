"""What every command group shares: the two consoles, option types, one progress factory, and
the lookup of a "model or run" argument. Nothing here trains, evaluates or serves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

# stdout carries results (tables, JSON, answers); stderr carries progress, notes and errors.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Registry name, local model folder or hub id."),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="Force the input format instead of detecting it: "
        "openai-chat, prompt-completion, alpaca, sharegpt, openai-dpo.",
    ),
]
MapOpt = Annotated[
    str | None,
    typer.Option(
        "--map",
        help="Column mapping for CSV or JSONL with custom columns, e.g. "
        "prompt=title+ingredients,completion=NER (optionally ,system=COL). Columns joined "
        "with + become one labelled turn.",
    ),
]
SystemOpt = Annotated[
    str | None,
    typer.Option("--system", help="System message to add to examples that have none."),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace output files that already exist.")
]
ModelOrRunArg = Annotated[
    str,
    typer.Argument(
        help="A run (its folder, or its name from `tuneforge runs list`), a model, or a served "
        "`ft:` model id."
    ),
]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens to answer.")]


def command_group(help: str) -> typer.Typer:
    """A `tuneforge <group>` app: plain help text (rich's panels cut long option help at 80
    columns), and the group's help when run without a subcommand."""
    return typer.Typer(rich_markup_mode=None, help=help, no_args_is_help=True)


def default_model() -> str:
    from tuneforge.models import DEFAULT_MODEL

    return DEFAULT_MODEL


def load_text_side(model: str) -> Any:
    """The model's tokenizer, chat template, context length and stop ids (no weights), with a
    note on stderr while it loads."""
    from tuneforge.models.registry import REGISTRY, is_cached
    from tuneforge.models.text import load_text_side as load

    first_use = (
        " (first use: converting the embedded model, ~30 s)"
        if (model in REGISTRY and not is_cached(model))
        else ""
    )
    with working(f"loading the tokenizer of {model}{first_use} …"):
        return load(model)


def load_model_arg(model_or_run: str, weight_precision: str = "auto") -> Any:
    """A run (its folder, or its name under $TUNEFORGE_HOME/runs), a model, or a served `ft:`
    model id (a job's run, or one checkpoint), loaded for generation (`weight_precision`: see
    `WeightOpt`)."""
    from tuneforge import run_dir as rd
    from tuneforge.inference.load import load_for_inference

    if model_or_run.startswith("ft:"):
        from tuneforge.jobs.model_ids import resolve_model_id

        run_dir, weights = resolve_model_id(model_or_run)
        return load_for_inference(
            run_dir, weights=weights, packed=True, weight_precision=weight_precision
        )
    found = rd.find_run(model_or_run) or model_or_run
    return load_for_inference(found, packed=True, weight_precision=weight_precision)


WeightOpt = Annotated[
    str,
    typer.Option(
        "--weight-precision",
        help="fp32, bf16 or auto. bf16: the model's weights rounded to bf16 and read by "
        "tuneforge's kernel at half the bytes (decoding faster; answers may differ slightly "
        "from fp32's); auto: bf16 only where the weights are bf16 values already (a bf16 "
        "checkpoint), so nothing is rounded and answers stay the same.",
    ),
]


def check_weight_precision(requested: str) -> str:
    """Check --weight-precision: bf16 needs our kernel (x86-64 Linux, AVX2, a C compiler)."""
    from tuneforge.errors import UsageError
    from tuneforge.inference.prepack import WEIGHT_PRECISIONS

    if requested not in WEIGHT_PRECISIONS:
        raise UsageError(
            f"--weight-precision takes fp32, bf16 or auto, not {requested!r}",
            hint="auto (the default) reads bf16 checkpoints in bf16 and changes no answer",
        )
    if requested == "bf16":
        from tuneforge.inference import small_gemm

        if not small_gemm.available():
            raise UsageError(
                "--weight-precision bf16 needs tuneforge's few-row kernel, which cannot run "
                "here (it needs x86-64 Linux with AVX2 and a C compiler, and "
                "TUNEFORGE_NO_KERNEL unset)",
                hint="use --weight-precision fp32 or auto",
            )
    return requested


def use_free_cores() -> None:
    """torch threads = the cores idle right now (or TUNEFORGE_THREADS), said when fewer than all:
    OpenMP threads next to a busy process wait on each other (BENCHMARKS.md, "CPU threads")."""
    import torch

    from tuneforge.models.device import choose_threads

    threads, why = choose_threads()
    torch.set_num_threads(threads)
    if why != "all cores":
        note(f"using {threads} CPU thread(s): {why} (set TUNEFORGE_THREADS to choose)")


def refuse_to_overwrite(paths: list[Path], overwrite: bool) -> None:
    """One rule for every command that writes files: existing ones are kept unless --overwrite."""
    from tuneforge.errors import UsageError

    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UsageError(
            f"{existing[0]} already exists{more}",
            hint="pass --overwrite to replace it, or name another output",
        )


def progress(
    label: str, *, total_column: str = "count", info: bool = False, enabled: bool = True
) -> Any:
    """The one progress bar of the CLI, on stderr and only on a terminal.

    `label` may use rich's task fields (`{task.description}`, `{task.completed}`); `info` adds
    a free-text column (`info=` in `update`); `total_column` is "count" (3/10 and the elapsed
    time) or "remaining" (the estimated time left, for training).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn(label), BarColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    if total_column == "count":
        columns += [MofNCompleteColumn(), TimeElapsedColumn()]
    else:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=err, disable=not (enabled and err.is_terminal))


def working(message: str) -> Any:
    """`with working("loading …"):` a spinner on a terminal; otherwise the line itself, so a
    log shows what a long silence was."""
    import contextlib

    if err.is_terminal:
        return err.status(message)
    note(message)
    return contextlib.nullcontext()


def note(message: str, style: str | None = None) -> None:
    """A line on stderr, printed as text (never as rich markup)."""
    err.print(Text(message, style=style or ""))


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None
