"""/v1/tuneforge/comparisons: `tuneforge compare` as a background task (tuneforge extension).

`POST` names uploaded files and served models by id; the comparison runs in the server (one at
a time, see `jobs/comparisons.py`) and `GET …/{id}` shows its progress, then its result — the
same `compare.json` the CLI writes — and `GET …/{id}/report` the same `report.html`. A `grader`
(OpenAI's grader JSON, as `tuneforge compare --grader`) is checked before the comparison is
queued: a bad one is a 400 whose `error.param` points into it (`grader.operation`), as
`graders/validate` answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneforge import run_dir as rd
from tuneforge.api.deps import get_catalog, get_store
from tuneforge.api.errors import APIError, not_found
from tuneforge.errors import TuneforgeError
from tuneforge.jobs.comparisons import CompareRequest
from tuneforge.jobs.model_ids import resolve_model_id

router = APIRouter(tags=["tuneforge extensions"])
MAX_ID = 512


class ComparisonCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_file: str = Field(
        min_length=1, max_length=MAX_ID, description="Held-out requests (an uploaded file id)."
    )
    training_file: str = Field(
        min_length=1,
        max_length=MAX_ID,
        description="The training data (file id): the few-shot and retrieval baselines draw "
        "their examples from it, and it is checked for overlap with the test file.",
    )
    models: list[Annotated[str, Field(max_length=MAX_ID)]] = Field(
        default_factory=list,
        max_length=8,
        description="Fine-tuned models to compare (ids from /v1/models: a job's `ft:` model or "
        "a `tuneforge train` run by name).",
    )
    model: str | None = Field(
        None,
        max_length=MAX_ID,
        description="Base model for the baselines (default: the first fine-tuned model's base).",
    )
    baselines: bool = Field(True, description="Also run zero-shot, few-shot and retrieval.")
    limit: int | None = Field(None, ge=1, le=100_000, description="Use the first N test requests.")
    max_tokens: int | None = Field(
        None, ge=1, le=4096, description="Answer length cap (default: from the training answers)."
    )
    grader: dict[str, Any] | None = Field(
        None,
        description="An OpenAI grader (string_check, text_similarity, python, score_model or "
        "multi, as /v1/fine_tuning/alpha/graders/run takes it) that scores each answer "
        "(`sample`) for its test row (`item`: `reference_answer` and the row's other fields); "
        "its score is the metric `grader:<name>` and decides the comparison.",
    )


def _runner(request: Request) -> Any:
    return request.app.state.comparisons


def _file(request: Request, file_id: str, param: str) -> tuple[Path, str]:
    row = get_store(request).get_file(file_id)
    if row is None:
        raise APIError(
            400,
            f"Invalid {param}: no file {file_id!r}; upload it first with POST /v1/files",
            param=param,
            code="invalid_file_id",
        )
    return Path(row["path"]), row["filename"]


def _checked_grader(grader: dict[str, Any], test: Path) -> dict[str, Any]:
    """The grader, validated, and every `{{ item.… }}` it reads found in every test row."""
    from tuneforge.data.formats import load_conversations
    from tuneforge.eval.evaluate import to_request
    from tuneforge.eval.graders import GraderError, check_items, validate_grader

    try:
        rows = [(e.line, to_request(e, "test_file").item) for e in load_conversations(test)]
    except TuneforgeError:
        rows = []  # a bad test file is the comparison's to report, as without a grader
    try:
        validate_grader(grader)
        check_items(grader, rows, "test_file")
    except GraderError as exc:
        raise APIError(400, exc.inline(), param=exc.param, code=exc.code) from None
    return grader


def _run_dir(request: Request, model_id: str, index: int) -> Path:
    served = get_catalog(request).get(model_id)  # 404 in OpenAI's shape when unknown
    param = f"models.{index}"
    if not served.fine_tuned:
        raise APIError(
            400,
            f"`{model_id}` is a base model; the baselines already use the base model — list "
            "fine-tuned models here and the base in `model`",
            param=param,
        )
    if served.run:
        return rd.runs_root() / model_id
    try:
        run_dir, weights = resolve_model_id(model_id, get_store(request))
    except TuneforgeError as exc:
        raise APIError(400, exc.inline(), param=param) from None
    if weights is not None:
        raise APIError(
            400,
            f"`{model_id}` is a checkpoint; compare a job's final model (or chat with the "
            "checkpoint in the playground)",
            param=param,
        )
    return Path(run_dir)


@router.post("/v1/tuneforge/comparisons")
def create_comparison(request: Request, body: ComparisonCreate) -> dict[str, Any]:
    """Queue a comparison of the base model's zero-shot, few-shot and retrieval prompts and the
    given fine-tuned models on the test file; poll `GET …/{id}` for progress and the result."""
    test, test_name = _file(request, body.test_file, "test_file")
    train, train_name = _file(request, body.training_file, "training_file")
    runs = [(m, _run_dir(request, m, i)) for i, m in enumerate(body.models)]
    if not runs and not body.baselines:
        raise APIError(
            400,
            "Nothing to compare: name fine-tuned `models` or keep the baselines",
            param="models",
        )
    if body.model is not None:
        from tuneforge.api.fine_tuning import check_base_model

        check_base_model(body.model)
    grader = _checked_grader(body.grader, test) if body.grader is not None else None
    cmp_request = CompareRequest(
        test_file=test,
        train_file=train,
        model=body.model,
        runs=runs,
        baselines=body.baselines,
        limit=body.limit,
        max_new_tokens=body.max_tokens,
        grader=grader,
        names={"test_file": body.test_file, "training_file": body.training_file}
        | {"test_filename": test_name, "training_filename": train_name},
    )
    comparison_id = _runner(request).submit(cmp_request)
    return _runner(request).get(comparison_id)


@router.get("/v1/tuneforge/comparisons")
def list_comparisons(request: Request) -> dict[str, Any]:
    """Past and running comparisons, newest first."""
    return {"object": "list", "data": _runner(request).list(), "has_more": False}


@router.get("/v1/tuneforge/comparisons/{comparison_id}")
def retrieve_comparison(request: Request, comparison_id: str) -> dict[str, Any]:
    """Status (`queued`, `running` with `progress`, `succeeded`, `failed` with `error`) and,
    once approaches finish, `result`: the comparison's compare.json."""
    found = _runner(request).get(comparison_id)
    if found is None:
        raise not_found("comparison", comparison_id, param="comparison_id")
    return found


@router.get(
    "/v1/tuneforge/comparisons/{comparison_id}/report",
    response_class=FileResponse,
    responses={200: {"content": {"text/html": {}}}},
)
def comparison_report(request: Request, comparison_id: str) -> FileResponse:
    """The comparison's report.html (self-contained: no scripts, no external resources)."""
    path = _runner(request).report_path(comparison_id)
    if path is None:
        raise not_found("comparison report", comparison_id, param="comparison_id")
    return FileResponse(path, media_type="text/html; charset=utf-8")
