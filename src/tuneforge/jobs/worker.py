"""`python -m tuneforge.jobs.worker JOB_ID`: run one fine-tuning job, in its own process.

It runs the same `train()` / `resume()` as `tuneforge train` on the job's run directory, turning
the recipe's callbacks into job events (OpenAI's "Step N/M: training loss=…" messages and metrics
events). SIGINT or SIGTERM (cancel, pause, shutdown) make the recipe finish its step and save a
checkpoint; then `settle` decides the job's status. The worker writes its outcome itself, so a
job finishes correctly even when the server that started it is gone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tuneforge import run_dir as rd
from tuneforge.errors import ConfigError, DataError, ModelError, TuneforgeError
from tuneforge.jobs import lifecycle
from tuneforge.jobs.spec import job_config, resolved_hyperparameters
from tuneforge.jobs.store import Store

# DPO's and GRPO's metrics under TRL's names (+ OpenAI's reward means), as extra keys.
EXTRA_METRIC_NAMES = (
    "rewards/",
    "logps/",
    "preference_accuracy",
    "nll_loss",
    "reward",
    "completions/",
    "clip_ratio/",
    "kl",
    "grader_errors",
)
EXIT_LEASE_HELD = 75  # EX_TEMPFAIL: another worker owns the job; nothing was touched


def _file_path(store: Store, file_id: str | None, param: str) -> Path | None:
    if file_id is None:
        return None
    row = store.get_file(file_id)
    if row is None:
        raise DataError(f"{param}: the file {file_id} was deleted", hint="upload it again")
    return Path(row["path"])


def _metrics_event(store: Store, job_id: str, total_steps: int, m: dict[str, Any]) -> None:
    keys = ("step", *rd.METRIC_KEYS, "learning_rate", "grad_norm", "elapsed_seconds")
    data = {k: m[k] for k in keys if m.get(k) is not None} | {"total_steps": total_steps}
    # OpenAI's event `data` is free-form: the method's own metrics ride along.
    data |= {k: v for k, v in m.items() if any(p in k for p in EXTRA_METRIC_NAMES)}
    if "reward" in m:  # reinforcement: OpenAI's RFT message and names
        data["train_mean_reward"] = m["reward"]
        message = f"Step {m['step']}/{total_steps}: train mean reward={m['reward']:.2f}"
        if "valid_reward_mean" in m:
            data["valid_mean_reward"] = m["valid_reward_mean"]
            message += f", validation mean reward={m['valid_reward_mean']:.2f}"
    else:
        message = f"Step {m['step']}/{total_steps}: training loss={m['train_loss']:.4f}"
        if "valid_loss" in m:
            message += f", validation loss={m['valid_loss']:.4f}"
    store.add_event(job_id, message, type="metrics", data=data)


def _error_for(exc: TuneforgeError) -> dict[str, Any]:
    text = exc.inline()
    if isinstance(exc, ModelError):
        return lifecycle.error("invalid_model", text, "model")
    if isinstance(exc, DataError):
        return lifecycle.error("invalid_training_file", text, "training_file")
    if isinstance(exc, ConfigError):
        return lifecycle.error("invalid_training_config", text)
    return lifecycle.error("training_failed", text)


def run_job(store: Store, job_id: str) -> None:
    """Train (or resume) the job's run, then settle its status. Holds the job's lease."""
    from tuneforge.train.plan import make_plan
    from tuneforge.train.recipe import resume, train

    job = store.get_job(job_id)
    if job is None or job["status"] != "running":
        return  # cancelled or paused before this process got going
    store.update_job(job_id, worker_pid=os.getpid())
    run_dir = Path(job["run_dir"])
    try:
        if (run_dir / "config.yaml").exists():
            plan = make_plan(rd.load_config(run_dir), run_dir)
        else:
            config = job_config(
                job,
                _file_path(store, job["training_file"], "training_file"),  # type: ignore[arg-type]
                _file_path(store, job["validation_file"], "validation_file"),
            )
            plan = make_plan(config, run_dir)
            store.update_job(job_id, hyperparameters=resolved_hyperparameters(plan.config))
        callbacks = {
            "on_step": lambda m: _metrics_event(store, job_id, plan.total_steps, m),
            "on_event": lambda message: store.add_event(job_id, message),
        }
        if (run_dir / "config.yaml").exists():
            resume(plan, **callbacks)
        else:
            store.add_event(
                job_id,
                f"Fine-tuning job started: {plan.describe()}, in {plan.config.precision} "
                f"({plan.precision_reason})",
            )
            train(plan, **callbacks)
    except KeyboardInterrupt:
        pass  # a second signal: stopped without a new checkpoint; settle() requeues or keeps
    except TuneforgeError as exc:
        if (rd.read_status(run_dir) or {}).get("status") != "failed":
            lifecycle.fail(store, job_id, _error_for(exc), expect=("running",))
    except Exception as exc:  # noqa: BLE001 - a bug of ours must still end the job, not hang it
        if (rd.read_status(run_dir) or {}).get("status") != "failed":
            lifecycle.fail(
                store,
                job_id,
                lifecycle.error("internal_error", f"{exc.__class__.__name__}: {exc}"),
                expect=("running",),
            )
    lifecycle.settle(store, job_id, cause="the training process was interrupted")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tuneforge.jobs.worker JOB_ID", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    store = Store()
    try:
        with lifecycle.hold_lease(args[0]):
            run_job(store, args[0])
    except lifecycle.LeaseHeld as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_LEASE_HELD
    return 0


if __name__ == "__main__":
    sys.exit(main())
