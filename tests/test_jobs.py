"""Jobs: the SQLite store, model ids, the status rules, and crash safety with real processes
(kill -9 of a worker, of the server, of both; pause and resume; cancel)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from helpers import good_examples, write_lines

from tuneforge import run_dir as rd
from tuneforge.errors import ConfigError, UsageError
from tuneforge.jobs import lifecycle
from tuneforge.jobs.manager import JobManager
from tuneforge.jobs.model_ids import base_label, fine_tuned_model_id, resolve_model_id
from tuneforge.jobs.spec import check_training_config
from tuneforge.jobs.store import MIGRATIONS, Store, new_id


@pytest.fixture
def store(isolated_home) -> Store:
    return Store()


def add_job(store: Store, status: str = "running", **fields) -> dict:
    job_id = new_id("ftjob")
    run_dir = Path(os.environ["TUNEFORGE_HOME"]) / "jobs" / job_id / "run"
    return store.add_job(
        {
            "id": job_id,
            "created_at": int(time.time()),
            "model": "/models/tiny-llama",
            "status": status,
            "training_file": "file-x",
            "hyperparameters": {"n_epochs": "auto"},
            "training_config": {},
            "seed": 0,
            "run_dir": str(run_dir),
        }
        | fields
    )


def fake_run(job: dict, status: str, checkpoint_steps: tuple[int, ...] = ()) -> Path:
    run = Path(job["run_dir"])
    run.mkdir(parents=True, exist_ok=True)
    rd.write_status(run, status=status, step=max(checkpoint_steps, default=0))
    for step in checkpoint_steps:
        folder = run / "checkpoints" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / rd.COMPLETE).write_text(str(step))
    return run


# ---------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------


def test_schema_is_migrated_once_in_wal_mode(store):
    assert store.schema_version == len(MIGRATIONS)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    again = Store(store.path)  # reopening applies nothing twice
    assert again.schema_version == len(MIGRATIONS)


def test_compare_and_set_status(store):
    job = add_job(store, status="queued")
    assert store.update_job(job["id"], expect=("queued",), status="running")
    assert not store.update_job(job["id"], expect=("queued",), status="cancelled")
    assert store.get_job(job["id"])["status"] == "running"


def test_a_status_change_and_its_event_are_written_together(store, tiny_model_dir, tmp_path):
    """The scheduler queues a job just as the API cancels it. Each change's event must come with
    the change, so the events tell the changes in the order they happened: CI once saw "Files
    validated" listed after "cancelled", when the event was a second write after the status."""
    tmp = write_lines(tmp_path / "upload.jsonl", good_examples())
    store.add_file("file-t", tmp, filename="train.jsonl", purpose="fine-tune")
    job = add_job(
        store, status="validating_files", model=str(tiny_model_dir), training_file="file-t"
    )
    manager = JobManager(store)
    update_job = store.update_job

    def cancel_right_after_queued(job_id, **fields):
        done = update_job(job_id, **fields)
        if fields.get("status") == "queued":
            manager.cancel(job_id)  # the API's thread, between the change and anything after it
        return done

    store.update_job = cancel_right_after_queued
    manager._validate(job)
    assert store.get_job(job["id"])["status"] == "cancelled"
    events = [e["message"] for e in store.list_events(job["id"])]  # newest first
    assert events[:2] == [
        "Fine-tuning job cancelled",
        "Files validated, moving job to queued state",
    ]
    # a change that does not happen writes no event
    assert not update_job(job["id"], expect=("queued",), status="running", event="never")
    assert "never" not in [e["message"] for e in store.list_events(job["id"])]


def test_an_expired_file_waits_for_the_unfinished_job_that_reads_it(store, tmp_path):
    """OpenAI's expires_after: past expires_at a file is hidden and deleted, unless a job that
    has not finished reads it (a resumed run reads its data again); then it goes after."""

    def add(file_id: str, expires_after: int | None = 3600) -> dict:
        data = write_lines(tmp_path / f"{file_id}.jsonl", good_examples())
        return store.add_file(
            file_id, data, filename="t.jsonl", purpose="fine-tune", expires_after=expires_after
        )

    now = time.time()
    kept, gone, forever = add("file-kept"), add("file-gone"), add("file-forever", None)
    job = add_job(store, status="running", training_file="file-other", validation_file="file-kept")
    assert store.expire_files(now + 3599) == []
    assert store.expire_files(now + 3601) == ["file-gone"]
    assert store.get_file("file-gone") is None and not Path(gone["path"]).exists()
    assert store.get_file("file-kept") is not None and Path(kept["path"]).exists()
    assert store.get_file("file-forever") is not None
    store.update_job(job["id"], status="succeeded")
    assert store.expire_files(now + 3601) == ["file-kept"]
    assert not Path(kept["path"]).exists() and Path(forever["path"]).exists()


def test_events_page_newest_first(store):
    job = add_job(store)
    for i in range(5):
        store.add_event(job["id"], f"m{i}", type="metrics", data={"step": i})
    page = store.list_events(job["id"], limit=2)
    assert [e["message"] for e in page] == ["m4", "m3"]
    assert page[0]["data"] == {"step": 4}
    older = store.list_events(job["id"], after=page[-1]["id"], limit=10)
    assert [e["message"] for e in older] == ["m2", "m1", "m0"]


def test_model_ids():
    assert base_label("/a/b/tiny-llama/") == "tiny-llama"
    assert base_label("HuggingFaceTB/SmolLM2-135M") == "SmolLM2-135M"
    assert base_label("smollm2-135m-instruct") == "smollm2-135m-instruct"
    job = {"id": "ftjob-abc", "model": "smollm2-135m-instruct", "suffix": "x"}
    assert fine_tuned_model_id(job) == "ft:smollm2-135m-instruct:local:x:abc"
    assert fine_tuned_model_id(job | {"suffix": None}) == "ft:smollm2-135m-instruct:local::abc"


def test_resolve_model_id(store):
    job = add_job(store, status="succeeded")
    run = fake_run(job, "succeeded", (3, 6))
    (run / "model").mkdir()
    model_id = fine_tuned_model_id(job)
    assert resolve_model_id(model_id) == (run, None)
    assert resolve_model_id(f"{model_id}:ckpt-step-3") == (run, run / "checkpoints" / "step-3")
    with pytest.raises(UsageError, match="kept: ckpt-step-3, ckpt-step-6") as exc:
        resolve_model_id(f"{model_id}:ckpt-step-4")
    assert exc.value.hint
    for bad in ("ft:nope", "ft:a:b:c:d", model_id.replace("local", "other"), f"{model_id}:x"):
        with pytest.raises(UsageError, match="unknown fine-tuned model"):
            resolve_model_id(bad)
    running = add_job(store, status="running")
    with pytest.raises(UsageError, match="running, not succeeded"):
        resolve_model_id(fine_tuned_model_id(running))


def test_training_config_keys_are_checked():
    check_training_config({"lora_rank": 8, "max_steps": 3})
    with pytest.raises(ConfigError, match="hyperparameters.n_epochs"):
        check_training_config({"epochs": 2})
    with pytest.raises(ConfigError, match="lora_rnak"):
        check_training_config({"lora_rnak": 8})


# ---------------------------------------------------------------------------------------------
# Status rules (settle) and recovery
# ---------------------------------------------------------------------------------------------


def test_settle_a_killed_worker_requeues_from_the_checkpoint(store):
    job = add_job(store, worker_pid=12345)
    fake_run(job, "running", (2, 4))
    lifecycle.settle(store, job["id"], cause="killed by SIGKILL")
    after = store.get_job(job["id"])
    assert (after["status"], after["crashes"], after["worker_pid"]) == ("queued", 1, None)
    message = store.list_events(job["id"])[0]["message"]
    assert "killed by SIGKILL" in message and "resuming from step 4" in message


def test_settle_a_clean_stop_is_not_a_crash(store):
    job = add_job(store)
    fake_run(job, "interrupted", (2,))
    lifecycle.settle(store, job["id"], cause="shutdown")
    assert store.get_job(job["id"])["crashes"] == 0


def test_settle_gives_up_after_repeated_crashes(store):
    job = add_job(store, crashes=lifecycle.MAX_CRASH_RESTARTS)
    fake_run(job, "running")
    lifecycle.settle(store, job["id"], cause="killed by SIGKILL")
    after = store.get_job(job["id"])
    assert after["status"] == "failed"
    assert after["error"]["code"] == "worker_crashed"
    assert "--resume" in after["error"]["message"]


def test_settle_reads_success_and_failure_from_the_run(store):
    done = add_job(store)
    fake_run(done, "succeeded")
    lifecycle.settle(store, done["id"], cause="exit code 0")
    assert store.get_job(done["id"])["fine_tuned_model"] == fine_tuned_model_id(done)
    failed = add_job(store)
    run = fake_run(failed, "failed")
    rd.write_status(run, error={"code": "nan_loss", "message": "the loss became nan"})
    lifecycle.settle(store, failed["id"], cause="exit code 1")
    assert store.get_job(failed["id"])["error"]["code"] == "nan_loss"
    cancelled = add_job(store, status="cancelled")
    fake_run(cancelled, "interrupted")
    lifecycle.settle(store, cancelled["id"], cause="exit code 0")
    assert store.get_job(cancelled["id"])["status"] == "cancelled"


def test_recovery_requeues_orphans_but_not_live_workers(store):
    orphan = add_job(store, worker_pid=999999)
    fake_run(orphan, "running", (1,))
    alive = add_job(store, worker_pid=os.getpid())
    fake_run(alive, "running")
    with lifecycle.hold_lease(alive["id"]):
        manager = JobManager(store)
        manager.recover()
        assert store.get_job(orphan["id"])["status"] == "queued"
        assert store.get_job(alive["id"])["status"] == "running"
        assert not lifecycle.lease_free(alive["id"])
        manager._start_queued()  # must not start anything on the live worker's job
        assert alive["id"] not in manager.children
        for proc in manager.children.values():
            proc.kill()
            proc.wait()
    assert lifecycle.lease_free(alive["id"])


def test_only_one_scheduler_per_home(store):
    first = JobManager(store)
    first._lock_home()
    with pytest.raises(UsageError, match="another `tuneforge serve`"):
        JobManager(store)._lock_home()


# ---------------------------------------------------------------------------------------------
# Real processes: kill -9, pause, cancel
# ---------------------------------------------------------------------------------------------


def api_post(server, path: str, **kw) -> dict:
    response = httpx.post(f"{server.url}{path}", timeout=30, **kw)
    assert response.status_code == 200, response.text
    return response.json()


def api_get(server, path: str) -> dict:
    response = httpx.get(f"{server.url}{path}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def start_long_job(server, tiny_model_dir: Path, tmp_path: Path) -> dict:
    """45 steps with a checkpoint after each, so a kill lands between two checkpoints."""
    data = write_lines(tmp_path / "train.jsonl", good_examples(60))
    with data.open("rb") as f:
        file = api_post(server, "/v1/files", files={"file": f}, data={"purpose": "fine-tune"})
    body = {
        "model": str(tiny_model_dir),
        "training_file": file["id"],
        "hyperparameters": {"n_epochs": 3, "batch_size": 4},
        "training_config": {"checkpoint_every": 1},
    }
    return api_post(server, "/v1/fine_tuning/jobs", json=body)


def db_job(server, job_id: str) -> dict:
    conn = sqlite3.connect(server.home / "tuneforge.db")
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
    finally:
        conn.close()


def wait_for_checkpoint(server, job_id: str, step: int = 3, timeout: float = 180) -> int:
    run = server.home / "jobs" / job_id / "run"
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = rd.latest_checkpoint(run)
        pid = db_job(server, job_id)["worker_pid"]
        if found and found[0] >= step and pid:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint step-{step} in {timeout} s")


def wait_for_status(server, job_id: str, statuses: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = api_get(server, f"/v1/fine_tuning/jobs/{job_id}")
        if job["status"] in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} is {job['status']}, not {statuses}")


def messages(server, job_id: str) -> list[str]:
    events = api_get(server, f"/v1/fine_tuning/jobs/{job_id}/events?limit=1000")["data"]
    return [e["message"] for e in reversed(events)]


def metric_steps(server, job_id: str) -> list[int]:
    return [r["step"] for r in rd.read_metrics(server.home / "jobs" / job_id / "run")]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.mark.integration
def test_kill_9_of_a_worker_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    from test_api_openai_client import Server

    server = Server(tmp_path / "home").start()
    try:
        job = start_long_job(server, tiny_model_dir, tmp_path)
        os.kill(wait_for_checkpoint(server, job["id"]), signal.SIGKILL)
        done = wait_for_status(server, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
        log = messages(server, job["id"])
        assert any("stopped (killed by SIGKILL)" in m for m in log), log
        assert any(m.startswith("resumed from checkpoint step-") for m in log), log
        assert metric_steps(server, job["id"]) == list(range(1, 46))
    finally:
        server.stop()


@pytest.mark.integration
def test_kill_9_of_server_and_worker_then_restart_resumes(tiny_model_dir, tmp_path):
    from test_api_openai_client import Server

    home = tmp_path / "home"
    server = Server(home).start()
    job = start_long_job(server, tiny_model_dir, tmp_path)
    worker = wait_for_checkpoint(server, job["id"])
    server.kill()
    os.kill(worker, signal.SIGKILL)
    assert db_job(server, job["id"])["status"] == "running"  # what the crash left behind
    server = Server(home).start()
    try:
        done = wait_for_status(server, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
        log = messages(server, job["id"])
        assert any("no live worker when the server started" in m for m in log), log
        assert any(m.startswith("resumed from checkpoint step-") for m in log), log
        assert metric_steps(server, job["id"]) == list(range(1, 46))
        files = api_get(server, "/v1/files")["data"]  # newest first
        # Nothing lost, and the one results file of the one success (not one per restart):
        assert [f["id"] for f in files] == [*done["result_files"], done["training_file"]]
        assert [f["purpose"] for f in files] == ["fine-tune-results", "fine-tune"]
    finally:
        server.stop()


@pytest.mark.integration
def test_kill_9_of_the_server_alone_never_starts_a_second_worker(tiny_model_dir, tmp_path):
    from test_api_openai_client import Server

    home = tmp_path / "home"
    server = Server(home).start()
    job = start_long_job(server, tiny_model_dir, tmp_path)
    worker = wait_for_checkpoint(server, job["id"])
    server.kill()
    server = Server(home).start()
    try:
        # The old worker carries on, watched by the new server, which starts no other. (On a
        # loaded machine the worker may finish its 45 short steps while the new server starts:
        # then it has written its run's success before exiting, and no second worker ran.)
        run = server.home / "jobs" / job["id"] / "run"
        assert pid_alive(worker) or rd.read_status(run)["status"] == "succeeded"
        assert db_job(server, job["id"])["worker_pid"] in (worker, None)
        done = wait_for_status(server, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
        log = messages(server, job["id"])
        assert not any("resumed" in m or "stopped" in m for m in log), log
        assert metric_steps(server, job["id"]) == list(range(1, 46))
    finally:
        server.stop()


@pytest.mark.integration
def test_pause_and_resume_a_reinforcement_job(tiny_model_dir, tmp_path):
    """Pause and resume work for every method: a GRPO job paused after a checkpoint resumes
    from it and succeeds."""
    from test_api_openai_client import Server

    prompts = [
        {"messages": [{"role": "user", "content": f"Prompt {i}"}], "want": "e"} for i in range(16)
    ]
    server = Server(tmp_path / "home").start()
    try:
        data = write_lines(tmp_path / "prompts.jsonl", prompts)
        with data.open("rb") as f:
            file = api_post(server, "/v1/files", files={"file": f}, data={"purpose": "fine-tune"})
        grader = {
            "type": "string_check",
            "name": "has_e",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.want }}",
            "operation": "ilike",
        }
        body = {
            "model": str(tiny_model_dir),
            "training_file": file["id"],
            "method": {
                "type": "reinforcement",
                "reinforcement": {
                    "grader": grader,
                    "hyperparameters": {"n_epochs": 3, "batch_size": 2, "compute_multiplier": 1},
                },
            },
            "training_config": {"checkpoint_every": 1, "max_completion_tokens": 2},
        }
        job = api_post(server, "/v1/fine_tuning/jobs", json=body)
        worker = wait_for_checkpoint(server, job["id"], step=2)
        assert api_post(server, f"/v1/fine_tuning/jobs/{job['id']}/pause")["status"] == "paused"
        deadline = time.time() + 60
        while pid_alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not pid_alive(worker)
        run = server.home / "jobs" / job["id"] / "run"
        paused_at = rd.latest_checkpoint(run)[0]
        assert paused_at < 24  # paused mid-run, not after the last step
        api_post(server, f"/v1/fine_tuning/jobs/{job['id']}/resume")
        done = wait_for_status(server, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
        assert f"resumed from checkpoint step-{paused_at}" in messages(server, job["id"])
        assert [r["step"] for r in rd.read_metrics(run)] == list(range(1, 25))
    finally:
        server.stop()


def test_pause_resume_and_cancel_a_running_job(tiny_model_dir, tmp_path):
    from test_api_openai_client import Server

    server = Server(tmp_path / "home").start()
    try:
        job = start_long_job(server, tiny_model_dir, tmp_path)
        worker = wait_for_checkpoint(server, job["id"])
        assert api_post(server, f"/v1/fine_tuning/jobs/{job['id']}/pause")["status"] == "paused"
        deadline = time.time() + 60
        while pid_alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not pid_alive(worker)
        paused_at = rd.latest_checkpoint(server.home / "jobs" / job["id"] / "run")[0]
        assert wait_for_status(server, job["id"], ("paused",))["status"] == "paused"
        api_post(server, f"/v1/fine_tuning/jobs/{job['id']}/resume")
        done = wait_for_status(server, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
        assert f"resumed from checkpoint step-{paused_at}" in messages(server, job["id"])

        second = start_long_job(server, tiny_model_dir, tmp_path)
        worker = wait_for_checkpoint(server, second["id"])
        cancelled = api_post(server, f"/v1/fine_tuning/jobs/{second['id']}/cancel")
        assert cancelled["status"] == "cancelled"
        deadline = time.time() + 60
        while pid_alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not pid_alive(worker)
        final = api_get(server, f"/v1/fine_tuning/jobs/{second['id']}")
        assert final["status"] == "cancelled" and final["fine_tuned_model"] is None
        assert json.loads(json.dumps(final))["finished_at"]
    finally:
        server.stop()
