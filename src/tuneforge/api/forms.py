"""`GET /v1/tuneforge/job_form`: what a client needs to build a job form (tuneforge extension).

The JSON schemas of the job request (OpenAI's fields, with the methods this server accepts as
`method.type`) and of the `training_config` extension (every `TrainConfig` field a job may set,
with its description and default), plus which fields a simple form shows first. The Studio's
"new job" page is generated from this, so a field or method added to the config or the API
appears there without UI work, and the form is checked by the same code as the API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tuneforge.api.schemas import JobCreate
from tuneforge.config import TrainConfig
from tuneforge.jobs.spec import RESERVED_CONFIG_KEYS

router = APIRouter(tags=["tuneforge extensions"])

# The job's own fields a first-time user sets; everything else sits under "advanced".
SIMPLE_JOB_FIELDS = ("model", "training_file", "validation_file", "suffix", "method")
SIMPLE_CONFIG_FIELDS = ("max_steps", "lora_rank", "system_prompt")


def _methods(job_schema: dict[str, Any]) -> list[str]:
    method = job_schema["$defs"]["Method"]["properties"]["type"]
    if "enum" in method:
        return list(method["enum"])
    if "const" in method:
        return [method["const"]]
    return [v for option in method.get("anyOf", []) for v in option.get("enum", [])]


def job_form() -> dict[str, Any]:
    job_schema = JobCreate.model_json_schema()
    config_schema = TrainConfig.model_json_schema()
    for key in RESERVED_CONFIG_KEYS:
        config_schema["properties"].pop(key, None)
    config_schema["required"] = [
        k for k in config_schema.get("required", []) if k in config_schema["properties"]
    ]
    return {
        "object": "tuneforge.job_form",
        "job": job_schema,
        "training_config": config_schema,
        "methods": _methods(job_schema),
        "simple": {"job": list(SIMPLE_JOB_FIELDS), "training_config": list(SIMPLE_CONFIG_FIELDS)},
        "reserved": dict(RESERVED_CONFIG_KEYS),
    }


@router.get("/v1/tuneforge/job_form")
def get_job_form() -> dict[str, Any]:
    """Schemas for building a fine-tuning job request: the job's fields, the methods accepted
    as `method.type`, and the `training_config` fields with descriptions and defaults."""
    return job_form()
