"""`tuneforge config …`, `tuneforge train`, `tuneforge runs …`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tuneforge.cli._common import (
    MapOpt,
    SystemOpt,
    command_group,
    err,
    note,
    out,
    progress,
    use_free_cores,
    working,
)
from tuneforge.errors import UsageError

config_app = command_group("Training configs: defaults and validation.")
runs_app = command_group("Training runs, of `tuneforge train` and of jobs.")


@config_app.command("show")
def config_show(
    defaults: Annotated[
        bool, typer.Option("--defaults", help="Every field with its default.")
    ] = False,
    file: Annotated[Path | None, typer.Argument(help="A config file to show resolved.")] = None,
) -> None:
    """Print the defaults, or a config file resolved. Commented YAML that validate reads."""
    import yaml

    from tuneforge.config import defaults_yaml, load_config_file

    if defaults or file is None:
        print(defaults_yaml(), end="")
        return
    print(yaml.safe_dump(load_config_file(file).model_dump(mode="json"), sort_keys=False), end="")


@config_app.command("validate")
def config_validate(
    file: Annotated[Path, typer.Argument(help="YAML config file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides.")] = None,
) -> None:
    """Check a config against its data and model. No weights are loaded."""
    from tuneforge.config import load_config_file
    from tuneforge.train.plan import make_plan

    plan = make_plan(load_config_file(file, overrides))
    c = plan.config
    lr = f"lr {plan.learning_rate:g}"
    if c.learning_rate_multiplier != 1:
        lr += f" ({c.learning_rate:g} × learning_rate_multiplier {c.learning_rate_multiplier:g})"
    out.print(
        f"[green]ok[/]: {len(plan.train)} training / {len(plan.validation)} validation examples; "
        f"{c.method}, {c.epochs} epoch(s) × {plan.steps_per_epoch} steps, batch {c.batch_size}, "
        f"{lr}, max_seq_len {c.max_seq_len}, device {plan.device}"
    )


def _train_config(config_file: Path | None, overrides: list[str], flags: dict[str, Any]) -> Any:
    from tuneforge.config import build_config, load_config_file

    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if config_file is not None:
        return load_config_file(config_file, extra + overrides)
    return build_config({}, extra + overrides)


def train_cmd(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value config overrides, e.g. epochs=2.")
    ] = None,
    config_file: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config.")] = None,
    train_file: Annotated[str | None, typer.Option("--train-file", "-t")] = None,
    validation_file: Annotated[str | None, typer.Option("--validation-file", "-v")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m")] = None,
    method: Annotated[str | None, typer.Option("--method", help="lora, full or qlora.")] = None,
    output_dir: Annotated[str | None, typer.Option("--out", "-o", help="Run directory.")] = None,
    suffix: Annotated[str | None, typer.Option("--suffix")] = None,
    mapping: MapOpt = None,
    system: SystemOpt = None,
    resume_run: Annotated[
        str | None, typer.Option("--resume", help="Continue this run (its name or folder).")
    ] = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Data-parallel processes.")] = 1,
) -> None:
    """Fine-tune a model (LoRA by default). Ctrl-C saves a checkpoint; --resume continues.

    Examples: `tuneforge train -t train.jsonl -v valid.jsonl epochs=2`,
    `tuneforge train -c run.yaml learning_rate_multiplier=2`, `tuneforge train --resume RUN`.
    Every config field (`tuneforge config show --defaults`) can be given as key=value.
    """
    from tuneforge import run_dir as rd

    flags = {
        "train_file": train_file,
        "validation_file": validation_file,
        "model": model,
        "method": method,
        "output_dir": output_dir,
        "suffix": suffix,
        "column_map": mapping,
        "system_prompt": system,
    }
    resume_dir = None
    if resume_run is not None:
        if any(flags.values()) or overrides or config_file:
            raise UsageError("--resume takes no other config", hint="the run's config.yaml is used")
        resume_dir = rd.find_run(resume_run)
        if resume_dir is None:
            raise UsageError(
                f"--resume {resume_run}: no such run",
                hint="name a run from `tuneforge runs list`, or its folder",
            )
        if (rd.read_status(resume_dir) or {}).get("status") == "succeeded":
            raise UsageError(
                f"{resume_dir} already finished",
                hint="start a new run instead (its model is in model/)",
            )
        config = rd.load_config(resume_dir)
        run_dir = resume_dir
    else:
        config = _train_config(config_file, overrides or [], flags)
        run_dir = None
    if nproc > 1:
        from tuneforge.train.launch import launch_distributed
        from tuneforge.train.plan import make_plan

        # Check everything once here, then start N processes on the same run directory.
        with working("checking the config and tokenizing the data …"):
            plan = make_plan(config, run_dir)
        err.print(f"starting {nproc} processes (gloo on CPU, NCCL on GPUs) …")
        code = launch_distributed(nproc, config, plan.run_dir, resume=resume_dir is not None)
        if code:
            raise typer.Exit(code)
        return
    # Under torchrun every process runs this; only the first one prints.
    show = int(os.environ.get("RANK", "0")) == 0
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        use_free_cores()  # (torchrun gives each of N processes its own share)
    _train_here(config, run_dir, resume=resume_dir is not None, show=show)


def _train_here(config: Any, run_dir: Path | None, resume: bool, show: bool) -> None:
    from tuneforge.train.plan import make_plan
    from tuneforge.train.recipe import resume as resume_run
    from tuneforge.train.recipe import train

    bar = progress(
        "step {task.completed}/{task.total}", total_column="remaining", info=True, enabled=show
    )
    state: dict[str, Any] = {"task": None, "t0": None, "tokens": 0}

    def on_step(m: dict[str, Any]) -> None:
        if state["task"] is None:
            return
        state["tokens"] += m["trained_tokens"]
        rate = state["tokens"] / max(1e-9, time.time() - state["t0"])
        info = f"epoch {m['epoch']:.2f} loss {m['train_loss']:.4f}"
        if "valid_loss" in m:
            info += f" valid {m['valid_loss']:.4f}"
        bar.update(state["task"], completed=m["step"], info=f"{info} {rate:.0f} trained tok/s")
        if show and not err.is_terminal:
            note(f"step {m['step']}: {info}")

    def on_event(message: str) -> None:
        if show:
            note(message)

    if show:
        note("checking the config and tokenizing the data …")
    plan = make_plan(config, run_dir)
    if show:
        lr = f"lr {plan.learning_rate:g}"
        c = plan.config
        note(f"{plan.describe()}, {lr}, {c.method} on {plan.device} in {c.precision}")
        note(f"precision: {plan.precision_reason}; loading {c.model} …")
    with bar:
        state["task"] = bar.add_task("train", total=plan.total_steps, info="loading …")
        state["t0"] = time.time()
        if resume:
            run, last = resume_run(plan, on_step=on_step, on_event=on_event)
        else:
            run, last = train(plan, on_step=on_step, on_event=on_event)
    if show:
        _say_how_it_ended(run, last)


def _say_how_it_ended(run: Path, last: dict[str, Any]) -> None:
    from tuneforge import run_dir as rd

    status = (rd.read_status(run) or {}).get("status")
    shown = {
        k: round(v, 4)
        for k, v in last.items()
        if k.endswith(("loss", "accuracy")) and isinstance(v, float)
    }
    out.print(f"run {status}: {escape(str(run))}")
    if shown:
        out.print("  " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if status == "succeeded":
        out.print(f'  try it: tuneforge generate {escape(rd.run_name(run))} "your prompt"')
    if status == "interrupted":
        out.print(f"  continue it: tuneforge train --resume {escape(str(run))}")
        raise typer.Exit(130)  # the shell convention for "stopped by Ctrl-C"


@runs_app.command("list")
def runs_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Runs with their status and final metrics. Those of `tuneforge train` and of jobs."""
    from tuneforge import run_dir as rd

    rows = [rd.summary(path) for path in rd.list_runs()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print("no runs yet: start one with `tuneforge train`")
        return
    # Plain aligned columns, never cut or folded to fit the terminal: names are what people type.
    header = ("run", "status", "step", "model", "method", "valid loss")
    lines = [header]
    for r in rows:
        fm = r["final_metrics"]
        loss = fm.get("full_valid_loss", fm.get("valid_loss"))
        lines.append(
            (
                r["run"],
                r["status"],
                f"{r['step']}/{r['total_steps']}",
                str(r["model"]),
                str(r["method"]),
                f"{loss:.4f}" if loss is not None else "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
