"""/v1/models: the models this server answers for (see catalog.py), and deleting fine-tuned ones.

Deleting a fine-tuned model stops serving it and its checkpoints; the run directory stays on disk
(it is the record of the training) until you remove it yourself.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from tuneforge import run_dir as rd
from tuneforge.api.deps import get_catalog, get_engine
from tuneforge.api.errors import APIError
from tuneforge.api.schemas import Deleted, ModelList, ModelObject
from tuneforge.jobs.model_ids import fine_tuned_model_id, parse_model_id

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [m.to_json() for m in get_catalog(request).list()]}


def _zip_folder(folder: Path, name: str) -> Path:
    """`folder` zipped into a temp file whose entries sit under `name/`."""
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".zip")
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{name}/{path.relative_to(folder)}")
    return Path(tmp)


def _model_archive(request: Request, model_id: str, kind: str) -> tuple[Path, str]:
    from tuneforge.jobs.model_ids import resolve_model_id

    served = get_catalog(request).get(model_id)
    adapter = served.target.adapter
    if not served.fine_tuned or adapter is None:
        raise APIError(
            400,
            f"`{model_id}` is a base model: there is no adapter or merged model to download",
            param="model",
            code="model_not_downloadable",
        )
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in model_id)
    if kind == "adapter":
        return _zip_folder(adapter, f"{name}-adapter"), f"{name}-adapter.zip"
    from tuneforge.inference.export import export_merged

    if served.run:
        run_dir = rd.runs_root() / model_id
    else:
        run_dir = resolve_model_id(model_id, get_catalog(request).store)[0]
    weights = None if served.run or adapter == Path(run_dir) / "model" else adapter
    with tempfile.TemporaryDirectory(prefix="tuneforge-merge-") as tmp:
        merged = export_merged(Path(run_dir), Path(tmp) / "merged", weights=weights)
        return _zip_folder(merged, f"{name}-merged"), f"{name}-merged.zip"


@router.get(
    "/v1/models/{model_id:path}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}},
    tags=["tuneforge extensions"],
)
def download_model(
    request: Request,
    model_id: str,
    format: Annotated[
        Literal["adapter", "merged"],
        Query(
            description="adapter: the LoRA adapter folder (loads with peft on the public base "
            "model); merged: the adapter folded into the base weights (a plain transformers "
            "folder; takes a while and the size of the base model)."
        ),
    ] = "adapter",
) -> FileResponse:
    """A fine-tuned model as a zip (tuneforge extension)."""
    path, filename = _model_archive(request, model_id, format)
    return FileResponse(
        path,
        media_type="application/zip",
        filename=filename,
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


@router.get("/v1/models/{model_id:path}", response_model=ModelObject)
def retrieve_model(request: Request, model_id: str) -> dict[str, Any]:
    return get_catalog(request).get(model_id).to_json()


@router.delete("/v1/models/{model_id:path}", response_model=Deleted)
def delete_model(request: Request, model_id: str) -> dict[str, Any]:
    catalog = get_catalog(request)
    served = catalog.get(model_id)
    if not served.fine_tuned:
        raise APIError(
            403,
            f"`{model_id}` is a base model; only fine-tuned models (ft:…) can be deleted",
            type="invalid_request_error",
            param="model",
            code="model_not_deletable",
        )
    if served.run:
        raise APIError(
            400,
            f"`{model_id}` is a run made by `tuneforge train`; it is served while it is in the "
            "runs folder (`tuneforge runs list`): move or remove that folder to stop serving it",
            param="model",
            code="model_not_deletable",
        )
    job, step = parse_model_id(catalog.store, model_id)
    if step is not None:
        raise APIError(
            400,
            f"`{model_id}` is a checkpoint; delete its fine-tuned model "
            f"({fine_tuned_model_id(job)}) to remove the model and its checkpoints",
            param="model",
            code="model_not_deletable",
        )
    catalog.store.update_job(job["id"], model_deleted=1)
    get_engine(request).unload(model_id)
    return {"id": model_id, "object": "model", "deleted": True}
