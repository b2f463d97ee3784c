"""Exclusive `flock` locks on files: the one way tuneforge keeps processes out of each other's way.

Used for the database's migrations (`jobs/store.py`), a registry model's first conversion
(`models/registry.py`), a job worker's lease (`jobs/lifecycle.py`: the kernel drops the lock
when its process dies, however it dies) and the one scheduler per TUNEFORGE_HOME
(`jobs/manager.py`). A lock is held by an open file; closing it (or the process ending) frees it.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

POLL_SECONDS = 0.05  # how often a waiting `file_lock(wait=...)` tries again


@contextlib.contextmanager
def file_lock(path: Path, *, wait: float | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created, with its folder) for the block; yield whether
    it was taken. wait=None: block until it is free (always True). wait=N: keep trying for N
    seconds (0: once), then yield False and hold nothing; the caller decides what that means."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        acquired = _acquire(f, wait)
        try:
            yield acquired
        finally:
            if acquired:
                fcntl.flock(f, fcntl.LOCK_UN)


def is_locked(path: Path) -> bool:
    """Whether another open file holds the lock on `path` (a missing file: no). Takes the lock
    for an instant when it is free."""
    if not path.exists():
        return False
    with file_lock(path, wait=0) as acquired:
        return not acquired


def _acquire(f: IO[str], wait: float | None) -> bool:
    if wait is None:
        fcntl.flock(f, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
