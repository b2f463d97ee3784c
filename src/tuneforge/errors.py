"""Our exception types. User mistakes raise these; the CLI prints them as one message (exit 1 or 2)
and the API maps them to a 4xx in OpenAI's error schema (`http_status`, `code`, `param`). Bad
input never becomes a traceback.

One way to write a problem: the message says what is wrong and where (file and line, or the
field), the hint says what to do. `str(exc)` is the two-line form the CLI prints, `exc.inline()`
the one-line form for HTTP bodies, job errors and events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class TuneforgeError(Exception):
    """Base class: a problem the user can fix. `hint` says how; `param` names the field."""

    exit_code = 1
    http_status = 400
    code: str | None = None  # OpenAI-style error code in API answers

    def __init__(self, message: str, *, hint: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.param = param

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message

    def inline(self) -> str:
        """The message and its fix on one line: "… (fix: …)"."""
        text = " ".join(part.strip().removeprefix("- ") for part in self.message.splitlines())
        return f"{text} (fix: {self.hint})" if self.hint else text


class UsageError(TuneforgeError):
    """The command could not run at all: unreadable file, bad option (exit 2)."""

    exit_code = 2


class DataError(TuneforgeError):
    """The data has errors (exit 1)."""

    code = "invalid_training_file"


class ModelError(TuneforgeError):
    """A model could not be found, loaded or converted."""

    exit_code = 2
    code = "invalid_model"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration: the field (None for the whole) and what is wrong,
    with the fix in the message where it is specific to the field."""

    field: str | None
    message: str

    def __str__(self) -> str:
        return f"`{self.field}`: {self.message}" if self.field else self.message


class ConfigError(TuneforgeError):
    """A configuration is invalid. Lists every problem at once (`problems`), each naming its
    field, so the CLI prints a list and the API can point `param` at the field."""

    exit_code = 2
    code = "invalid_training_config"

    def __init__(
        self,
        message: str | None = None,
        *,
        problems: Iterable[Problem] = (),
        subject: str = "the training config",
        hint: str | None = None,
    ) -> None:
        self.problems = list(problems)
        if message is None:
            message = f"{len(self.problems)} problem(s) in {subject}:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        fields = {p.field for p in self.problems}
        super().__init__(message, hint=hint, param=fields.pop() if len(fields) == 1 else None)
