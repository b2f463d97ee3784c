"""What a job's status becomes, decided in one place for the worker, the scheduler and restarts.

Statuses: validating_files → queued → running → succeeded | failed | cancelled, plus paused
(a pause checkpoints and stops the worker; resume queues the job again). Every change is a
compare-and-set on the status (`Store.update_job(expect=...)`), so the server and a worker racing
on one job cannot undo each other.

A worker holds an exclusive `flock` on `jobs/<id>/lease` while it lives. The kernel drops the lock
when the process dies, however it dies, so "is the worker alive?" never depends on a pid that the
system may have reused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge import run_dir as rd
from tuneforge.jobs.model_ids import fine_tuned_model_id
from tuneforge.jobs.store import Store, jobs_dir
from tuneforge.locks import file_lock, is_locked

MAX_CRASH_RESTARTS = 3  # a worker killed this many times fails the job instead of looping
LEASE_WAIT_SECONDS = 10.0


class LeaseHeld(RuntimeError):
    """Another live worker holds this job."""


def lease_path(job_id: str) -> Path:
    return jobs_dir() / job_id / "lease"


def lease_free(job_id: str) -> bool:
    return not is_locked(lease_path(job_id))


@contextlib.contextmanager
def hold_lease(job_id: str, wait: float = LEASE_WAIT_SECONDS) -> Iterator[None]:
    """Hold the job's lease for the life of the block; wait briefly because the scheduler's
    liveness probe takes the lock for an instant."""
    with file_lock(lease_path(job_id), wait=wait) as acquired:
        if not acquired:
            raise LeaseHeld(f"job {job_id} already has a live worker")
        yield


def error(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param}


def fail(store: Store, job_id: str, err: dict[str, Any], *, expect: tuple[str, ...]) -> bool:
    return store.update_job(
        job_id,
        expect=expect,
        status="failed",
        error=err,
        finished_at=int(time.time()),
        event=f"Fine-tuning job failed: {err['message']}",
        event_level="error",
    )


def succeed(store: Store, job: dict[str, Any]) -> bool:
    run_dir = Path(job["run_dir"])
    tokens = sum(int(m.get("tokens", 0)) for m in rd.read_metrics(run_dir))
    model_id = fine_tuned_model_id(job)
    if not store.update_job(
        job["id"],
        expect=("running", "paused"),
        status="succeeded",
        fine_tuned_model=model_id,
        trained_tokens=tokens,
        finished_at=int(time.time()),
        error=None,
        event=f"New fine-tuned model created: {model_id}",
    ):
        return False
    results = write_results_file(store, job["id"], run_dir)
    store.update_job(
        job["id"],
        expect=("succeeded",),
        result_files=[results],
        event="The job has successfully completed",
    )
    return True


RESULTS_FILENAME = "step_metrics.csv"  # OpenAI's name for a job's results file
RESULTS_PURPOSE = "fine-tune-results"


# The results file's columns as OpenAI's guide documents them (`step,train_loss,train_accuracy,
# valid_loss,valid_mean_token_accuracy`, then the full-validation pair its files add) → the
# metric each reads. Only the training accuracy is named differently there than in the API's
# checkpoint metrics (`train_mean_token_accuracy`).
RESULTS_COLUMNS = {
    "train_loss": "train_loss",
    "train_accuracy": "train_mean_token_accuracy",
    "valid_loss": "valid_loss",
    "valid_mean_token_accuracy": "valid_mean_token_accuracy",
    "full_valid_loss": "full_valid_loss",
    "full_valid_mean_token_accuracy": "full_valid_mean_token_accuracy",
}
assert set(RESULTS_COLUMNS.values()) == set(rd.METRIC_KEYS)


def write_results_file(store: Store, job_id: str, run_dir: Path) -> str:
    """The run's metrics as OpenAI's results file (`step` and the OpenAI metric names, one row
    per step, empty where a step has no value), stored as a file of purpose fine-tune-results;
    returns its id."""
    import csv
    import io
    import tempfile

    from tuneforge.jobs.store import files_dir, new_id

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["step", *RESULTS_COLUMNS])
    for row in rd.read_metrics(run_dir):
        writer.writerow([row["step"], *(row.get(key, "") for key in RESULTS_COLUMNS.values())])
    folder = files_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".csv", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text.getvalue())
    file_id = new_id("file")
    store.add_file(file_id, Path(tmp), filename=RESULTS_FILENAME, purpose=RESULTS_PURPOSE)
    return file_id


def _checkpoint_note(run_dir: Path) -> str:
    latest = rd.latest_checkpoint(run_dir)
    if latest is None:
        return "no complete checkpoint yet, so training restarts from step 0"
    return f"resuming from step {latest[0]} (its last complete checkpoint)"


def settle(store: Store, job_id: str, cause: str) -> None:
    """The worker of `job_id` is gone (its lease is free): decide the job's status.

    The run directory says how training ended. A job still `running` whose run neither
    succeeded nor failed was stopped from outside (kill -9, a crash, a shutdown): it goes back to
    the queue and resumes from its last complete checkpoint, at most MAX_CRASH_RESTARTS times.
    """
    job = store.get_job(job_id)
    if job is None:
        return
    run_dir = Path(job["run_dir"])
    run = rd.read_status(run_dir) or {}
    if job["status"] in ("running", "paused") and run.get("status") == "succeeded":
        succeed(store, job)
    elif job["status"] == "running" and run.get("status") == "failed":
        recorded = run.get("error") or {}
        fail(
            store,
            job_id,
            error(
                recorded.get("code", "training_failed"),
                recorded.get("message", f"training failed; see {run_dir}"),
            ),
            expect=("running",),
        )
    elif job["status"] == "running":
        # A clean stop (SIGTERM at shutdown checkpoints first) is no crash; kill -9 is.
        crashed = run.get("status") != "interrupted"
        crashes = job["crashes"] + int(crashed)
        if crashes > MAX_CRASH_RESTARTS:
            fail(
                store,
                job_id,
                error(
                    "worker_crashed",
                    f"the training process stopped {crashes} times ({cause}); the "
                    f"run directory {run_dir} keeps its last complete checkpoint — resume it with "
                    f"`tuneforge train --resume {run_dir}` to see the error",
                ),
                expect=("running",),
            )
        else:
            at = f" at step {run['step']}" if run.get("step") else ""
            store.update_job(
                job_id,
                expect=("running",),
                status="queued",
                crashes=crashes,
                event=f"The training process stopped ({cause}){at}; {_checkpoint_note(run_dir)}",
                event_level="warn",
            )
    store.update_job(job_id, worker_pid=None)


def signal_worker(job: dict[str, Any], signum: int) -> bool:
    """Signal a job's worker if it is still alive (its lease is held)."""
    pid = job.get("worker_pid")
    if not pid or lease_free(job["id"]):
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True
