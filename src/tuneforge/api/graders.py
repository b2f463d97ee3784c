"""/v1/fine_tuning/alpha/graders/run and /validate: OpenAI's grader endpoints, run locally
(`eval/graders.py`). A grader that cannot run is a 400 whose `error.param` points into it
(e.g. `grader.graders.name.input`); a sample that scores badly is a 200 with reward 0 and the
reason in `metadata.errors`, as OpenAI answers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from tuneforge.api.errors import APIError
from tuneforge.eval.graders import GraderError, make_sample, run_grader, validate_grader

router = APIRouter()


class GraderRunRequest(BaseModel):
    grader: dict[str, Any] = Field(
        description="One grader: string_check, text_similarity, python, score_model or multi."
    )
    model_sample: str = Field(description="The model's answer to grade.")
    item: dict[str, Any] | None = Field(
        None, description="The data row the answer is for (`{{ item.field }}` in templates)."
    )


class GraderValidateRequest(BaseModel):
    grader: dict[str, Any]


def _checked(grader: dict[str, Any]) -> dict[str, Any]:
    try:
        return validate_grader(grader)
    except GraderError as exc:
        raise APIError(400, exc.inline(), param=exc.param, code=exc.code) from None


@router.post("/v1/fine_tuning/alpha/graders/validate")
def validate(body: GraderValidateRequest) -> dict[str, Any]:
    return {"grader": _checked(body.grader)}


@router.post("/v1/fine_tuning/alpha/graders/run")
async def run(body: GraderRunRequest) -> dict[str, Any]:
    grader = _checked(body.grader)
    # python graders wait on a subprocess and score_model on a model: off the event loop.
    grade = await run_in_threadpool(run_grader, grader, make_sample(body.model_sample), body.item)
    errors: dict[str, Any] = dict(grade.errors)
    if grade.errors["python_grader_runtime_error"]:
        errors["python_grader_runtime_error_details"] = grade.details["python_grader_runtime_error"]
    return {
        "reward": grade.reward,
        "sub_rewards": grade.sub_rewards,
        "model_grader_token_usage_per_model": {},
        "metadata": {
            "name": grade.name,
            "type": grade.type,
            "execution_time": grade.execution_time,
            "scores": grade.sub_rewards or {grade.name: grade.reward},
            "token_usage": None,
            "sampled_model_name": None,
            "errors": errors,
            # tuneforge extension: why each raised flag was raised
            "error_details": grade.details,
        },
    }
