"""A job's request (OpenAI's fields) → the `TrainConfig` that `tuneforge train` would build.

OpenAI's hyperparameters map onto our config: `n_epochs` → `epochs`, `batch_size` → `batch_size`,
`learning_rate_multiplier` → `learning_rate_multiplier`; `"auto"` keeps our automatic choice
(OpenAI's epoch rule, batch n/64 within [4, 32], the method's learning rate). Anything else a
tuneforge config can say goes in the optional `training_config` object, checked by the same
`build_config` as the CLI's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.config import TrainConfig, build_config
from tuneforge.errors import ConfigError, Problem

HYPERPARAMETER_FIELDS = {
    "n_epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate_multiplier": "learning_rate_multiplier",
}
# Set by the job's own fields (or fixed: the API serves LoRA adapters on shared bases).
RESERVED_CONFIG_KEYS = {
    "model": "model",
    "train_file": "training_file",
    "validation_file": "validation_file",
    "output_dir": "the job's run directory",
    "suffix": "suffix",
    "seed": "seed",
    "epochs": "hyperparameters.n_epochs",
    "batch_size": "hyperparameters.batch_size",
    "learning_rate_multiplier": "hyperparameters.learning_rate_multiplier",
    "method": "the API (jobs train LoRA adapters, served on a shared base model)",
    "objective": "method.type",
    "dpo_beta": "method.dpo.hyperparameters.beta",
    "grader": "method.reinforcement.grader",
    "response_format": "method.reinforcement.response_format",
    "grpo_group_size": "method.reinforcement.hyperparameters.compute_multiplier",
}
GROUP_SIZE_PER_COMPUTE = 4  # compute_multiplier 1 (auto) = 4 answers per prompt
# OpenAI's `method.type` → our `objective`; stored in the job's training_config, so the job row
# needs no column of its own.
OBJECTIVES = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
KEEP_CHECKPOINTS = 2  # + the final model = the three checkpoints OpenAI keeps (last 3 epochs)


def check_training_config(extra: dict[str, Any]) -> None:
    """Raise ConfigError naming every reserved or invalid key of a job's `training_config`."""
    reserved = [
        Problem(key, f"set by {owner}, not training_config")
        for key, owner in RESERVED_CONFIG_KEYS.items()
        if key in extra
    ]
    if reserved:
        raise ConfigError(
            problems=reserved,
            subject="training_config",
            hint="move these values to the job's own fields",
        )
    build_config({**extra, "train_file": "unchecked.jsonl"})


def integration_settings(integrations: list[dict[str, Any]] | None) -> dict[str, Any]:
    """OpenAI's `integrations: [{type: "wandb", wandb: {project, name, entity, tags}}]` → the
    TrainConfig fields that say the same (`report_to` and the tracker fields)."""
    settings: dict[str, Any] = {}
    for integration in integrations or []:
        if integration["type"] == "wandb":
            wandb = integration["wandb"]
            settings["report_to"] = ["wandb"]
            settings["tracker_project"] = wandb["project"]
            for theirs, ours in (
                ("name", "tracker_run_name"),
                ("entity", "wandb_entity"),
                ("tags", "tracker_tags"),
            ):
                if wandb.get(theirs):
                    settings[ours] = wandb[theirs]
    return settings


def config_data(job: dict[str, Any], training_path: Path, validation_path: Path | None) -> dict:
    data: dict[str, Any] = {"keep_last": KEEP_CHECKPOINTS, **job["training_config"]}
    tracking = integration_settings(job.get("integrations"))
    if tracking:  # the job's integrations win; other trackers of training_config stay
        trackers = data.get("report_to") or []
        trackers = (
            [t.strip() for t in trackers.split(",")] if isinstance(trackers, str) else trackers
        )
        data |= tracking | {"report_to": list(dict.fromkeys([*trackers, *tracking["report_to"]]))}
    data |= {
        "model": job["model"],
        "train_file": str(training_path),
        "validation_file": str(validation_path) if validation_path else None,
        "seed": job["seed"],
        "suffix": job["suffix"],
    }
    for ours, theirs in HYPERPARAMETER_FIELDS.items():
        value = job["hyperparameters"].get(ours, "auto")
        if value != "auto":
            data[theirs] = value
    hyperparameters = job["hyperparameters"]
    if hyperparameters.get("beta", "auto") != "auto":
        data["dpo_beta"] = hyperparameters["beta"]
    if hyperparameters.get("compute_multiplier", "auto") != "auto":
        multiplier = float(hyperparameters["compute_multiplier"])
        data["grpo_group_size"] = max(2, round(GROUP_SIZE_PER_COMPUTE * multiplier))
    if hyperparameters.get("eval_interval", "auto") != "auto":
        data["eval_every"] = hyperparameters["eval_interval"]
    return data


def with_method(
    training_config: dict[str, Any],
    method: str,
    grader: dict[str, Any] | None = None,
    response_format: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The training_config a job stores: the user's, plus the objective its method means (and
    a reinforcement job's grader and response_format)."""
    if method == "supervised":
        return training_config
    out = {**training_config, "objective": OBJECTIVES[method]}
    if grader is not None:
        out["grader"] = grader
    if response_format is not None:
        out["response_format"] = response_format
    return out


def job_method(job: dict[str, Any]) -> str:
    """OpenAI's `method.type` of a stored job."""
    objective = (job.get("training_config") or {}).get("objective", "sft")
    return {ours: theirs for theirs, ours in OBJECTIVES.items()}[objective]


def job_config(
    job: dict[str, Any], training_path: Path, validation_path: Path | None
) -> TrainConfig:
    return build_config(config_data(job, training_path, validation_path))


def resolved_hyperparameters(config: TrainConfig) -> dict[str, Any]:
    """What OpenAI shows once a job runs: the values `auto` became."""
    resolved = {
        "n_epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate_multiplier": config.learning_rate_multiplier,
    }
    if config.objective == "dpo":
        resolved["beta"] = config.dpo_beta
    if config.objective == "grpo":
        resolved |= {
            "compute_multiplier": config.grpo_group_size / GROUP_SIZE_PER_COMPUTE,
            "eval_interval": config.eval_every,
            "eval_samples": 1,
            "reasoning_effort": "default",
        }
    return resolved
