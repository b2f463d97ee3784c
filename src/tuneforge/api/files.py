"""/v1/files: upload training data, list it, read it back, delete it.

The upload is streamed to a temp file under a name we generate (never the client's), size-capped
while it streams, format-checked line by line (the cheap part of `tuneforge data validate`; the
tokenizer checks run when a job validates its files), then renamed into place and recorded.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from tuneforge.api import batches
from tuneforge.api.deps import get_store
from tuneforge.api.errors import APIError, not_found
from tuneforge.api.schemas import Deleted, FileList, FileObject
from tuneforge.errors import TuneforgeError
from tuneforge.jobs.store import files_dir, new_id

router = APIRouter()

PURPOSE = "fine-tune"
EVALS_PURPOSE = "evals"  # rows of an eval run: {"item": {...}} per line, optionally "sample"
EXTENSIONS = (".jsonl", ".json", ".csv")  # what `tuneforge data` reads
CHUNK = 1 << 20
MAX_LISTED_PROBLEMS = 3


def file_object(row: dict) -> dict:
    fields = ("id", "bytes", "created_at", "filename", "purpose", "status", "expires_at")
    return {k: row.get(k) for k in fields} | {"object": "file"}


# OpenAI's limits on `expires_after.seconds`: one hour to 30 days.
EXPIRY_SECONDS = (3600, 2_592_000)
FORM_FIELDS = ("file", "purpose", "column_map", "expires_after[anchor]", "expires_after[seconds]")


def _expires_after(anchor: str | None, seconds: str | None) -> int | None:
    """OpenAI's `expires_after: {anchor: "created_at", seconds: N}` (the SDK sends it as the
    form fields expires_after[anchor] and expires_after[seconds]) → seconds, or None."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise APIError(
            400,
            f"expires_after.anchor is {anchor!r}: the one anchor is 'created_at'",
            param="expires_after.anchor",
        )
    low, high = EXPIRY_SECONDS
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    if not low <= value <= high:
        raise APIError(
            400,
            f"expires_after.seconds is {seconds!r}: give a whole number of seconds from {low} "
            f"(one hour) to {high:,} (30 days)",
            param="expires_after.seconds",
        )
    return value


def extension(filename: str) -> str:
    """The stored file's extension (.jsonl when there is none); a 400 for one we do not read."""
    suffix = Path(filename).suffix.lower()
    if not suffix:
        return ".jsonl"
    if suffix not in EXTENSIONS:
        raise APIError(
            400,
            f"Invalid file extension {suffix!r} of {filename!r}: upload fine-tuning data as "
            ".jsonl (one JSON example per line); .json arrays and .csv also work",
            param="file",
            code="invalid_file_format",
        )
    return suffix


def check_format(path: Path, filename: str, column_map: str | None = None) -> Path:
    """Parse every line; raise APIError naming the first problems' lines and fields.

    Returns the file to store: the upload itself, or — when a `column_map` is given — its rows
    converted to OpenAI chat JSONL next to it, so jobs read every stored file the same way.
    Messages name the client's `filename`, never the server's path.
    """
    from tuneforge.data.formats import is_csv, iter_parsed, parse_mapping

    def for_client(exc: TuneforgeError) -> APIError:
        return APIError(
            400, exc.inline().replace(str(path), filename), param="file", code="invalid_file_format"
        )

    try:
        mapping = parse_mapping(column_map, option="column_map")
    except TuneforgeError as exc:
        raise APIError(400, exc.inline(), param="column_map") from None
    problems = []
    rows = []
    count = 0
    try:
        if mapping is None and is_csv(path):
            _require_detectable_columns(path, filename)
        for _, parsed in iter_parsed(path, mapping=mapping):
            count += 1
            problems.extend(parsed.errors)
            if mapping is not None and parsed.conversation is not None:
                rows.append(parsed.conversation.to_openai())
    except TuneforgeError as exc:
        raise for_client(exc) from None
    if not count:
        raise APIError(
            400,
            "The file holds no examples: add one JSON example per line",
            param="file",
            code="invalid_file_format",
        )
    if problems and mapping is None and _is_prompt_file(path, problems):
        problems = []  # OpenAI's reinforcement JSONL: prompts without answers, by design
    if problems:
        shown = "; ".join(str(p) for p in problems[:MAX_LISTED_PROBLEMS])
        more = (
            f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)"
            if len(problems) > MAX_LISTED_PROBLEMS
            else ""
        )
        raise APIError(
            400,
            f"The file has {len(problems)} problem(s): {shown}{more}. Fix them and upload again; "
            "`tuneforge data validate FILE` shows the full report",
            param="file",
            code="invalid_file_format",
        )
    if mapping is None:
        return path
    from tuneforge.data.formats import write_jsonl

    converted = path.with_name(path.name + ".converted.jsonl")
    write_jsonl(converted, rows)
    return converted


def read_eval_rows(path: Path, filename: str) -> list[dict]:
    """The rows of an evals JSONL file: {"item": {...}, "sample": {...}?} per line. A bad line
    is a TuneforgeError naming the file and line."""
    rows = []
    with open(path, encoding="utf-8", errors="strict") as lines:
        try:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise TuneforgeError(f"{filename} line {number}: not JSON ({exc})") from None
                if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
                    raise TuneforgeError(
                        f'{filename} line {number}: an evals row is an object with an "item" '
                        'object (the data), e.g. {"item": {"question": "…", "answer": "…"}}',
                        hint='wrap each row as {"item": ROW}',
                    )
                extra = set(row) - {"item", "sample"}
                if extra or not isinstance(row.get("sample", {}), dict):
                    raise TuneforgeError(
                        f'{filename} line {number}: an evals row holds "item" and, '
                        'optionally, a "sample" object (a model\'s answer already made); '
                        f"found {', '.join(sorted(extra)) or 'a sample that is not an object'}"
                    )
                rows.append(row)
        except UnicodeDecodeError:
            raise TuneforgeError(f"{filename} is not UTF-8 text") from None
    if not rows:
        raise TuneforgeError(f'{filename} holds no rows: add one {{"item": ...}} per line')
    return rows


def check_eval_rows(path: Path, filename: str) -> None:
    try:
        read_eval_rows(path, filename)
    except TuneforgeError as exc:
        raise APIError(400, exc.inline(), param="file", code="invalid_file_format") from None


def _is_prompt_file(path: Path, problems: list) -> bool:
    """Every problem is a missing answer and every line is a reinforcement prompt."""
    from tuneforge.data.formats import load_prompts

    if any(p.name != "example_missing_assistant_message" for p in problems):
        return False
    try:
        load_prompts(path)
    except TuneforgeError:
        return False
    return True


def _require_detectable_columns(path: Path, filename: str) -> None:
    """A CSV whose columns are not prompt/completion needs a `column_map` (the API's `--map`)."""
    from tuneforge.data.formats import csv_header, detect_format

    try:
        detect_format(path)
    except TuneforgeError:
        columns = ", ".join(csv_header(path)) or "none"
        raise APIError(
            400,
            f"Cannot tell which columns of {filename} are the prompt and the answer (columns: "
            f"{columns}). Upload it again with the form field column_map (a tuneforge "
            "extension), e.g. column_map=prompt=title+ingredients,completion=NER; the rows are "
            "then stored as OpenAI chat JSONL",
            param="column_map",
            code="invalid_file_format",
        ) from None


async def _save_upload(upload: UploadFile, suffix: str, limit: int) -> Path:
    folder = files_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=suffix, dir=folder)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise APIError(
                        413,
                        f"The file is over the upload limit of {limit:,} bytes; split it, or "
                        "start the server with a larger limit",
                        param="file",
                        code="file_too_large",
                    )
                out.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


@router.post("/v1/files", response_model=FileObject)
async def upload_file(
    request: Request,
    file: Annotated[UploadFile, File(description="Fine-tuning data (.jsonl).")],
    purpose: Annotated[
        str,
        Form(
            description="`fine-tune` (training data), `evals` (rows of eval runs) or `batch` "
            "(requests of a batch)."
        ),
    ],
    column_map: Annotated[
        str | None,
        Form(
            max_length=1000,
            description="tuneforge extension, for .csv (or JSONL with custom keys): which "
            "columns are the prompt and the answer, e.g. `prompt=title+ingredients,"
            "completion=NER[,system=COL]` (`tuneforge data convert --map` syntax). The rows are "
            "stored converted to OpenAI chat JSONL.",
        ),
    ] = None,
    expires_anchor: Annotated[
        str | None,
        Form(
            alias="expires_after[anchor]",
            max_length=64,
            description="OpenAI's expires_after.anchor: `created_at`.",
        ),
    ] = None,
    expires_seconds: Annotated[
        str | None,
        Form(
            alias="expires_after[seconds]",
            max_length=32,
            description="OpenAI's expires_after.seconds (3600 to 2592000): the file is deleted "
            "that long after its upload (kept until an unfinished job that reads it is done).",
        ),
    ] = None,
) -> dict:
    form = await request.form()
    for key in form:
        if key not in FORM_FIELDS:
            raise APIError(
                400, f"Unrecognized request argument supplied: {key[:64]}", param=key[:64]
            )
    expires_after = _expires_after(expires_anchor, expires_seconds)
    filename = Path(file.filename or "upload.jsonl").name[:255] or "upload.jsonl"
    check_purpose(purpose, filename, column_map)
    tmp = await _save_upload(file, extension(filename), request.app.state.max_upload_bytes)
    stored = tmp
    try:
        stored = await run_in_threadpool(check_content, tmp, filename, purpose, column_map)
        row = await run_in_threadpool(
            get_store(request).add_file,
            new_id("file"),
            stored,
            filename=filename,
            purpose=purpose,
            expires_after=expires_after,
        )
    finally:
        tmp.unlink(missing_ok=True)  # renamed away on success
        stored.unlink(missing_ok=True)
    return file_object(row)


def check_purpose(purpose: str, filename: str, column_map: str | None = None) -> None:
    """A purpose this server stores, and a file name (extension) that suits it."""
    if purpose not in (PURPOSE, EVALS_PURPOSE, batches.PURPOSE):
        raise APIError(
            400,
            f"Invalid purpose {purpose[:40]!r}: this server stores fine-tuning data "
            f"(purpose={PURPOSE!r}), eval rows (purpose={EVALS_PURPOSE!r}) and batch "
            f"requests (purpose={batches.PURPOSE!r})",
            param="purpose",
        )
    if purpose != PURPOSE and (column_map is not None or extension(filename) != ".jsonl"):
        one_line = {EVALS_PURPOSE: '{"item": {...}}', batches.PURPOSE: "request"}[purpose]
        raise APIError(
            400,
            f"An {purpose} file is JSONL, one {one_line} object per line, without column_map",
            param="column_map" if column_map is not None else "file",
            code="invalid_file_format",
        )


def check_content(path: Path, filename: str, purpose: str, column_map: str | None = None) -> Path:
    """Check an uploaded file's content for its purpose (APIError naming lines and fields);
    returns the file to store (`check_format`). Blocking: run it in a thread."""
    if purpose == EVALS_PURPOSE:
        check_eval_rows(path, filename)
        return path
    if purpose == batches.PURPOSE:
        batches.check_file(path, filename)
        return path
    return check_format(path, filename, column_map)


@router.get("/v1/files", response_model=FileList)
def list_files(
    request: Request,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
) -> dict:
    rows = get_store(request).list_files(
        purpose=purpose, after=after, limit=limit + 1, oldest_first=order == "asc"
    )
    return {
        "object": "list",
        "data": [file_object(r) for r in rows[:limit]],
        "has_more": len(rows) > limit,
    }


def _get(request: Request, file_id: str) -> dict:
    row = get_store(request).get_file(file_id)
    if row is None:
        raise not_found("File", file_id, param="file_id")
    return row


@router.get("/v1/files/{file_id}", response_model=FileObject)
def retrieve_file(request: Request, file_id: str) -> dict:
    return file_object(_get(request, file_id))


@router.get(
    "/v1/files/{file_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def file_content(request: Request, file_id: str) -> FileResponse:
    row = _get(request, file_id)
    return FileResponse(
        row["path"], media_type="application/octet-stream", filename=row["filename"]
    )


@router.delete("/v1/files/{file_id}", response_model=Deleted)
def delete_file(request: Request, file_id: str) -> dict:
    store = get_store(request)
    _get(request, file_id)
    users = store.jobs_using_file(file_id)
    if users:
        raise APIError(
            409,
            f"File {file_id} is used by unfinished fine-tuning job(s) {', '.join(users)}, which "
            "read it again when they resume; cancel them or wait for them to finish",
            param="file_id",
            code="file_in_use",
        )
    store.delete_file(file_id)
    return {"id": file_id, "object": "file", "deleted": True}
