"""`tuneforge models …`: the models tuneforge can use."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from tuneforge.cli._common import command_group, default_model, out, working

app = command_group("The models tuneforge can use.")


@app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The registry's models. Size, context length, chat template and cache state."""
    from dataclasses import asdict

    from tuneforge.models import REGISTRY, describe

    infos = [describe(name) for name in REGISTRY]
    if as_json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return
    table = Table()
    for col in ("name", "parameters", "context", "chat template", "cached"):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for i in infos:
        table.add_row(
            i.name,
            f"{i.parameters / 1e6:.1f}M" if i.parameters else "?",
            str(i.context_length or "?"),
            {True: "yes", False: "no", None: "?"}[i.has_chat_template],
            "yes" if i.cached else "no (~30 s on first use)",
            i.description,
        )
    out.print(table)
    out.print("Any local Hugging Face model folder or hub id (with a network) works too.")


@app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Registry name, local folder or hub id.")] = "",
) -> None:
    """Prepare a model now. Converts the embedded GGUF into the cache, so later loads are fast."""
    from tuneforge.models import describe

    name = name or default_model()
    with working(f"preparing {name} …"):
        info = describe(name, resolve=True)
    out.print(
        f"{info.name}: ready ({(info.parameters or 0) / 1e6:.1f}M parameters, "
        f"context {info.context_length})"
    )
