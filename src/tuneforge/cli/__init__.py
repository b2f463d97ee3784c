"""The command line (`tuneforge …`); see `tuneforge.cli.main`."""

from tuneforge.cli.main import app, main

__all__ = ["app", "main"]
