"""The embedded database: uploaded files, fine-tuning jobs and their events, stored responses
(`/v1/responses`) and chat completions, evals and batches, in one SQLite file at
`$TUNEFORGE_HOME/tuneforge.db`.

Why SQLite: one file, no daemon, transactions that survive kill -9. WAL mode lets the server read
while a worker process appends events; `busy_timeout` makes a writer wait for the lock instead of
failing. The schema only grows by appending to `MIGRATIONS` (datasette/llm style); the database's
`user_version` says how many have been applied. Never edit a migration that has shipped.

Uploaded bytes live under `$TUNEFORGE_HOME/files/<file id>.<ext>`, names we generate; the client's
file name is kept for display only. The run directory stays the record of a training; the jobs
table only points at it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.locks import file_lock
from tuneforge.paths import tuneforge_home

BUSY_TIMEOUT_MS = 5000
RESPONSE_DAYS = 30  # OpenAI keeps a stored response (`store: true`) for 30 days
UNFINISHED = ("validating_files", "queued", "running", "paused")

MIGRATIONS: list[str] = [
    # m001: files, jobs, events
    """
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        status TEXT NOT NULL,
        path TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        model TEXT NOT NULL,
        status TEXT NOT NULL,
        training_file TEXT NOT NULL,
        validation_file TEXT,
        hyperparameters TEXT NOT NULL,
        training_config TEXT NOT NULL,
        suffix TEXT,
        seed INTEGER NOT NULL,
        metadata TEXT,
        fine_tuned_model TEXT,
        model_deleted INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        finished_at INTEGER,
        trained_tokens INTEGER,
        run_dir TEXT NOT NULL,
        worker_pid INTEGER,
        crashes INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_status ON jobs(status);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        created_at INTEGER NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        type TEXT NOT NULL,
        data TEXT
    );
    CREATE INDEX events_job ON events(job_id, seq);
    """,
    # m002: a succeeded job's result files (OpenAI's `result_files`: the step metrics CSV)
    """
    ALTER TABLE jobs ADD COLUMN result_files TEXT;
    """,
    # m003: OpenAI's `integrations` of a job (wandb), as the request gave them
    """
    ALTER TABLE jobs ADD COLUMN integrations TEXT;
    """,
    # m004: downloadable exports of a job's model (a tuneforge extension of the jobs API)
    """
    CREATE TABLE exports (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        created_at INTEGER NOT NULL,
        model TEXT NOT NULL,
        format TEXT NOT NULL,
        quant TEXT,
        ollama INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        file_id TEXT,
        error TEXT,
        finished_at INTEGER
    );
    CREATE INDEX exports_job ON exports(job_id);
    """,
    # m005: stored responses of /v1/responses (OpenAI's `store`, on by default): the response
    # object as returned, the conversation it ends (chat messages, for previous_response_id)
    # and its input items (for GET /v1/responses/{id}/input_items)
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        body TEXT NOT NULL,
        messages TEXT NOT NULL,
        input_items TEXT NOT NULL
    );
    """,
    # m006: OpenAI's `expires_after` of an uploaded file: when it is deleted
    """
    ALTER TABLE files ADD COLUMN expires_at INTEGER;
    """,
    # m007: OpenAI's Evals API: evals, their runs (the run object as returned, kept up to date
    # with its counts) and each run's output items (one per data row, written with the run's
    # new counts in one transaction, so a resumed run skips exactly the rows it has)
    """
    CREATE TABLE evals (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE eval_runs (
        id TEXT PRIMARY KEY,
        eval_id TEXT NOT NULL REFERENCES evals(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX eval_runs_eval ON eval_runs(eval_id, created_at);
    CREATE TABLE eval_output_items (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        run_id TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
        datasource_item_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (run_id, datasource_item_id)
    );
    """,
    # m008: OpenAI's Batch API: batches (the batch object as returned, kept up to date with
    # its counts) and their requests, one row per input line: the request as validated, then
    # its output line (written with the batch's new counts in one transaction, so a resumed
    # batch answers exactly the lines it has not)
    """
    CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE batch_requests (
        batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
        line INTEGER NOT NULL,
        request TEXT NOT NULL,
        output TEXT,
        failed INTEGER,
        PRIMARY KEY (batch_id, line)
    );
    """,
    # m009: stored chat completions (`store: true` on /v1/chat/completions): the completion
    # as returned with the request's settings and metadata, and the request's messages. Kept
    # until deleted (OpenAI keeps them 30 days): they are the user's logs and datasets.
    """
    CREATE TABLE chat_completions (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        model TEXT NOT NULL,
        metadata TEXT NOT NULL,
        body TEXT NOT NULL,
        messages TEXT NOT NULL
    );
    CREATE INDEX chat_completions_created ON chat_completions(created_at);
    """,
    # m010: the stored completions (or responses) an eval run grades (`source.type:
    # stored_completions` or `responses`),
    # fixed when the run is created: a completion stored or deleted later does not move the
    # rows of a run that resumes
    """
    CREATE TABLE eval_run_completions (
        run_id TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
        row INTEGER NOT NULL,
        completion_id TEXT NOT NULL,
        PRIMARY KEY (run_id, row)
    );
    """,
    # m011: OpenAI's Uploads API: an upload (the file it becomes, in parts) and its parts, each
    # a file of its own under files/uploads/<upload id>/ until the upload is completed
    """
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        status TEXT NOT NULL,
        file_expires_after INTEGER,
        file_id TEXT
    );
    CREATE TABLE upload_parts (
        id TEXT PRIMARY KEY,
        upload_id TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        path TEXT NOT NULL
    );
    CREATE INDEX upload_parts_by_upload ON upload_parts(upload_id);
    """,
]

# A file not past its `expires_at` (the one parameter: the time now), or one an unfinished job
# still reads (it goes once the job has finished). Expired files are hidden at once and deleted
# by the scheduler's next tick (`Store.expire_files`).
_UNFINISHED_SQL = ", ".join(f"'{status}'" for status in UNFINISHED)
_LIVE = (
    "(expires_at IS NULL OR expires_at > ? OR id IN (SELECT training_file FROM jobs WHERE "
    f"status IN ({_UNFINISHED_SQL}) UNION SELECT validation_file FROM jobs WHERE "
    f"validation_file IS NOT NULL AND status IN ({_UNFINISHED_SQL})))"
)

_JSON_COLUMNS = (
    "hyperparameters",
    "training_config",
    "metadata",
    "error",
    "data",
    "result_files",
    "integrations",
)


def db_path() -> Path:
    return tuneforge_home() / "tuneforge.db"


def files_dir() -> Path:
    return tuneforge_home() / "files"


def upload_parts_dir(upload_id: str) -> Path:
    """Where the parts of an upload (/v1/uploads) wait until it is completed."""
    return files_dir() / "uploads" / upload_id


def jobs_dir() -> Path:
    return tuneforge_home() / "jobs"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for key in _JSON_COLUMNS:
        if key in out and out[key] is not None:
            out[key] = json.loads(out[key])
    return out


class Store:
    """The database, with one connection per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path or db_path())
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connection and schema -------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE), so a
            # read-then-write never upgrades its lock halfway and deadlocks.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        # A file lock, not only a transaction: two processes starting at once must not both run
        # CREATE TABLE.
        with file_lock(self.path.with_name(self.path.name + ".migrate.lock")):
            conn = self.conn
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version={number};\nCOMMIT;"
                )

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    # -- files -----------------------------------------------------------------------------
    def add_file(
        self,
        file_id: str,
        tmp: Path,
        *,
        filename: str,
        purpose: str,
        expires_after: int | None = None,
        upload_id: str | None = None,
    ) -> dict[str, Any]:
        """Publish an uploaded temp file under our own name, then record it; `expires_after`
        seconds from now it is deleted (`expire_files`). `upload_id`: the pending upload
        (/v1/uploads) it completes, marked completed in the same transaction.

        The rename comes first: a crash in between leaves an unlisted file, never a row that
        points at nothing.
        """
        suffix = Path(tmp).suffix
        final = files_dir() / f"{file_id}{suffix}"
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        created = int(time.time())
        row = {
            "id": file_id,
            "bytes": final.stat().st_size,
            "created_at": created,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "path": str(final),
            "expires_at": None if expires_after is None else created + expires_after,
        }
        try:
            with self.transaction() as conn:
                conn.execute(
                    "INSERT INTO files (id, bytes, created_at, filename, purpose, status, path, "
                    "expires_at) VALUES (:id, :bytes, :created_at, :filename, :purpose, :status, "
                    ":path, :expires_at)",
                    row,
                )
                if upload_id is not None:
                    done = conn.execute(
                        "UPDATE uploads SET status = 'completed', file_id = ? "
                        "WHERE id = ? AND status = 'completing'",
                        (file_id, upload_id),
                    )
                    if done.rowcount != 1:
                        raise ValueError(f"upload {upload_id} is not being completed")
                    conn.execute("DELETE FROM upload_parts WHERE upload_id = ?", (upload_id,))
        except BaseException:
            final.unlink(missing_ok=True)  # not recorded: not kept
            raise
        return row

    # -- uploads (a file sent in parts) ------------------------------------------------------
    # An upload is pending (taking parts), completing (one request joins and checks its parts:
    # nothing else may change it), then completed, cancelled or expired.
    def add_upload(self, row: dict[str, Any]) -> dict[str, Any]:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO uploads (id, bytes, created_at, expires_at, filename, purpose, "
                "mime_type, status, file_expires_after) VALUES (:id, :bytes, :created_at, "
                ":expires_at, :filename, :purpose, :mime_type, 'pending', :file_expires_after)",
                row,
            )
        return self.get_upload(row["id"])  # type: ignore[return-value]

    def get_upload(self, upload_id: str) -> dict[str, Any] | None:
        """The upload, or None; a pending one past its `expires_at` reads as expired."""
        row = _row(self.conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone())
        if row and row["status"] == "pending" and row["expires_at"] <= time.time():
            row["status"] = "expired"
        return row

    def add_upload_part(self, part: dict[str, Any], most: int) -> str | None:
        """Record a part whose file is in place, unless its upload is no longer pending
        ("not pending") or its parts would then hold more than `most` bytes ("too much");
        None when recorded."""
        with self.transaction() as conn:
            pending = conn.execute(
                "SELECT 1 FROM uploads WHERE id = ? AND status = 'pending' AND expires_at > ?",
                (part["upload_id"], time.time()),
            ).fetchone()
            if pending is None:
                return "not pending"
            held = conn.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM upload_parts WHERE upload_id = ?",
                (part["upload_id"],),
            ).fetchone()[0]
            if held + part["bytes"] > most:
                return "too much"
            conn.execute(
                "INSERT INTO upload_parts (id, upload_id, bytes, created_at, path) VALUES "
                "(:id, :upload_id, :bytes, :created_at, :path)",
                part,
            )
        return None

    def upload_parts(self, upload_id: str) -> dict[str, dict[str, Any]]:
        """The upload's parts by id, in the order they were added."""
        rows = self.conn.execute(
            "SELECT * FROM upload_parts WHERE upload_id = ? ORDER BY rowid", (upload_id,)
        )
        return {r["id"]: dict(r) for r in rows}

    def begin_upload_completion(self, upload_id: str) -> bool:
        """pending → completing, if it still is pending and has not expired."""
        with self.transaction() as conn:
            done = conn.execute(
                "UPDATE uploads SET status = 'completing' "
                "WHERE id = ? AND status = 'pending' AND expires_at > ?",
                (upload_id, time.time()),
            )
        return done.rowcount == 1

    def abort_upload_completions(self, upload_id: str | None = None) -> None:
        """completing → pending: a completion that failed (its request answered why), or, with
        no id, every one a crash cut off (the server calls it when it starts)."""
        with self.transaction() as conn:
            if upload_id is None:
                conn.execute("UPDATE uploads SET status = 'pending' WHERE status = 'completing'")
            else:
                conn.execute(
                    "UPDATE uploads SET status = 'pending' WHERE id = ? AND status = 'completing'",
                    (upload_id,),
                )

    def end_upload(self, upload_id: str, status: str) -> bool:
        """A pending upload → `status` (cancelled, expired), its parts deleted, rows and files;
        False (nothing changed) when it was not pending."""
        with self.transaction() as conn:
            done = conn.execute(
                "UPDATE uploads SET status = ? WHERE id = ? AND status = 'pending'",
                (status, upload_id),
            )
            if done.rowcount == 1:
                conn.execute("DELETE FROM upload_parts WHERE upload_id = ?", (upload_id,))
        if done.rowcount == 1:
            shutil.rmtree(upload_parts_dir(upload_id), ignore_errors=True)
        return done.rowcount == 1

    def expire_uploads(self, now: float | None = None) -> list[str]:
        """End the pending uploads past their `expires_at` (OpenAI's: an hour), deleting their
        parts; returns their ids. Also deletes part folders that no pending or completing
        upload owns (left by a crash after a completion, or by a part sent as its upload
        ended)."""
        now = time.time() if now is None else now
        rows = self.conn.execute(
            "SELECT id FROM uploads WHERE status = 'pending' AND expires_at <= ?", (now,)
        )
        gone = [r[0] for r in rows]
        for upload_id in gone:
            self.end_upload(upload_id, "expired")
        folder = files_dir() / "uploads"
        # The folders first, then which uploads are live: an upload's row exists before its
        # folder does, so a folder listed here whose upload is not live now is a leftover; one
        # made for a new upload after the query is not in the list.
        folders = list(folder.iterdir()) if folder.is_dir() else []
        live = {
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM uploads WHERE status IN ('pending', 'completing')"
            )
        }
        for leftover in folders:
            if leftover.name not in live:
                shutil.rmtree(leftover, ignore_errors=True)
        return gone

    def expire_files(self, now: float | None = None) -> list[str]:
        """Delete the files past their `expires_at`, except those an unfinished job still reads
        (they go once it has finished); returns the ids deleted."""
        now = time.time() if now is None else now
        rows = self.conn.execute(f"SELECT id FROM files WHERE NOT {_LIVE}", (now,)).fetchall()
        gone = [r["id"] for r in rows]
        for file_id in gone:
            self.delete_file(file_id)
        return gone

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        """The file, or None; an expired one is gone already (see `_LIVE`)."""
        query = f"SELECT * FROM files WHERE id = ? AND {_LIVE}"
        return _row(self.conn.execute(query, (file_id, time.time())).fetchone())

    def list_files(
        self,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10000,
        oldest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Newest first (OpenAI's `order=desc`) unless `oldest_first`; `after` is the id of the
        last file of the previous page."""
        query = f"SELECT * FROM files WHERE {_LIVE}"
        params: list[Any] = [time.time()]
        if purpose:
            query += " AND purpose = ?"
            params.append(purpose)
        if after:
            side = ">" if oldest_first else "<"
            query += f" AND rowid {side} (SELECT rowid FROM files WHERE id = ?)"
            params.append(after)
        query += f" ORDER BY rowid {'ASC' if oldest_first else 'DESC'} LIMIT ?"
        params.append(limit)
        return [_row(r) for r in self.conn.execute(query, params)]

    def jobs_using_file(self, file_id: str) -> list[str]:
        """Unfinished jobs that still read this file (a resumed run re-reads its data)."""
        marks = ",".join("?" * len(UNFINISHED))
        rows = self.conn.execute(
            f"SELECT id FROM jobs WHERE (training_file = ? OR validation_file = ?) "
            f"AND status IN ({marks})",
            (file_id, file_id, *UNFINISHED),
        )
        return [r[0] for r in rows]

    def delete_file(self, file_id: str) -> bool:
        with self.transaction() as conn:
            row = conn.execute("SELECT path FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
            conn.execute("DELETE FROM exports WHERE file_id = ?", (file_id,))
        Path(row["path"]).unlink(missing_ok=True)
        return True

    # -- jobs ------------------------------------------------------------------------------
    def add_job(self, fields: dict[str, Any]) -> dict[str, Any]:
        row = dict(fields)
        for key in _JSON_COLUMNS:
            if key in row and row[key] is not None:
                row[key] = json.dumps(row[key])
        names = ", ".join(row)
        values = ", ".join(f":{k}" for k in row)
        with self.transaction() as conn:
            conn.execute(f"INSERT INTO jobs ({names}) VALUES ({values})", row)
        return self.get_job(fields["id"])  # type: ignore[return-value]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return _row(self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list_jobs(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; with `metadata`, only jobs whose metadata holds every key/value pair."""
        where: list[str] = []
        params: list[Any] = []
        if after:
            where.append("rowid < (SELECT rowid FROM jobs WHERE id = ?)")
            params.append(after)
        for key, value in (metadata or {}).items():
            where.append(
                "EXISTS (SELECT 1 FROM json_each(jobs.metadata) WHERE key = ? AND value = ?)"
            )
            params += [key, value]
        query = "SELECT * FROM jobs"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY rowid DESC LIMIT ?"
        params.append(limit)
        return [_row(r) for r in self.conn.execute(query, params)]

    def jobs_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        """Oldest first: the scheduler starts jobs in the order they were created."""
        marks = ",".join("?" * len(statuses))
        rows = self.conn.execute(
            f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY rowid", statuses
        )
        return [_row(r) for r in rows]

    def jobs_with_worker(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM jobs WHERE worker_pid IS NOT NULL ORDER BY rowid")
        return [_row(r) for r in rows]

    def update_job(
        self,
        job_id: str,
        *,
        expect: tuple[str, ...] | None = None,
        event: str | None = None,
        event_level: str = "info",
        **fields: Any,
    ) -> bool:
        """Set fields; with `expect`, only if the status is one of those (compare-and-set).

        Every status change goes through here with `expect`, so the server, the scheduler and
        a worker can race on a job without one overwriting another's decision. `event` is the
        change's event, written in the same transaction when the update happens: a status change
        and its event cannot be split by another thread's change (whose event would otherwise
        land first, and the event list would tell the changes in the wrong order).
        """
        values = {
            k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v
            for k, v in fields.items()
        }
        sets = ", ".join(f"{k} = :{k}" for k in values)
        query = f"UPDATE jobs SET {sets} WHERE id = :_id"
        params = values | {"_id": job_id}
        if expect:
            marks = ", ".join(f":_s{i}" for i in range(len(expect)))
            query += f" AND status IN ({marks})"
            params |= {f"_s{i}": s for i, s in enumerate(expect)}
        with self.transaction() as conn:
            done = conn.execute(query, params).rowcount == 1
            if done and event is not None:
                _insert_event(conn, job_id, event, level=event_level)
            return done

    # -- exports ---------------------------------------------------------------------------
    def add_export(self, fields: dict[str, Any]) -> dict[str, Any]:
        names = ", ".join(fields)
        values = ", ".join(f":{k}" for k in fields)
        with self.transaction() as conn:
            conn.execute(f"INSERT INTO exports ({names}) VALUES ({values})", fields)
        return self.get_export(fields["id"])  # type: ignore[return-value]

    def get_export(self, export_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM exports WHERE id = ?", (export_id,)).fetchone()
        return _row(row)

    def list_exports(self, job_id: str) -> list[dict[str, Any]]:
        """Newest first."""
        rows = self.conn.execute(
            "SELECT * FROM exports WHERE job_id = ? ORDER BY rowid DESC", (job_id,)
        )
        return [_row(r) for r in rows]  # type: ignore[misc]

    def update_export(
        self, export_id: str, *, expect: tuple[str, ...] | None = None, **fields: Any
    ) -> bool:
        values = {
            k: json.dumps(v) if k == "error" and v is not None else v for k, v in fields.items()
        }
        query = f"UPDATE exports SET {', '.join(f'{k} = :{k}' for k in values)} WHERE id = :_id"
        params = values | {"_id": export_id}
        if expect:
            query += f" AND status IN ({', '.join(f':_s{i}' for i in range(len(expect)))})"
            params |= {f"_s{i}": s for i, s in enumerate(expect)}
        with self.transaction() as conn:
            return conn.execute(query, params).rowcount == 1

    def fail_unfinished_exports(self, message: str) -> None:
        """At start-up: an export a stopped server left queued or running never finishes."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE exports SET status = 'failed', error = ?, finished_at = ? "
                "WHERE status IN ('queued', 'running')",
                (json.dumps({"code": "server_stopped", "message": message}), int(time.time())),
            )

    # -- responses -------------------------------------------------------------------------
    def add_response(
        self, body: dict[str, Any], messages: list[dict[str, Any]], input_items: list[dict]
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO responses (id, created_at, body, messages, input_items) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    body["id"],
                    body["created_at"],
                    json.dumps(body),
                    json.dumps(messages),
                    json.dumps(input_items),
                ),
            )

    def get_response(self, response_id: str) -> dict[str, Any] | None:
        """{"body": the response object, "messages": the conversation it ends, "input_items"},
        or None; one older than RESPONSE_DAYS is gone already (`expire_responses`)."""
        row = self.conn.execute(
            "SELECT body, messages, input_items FROM responses WHERE id = ? AND created_at > ?",
            (response_id, time.time() - RESPONSE_DAYS * 86400),
        ).fetchone()
        if row is None:
            return None
        return {key: json.loads(row[key]) for key in ("body", "messages", "input_items")}

    def list_responses(
        self,
        *,
        limit: int,
        oldest_first: bool = True,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
        instructions_search: str | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        tools: list[str] | None = None,
        users: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Stored responses ({"body", "messages"}) matching every filter given (OpenAI's eval
        source's): the model, each metadata pair, created_at within [after, before]
        (inclusive), instructions containing the search text, the sampling settings, every
        tool named among its tools, its `user` or `safety_identifier` among `users`; none past
        RESPONSE_DAYS. All in SQL, so `limit` counts matches."""
        where = " AND created_at > ?"
        params: list[Any] = [time.time() - RESPONSE_DAYS * 86400]
        if model is not None:
            where += " AND json_extract(body, '$.model') = ?"
            params.append(model)
        for key, value in (metadata or {}).items():
            where += (
                " AND EXISTS (SELECT 1 FROM json_each(json_extract(body, '$.metadata')) "
                "WHERE key = ? AND value = ?)"
            )
            params += [key, value]
        if created_after is not None:
            where += " AND created_at >= ?"
            params.append(created_after)
        if created_before is not None:
            where += " AND created_at <= ?"
            params.append(created_before)
        if instructions_search:
            where += " AND instr(coalesce(json_extract(body, '$.instructions'), ''), ?) > 0"
            params.append(instructions_search)
        for key, value in (("temperature", temperature), ("top_p", top_p)):
            if value is not None:
                where += f" AND json_extract(body, '$.{key}') = ?"
                params.append(value)
        for name in tools or ():
            where += (
                " AND EXISTS (SELECT 1 FROM json_each(json_extract(body, '$.tools')) "
                "WHERE json_extract(value, '$.name') = ?)"
            )
            params.append(name)
        if users:
            marks = ", ".join("?" * len(users))
            where += (
                f" AND (json_extract(body, '$.user') IN ({marks}) "
                f"OR json_extract(body, '$.safety_identifier') IN ({marks}))"
            )
            params += [*users, *users]
        direction = "ASC" if oldest_first else "DESC"
        rows = self.conn.execute(
            f"SELECT body, messages FROM responses WHERE 1 = 1{where} "
            f"ORDER BY created_at {direction}, rowid {direction} LIMIT ?",
            [*params, limit],
        ).fetchall()
        return [{key: json.loads(r[key]) for key in ("body", "messages")} for r in rows]

    def expire_responses(self, now: float | None = None) -> int:
        """Delete the stored responses older than RESPONSE_DAYS; returns how many."""
        cutoff = (time.time() if now is None else now) - RESPONSE_DAYS * 86400
        with self.transaction() as conn:
            return conn.execute("DELETE FROM responses WHERE created_at <= ?", (cutoff,)).rowcount

    def delete_response(self, response_id: str) -> bool:
        with self.transaction() as conn:
            return conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount == 1

    # -- stored chat completions -----------------------------------------------------------
    def add_chat_completion(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO chat_completions (id, created_at, model, metadata, body, messages) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    body["id"],
                    body["created"],
                    body["model"],
                    json.dumps(body.get("metadata") or {}),
                    json.dumps(body),
                    json.dumps(messages),
                ),
            )

    def get_chat_completion(self, completion_id: str) -> dict[str, Any] | None:
        """{"body": the completion as stored, "messages": the request's messages}, or None."""
        row = self.conn.execute(
            "SELECT body, messages FROM chat_completions WHERE id = ?", (completion_id,)
        ).fetchone()
        if row is None:
            return None
        return {"body": json.loads(row["body"]), "messages": json.loads(row["messages"])}

    def list_chat_completions(
        self,
        *,
        after: str | None = None,
        limit: int,
        oldest_first: bool = True,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
        with_messages: bool = False,
    ) -> list[dict[str, Any]]:
        """A page of stored completions (bodies; with_messages: {"body", "messages"}) that
        match every filter: the model, each metadata pair, created_at in (after, before)."""
        where, params = "", []
        if model is not None:
            where += " AND model = ?"
            params.append(model)
        for key, value in (metadata or {}).items():
            where += " AND EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND value = ?)"
            params += [key, value]
        if created_after is not None:
            where += " AND created_at > ?"
            params.append(created_after)
        if created_before is not None:
            where += " AND created_at < ?"
            params.append(created_before)
        direction, compare = ("ASC", ">") if oldest_first else ("DESC", "<")
        query = f"SELECT body, messages FROM chat_completions WHERE 1 = 1{where}"
        if after:
            query += (
                f" AND (created_at, rowid) {compare} "
                "(SELECT created_at, rowid FROM chat_completions WHERE id = ?)"
            )
            params.append(after)
        query += f" ORDER BY created_at {direction}, rowid {direction} LIMIT ?"
        params.append(limit)
        rows = self.conn.execute(query, params).fetchall()
        if with_messages:
            return [{key: json.loads(r[key]) for key in ("body", "messages")} for r in rows]
        return [json.loads(r["body"]) for r in rows]

    def update_chat_completion_metadata(
        self, completion_id: str, metadata: dict[str, str]
    ) -> dict[str, Any] | None:
        """Replace a stored completion's metadata; returns the new body, or None."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT body FROM chat_completions WHERE id = ?", (completion_id,)
            ).fetchone()
            if row is None:
                return None
            body = json.loads(row["body"]) | {"metadata": metadata}
            conn.execute(
                "UPDATE chat_completions SET metadata = ?, body = ? WHERE id = ?",
                (json.dumps(metadata), json.dumps(body), completion_id),
            )
        return body

    def delete_chat_completion(self, completion_id: str) -> bool:
        with self.transaction() as conn:
            query = "DELETE FROM chat_completions WHERE id = ?"
            return conn.execute(query, (completion_id,)).rowcount == 1

    # -- evals -----------------------------------------------------------------------------
    def add_eval(self, body: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO evals (id, created_at, updated_at, body) VALUES (?, ?, ?, ?)",
                (body["id"], body["created_at"], body["created_at"], json.dumps(body)),
            )

    def get_eval(self, eval_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT body FROM evals WHERE id = ?", (eval_id,)).fetchone()
        return None if row is None else json.loads(row["body"])

    def update_eval(self, body: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE evals SET body = ?, updated_at = ? WHERE id = ?",
                (json.dumps(body), int(time.time()), body["id"]),
            )

    def list_evals(
        self, *, after: str | None, limit: int, oldest_first: bool, by: str = "created_at"
    ) -> list[dict[str, Any]]:
        return self._page("evals", "", [], after, limit, oldest_first, by)

    def delete_eval(self, eval_id: str) -> bool:
        """The eval, its runs and their output items (ON DELETE CASCADE)."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM evals WHERE id = ?", (eval_id,)).rowcount == 1

    def add_eval_run(self, body: dict[str, Any], completion_ids: list[str] | None = None) -> None:
        """A run and, for a run of stored completions, the ids of those it grades, in order."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO eval_runs (id, eval_id, created_at, status, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (body["id"], body["eval_id"], body["created_at"], body["status"], json.dumps(body)),
            )
            conn.executemany(
                "INSERT INTO eval_run_completions (run_id, row, completion_id) VALUES (?, ?, ?)",
                [(body["id"], row, cid) for row, cid in enumerate(completion_ids or ())],
            )

    def eval_run_completions(
        self, run_id: str, responses: bool = False
    ) -> list[tuple[str, dict[str, Any] | None]]:
        """The stored chat completions (or responses) a run grades, in row order: (id,
        {"body", "messages"}, or None for one deleted, or expired, since the run was made)."""
        table, live = "chat_completions", ""
        params: list[Any] = [run_id]
        if responses:
            table, live = "responses", " AND c.created_at > ?"
            params.insert(0, time.time() - RESPONSE_DAYS * 86400)
        rows = self.conn.execute(
            "SELECT r.completion_id, c.body, c.messages FROM eval_run_completions r "
            f"LEFT JOIN {table} c ON c.id = r.completion_id{live} "
            "WHERE r.run_id = ? ORDER BY r.row",
            params,
        ).fetchall()
        return [
            (
                r["completion_id"],
                None
                if r["body"] is None
                else {"body": json.loads(r["body"]), "messages": json.loads(r["messages"])},
            )
            for r in rows
        ]

    def get_eval_run(self, run_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT body FROM eval_runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else json.loads(row["body"])

    def set_eval_run_status(
        self,
        run_id: str,
        status: str,
        *,
        only_from: tuple[str, ...],
        error: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """Move a run to `status` if its stored status is one of `only_from` (a compare-and-set
        inside one transaction, on the stored body: the counts a concurrent output item wrote
        are kept). Returns the new body, or None when the run is gone or in another status."""
        with self.transaction() as conn:
            row = conn.execute("SELECT body FROM eval_runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            body = json.loads(row["body"])
            if body["status"] not in only_from:
                return None
            body["status"] = status
            if error is not None:
                body["error"] = error
            conn.execute(
                "UPDATE eval_runs SET body = ?, status = ? WHERE id = ?",
                (json.dumps(body), status, run_id),
            )
        return body

    def list_eval_runs(
        self,
        eval_id: str,
        *,
        after: str | None,
        limit: int,
        oldest_first: bool,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        where, params = " AND eval_id = ?", [eval_id]
        if status:
            where, params = where + " AND status = ?", params + [status]
        return self._page("eval_runs", where, params, after, limit, oldest_first)

    def eval_runs_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            f"SELECT body FROM eval_runs WHERE status IN ({', '.join('?' * len(statuses))}) "
            "ORDER BY created_at, rowid",
            statuses,
        )
        return [json.loads(r["body"]) for r in rows]

    def delete_eval_run(self, run_id: str) -> bool:
        with self.transaction() as conn:
            return conn.execute("DELETE FROM eval_runs WHERE id = ?", (run_id,)).rowcount == 1

    def add_output_item(self, item: dict[str, Any], run: dict[str, Any]) -> bool:
        """One row's output item and the run's new counts, together; False (nothing written)
        when the run is no longer in progress (cancelled or deleted meanwhile)."""
        with self.transaction() as conn:
            live = conn.execute(
                "UPDATE eval_runs SET body = ? WHERE id = ? AND status = 'in_progress'",
                (json.dumps(run), run["id"]),
            ).rowcount
            if live:
                conn.execute(
                    "INSERT INTO eval_output_items (id, run_id, datasource_item_id, status, body) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        item["id"],
                        item["run_id"],
                        item["datasource_item_id"],
                        item["status"],
                        json.dumps(item),
                    ),
                )
        return bool(live)

    def output_item_rows(self, run_id: str) -> set[int]:
        """The data rows (datasource_item_id) a run has already graded."""
        rows = self.conn.execute(
            "SELECT datasource_item_id FROM eval_output_items WHERE run_id = ?", (run_id,)
        )
        return {r[0] for r in rows}

    def get_output_item(self, run_id: str, item_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT body FROM eval_output_items WHERE id = ? AND run_id = ?", (item_id, run_id)
        ).fetchone()
        return None if row is None else json.loads(row["body"])

    def list_output_items(
        self,
        run_id: str,
        *,
        after: str | None,
        limit: int,
        oldest_first: bool,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """In the order of the data rows (`asc`), whatever order they were graded in."""
        query = "SELECT body FROM eval_output_items WHERE run_id = ?"
        params: list[Any] = [run_id]
        if status:
            query += " AND status = ?"
            params.append(status)
        if after:
            compare = ">" if oldest_first else "<"
            query += (
                f" AND datasource_item_id {compare} "
                "(SELECT datasource_item_id FROM eval_output_items WHERE id = ?)"
            )
            params.append(after)
        query += f" ORDER BY datasource_item_id {'ASC' if oldest_first else 'DESC'} LIMIT ?"
        params.append(limit)
        return [json.loads(r["body"]) for r in self.conn.execute(query, params)]

    def _page(
        self,
        table: str,
        where: str,
        params: list[Any],
        after: str | None,
        limit: int,
        oldest_first: bool,
        by: str = "created_at",
    ) -> list[dict[str, Any]]:
        """A page of bodies ordered by `by` then rowid; `after`: the last id of the page before."""
        direction, compare = ("ASC", ">") if oldest_first else ("DESC", "<")
        query = f"SELECT body FROM {table} WHERE 1 = 1{where}"
        params = list(params)
        if after:
            query += f" AND ({by}, rowid) {compare} (SELECT {by}, rowid FROM {table} WHERE id = ?)"
            params.append(after)
        query += f" ORDER BY {by} {direction}, rowid {direction} LIMIT ?"
        params.append(limit)
        return [json.loads(r["body"]) for r in self.conn.execute(query, params)]

    # -- batches ---------------------------------------------------------------------------
    def add_batch(self, body: dict[str, Any], requests: list[tuple[int, dict[str, Any]]]) -> None:
        """A batch and its input lines (line number, request), together."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO batches (id, created_at, status, body) VALUES (?, ?, ?, ?)",
                (body["id"], body["created_at"], body["status"], json.dumps(body)),
            )
            conn.executemany(
                "INSERT INTO batch_requests (batch_id, line, request) VALUES (?, ?, ?)",
                ((body["id"], line, json.dumps(request)) for line, request in requests),
            )

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT body FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return None if row is None else json.loads(row["body"])

    def list_batches(self, *, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first, as OpenAI lists them."""
        return self._page("batches", "", [], after, limit, oldest_first=False)

    def batches_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            f"SELECT body FROM batches WHERE status IN ({', '.join('?' * len(statuses))}) "
            "ORDER BY created_at, rowid",
            statuses,
        )
        return [json.loads(r["body"]) for r in rows]

    def set_batch_status(
        self, batch_id: str, status: str, *, only_from: tuple[str, ...], **fields: Any
    ) -> dict[str, Any] | None:
        """Move a batch to `status` (and set `fields` of its body, with `<status>_at` now) if
        its stored status is one of `only_from`: a compare-and-set on the stored body, so the
        counts a concurrent answer wrote are kept. The new body, or None when it is gone or
        in another status."""
        with self.transaction() as conn:
            row = conn.execute("SELECT body FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                return None
            body = json.loads(row["body"])
            if body["status"] not in only_from:
                return None
            body |= fields | {"status": status, f"{status}_at": int(time.time())}
            conn.execute(
                "UPDATE batches SET body = ?, status = ? WHERE id = ?",
                (json.dumps(body), status, batch_id),
            )
        return body

    def unanswered_batch_requests(self, batch_id: str) -> list[tuple[int, dict[str, Any]]]:
        """(line, request) of the lines without an output yet, in the file's order."""
        rows = self.conn.execute(
            "SELECT line, request FROM batch_requests WHERE batch_id = ? AND output IS NULL "
            "ORDER BY line",
            (batch_id,),
        )
        return [(r["line"], json.loads(r["request"])) for r in rows]

    def add_batch_output(
        self, batch: dict[str, Any], line: int, output: dict[str, Any], failed: bool
    ) -> bool:
        """One line's output and the batch's new body (its counts), together; False (nothing
        written) when the batch is no longer in progress (cancelled meanwhile)."""
        with self.transaction() as conn:
            live = conn.execute(
                "UPDATE batches SET body = ? WHERE id = ? AND status = 'in_progress'",
                (json.dumps(batch), batch["id"]),
            ).rowcount
            if live:
                conn.execute(
                    "UPDATE batch_requests SET output = ?, failed = ? "
                    "WHERE batch_id = ? AND line = ?",
                    (json.dumps(output), int(failed), batch["id"], line),
                )
        return bool(live)

    def batch_outputs(self, batch_id: str) -> list[tuple[int, dict[str, Any], dict | None, bool]]:
        """Every line, in the file's order: (line, request, output or None, failed)."""
        rows = self.conn.execute(
            "SELECT line, request, output, failed FROM batch_requests WHERE batch_id = ? "
            "ORDER BY line",
            (batch_id,),
        )
        return [
            (
                r["line"],
                json.loads(r["request"]),
                None if r["output"] is None else json.loads(r["output"]),
                bool(r["failed"]),
            )
            for r in rows
        ]

    # -- events ----------------------------------------------------------------------------
    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        with self.transaction() as conn:
            _insert_event(conn, job_id, message, level=level, type=type, data=data)

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Newest first, like OpenAI; `after` is the id of the last event of the previous page."""
        query = "SELECT * FROM events WHERE job_id = ?"
        params: list[Any] = [job_id]
        if after:
            query += " AND seq < (SELECT seq FROM events WHERE id = ?)"
            params.append(after)
        query += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        return [_row(r) for r in self.conn.execute(query, params)]

    def events_since(
        self, job_id: str, *, after: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Oldest first, those after the event `after` (all of them when it is None or unknown):
        what a live stream sends next, and what it replays from a `Last-Event-ID`."""
        query = "SELECT * FROM events WHERE job_id = ?"
        params: list[Any] = [job_id]
        if after:
            query += " AND seq > COALESCE((SELECT seq FROM events WHERE id = ? AND job_id = ?), 0)"
            params += [after, job_id]
        query += " ORDER BY seq ASC LIMIT ?"
        params.append(limit)
        return [_row(r) for r in self.conn.execute(query, params)]


def _insert_event(
    conn: sqlite3.Connection,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO events (id, job_id, created_at, level, message, type, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            new_id("ftevent"),
            job_id,
            int(time.time()),
            level,
            message,
            type,
            json.dumps(data) if data is not None else None,
        ),
    )
