"""The scheduler: a thread in the server that moves jobs along and owns their worker processes.

Each tick it (1) settles jobs whose worker is gone, (2) signals workers of cancelled or paused
jobs, (3) validates new jobs' files, and (4) starts queued jobs while fewer than
`max_concurrent_jobs` workers live. At start it first recovers from a crash: a job left `running`
without a live worker is queued again to resume from its last complete checkpoint; one whose
worker still lives (the server died, the worker did not) is left to finish and watched.

Only one scheduler may own a TUNEFORGE_HOME at a time (a file lock), so two servers never start
two workers on one job; the per-job lease (see lifecycle.py) guards the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError, UsageError
from tuneforge.jobs import lifecycle
from tuneforge.jobs.store import Store, jobs_dir
from tuneforge.locks import file_lock
from tuneforge.models.text import TextSide, auto_max_seq_len, load_text_side
from tuneforge.paths import tuneforge_home

log = logging.getLogger("tuneforge.jobs")

TICK_SECONDS = 0.25
SHUTDOWN_GRACE_SECONDS = 30.0


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


class JobManager:
    """The scheduler of the module docstring, for one TUNEFORGE_HOME.

    It owns the worker processes it started (`children`), the home's serve.lock and the text
    sides it validates files with. Its loop runs on its own thread ("tuneforge-jobs"); the
    server's lifespan (`api/app.py`) calls `start`/`stop`, and the fine-tuning routes call
    `cancel`/`pause`/`resume` and `wake` (after a new job, so the next tick comes at once).
    """

    def __init__(self, store: Store, max_concurrent_jobs: int = 1) -> None:
        self.store = store
        self.max_concurrent_jobs = max_concurrent_jobs
        self.children: dict[str, subprocess.Popen] = {}
        self._signalled: set[tuple[str, int]] = set()
        self._text_sides: dict[str, TextSide] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._home_lock: contextlib.ExitStack | None = None

    # -- life --------------------------------------------------------------------------------
    def start(self) -> None:
        self._lock_home()
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="tuneforge-jobs", daemon=True)
        self._thread.start()

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop scheduling; ask our workers to checkpoint and exit (their jobs resume later)."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join()
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for job_id, proc in list(self.children.items()):
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("worker of %s still running after %.0f s; leaving it", job_id, grace)
                continue
            lifecycle.settle(self.store, job_id, cause="the server shut down")
        if self._home_lock:
            self._home_lock.close()

    def wake(self) -> None:
        """Run a tick now (after a new job, a cancel or a resume) instead of at the next beat."""
        self._wake.set()

    def _lock_home(self) -> None:
        path = tuneforge_home() / "serve.lock"
        held = contextlib.ExitStack()  # the lock lives until stop() closes it
        if not held.enter_context(file_lock(path, wait=0)):
            held.close()
            raise UsageError(
                f"another `tuneforge serve` already schedules the jobs in {path.parent}",
                hint="stop it, or point TUNEFORGE_HOME at another folder",
            )
        self._home_lock = held

    def recover(self) -> None:
        for job in self.store.jobs_with_status("running"):
            if lifecycle.lease_free(job["id"]):
                lifecycle.settle(
                    self.store, job["id"], cause="no live worker when the server started"
                )
            else:
                log.info(
                    "job %s: its worker (pid %s) still runs; watching it",
                    job["id"],
                    job["worker_pid"],
                )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the scheduler must outlive any one job's surprise
                log.exception("job scheduler tick failed")
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()

    # -- one tick ----------------------------------------------------------------------------
    def tick(self) -> None:
        self.store.expire_files()  # OpenAI's expires_after of uploads
        self.store.expire_uploads()  # /v1/uploads not completed within their hour
        self.store.expire_responses()  # and its 30 days for stored responses
        self._reap()
        self._signal_stopping()
        for job in self.store.jobs_with_status("validating_files"):
            self._validate(job)
        self._start_queued()

    def _reap(self) -> None:
        for job_id, proc in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[job_id]
                lifecycle.settle(self.store, job_id, cause=describe_exit(proc.returncode))
        for job in self.store.jobs_with_worker():
            if job["id"] not in self.children and lifecycle.lease_free(job["id"]):
                lifecycle.settle(self.store, job["id"], cause="its worker process is gone")

    def _signal_stopping(self) -> None:
        for job in self.store.jobs_with_worker():
            if job["status"] not in ("cancelled", "paused"):
                continue
            key = (job["id"], job["worker_pid"])
            if key not in self._signalled and lifecycle.signal_worker(job, signal.SIGINT):
                self._signalled.add(key)

    def _start_queued(self) -> None:
        live = len(self.store.jobs_with_worker())
        for job in self.store.jobs_with_status("queued"):
            if live >= self.max_concurrent_jobs:
                return
            if job["worker_pid"] is not None or not lifecycle.lease_free(job["id"]):
                continue  # a previous worker is still stopping
            if not self.store.update_job(job["id"], expect=("queued",), status="running"):
                continue
            self._spawn(job["id"])
            live += 1

    def _spawn(self, job_id: str) -> None:
        folder = jobs_dir() / job_id
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "worker.log").open("ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tuneforge.jobs.worker", job_id],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C at the server's terminal reaches the server, which
                # stops workers once, instead of every process at once.
                start_new_session=True,
                env=os.environ.copy(),
            )
        self.children[job_id] = proc
        self.store.update_job(job_id, worker_pid=proc.pid)
        log.info("job %s: worker pid %d started", job_id, proc.pid)

    # -- validating_files --------------------------------------------------------------------
    def _text_side(self, model: str) -> TextSide:
        if model not in self._text_sides:
            self._text_sides[model] = load_text_side(model)
        return self._text_sides[model]

    def _validate(self, job: dict[str, Any]) -> None:
        """Check the job's files like `tuneforge data validate`, with its model's tokenizer."""
        from tuneforge.data.validate import validate_file
        from tuneforge.train.plan import PREFERENCE_FORMATS

        job_id = job["id"]
        self.store.add_event(job_id, f"Validating training file: {job['training_file']}")
        try:
            text = self._text_side(job["model"])
            max_seq_len = job["training_config"].get("max_seq_len", "auto")
            if max_seq_len == "auto":  # the plan's `auto`, for validation before the plan
                max_seq_len = auto_max_seq_len(text.context_length)
            for param in ("training_file", "validation_file"):
                file_id = job[param]
                if file_id is None:
                    continue
                row = self.store.get_file(file_id)
                if row is None:
                    raise _file_error(param, f"the file {file_id} was deleted")
                if job["training_config"].get("objective") == "grpo":
                    _check_prompts(param, file_id, row)
                    continue
                report = validate_file(
                    Path(row["path"]),
                    text.tokenizer,
                    text.template,
                    model_name=job["model"],
                    max_seq_len=max_seq_len,
                )
                problems = [
                    issue
                    for issue in report.errors
                    if not (param == "validation_file" and issue.name == "too_few_examples")
                ]
                dpo = job["training_config"].get("objective") == "dpo"
                if dpo and not problems and report.format not in PREFERENCE_FORMATS:
                    raise _file_error(
                        param,
                        f"{file_id} ({row['filename']}) is {report.format}, but a dpo job "
                        "trains on preference pairs: upload OpenAI's DPO JSONL (input, "
                        "preferred_output, non_preferred_output)",
                    )
                if problems:
                    shown = "; ".join(str(i) for i in problems[:3])
                    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                    raise _file_error(
                        param,
                        f"{file_id} ({row['filename']}) has {len(problems)} problem(s): "
                        f"{shown}{more}. Check it with `tuneforge data validate`",
                    )
        except _InvalidFile as exc:
            lifecycle.fail(self.store, job_id, exc.error, expect=("validating_files",))
            return
        except TuneforgeError as exc:
            text = exc.inline()
            lifecycle.fail(
                self.store,
                job_id,
                lifecycle.error("invalid_model", text, "model"),
                expect=("validating_files",),
            )
            return
        self.store.update_job(
            job_id,
            expect=("validating_files",),
            status="queued",
            event="Files validated, moving job to queued state",
        )

    # -- transitions the API asks for ----------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        done = self.store.update_job(
            job_id,
            expect=("validating_files", "queued", "running", "paused"),
            status="cancelled",
            finished_at=int(time.time()),
            event="Fine-tuning job cancelled",
        )
        if done:
            self.wake()
        return done

    def pause(self, job_id: str) -> bool:
        done = self.store.update_job(
            job_id,
            expect=("validating_files", "queued", "running"),
            status="paused",
            event="Fine-tuning job paused; it saves a checkpoint and resumes from it",
        )
        if done:
            self.wake()
        return done

    def resume(self, job_id: str) -> bool:
        """Back through validation: cheap, and right whether the pause came before or after it."""
        done = self.store.update_job(
            job_id, expect=("paused",), status="validating_files", event="Fine-tuning job resumed"
        )
        if done:
            self.wake()
        return done


class _InvalidFile(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


def _file_error(param: str, message: str) -> _InvalidFile:
    code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
    return _InvalidFile(lifecycle.error(code, message, param))


def _check_prompts(param: str, file_id: str, row: dict[str, Any]) -> None:
    """A reinforcement job's file: OpenAI's RFT JSONL (prompts ending with a user message)."""
    from tuneforge.data.formats import load_prompts

    try:
        load_prompts(Path(row["path"]))
    except TuneforgeError as exc:
        text = exc.inline().replace(str(row["path"]), row["filename"])
        raise _file_error(param, f"{file_id} ({row['filename']}): {text}") from None
