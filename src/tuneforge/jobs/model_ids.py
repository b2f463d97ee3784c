"""Fine-tuned model ids, OpenAI's grammar: `ft:<base>:<org>:<suffix>:<job>[:ckpt-step-N]`.

A succeeded job's final model is `ft:…:<job>`; each kept checkpoint is that id plus
`:ckpt-step-N`. `parse_model_id` finds the job an id names (in the store), `resolve_model_id`
the weights it means: the run directory, and a checkpoint folder or None for the final model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from tuneforge.errors import UsageError
from tuneforge.jobs.store import Store

ORGANIZATION = "local"  # the `<org>` part of fine-tuned model ids; one user, one machine

_CHECKPOINT = re.compile(r"ckpt-step-(\d+)")


def base_label(model: str) -> str:
    """The `<base>` part of a model id: short and free of ':' and '/' (a folder gives its name)."""
    name = Path(model.rstrip("/")).name if ("/" in model or os.sep in model) else model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def fine_tuned_model_id(job: dict[str, Any]) -> str:
    return (
        f"ft:{base_label(job['model'])}:{ORGANIZATION}:{job.get('suffix') or ''}:"
        f"{job['id'].removeprefix('ftjob-')}"
    )


def checkpoint_model_id(job: dict[str, Any], step: int) -> str:
    return f"{fine_tuned_model_id(job)}:ckpt-step-{step}"


def _unknown(model_id: str, why: str) -> UsageError:
    return UsageError(
        f"unknown fine-tuned model `{model_id}`: {why}",
        hint="list the models with `curl localhost:8000/v1/models` (while `tuneforge serve` "
        "runs), or name a run directory instead",
    )


def parse_model_id(store: Store, model_id: str) -> tuple[dict[str, Any], int | None]:
    """`ft:` id → (its job, checkpoint step or None). Raises UsageError when it names nothing."""
    parts = model_id.split(":")
    if len(parts) not in (5, 6) or parts[0] != "ft":
        raise _unknown(model_id, "expected ft:<base>:<org>:<suffix>:<id>[:ckpt-step-N]")
    job = store.get_job(f"ftjob-{parts[4]}")
    step = None
    if len(parts) == 6:
        match = _CHECKPOINT.fullmatch(parts[5])
        if match is None:
            raise _unknown(model_id, f"`{parts[5]}` is not ckpt-step-N")
        step = int(match.group(1))
    if job is None or fine_tuned_model_id(job) != ":".join(parts[:5]):
        raise _unknown(model_id, f"no fine-tuning job in {store.path} made it")
    if job["model_deleted"]:
        raise _unknown(model_id, "it was deleted")
    return job, step


def checkpoint_folders(job: dict[str, Any]) -> dict[int, Path]:
    """Step → weights folder: the complete checkpoints on disk, and the final model once the
    job succeeded (OpenAI lists the last step as a checkpoint too)."""
    from tuneforge import run_dir as rd

    run_dir = Path(job["run_dir"])
    found = dict(rd.checkpoints(run_dir))
    status = rd.read_status(run_dir) or {}
    if job["status"] == "succeeded" and status.get("step"):
        found[int(status["step"])] = run_dir / "model"
    return found


def resolve_model_id(model_id: str, store: Store | None = None) -> tuple[Path, Path | None]:
    """`ft:` model id → (run directory, checkpoint folder or None for the final model)."""
    store = store or Store()
    job, step = parse_model_id(store, model_id)
    run_dir = Path(job["run_dir"])
    if step is None:
        if job["status"] != "succeeded":
            raise _unknown(model_id, f"its job {job['id']} is {job['status']}, not succeeded")
        return run_dir, None
    folders = checkpoint_folders(job)
    if step not in folders:
        kept = ", ".join(f"ckpt-step-{s}" for s in sorted(folders)) or "none"
        raise _unknown(model_id, f"no checkpoint at step {step} (kept: {kept})")
    folder = folders[step]
    return run_dir, None if folder == run_dir / "model" else folder
