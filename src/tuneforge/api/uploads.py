"""/v1/uploads: OpenAI's Uploads API, a file sent in parts.

For files larger than one request should carry (OpenAI's /v1/files takes 512 MB; an upload up
to 8 GB): create an Upload (file name, purpose, total bytes, MIME type), add Parts of up to
64 MB each (one request per part, in any order), then complete it with the part ids in the
order they make the file, optionally with the MD5 of the whole. The parts are joined into one
file, checked as /v1/files checks an upload of that purpose (line and field named), and
published as a File, which the completed Upload carries. The official SDK's
`client.uploads.upload_file_chunked(file=..., mime_type=..., purpose=...)` does all three.
An Upload expires an hour after it was created, as OpenAI's do: then no part can be added, it
cannot be completed, and its parts are deleted.

Crash safety: each part is written to a temp file, synced, and renamed into place under
`$TUNEFORGE_HOME/files/uploads/<upload id>/`, then recorded; a part cut off mid-request is never
recorded, and the client sends it again. A completion first moves the upload from pending to
completing (so no part is added, and neither a cancel nor the expiry deletes the parts it is
joining), then publishes the file, marks the upload completed and forgets its parts in one
transaction (`Store.add_file(upload_id=...)`). A completion that fails says why and leaves the
upload pending; one cut off by a crash is pending again when the server starts; part folders no
pending upload owns are swept by the job manager's tick (`Store.expire_uploads`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from tuneforge.api import files
from tuneforge.api.batches import OutputExpiresAfter
from tuneforge.api.deps import get_store
from tuneforge.api.errors import APIError, not_found
from tuneforge.api.schemas import FileObject, Strict
from tuneforge.jobs.store import files_dir, new_id, upload_parts_dir

router = APIRouter()

MAX_PART_BYTES = 64 * 1024 * 1024  # OpenAI's limit for one part
MAX_UPLOAD_BYTES = 8 * 1024**3  # OpenAI's limit for a whole upload
# Room for parts sent again (the SDK retries a part whose answer was lost, and the first one may
# have been kept): the parts of an upload hold at most twice its bytes.
PART_ROOM = 2
PART_PATH = re.compile(r"/v1/uploads/[^/]+/parts")  # the body cap of `app.Guard`
EXPIRES_S = 3600  # OpenAI's: an upload expires an hour after it was created


class UploadCreate(Strict):
    bytes: int = Field(ge=1, le=MAX_UPLOAD_BYTES, description="The file's size in bytes.")
    filename: str = Field(min_length=1, max_length=255)
    mime_type: str = Field(
        min_length=1, max_length=255, description="e.g. text/jsonl (recorded, not checked)."
    )
    purpose: str = Field(max_length=64, description="fine-tune, evals or batch, as for /v1/files.")
    expires_after: OutputExpiresAfter | None = Field(
        None, description="When the completed file is deleted, as for /v1/files."
    )


class UploadComplete(Strict):
    part_ids: list[Annotated[str, Field(max_length=128)]] = Field(
        min_length=1, max_length=10_000, description="The parts, in the file's order."
    )
    md5: str | None = Field(None, max_length=64, description="The MD5 (hex) of the whole file.")


class Upload(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None


class UploadPart(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


def _disk_full(exc: OSError, what: str) -> APIError | None:
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return APIError(
        507,
        f"The server's disk is full: {what} was not kept. Free some space on the server, then "
        "send it again (the parts already added are kept)",
        code="insufficient_storage",
    )


def upload_object(request: Request, row: dict) -> dict:
    fields = ("id", "bytes", "created_at", "expires_at", "filename", "purpose", "status")
    file = get_store(request).get_file(row["file_id"]) if row.get("file_id") else None
    shown = {k: row[k] for k in fields}
    if shown["status"] == "completing":  # not one of OpenAI's: still pending to a client
        shown["status"] = "pending"
    return shown | {
        "object": "upload",
        "file": files.file_object(file) if file else None,
    }


def _pending(request: Request, upload_id: str) -> dict:
    """The upload, which must still take parts; an expired one is ended here (parts deleted)."""
    store = get_store(request)
    row = store.get_upload(upload_id)
    if row is None:
        raise not_found("Upload", upload_id, param="upload_id")
    if row["status"] == "expired":
        store.end_upload(upload_id, "expired")  # its parts go now, not at the next tick
    if row["status"] == "completing":
        raise APIError(
            409,
            f"Upload {upload_id} is being completed by another request; wait for its answer",
            param="upload_id",
            code="upload_in_progress",
        )
    if row["status"] != "pending":
        how = {
            "completed": f"it is completed already (its file is {row.get('file_id')})",
            "cancelled": "it was cancelled",
            "expired": f"it expired {EXPIRES_S // 60} minutes after it was created",
        }[row["status"]]
        raise APIError(
            400,
            f"Upload {upload_id} takes no more parts or completion: {how}. Create a new upload",
            param="upload_id",
        )
    return row


@router.post("/v1/uploads", response_model=Upload)
def create_upload(request: Request, body: UploadCreate) -> dict:
    filename = Path(body.filename).name[:255] or "upload.jsonl"
    files.check_purpose(body.purpose, filename)
    streamed = body.purpose == files.PURPOSE and files.extension(filename) in (".jsonl", ".csv")
    limit = request.app.state.max_upload_bytes
    if body.bytes > limit and not streamed:
        # Checked line by line, fine-tuning JSONL and CSV may be as large as an upload goes;
        # the others are read whole when checked.
        raise APIError(
            400,
            f"An upload over {limit:,} bytes must be fine-tuning data in .jsonl or .csv (checked "
            f"line by line); a {body.purpose} file or a .json array is read whole, so it is "
            "limited as /v1/files is",
            param="bytes",
        )
    created = int(time.time())
    row = get_store(request).add_upload(
        {
            "id": new_id("upload"),
            "bytes": body.bytes,
            "created_at": created,
            "expires_at": created + EXPIRES_S,
            "filename": filename,
            "purpose": body.purpose,
            "mime_type": body.mime_type,
            "file_expires_after": body.expires_after.seconds if body.expires_after else None,
        }
    )
    return upload_object(request, row)


@router.post("/v1/uploads/{upload_id}/parts", response_model=UploadPart)
async def add_upload_part(
    request: Request,
    upload_id: str,
    data: Annotated[UploadFile, File(description=f"Up to {MAX_PART_BYTES >> 20} MB of the file.")],
) -> dict:
    form = await request.form()
    for key in form:
        if key != "data":
            raise APIError(
                400, f"Unrecognized request argument supplied: {key[:64]}", param=key[:64]
            )
    await run_in_threadpool(_pending, request, upload_id)
    folder = upload_parts_dir(upload_id)
    folder.mkdir(parents=True, exist_ok=True)
    part_id = new_id("part")
    fd, name = tempfile.mkstemp(prefix=".part-", dir=folder)
    tmp, final = Path(name), folder / part_id
    size = 0
    try:
        with open(fd, "wb") as out:
            while chunk := await data.read(files.CHUNK):
                size += len(chunk)
                if size > MAX_PART_BYTES:
                    raise APIError(
                        413,
                        f"A part holds at most {MAX_PART_BYTES:,} bytes (64 MB); send the file "
                        "in smaller parts",
                        param="data",
                        code="file_too_large",
                    )
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())  # on disk before it is recorded
        if size == 0:
            raise APIError(400, "The part is empty: send some of the file's bytes", param="data")
        try:
            tmp.replace(final)
        except FileNotFoundError:  # cancelled (or expired) while it was being sent
            await run_in_threadpool(_pending, request, upload_id)
            raise

        part = {
            "id": part_id,
            "upload_id": upload_id,
            "bytes": size,
            "created_at": int(time.time()),
            "path": str(final),
        }
        upload = await run_in_threadpool(_pending, request, upload_id)
        most = PART_ROOM * upload["bytes"]
        refused = await run_in_threadpool(get_store(request).add_upload_part, part, most)
        if refused == "too much":
            raise APIError(
                400,
                f"The parts of upload {upload_id} would hold more than {most:,} bytes, twice "
                f"the {upload['bytes']:,} it was created for: create a new upload with the "
                "file's size",
                param="data",
            )
        if refused:
            await run_in_threadpool(_pending, request, upload_id)  # says why
            raise APIError(400, f"Upload {upload_id} takes no more parts", param="upload_id")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise (_disk_full(exc, "the part") or exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    return {k: part[k] for k in ("id", "created_at", "upload_id")} | {"object": "upload.part"}


def _complete(request: Request, upload_id: str, body: UploadComplete) -> dict:
    store = get_store(request)
    upload = _pending(request, upload_id)
    if not store.begin_upload_completion(upload_id):  # cancelled, expired or taken meanwhile
        _pending(request, upload_id)  # says why
        raise APIError(400, f"Upload {upload_id} cannot be completed now", param="upload_id")
    # From here on no part is added, and neither cancelling nor expiry touches the parts.
    try:
        _join_and_publish(request, upload, body)
    except BaseException:
        store.abort_upload_completions(upload_id)  # pending again: it can be completed again
        raise
    shutil.rmtree(upload_parts_dir(upload_id), ignore_errors=True)  # their rows went with it
    return upload_object(request, store.get_upload(upload_id))  # type: ignore[arg-type]


def _join_and_publish(request: Request, upload: dict, body: UploadComplete) -> None:
    upload_id = upload["id"]
    parts = get_store(request).upload_parts(upload_id)
    seen: set[str] = set()
    for index, part_id in enumerate(body.part_ids):
        if part_id not in parts:
            raise APIError(
                400,
                f"part_ids[{index}] is {part_id[:64]!r}, not a part of upload {upload_id}",
                param=f"part_ids[{index}]",
            )
        if part_id in seen:
            raise APIError(
                400,
                f"part_ids[{index}] names part {part_id} a second time",
                param=f"part_ids[{index}]",
            )
        seen.add(part_id)
    total = sum(parts[p]["bytes"] for p in body.part_ids)
    if total != upload["bytes"]:
        raise APIError(
            400,
            f"The parts listed hold {total:,} bytes, but upload {upload_id} was created for "
            f"{upload['bytes']:,}: list every part, or create a new upload with the right size",
            param="part_ids",
        )
    suffix = files.extension(upload["filename"])
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=suffix, dir=files_dir())
    joined = stored = Path(name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        written = 0
        with open(fd, "wb") as out:
            for part_id in body.part_ids:
                with open(parts[part_id]["path"], "rb") as part:
                    while chunk := part.read(files.CHUNK):
                        digest.update(chunk)
                        written += len(chunk)
                        out.write(chunk)
        if written != upload["bytes"]:  # a part's file is not what was recorded
            raise APIError(
                400,
                f"The parts of upload {upload_id} on the server's disk hold {written:,} bytes, "
                f"not {upload['bytes']:,}: cancel it and upload the file again",
                param="part_ids",
            )
        if body.md5 is not None and body.md5.lower() != digest.hexdigest():
            raise APIError(
                400,
                f"The MD5 of the joined parts is {digest.hexdigest()}, not {body.md5}: a part "
                "was sent wrong or listed out of order",
                param="md5",
            )
        stored = files.check_content(joined, upload["filename"], upload["purpose"])
        get_store(request).add_file(
            new_id("file"),
            stored,
            filename=upload["filename"],
            purpose=upload["purpose"],
            expires_after=upload["file_expires_after"],
            upload_id=upload_id,
        )
    except OSError as exc:
        raise (_disk_full(exc, "the joined file") or exc) from None
    finally:
        joined.unlink(missing_ok=True)  # renamed away on success
        stored.unlink(missing_ok=True)


@router.post("/v1/uploads/{upload_id}/complete", response_model=Upload)
async def complete_upload(request: Request, upload_id: str, body: UploadComplete) -> dict:
    return await run_in_threadpool(_complete, request, upload_id, body)


@router.post("/v1/uploads/{upload_id}/cancel", response_model=Upload)
def cancel_upload(request: Request, upload_id: str) -> dict:
    _pending(request, upload_id)
    if not get_store(request).end_upload(upload_id, "cancelled"):  # completed meanwhile
        _pending(request, upload_id)
    return upload_object(request, get_store(request).get_upload(upload_id))  # type: ignore[arg-type]
