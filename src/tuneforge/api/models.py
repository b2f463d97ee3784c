"""/v1/models: the models this server answers for (see catalog.py), and deleting fine-tuned ones.

Deleting a fine-tuned model stops serving it and its checkpoints; the run directory stays on disk
(it is the record of the training) until you remove it yourself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tuneforge.api.deps import get_catalog, get_engine
from tuneforge.api.errors import APIError
from tuneforge.api.schemas import Deleted, ModelList, ModelObject
from tuneforge.jobs.model_ids import fine_tuned_model_id, parse_model_id

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [m.to_json() for m in get_catalog(request).list()]}


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
