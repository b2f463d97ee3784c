"""Work the server does in the background, on its own event loop: eval runs (`evals.py`) and
batches (`batches.py`). Each kind has one `QueueRunner` that takes its items one at a time, in
the order they were submitted, and picks up on start those a stopped server left unfinished.
An item's generations go through the same path as a live request, with a `Caller` in place of
the HTTP request: cancelling or deleting the item makes the caller "disconnected", which stops
its generations at their next step."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

log = logging.getLogger(__name__)


class Caller:
    """What `chat.start` / `chat.collect` read of a request: the app, and whether the caller
    has gone (here: the item was cancelled or deleted). Its generations are background work,
    which the engine admits after live requests."""

    background = True

    def __init__(self, app: FastAPI, runner: QueueRunner, key: str) -> None:
        self.app = app
        self._runner = runner
        self._key = key

    async def is_disconnected(self) -> bool:
        return self._key in self._runner.stopped


class QueueRunner:
    """Runs queued items one at a time; subclasses say how (`_execute`), how one fails
    (`_fail`) and which stored items are still to do (`_unfinished`)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.stopped: set[str] = set()  # items cancelled or deleted: stop generating for them
        self.current: str | None = None  # the item being executed
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the loop; items the server left queued or in progress go first."""
        for key in self._unfinished():
            self._queue.put_nowait(key)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, key: str) -> None:
        self._queue.put_nowait(key)

    def cancel(self, key: str) -> None:
        """Stop an item's generations (the caller has changed or deleted the stored item)."""
        self.stopped.add(key)

    def caller(self, key: str) -> Caller:
        return Caller(self.app, self, key)

    async def _loop(self) -> None:
        while True:
            key = await self._queue.get()
            self.current = key
            try:
                await self._execute(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken item must not stop the others
                cause: BaseException = exc
                while isinstance(cause, BaseExceptionGroup):  # a TaskGroup's: say what failed
                    cause = cause.exceptions[0]
                try:
                    await self._fail(key, "server_error", f"{type(cause).__name__}: {cause}")
                except Exception:  # noqa: BLE001 - e.g. the database failing too: go on
                    log.exception("could not record the failure of %s", key)
            finally:
                self.current = None

    def _unfinished(self) -> list[str]:
        raise NotImplementedError

    async def _execute(self, key: str) -> None:
        raise NotImplementedError

    async def _fail(self, key: str, code: str, message: str) -> None:
        raise NotImplementedError
