"""The run directory is the contract: everything (CLI, jobs API, UI, eval) reads a run from here.

    RUN_DIR/
      config.yaml          resolved TrainConfig, written first
      status.json          {"status", "step", "total_steps", "error", ...}, rewritten atomically
      metrics.jsonl        one JSON object per step; evaluations add valid_* keys
      checkpoints/step-N/  complete checkpoints only (temp dir + rename; COMPLETE marker)
      model/               the final adapter (or full model) + tokenizer + chat template
      loss.png             training and validation loss
      README.md            model card

Every write that a crash could tear is a temp file (or folder) plus an atomic rename.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import UsageError

if TYPE_CHECKING:
    from tuneforge.config import TrainConfig

COMPLETE = "COMPLETE"
STATUSES = ("running", "succeeded", "failed", "cancelled", "interrupted")
# The metric names of OpenAI's fine-tuning API, which the jobs API reports from a run's metrics
# (checkpoint `metrics`, `metrics` events); a step has only those it measured.
METRIC_KEYS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def write_config(run_dir: Path, config_dict: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UsageError(
            f"{run_dir}: not a tuneforge run (no config.yaml)",
            hint="name a folder that `tuneforge train` wrote",
        )
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_config(run_dir: Path) -> TrainConfig:
    """config.yaml back as the `TrainConfig` it was written from (to resume the run)."""
    from tuneforge.config import build_config

    return build_config(read_config(run_dir))


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into status.json (atomically) and return the new status."""
    status = read_status(run_dir) or {}
    status.update(fields)
    status["updated_at"] = time.time()
    atomic_write_text(run_dir / "status.json", json.dumps(status, indent=2))
    return status


def read_status(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "status.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All complete metric lines (a line torn by a crash is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop metrics logged after `last_step`: a resumed run re-logs them from its checkpoint."""
    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    if root.exists():
        for child in root.iterdir():
            if child.name.startswith("step-") and (child / COMPLETE).exists():
                try:
                    found.append((int(child.name[5:]), child))
                except ValueError:
                    continue
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def new_checkpoint_dir(run_dir: Path, step: int) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-step-{step}-", dir=root))


def publish_checkpoint(run_dir: Path, tmp: Path, step: int, keep_last: int) -> Path:
    """Mark complete, rename into place, then delete the oldest beyond `keep_last`."""
    (tmp / COMPLETE).write_text(str(step))
    final = Path(run_dir) / "checkpoints" / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for _, old in checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in (Path(run_dir) / "checkpoints").glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)  # torn by an earlier crash
    return final


def runs_root() -> Path:
    from tuneforge.paths import tuneforge_home

    return tuneforge_home() / "runs"


def list_runs(root: Path | None = None) -> list[Path]:
    """Runs under `root` (default: those of `tuneforge train` in `$TUNEFORGE_HOME/runs` and
    those of fine-tuning jobs in `$TUNEFORGE_HOME/jobs/<job id>/run`), oldest first."""
    from tuneforge.paths import tuneforge_home

    if root is not None:
        found = list(root.iterdir()) if root.exists() else []
    else:
        found = list(runs_root().glob("*")) + list((tuneforge_home() / "jobs").glob("*/run"))
    runs = [p for p in found if (p / "config.yaml").exists()]
    return sorted(runs, key=lambda p: p.stat().st_mtime)


def run_name(run_dir: Path) -> str:
    """How a person names a run: its folder's name, or its job's id for a job's run."""
    run_dir = Path(run_dir)
    return run_dir.parent.name if run_dir.name == "run" else run_dir.name


def summary(run_dir: Path) -> dict[str, Any]:
    """One run at a glance (what `tuneforge runs list` shows)."""
    status = read_status(run_dir) or {}
    config = read_config(run_dir)
    return {
        "run": run_name(run_dir),
        "path": str(run_dir),
        "status": status.get("status", "?"),
        "step": status.get("step"),
        "total_steps": status.get("total_steps"),
        "model": config.get("model"),
        "method": config.get("method"),
        "final_metrics": status.get("final_metrics") or {},
    }


def find_run(name_or_path: str | Path) -> Path | None:
    """A run by its folder (any path) or by its name under `$TUNEFORGE_HOME/runs`; None if
    neither holds a run. The CLI and the server share this lookup."""
    from tuneforge.paths import tuneforge_home

    name = str(name_or_path)
    candidates = [Path(name).expanduser()]
    if "/" not in name and name not in ("", ".", ".."):
        candidates += [runs_root() / name, tuneforge_home() / "jobs" / name / "run"]
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    return None
