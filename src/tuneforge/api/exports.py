"""/v1/fine_tuning/jobs/{id}/exports: a succeeded job's model as a downloadable file (a tuneforge
extension; OpenAI has no such route).

The contract, for scripts and the web UI:

1. `POST /v1/fine_tuning/jobs/{id}/exports` with `{"format": "gguf", "quant": "q8_0",
   "ollama": false}` (every field optional; `model` may name one of the job's checkpoints)
   answers at once with an export object, `status: "queued"`. The same request again returns the
   same export while it is queued, running or succeeded (no second copy of a large file).
2. Poll `GET /v1/fine_tuning/jobs/{id}/exports/{export_id}` (or the list,
   `GET /v1/fine_tuning/jobs/{id}/exports`, newest first) until `status` is `succeeded` (then
   `file_id` is set) or `failed` (then `error` says why).
3. Download `GET /v1/files/{file_id}/content` (purpose `fine-tune-results`; the file name in
   `GET /v1/files/{file_id}` and in the Content-Disposition header). Deleting that file deletes
   the export.

Mistakes that are cheap to see are a 400 at once, naming the field: a job that has not
succeeded, an unknown checkpoint, a quant type we do not write, an architecture GGUF export does
not support, `quant`/`ollama` with a format other than gguf.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from tuneforge.api.deps import get_store
from tuneforge.api.errors import APIError, not_found
from tuneforge.api.schemas import Export, ExportCreate, ExportList
from tuneforge.errors import TuneforgeError
from tuneforge.jobs.exports import UNFINISHED
from tuneforge.jobs.store import new_id

router = APIRouter()


def export_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.export",
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "fine_tuning_job_id": row["job_id"],
        "model": row["model"],
        "format": row["format"],
        "quant": row["quant"],
        "ollama": bool(row["ollama"]),
        "status": row["status"],
        "file_id": row["file_id"],
        "error": row["error"],
    }


def _job(request: Request, job_id: str) -> dict[str, Any]:
    job = get_store(request).get_job(job_id)
    if job is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


def _model(request: Request, job: dict[str, Any], model: str | None) -> tuple[str, Path]:
    """The model id to export and its run directory; 400 naming the field otherwise."""
    from tuneforge.jobs.model_ids import parse_model_id, resolve_model_id

    if job["status"] != "succeeded" or job["model_deleted"] or not job["fine_tuned_model"]:
        state = "deleted" if job["model_deleted"] else job["status"]
        raise APIError(
            400,
            f"Job {job['id']} is {state}: only a succeeded job's model can be exported",
            param="fine_tuning_job_id",
            code="invalid_job_state",
        )
    model = model or job["fine_tuned_model"]
    store = get_store(request)
    try:
        owner, _ = parse_model_id(store, model)
        if owner["id"] != job["id"]:
            raise APIError(
                400,
                f"{model} belongs to job {owner['id']}, not {job['id']}",
                param="model",
                code="model_not_found",
            )
        run_dir, _ = resolve_model_id(model, store)
    except TuneforgeError as exc:
        raise APIError(400, exc.inline(), param="model", code="model_not_found") from None
    return model, run_dir


def _check_format(body: ExportCreate, run_dir: Path) -> str | None:
    """The quant type to write (gguf) or None; 400 naming the field for what cannot work."""
    from tuneforge.inference.gguf_export import check_architecture, check_quant

    if body.format != "gguf":
        for field, given in (("quant", body.quant is not None), ("ollama", body.ollama)):
            if given:
                raise APIError(
                    400,
                    f"`{field}` applies to format gguf only (this request asks for "
                    f"{body.format}); drop it",
                    param=field,
                )
        return None
    try:
        quant = check_quant(body.quant or "f16")
    except TuneforgeError as exc:
        raise APIError(400, exc.inline(), param="quant", code="unsupported_quant") from None
    try:
        check_architecture(run_dir)
    except TuneforgeError as exc:
        raise APIError(
            400,
            exc.inline() + "; export format `merged` instead",
            param="format",
            code="unsupported_architecture",
        ) from None
    return quant


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/exports", response_model=Export)
def create_export(request: Request, fine_tuning_job_id: str, body: ExportCreate) -> dict[str, Any]:
    """Export a succeeded job's model as a downloadable file (tuneforge extension).

    Answers at once with `status: "queued"`; poll the export until `succeeded`, then download
    `GET /v1/files/{file_id}/content`. gguf: `<name>.<quant>.gguf`; gguf + ollama:
    `<name>.<quant>.ollama.tar` (the GGUF and a Modelfile in `<name>/`); merged:
    `<name>.merged.tar`; adapter: `<name>.adapter.tar`. An identical request returns the export
    already queued, running or made.
    """
    job = _job(request, fine_tuning_job_id)
    model, run_dir = _model(request, job, body.model)
    quant = _check_format(body, run_dir)
    store = get_store(request)
    for row in store.list_exports(job["id"]):
        same = (row["model"], row["format"], row["quant"], bool(row["ollama"])) == (
            model,
            body.format,
            quant,
            body.ollama,
        )
        if same and row["status"] in (*UNFINISHED, "succeeded"):
            return export_object(row)
    row = store.add_export(
        {
            "id": new_id("ftexport"),
            "job_id": job["id"],
            "created_at": int(time.time()),
            "model": model,
            "format": body.format,
            "quant": quant,
            "ollama": int(body.ollama),
            "status": "queued",
        }
    )
    request.app.state.exports.submit(row["id"])
    return export_object(row)


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}/exports", response_model=ExportList)
def list_exports(request: Request, fine_tuning_job_id: str) -> dict[str, Any]:
    """The job's exports, newest first (tuneforge extension)."""
    job = _job(request, fine_tuning_job_id)
    rows = get_store(request).list_exports(job["id"])
    return {"object": "list", "data": [export_object(r) for r in rows], "has_more": False}


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}/exports/{export_id}", response_model=Export)
def retrieve_export(request: Request, fine_tuning_job_id: str, export_id: str) -> dict[str, Any]:
    """One export; `file_id` is set once `status` is `succeeded` (tuneforge extension)."""
    job = _job(request, fine_tuning_job_id)
    row = get_store(request).get_export(export_id)
    if row is None or row["job_id"] != job["id"]:
        raise not_found("export", export_id, param="export_id")
    return export_object(row)
