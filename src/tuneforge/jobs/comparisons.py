"""Comparisons run by the server in the background: `tuneforge compare` as a task with progress.

Each comparison is a folder under `$TUNEFORGE_HOME/comparisons/<id>/` — the contract, as a run
directory is for training: `request.json` (what was asked), `status.json` (`queued`, `running`
with the approach in progress and its done/total, `succeeded` or `failed` with the error), and
the files `tuneforge compare --out` writes (`compare.json`, rewritten after every approach;
`report.md`, `report.html`). One comparison runs at a time, on a thread of the server process;
the others wait their turn. A comparison the server was running when it stopped is reported as
failed ("interrupted"), never as running forever.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import TuneforgeError
from tuneforge.paths import tuneforge_home

FINISHED = ("succeeded", "failed")
PROGRESS_EVERY_SECONDS = 1.0


def comparisons_dir() -> Path:
    return tuneforge_home() / "comparisons"


@dataclass
class CompareRequest:
    """Server-side paths and labels: the API resolves ids to these before queueing."""

    test_file: Path
    train_file: Path
    model: str | None
    runs: list[tuple[str, Path]] = field(default_factory=list)  # (label, run directory)
    baselines: bool = True
    limit: int | None = None
    max_new_tokens: int | None = None
    grader: dict[str, Any] | None = None  # an OpenAI grader object, validated by the API
    names: dict[str, str] = field(default_factory=dict)  # the client's file ids and names

    def to_json(self) -> dict[str, Any]:
        return dict(self.names) | {
            "model": self.model,
            "models": [label for label, _ in self.runs],
            "baselines": self.baselines,
            "limit": self.limit,
            "max_tokens": self.max_new_tokens,
            "grader": self.grader,
        }


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class ComparisonRunner:
    """Queues comparisons and runs them one at a time on a daemon thread."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, CompareRequest]] = queue.Queue()
        self._live: set[str] = set()  # queued or running in this process
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- reading ------------------------------------------------------------------------
    def get(self, comparison_id: str) -> dict[str, Any] | None:
        if not comparison_id.startswith("cmp-") or "/" in comparison_id:
            return None
        folder = comparisons_dir() / comparison_id
        request = _read(folder / "request.json")
        if request is None:
            return None
        status = _read(folder / "status.json") or {"status": "queued"}
        with self._lock:
            live = comparison_id in self._live
        if status["status"] not in FINISHED and not live:
            status = status | {
                "status": "failed",
                "error": "interrupted: the server stopped during this comparison; start it again",
            }
        return {
            "id": comparison_id,
            "object": "tuneforge.comparison",
            "created_at": request.pop("created_at", None),
            "request": request,
            **status,
            "result": _read(folder / "compare.json"),
            "has_report": (folder / "report.html").is_file(),
        }

    def list(self) -> list[dict[str, Any]]:
        root = comparisons_dir()
        if not root.is_dir():
            return []
        found = [self.get(p.name) for p in root.iterdir() if p.is_dir()]
        items = [c for c in found if c is not None]
        return sorted(items, key=lambda c: c["created_at"] or 0, reverse=True)

    def report_path(self, comparison_id: str) -> Path | None:
        if self.get(comparison_id) is None:
            return None
        path = comparisons_dir() / comparison_id / "report.html"
        return path if path.is_file() else None

    # -- running ------------------------------------------------------------------------
    def submit(self, request: CompareRequest) -> str:
        comparison_id = f"cmp-{secrets.token_hex(8)}"
        folder = comparisons_dir() / comparison_id
        folder.mkdir(parents=True)
        self._write_status(folder, {"status": "queued"})
        atomic_write_text(
            folder / "request.json",
            json.dumps(request.to_json() | {"created_at": int(time.time())}, indent=2),
        )
        with self._lock:
            self._live.add(comparison_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="tuneforge-compare", daemon=True
                )
                self._thread.start()
        self._queue.put((comparison_id, request))
        return comparison_id

    def _work(self) -> None:
        while True:
            comparison_id, request = self._queue.get()
            try:
                self._run(comparison_id, request)
            finally:
                with self._lock:
                    self._live.discard(comparison_id)

    @staticmethod
    def _write_status(folder: Path, status: dict[str, Any]) -> None:
        atomic_write_text(folder / "status.json", json.dumps(status) + "\n")

    def _run(self, comparison_id: str, request: CompareRequest) -> None:
        from tuneforge.eval.compare import CompareOptions, Comparison

        folder = comparisons_dir() / comparison_id
        state: dict[str, Any] = {"status": "running", "started_at": int(time.time())}
        last = [0.0]

        def progress(name: str, done: int, total: int) -> None:
            state["progress"] = {"approach": name, "done": done, "total": total}
            if time.monotonic() - last[0] >= PROGRESS_EVERY_SECONDS or done == total:
                last[0] = time.monotonic()
                self._write_status(folder, state)

        def event(message: str) -> None:
            state["message"] = message
            self._write_status(folder, state)

        self._write_status(folder, state)
        try:
            options = CompareOptions(
                train_file=request.train_file,
                test_file=request.test_file,
                out_dir=folder,
                model=request.model,
                runs=[run for _, run in request.runs],
                limit=request.limit,
                max_new_tokens=request.max_new_tokens,
                grader=request.grader,
                title=request.names.get("training_filename"),
            )
            comparison = Comparison(options, on_event=event, on_progress=progress)
            if request.baselines:
                comparison.run_baselines()
            for label, run in request.runs:
                comparison.run_fine_tuned(run, label=label)
            comparison.finish()
        except TuneforgeError as exc:
            state |= {"status": "failed", "error": exc.inline()}
        except Exception as exc:  # a bug must not kill the worker thread or hide the reason
            state |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        else:
            failed = [a["name"] for a in comparison.approaches if a["status"] != "ok"]
            state |= {"status": "succeeded"}
            if failed:
                state["warning"] = f"failed approaches: {', '.join(failed)} (see the result)"
        state["finished_at"] = int(time.time())
        state.pop("progress", None)
        self._write_status(folder, state)
