"""The command table: `tuneforge --help` lists exactly COMMANDS and GROUPS (LitGPT's
`_check_commands`), every command's --help renders at 80 columns without cutting words, and the
module entry points work."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from tuneforge.cli.main import COMMANDS, GROUPS, app

ROOT = typer.main.get_command(app)


def test_help_lists_exactly_the_command_table():
    assert set(ROOT.commands) == set(COMMANDS) | set(GROUPS)
    assert len(ROOT.commands) == len(COMMANDS) + len(GROUPS)


def _every_command() -> list[list[str]]:
    paths = []
    for name, command in ROOT.commands.items():
        paths.append([name])
        for sub in getattr(command, "commands", {}):
            paths.append([name, sub])
    return paths


@pytest.mark.parametrize("path", _every_command(), ids=" ".join)
def test_every_help_renders_whole_at_80_columns(path, run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(*path, "--help")
    assert code == 0, err
    assert "Usage:" in out
    # Nothing cut to fit the terminal (only "Usage: … [ARGS]..." may end in dots).
    assert "…" not in out
    assert not [line for line in out.splitlines()[1:] if line.endswith("...")]
    assert max(len(line) for line in out.splitlines()) <= 80


def test_module_entry_points_and_version():
    from tuneforge import __version__

    for module in ("tuneforge", "tuneforge.cli"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"tuneforge {__version__}"


def test_chat_says_when_the_conversation_no_longer_fits(tiny_model_dir, run_cli, monkeypatch):
    """A message that would overflow the model's context is refused with the reason and the
    fix, and the chat goes on without it."""
    lines = iter(["why " * 3000, "hello", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, out, err = run_cli("chat", tiny_model_dir, "--max-tokens", "3")
    assert code == 0, err
    assert "reads at most 2048" in err and "/reset" in err
    assert out.count("assistant> ") == 2  # the refused message, then "hello" answered
