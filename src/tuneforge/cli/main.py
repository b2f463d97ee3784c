"""The `tuneforge` command line. It sits outside the layers: it parses options, calls the library,
and is the only place (with the server) that prints. User mistakes become one clear message and
an exit status — 1 when the data has errors, 2 when the command could not run — never a traceback.

Every command is listed once, in COMMANDS and GROUPS below; `tuneforge X` lives in `cli/<group>.py`.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.text import Text

from tuneforge.cli import data, evaluate, infer, models, serve, train
from tuneforge.cli._common import err, out
from tuneforge.errors import TuneforgeError

app = typer.Typer(
    rich_markup_mode=None,
    help="tuneforge: fine-tune open models on your own examples, measure whether it was worth "
    "it, and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# name → command; `tuneforge --help` lists the commands in this order, then the groups.
GROUPS = {
    "data": data.app,
    "models": models.app,
    "config": train.config_app,
    "runs": train.runs_app,
}
COMMANDS = {
    "train": train.train_cmd,
    "generate": infer.generate_cmd,
    "chat": infer.chat_cmd,
    "export": infer.export_cmd,
    "eval": evaluate.eval_cmd,
    "compare": evaluate.compare_cmd,
    "quickstart": evaluate.quickstart_cmd,
    "serve": serve.serve_cmd,
    "studio": serve.studio_cmd,
}
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def _version(value: bool) -> None:
    if value:
        from tuneforge import __version__

        out.print(f"tuneforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """tuneforge: fine-tune open models on your own examples, measure whether it was worth it,
    and serve them."""


def _quiet_libraries() -> None:
    """Third-party progress bars and deprecation chatter would drown our own output. Set through
    the environment, read when each library is first imported, so a command that never loads
    transformers does not pay ~1.5 s to import it (a user's own TRANSFORMERS_VERBOSITY wins)."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # also transformers' own bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    for name in ("transformers", "peft", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning our errors into one message and an exit status."""
    import click

    _quiet_libraries()

    if os.environ.get("TUNEFORGE_DEBUG"):
        app(args=argv)
        return
    try:
        code = app(args=argv, standalone_mode=False)
    except (typer.Exit, click.exceptions.Exit) as exc:
        code = exc.exit_code
    except (typer.Abort, click.exceptions.Abort):
        err.print("aborted")
        code = 130
    except (typer.TyperException, click.ClickException) as exc:
        # Bad options and arguments (typer vendors its own click): usage message, exit 2.
        exc.show()
        code = exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except TuneforgeError as exc:
        err.print(Text(f"error: {exc.message}", style="red"))
        if exc.hint:
            err.print(Text(f"  fix: {exc.hint}"))
        code = exc.exit_code
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # a bug of ours: say so plainly, keep the traceback one env var away
        err.print(Text(f"internal error: {exc.__class__.__name__}: {exc}", style="red"))
        err.print(
            "  This is a bug in tuneforge. Rerun with TUNEFORGE_DEBUG=1 for the traceback "
            "and report it."
        )
        code = 3
    sys.exit(code if isinstance(code, int) else 0)
