"""Our exception types. User mistakes raise these; the CLI prints them as one message (exit 1 or 2)
and the API maps them to 4xx with OpenAI's error schema. Bad input never becomes a traceback.
"""

from __future__ import annotations


class TuneforgeError(Exception):
    """Base class: a problem the user can fix. `hint` says how."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class UsageError(TuneforgeError):
    """The command could not run at all: unreadable file, bad option (exit 2)."""

    exit_code = 2


class DataError(TuneforgeError):
    """The data has errors (exit 1)."""


class ModelError(TuneforgeError):
    """A model could not be found, loaded or converted."""

    exit_code = 2


class ConfigError(TuneforgeError):
    """A configuration is invalid. Lists every problem at once."""

    exit_code = 2
