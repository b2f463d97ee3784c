"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume; events and checkpoints.

Creation checks what is cheap and certain right away (the files exist, the model is known, the
hyperparameters and training_config are valid) and answers 400 naming the field; the job then
starts in `validating_files`, where the scheduler checks the data with the model's tokenizer.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from tuneforge import run_dir as rd
from tuneforge.api.deps import get_manager, get_store
from tuneforge.api.errors import APIError, not_found, openai_model_note
from tuneforge.api.schemas import CheckpointList, EventList, Job, JobCreate, JobList
from tuneforge.errors import ConfigError
from tuneforge.jobs.model_ids import ORGANIZATION, checkpoint_folders, checkpoint_model_id
from tuneforge.jobs.spec import check_training_config, job_method, with_method
from tuneforge.jobs.store import jobs_dir, new_id
from tuneforge.models import REGISTRY
from tuneforge.models.registry import looks_like_path

router = APIRouter()

MAX_SEED = 2**31 - 1


def _estimated_finish(job: dict[str, Any]) -> int | None:
    if job["status"] != "running":
        return None
    run_dir = Path(job["run_dir"])
    status = rd.read_status(run_dir) or {}
    step, total = status.get("step") or 0, status.get("total_steps")
    metrics = rd.read_metrics(run_dir)
    if not step or not total or not metrics:
        return None
    per_step = metrics[-1].get("elapsed_seconds", 0) / max(1, metrics[-1]["step"])
    return int(time.time() + per_step * (total - step))


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    hyperparameters = job["hyperparameters"]
    return {
        "id": job["id"],
        "object": "fine_tuning.job",
        "created_at": job["created_at"],
        "finished_at": job["finished_at"],
        "model": job["model"],
        "fine_tuned_model": None if job["model_deleted"] else job["fine_tuned_model"],
        "organization_id": f"org-{ORGANIZATION}",
        "result_files": job.get("result_files") or [],
        "status": job["status"],
        "validation_file": job["validation_file"],
        "training_file": job["training_file"],
        "hyperparameters": hyperparameters,
        "trained_tokens": job["trained_tokens"],
        "error": job["error"],
        "seed": job["seed"],
        "estimated_finish": _estimated_finish(job),
        "integrations": job.get("integrations") or [],
        "metadata": job["metadata"],
        "method": _method_object(job),
        "user_provided_suffix": job["suffix"],
    }


def _method_object(job: dict[str, Any]) -> dict[str, Any]:
    method = job_method(job)
    block: dict[str, Any] = {"hyperparameters": job["hyperparameters"]}
    if method == "reinforcement":
        block["grader"] = job["training_config"].get("grader")
        if (response_format := job["training_config"].get("response_format")) is not None:
            block["response_format"] = response_format
    return {"type": method, method: block}


def check_base_model(model: str) -> None:
    if model.startswith("ft:"):
        raise APIError(
            400,
            f"Fine-tuning a fine-tuned model ({model}) is not supported yet; start from its "
            "base model",
            param="model",
            code="model_not_supported",
        )
    if model in REGISTRY:
        return
    folder = Path(model).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        return
    if model.count("/") == 1 and not looks_like_path(model):
        return  # a hub id; loading it (with a network) is checked while validating files
    raise APIError(
        400,
        f"Unknown base model `{model}`: use one of {', '.join(REGISTRY)}, a local Hugging Face "
        "model folder on the server, or a hub id (org/name)" + openai_model_note(model),
        param="model",
        code="model_not_found",
    )


AUTO_HYPERPARAMETERS = {
    "n_epochs": "auto",
    "batch_size": "auto",
    "learning_rate_multiplier": "auto",
}


def _method(body: JobCreate) -> tuple[str, dict[str, Any]]:
    """The job's method type and its hyperparameters (OpenAI's: `method.<type>.hyperparameters`,
    or the deprecated top-level `hyperparameters` for supervised jobs)."""
    method = body.method.type if body.method else "supervised"
    if body.method:
        for other in ("supervised", "dpo", "reinforcement"):
            if other != method and getattr(body.method, other) is not None:
                raise APIError(
                    400,
                    f"method.{other} was given but method.type is {method!r}; send the "
                    f"hyperparameters as method.{method}.hyperparameters",
                    param=f"method.{other}",
                )
    block = getattr(body.method, method, None) if body.method else None
    from_method = block.hyperparameters if block and block.hyperparameters else None
    if from_method and body.hyperparameters:
        raise APIError(
            400,
            f"Hyperparameters were given twice: use method.{method}.hyperparameters only "
            "(top-level hyperparameters is OpenAI's deprecated spelling)",
            param="hyperparameters",
        )
    if method != "supervised" and body.hyperparameters:
        raise APIError(
            400,
            f"A {method} job takes its hyperparameters as method.{method}.hyperparameters",
            param="hyperparameters",
        )
    if method == "reinforcement" and (block is None or not block.grader):
        raise APIError(
            400,
            "A reinforcement job needs method.reinforcement.grader (OpenAI's grader JSON)",
            param="method.reinforcement.grader",
        )
    chosen = from_method or body.hyperparameters
    values = chosen.model_dump() if chosen else dict(AUTO_HYPERPARAMETERS)
    if method == "dpo":
        values.setdefault("beta", "auto")
    if method == "reinforcement" and not from_method:
        from tuneforge.api.schemas import ReinforcementHyperparameters

        values = ReinforcementHyperparameters().model_dump()
    return method, values


def _grader_of(body: JobCreate) -> dict[str, Any] | None:
    """A reinforcement job's grader, checked now: a bad one is a 400 naming its field."""
    from tuneforge.eval.graders import GraderError, validate_grader

    if not (body.method and body.method.reinforcement):
        return None
    grader = body.method.reinforcement.grader
    try:
        return validate_grader(grader)
    except GraderError as exc:
        raise APIError(
            400,
            exc.inline(),
            param=f"method.reinforcement.{exc.param}",
            code="invalid_grader",
        ) from None


def _integrations(body: JobCreate) -> list[dict[str, Any]] | None:
    """The job's trackers; each needs its package on the server (checked now, not mid-run)."""
    import importlib.util

    from tuneforge.train.plan import TRACKER_PACKAGES

    if not body.integrations:
        return None
    for i, integration in enumerate(body.integrations):
        if integration.wandb is None:
            raise APIError(
                400,
                f"Missing required parameter: 'integrations[{i}].wandb' (its project at least)",
                param=f"integrations[{i}].wandb",
            )
        package = TRACKER_PACKAGES[integration.type]
        if importlib.util.find_spec(package) is None:
            raise APIError(
                400,
                f"The {integration.type} integration needs the {package} package on the "
                f"server, which is not installed: `pip install {package}` where tuneforge "
                "serve runs (or drop the integration)",
                param=f"integrations[{i}].type",
                code="integration_not_available",
            )
    return [i.model_dump(include={"type", "wandb"}) for i in body.integrations]


@router.post("/v1/fine_tuning/jobs", response_model=Job)
def create_job(request: Request, body: JobCreate) -> dict[str, Any]:
    store = get_store(request)
    for param in ("training_file", "validation_file"):
        file_id = getattr(body, param)
        if file_id is None:
            continue
        file = store.get_file(file_id)
        if file is None:
            raise APIError(
                400,
                f"Invalid {param}: no file {file_id!r}; upload it first with POST /v1/files",
                param=param,
                code="invalid_file_id",
            )
        if file["purpose"] != "fine-tune":
            raise APIError(
                400,
                f"Invalid {param}: file {file_id!r} has purpose {file['purpose']!r}; a job "
                "trains on files uploaded with purpose 'fine-tune'",
                param=param,
                code="invalid_file_id",
            )
    check_base_model(body.model)
    method, hyperparameters = _method(body)
    grader = _grader_of(body)
    training_config = body.training_config or {}
    try:
        check_training_config(training_config)
    except ConfigError as exc:
        where = f"training_config.{exc.param}" if exc.param else "training_config"
        raise APIError(400, exc.inline(), param=where, code=exc.code) from None
    integrations = _integrations(body)
    reinforcement = body.method.reinforcement if body.method else None
    response_format = reinforcement.response_format if reinforcement else None
    training_config = with_method(training_config, method, grader, response_format)
    job_id = new_id("ftjob")
    job = store.add_job(
        {
            "id": job_id,
            "created_at": int(time.time()),
            "model": body.model,
            "status": "validating_files",
            "training_file": body.training_file,
            "validation_file": body.validation_file,
            "hyperparameters": hyperparameters,
            "training_config": training_config,
            "suffix": body.suffix or None,
            "seed": body.seed if body.seed is not None else secrets.randbelow(MAX_SEED),
            "metadata": body.metadata,
            "integrations": integrations,
            "run_dir": str(jobs_dir() / job_id / "run"),
        }
    )
    store.add_event(job_id, f"Created fine-tuning job: {job_id}")
    get_manager(request).wake()
    return job_object(job)


@router.get("/v1/fine_tuning/jobs", response_model=JobList)
def list_jobs(
    request: Request,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    rows = get_store(request).list_jobs(
        after=after, limit=limit + 1, metadata=_metadata_filter(request)
    )
    return {
        "object": "list",
        "data": [job_object(j) for j in rows[:limit]],
        "has_more": len(rows) > limit,
    }


def _metadata_filter(request: Request) -> dict[str, str]:
    """OpenAI's `metadata[key]=value` query parameters (what the `openai` package sends for
    `jobs.list(metadata={...})`): only jobs whose metadata has every such pair are listed."""
    pairs: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name == "metadata" or (name.startswith("metadata") and not name.startswith("metadata[")):
            raise APIError(
                400,
                "filter by metadata as metadata[key]=value (one parameter per key)",
                param="metadata",
            )
        if name.startswith("metadata["):
            if not name.endswith("]") or len(name) == len("metadata[]"):
                raise APIError(400, f"{name!r} is not metadata[key]", param="metadata")
            pairs[name[len("metadata[") : -1]] = value
    return pairs


def _get(request: Request, job_id: str) -> dict[str, Any]:
    job = get_store(request).get_job(job_id)
    if job is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}", response_model=Job)
def retrieve_job(request: Request, fine_tuning_job_id: str) -> dict[str, Any]:
    return job_object(_get(request, fine_tuning_job_id))


PAST = {"cancel": "cancelled", "pause": "paused", "resume": "resumed"}


def _transition(request: Request, job_id: str, action: str, allowed: str) -> dict[str, Any]:
    _get(request, job_id)
    manager = get_manager(request)
    if not getattr(manager, action)(job_id):
        job = _get(request, job_id)
        raise APIError(
            400,
            f"Cannot {action} job {job_id}: it is {job['status']}; only {allowed} jobs can be "
            f"{PAST[action]}",
            param="fine_tuning_job_id",
            code="invalid_job_state",
        )
    return job_object(_get(request, job_id))


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", response_model=Job)
def cancel_job(request: Request, fine_tuning_job_id: str) -> dict[str, Any]:
    return _transition(request, fine_tuning_job_id, "cancel", "unfinished")


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause", response_model=Job)
def pause_job(request: Request, fine_tuning_job_id: str) -> dict[str, Any]:
    return _transition(request, fine_tuning_job_id, "pause", "validating, queued or running")


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume", response_model=Job)
def resume_job(request: Request, fine_tuning_job_id: str) -> dict[str, Any]:
    return _transition(request, fine_tuning_job_id, "resume", "paused")


def event_object(e: dict[str, Any]) -> dict[str, Any]:
    return {k: e[k] for k in ("id", "created_at", "level", "message", "type", "data")} | {
        "object": "fine_tuning.job.event"
    }


@router.get(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
    response_model=EventList,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "The page of events, or with `stream=true` (a tuneforge extension) "
            "server-sent events; see `stream`.",
        }
    },
)
def list_events(
    request: Request,
    fine_tuning_job_id: str,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    stream: Annotated[
        bool,
        Query(
            description="tuneforge extension: instead of a page, a `text/event-stream` of every "
            "event oldest first, then new ones as they happen. Each frame has `id:` (the event "
            "id), `event:` (`message` or `metrics`) and `data:` (the event object); a reconnect "
            "that sends `Last-Event-ID` (or `after`) gets the events after that one. An "
            "`event: status` frame with the job object comes at the start and on every change, "
            "a `: heartbeat` comment every 15 s, and the stream ends after the job's final status."
        ),
    ] = False,
) -> Any:
    _get(request, fine_tuning_job_id)
    if stream:
        from tuneforge.api.streams import job_event_stream

        return job_event_stream(
            request, fine_tuning_job_id, request.headers.get("last-event-id") or after
        )
    rows = get_store(request).list_events(fine_tuning_job_id, after=after, limit=limit + 1)
    data = [event_object(e) for e in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit}


def _checkpoint(
    job: dict[str, Any], step: int, folder: Path, metrics: dict
) -> dict[str, Any] | None:
    try:
        created = int(folder.stat().st_mtime)
    except FileNotFoundError:  # rotated away (keep_last) while we listed
        return None
    return {
        "id": f"ftckpt-{job['id'].removeprefix('ftjob-')}-{step}",
        "object": "fine_tuning.job.checkpoint",
        "created_at": created,
        "fine_tuned_model_checkpoint": checkpoint_model_id(job, step),
        "step_number": step,
        "metrics": {"step": float(step)} | {k: metrics.get(k) for k in rd.METRIC_KEYS},
        "fine_tuning_job_id": job["id"],
    }


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(
    request: Request,
    fine_tuning_job_id: str,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    job = _get(request, fine_tuning_job_id)
    by_step = {m["step"]: m for m in rd.read_metrics(Path(job["run_dir"]))}
    found = sorted(checkpoint_folders(job).items(), reverse=True)
    items = [
        item
        for step, folder in found
        if (item := _checkpoint(job, step, folder, by_step.get(step, {}))) is not None
    ]
    if after:
        ids = [c["id"] for c in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "has_more": len(items) > limit,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
