"""The `tuneforge` command line. It sits outside the layers: it parses options, calls the library,
and is the only place (with the server) that prints. User mistakes become one clear message and
an exit status — 1 when the data has errors, 2 when the command could not run — never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tuneforge.errors import TuneforgeError, UsageError

app = typer.Typer(
    help="tuneforge: fine-tune open models on your own examples, measure whether it was worth "
    "it, and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Inspect, validate, convert and generate training data.", no_args_is_help=True
)
models_app = typer.Typer(help="The models tuneforge can use.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Registry name, local model folder or hub id."),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="Force the input format instead of detecting it: "
        "openai-chat, prompt-completion, alpaca, sharegpt, openai-dpo.",
    ),
]
MapOpt = Annotated[
    str | None,
    typer.Option(
        "--map",
        help="Column mapping for CSV/JSONL with custom columns, e.g. "
        "'prompt=title+ingredients,completion=NER[,system=COL]'. Several columns "
        "joined with + become one labelled turn.",
    ),
]
SystemOpt = Annotated[
    str | None,
    typer.Option("--system", help="System message to add to examples that have none."),
]


def _default_model() -> str:
    from tuneforge.models import DEFAULT_MODEL

    return DEFAULT_MODEL


def _load_text_side(model: str) -> tuple[Any, Any, int | None]:
    """Tokenizer, chat template and context length of a model (no weights loaded)."""
    from tuneforge.data.chat_template import ChatTemplate
    from tuneforge.data.tokenize import require_fast_tokenizer
    from tuneforge.models import load_tokenizer
    from tuneforge.models.registry import REGISTRY, is_cached, model_context_length

    note = (
        " (first use: converting the embedded model, ~30 s)"
        if (model in REGISTRY and not is_cached(model))
        else ""
    )
    with err.status(f"loading the tokenizer of {model}{note} …"):
        tokenizer = load_tokenizer(model)
    require_fast_tokenizer(tokenizer)
    return tokenizer, ChatTemplate.from_tokenizer(tokenizer), model_context_length(model)


def _count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# tuneforge data …
# --------------------------------------------------------------------------------------------


@data_app.command("validate")
def data_validate(
    file: Annotated[Path, typer.Argument(help="The data file (.jsonl, .json or .csv).")],
    model: ModelOpt = "",
    max_seq_len: Annotated[
        int | None,
        typer.Option(
            "--max-seq-len",
            min=1,
            help="Maximum tokens per example (default: the model's context length).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    fmt: FormatOpt = None,
    mapping: MapOpt = None,
    system: SystemOpt = None,
    estimate: Annotated[
        bool, typer.Option(help="Time a short training step to estimate training time.")
    ] = True,
) -> None:
    """Check a data file like OpenAI's cookbook does, and more; show token statistics.

    Exit status: 0 the data is valid, 1 the data has errors, 2 the command could not run.
    """
    from tuneforge.data.formats import parse_mapping
    from tuneforge.data.validate import validate_file

    model = model or _default_model()
    parsed_map = parse_mapping(mapping)
    if not file.is_file():
        raise UsageError(f"{file}: no such file", hint="check the path")
    tokenizer, template, context = _load_text_side(model)
    if max_seq_len is None:
        max_seq_len = context or 4096
    elif context and max_seq_len > context:
        raise UsageError(
            f"--max-seq-len {max_seq_len} is over the context length of {model} ({context})",
            hint=f"use --max-seq-len {context} or less",
        )
    total = _count_lines(file)
    progress = _progress(f"validating {file.name}", total)
    with progress:
        task = progress.add_task("examples", total=total)
        report = validate_file(
            file,
            tokenizer,
            template,
            model_name=model,
            max_seq_len=max_seq_len,
            fmt=fmt,
            mapping=parsed_map,
            system=system,
            on_example=lambda: progress.advance(task),
        )
    if estimate and report.n_valid:
        from tuneforge.train.estimate import estimate_training_time

        with err.status("timing a calibration step for the training-time estimate …"):
            est = estimate_training_time(
                model, report.sample, list(report.tokens), report.suggested_epochs, max_seq_len
            )
        report.estimate = est.to_json() if est else None
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


def _progress(description: str, total: int | None) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _print_report(report: Any) -> None:
    data = report.to_json()
    out.print(
        f"[bold]{escape(report.path)}[/] — format {report.format}, model {escape(report.model)}"
    )
    out.print(f"examples: {report.n_examples} ({report.n_valid} valid)")
    if report.ok:
        out.print("[green]No errors found.[/]")
    else:
        counts = dict(report.format_errors) | dict(report.file_errors)
        out.print("[red]Errors:[/] " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        for issue in report.errors[:20]:
            out.print(f"  [red]✗[/] {escape(report.path)}: {escape(str(issue))}")
        if len(report.errors) > 20:
            out.print(f"  … {sum(counts.values()) - 20} more (use --json for all)")
    warned = {k: v for k, v in data["warnings"].items() if v}
    if warned:
        out.print("[yellow]Warnings:[/] " + ", ".join(f"{k}: {v}" for k, v in warned.items()))
        for issue in report.warning_list[:10]:
            out.print(f"  [yellow]![/] {escape(str(issue))}")
    stats = data["token_stats"]
    table = Table(title="per example", show_edge=False)
    table.add_column("")
    for col in ("min", "mean", "median", "p90", "max"):
        table.add_column(col, justify="right")
    for label, key in (
        ("messages", "messages_per_example"),
        ("tokens", "tokens_per_example"),
        ("trained tokens", "trained_tokens_per_example"),
    ):
        dist = stats[key]
        if dist:
            table.add_row(label, *(str(dist[c]) for c in ("min", "mean", "median", "p90", "max")))
    if report.n_valid:
        out.print(table)
    out.print(
        f"total tokens: {stats['total_tokens']:,} ({stats['total_trained_tokens']:,} trained); "
        f"max length {stats['max_seq_len']:,}"
    )
    out.print(
        f"suggested epochs: {data['suggested_epochs']} (OpenAI's rule); "
        f"billed tokens: {data['billed_tokens']:,}"
    )
    if report.estimate:
        e = report.estimate
        out.print(
            f"estimated training time here: {_duration(e['seconds'])} "
            f"({e['tokens_per_second']:.0f} tokens/s measured, LoRA on {e['device']})"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@data_app.command("convert")
def data_convert(
    src: Annotated[Path, typer.Argument(help="Input file.")],
    dst: Annotated[Path, typer.Argument(help="Output .jsonl file.")],
    to: Annotated[str, typer.Option("--to", help="openai-chat or openai-dpo.")] = "openai-chat",
    fmt: FormatOpt = None,
    mapping: MapOpt = None,
    system: SystemOpt = None,
) -> None:
    """Convert a data file to OpenAI chat (or DPO) JSONL. Refuses to write if any row is bad."""
    from tuneforge.data.formats import load_conversations, parse_mapping, write_jsonl

    if to not in ("openai-chat", "openai-dpo"):
        raise UsageError(f"--to {to}: unsupported", hint="use --to openai-chat or --to openai-dpo")
    if dst.resolve() == src.resolve():
        raise UsageError("the output would overwrite the input", hint="name another output file")
    examples = load_conversations(src, fmt, parse_mapping(mapping), system)
    if to == "openai-dpo":
        missing = [e.line for e in examples if e.conversation.rejected is None]
        if missing:
            raise UsageError(
                f"{src}: {len(missing)} example(s) have no non-preferred output "
                f"(first at line {missing[0]})",
                hint="only preference data converts to openai-dpo; use --to openai-chat",
            )
        rows = [e.conversation.to_openai_dpo() for e in examples]
    else:
        rows = [e.conversation.to_openai() for e in examples]
    n = write_jsonl(dst, rows)
    err.print(f"wrote {n} examples to {escape(str(dst))} ({to})")


@data_app.command("split")
def data_split(
    src: Annotated[Path, typer.Argument(help="Input file (any format `data` reads).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for train/validation/test.jsonl.")],
    validation: Annotated[float, typer.Option(min=0.0, max=0.9, help="Fraction held out.")] = 0.1,
    test: Annotated[float, typer.Option(min=0.0, max=0.9, help="Fraction for testing.")] = 0.1,
    seed: Annotated[int, typer.Option(help="The same seed gives the same split.")] = 0,
    fmt: FormatOpt = None,
    mapping: MapOpt = None,
    system: SystemOpt = None,
) -> None:
    """Shuffle with a seed and split into train/validation/test (OpenAI chat JSONL), so the test
    examples stay unseen by training and by the few-shot and retrieval prompts."""
    from tuneforge.data.formats import load_conversations, parse_mapping, write_jsonl
    from tuneforge.data.split import split_examples

    if validation + test >= 1:
        raise UsageError(
            f"--validation {validation} + --test {test} leaves nothing to train on",
            hint="keep their sum under 1 (e.g. 0.1 each)",
        )
    examples = load_conversations(src, fmt, parse_mapping(mapping), system)
    rows = [e.conversation.to_openai() for e in examples]
    splits = split_examples(rows, seed=seed, fractions=(1 - validation - test, validation, test))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        if not part:
            continue
        path = out_dir / f"{name}.jsonl"
        write_jsonl(path, part)
        err.print(f"{name:>10}: {escape(str(path))} ({len(part)} examples)")


@data_app.command("preview")
def data_preview(
    file: Annotated[Path, typer.Argument(help="The data file.")],
    n: Annotated[int, typer.Option("-n", min=1, help="How many examples to show.")] = 2,
    model: ModelOpt = "",
    max_seq_len: Annotated[int | None, typer.Option("--max-seq-len", min=1)] = None,
    fmt: FormatOpt = None,
    mapping: MapOpt = None,
    system: SystemOpt = None,
) -> None:
    """Show examples as the model sees them, with the trained tokens highlighted.

    Trained tokens are green on a terminal, and wrapped in ⟦ ⟧ otherwise.
    """
    from tuneforge.data.formats import iter_parsed, parse_mapping
    from tuneforge.data.tokenize import IGNORE_INDEX, encode

    model = model or _default_model()
    tokenizer, template, _ = _load_text_side(model)
    shown = 0
    plain = not out.is_terminal
    for record, parsed in iter_parsed(file, fmt, parse_mapping(mapping), system):
        if shown >= n:
            break
        if parsed.conversation is None:
            for issue in parsed.errors:
                out.print(f"[red]✗[/] {escape(str(file))}: {escape(str(issue))}")
            continue
        enc = encode(parsed.conversation, tokenizer, template, max_seq_len)
        text = Text()
        offsets = tokenizer(enc.text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ][: enc.n_tokens]
        run_trained = False
        for (start, end), label in zip(offsets, enc.labels, strict=True):
            trained = label != IGNORE_INDEX
            if plain and trained != run_trained:
                text.append("⟦" if trained else "⟧")
            text.append(enc.text[start:end], style="bold green" if trained else "dim")
            run_trained = trained
        if plain and run_trained:
            text.append("⟧")
        cut = f", truncated from {enc.full_length}" if enc.truncated else ""
        out.rule(f"line {record.line}: {enc.n_tokens} tokens{cut}, {enc.n_trained} trained")
        out.print(text)
        shown += 1


@data_app.command("demo")
def data_demo(
    out_dir: Annotated[Path, typer.Argument(help="Folder for train/validation/test.jsonl.")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data.")] = 0,
    n: Annotated[int, typer.Option("--n", min=10, help="Number of examples in all.")] = 600,
) -> None:
    """Write the recipe-assistant demo data set (OpenAI chat format), split three ways."""
    from tuneforge.data.demo import write_demo

    paths = write_demo(out_dir, seed=seed, n=n)
    for split, path in paths.items():
        count = _count_lines(path)
        err.print(f"{split:>10}: {escape(str(path))} ({count} examples)")


# --------------------------------------------------------------------------------------------
# tuneforge models …
# --------------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Models in the registry, with size, context length, chat template and cache state."""
    from dataclasses import asdict

    from tuneforge.models import REGISTRY, describe

    infos = [describe(name) for name in REGISTRY]
    if as_json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return
    table = Table()
    for col in ("name", "parameters", "context", "chat template", "cached"):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for i in infos:
        table.add_row(
            i.name,
            f"{i.parameters / 1e6:.1f}M" if i.parameters else "?",
            str(i.context_length or "?"),
            {True: "yes", False: "no", None: "?"}[i.has_chat_template],
            "yes" if i.cached else "no (~30 s on first use)",
            i.description,
        )
    out.print(table)
    out.print("Any local Hugging Face model folder or hub id (with a network) works too.")


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Registry name, local folder or hub id.")] = "",
) -> None:
    """Prepare a model now (convert the embedded GGUF into the cache) so later loads are fast."""
    from tuneforge.models import describe

    name = name or _default_model()
    with err.status(f"preparing {name} …"):
        info = describe(name, resolve=True)
    out.print(
        f"{info.name}: ready ({(info.parameters or 0) / 1e6:.1f}M parameters, "
        f"context {info.context_length})"
    )


# --------------------------------------------------------------------------------------------
# tuneforge config / train / runs / generate / chat / export
# --------------------------------------------------------------------------------------------

config_app = typer.Typer(help="Training configs: defaults and validation.", no_args_is_help=True)
runs_app = typer.Typer(help="Training runs under $TUNEFORGE_HOME/runs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(runs_app, name="runs")


@config_app.command("show")
def config_show(
    defaults: Annotated[
        bool, typer.Option("--defaults", help="Every field with its default.")
    ] = False,
    file: Annotated[Path | None, typer.Argument(help="A config file to show resolved.")] = None,
) -> None:
    """Print the default config (commented YAML), or a config file with defaults filled in."""
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
    """Check a config against its data and model, without loading weights."""
    from tuneforge.config import load_config_file
    from tuneforge.train.plan import make_plan

    plan = make_plan(load_config_file(file, overrides))
    c = plan.config
    out.print(
        f"[green]ok[/]: {len(plan.train)} training / {len(plan.validation)} validation examples; "
        f"{c.method}, {c.epochs} epoch(s) × {plan.steps_per_epoch} steps, batch {c.batch_size}, "
        f"lr {c.learning_rate:g}, max_seq_len {c.max_seq_len}, device {plan.device}"
    )


def _train_config(config_file: Path | None, overrides: list[str], flags: dict[str, Any]) -> Any:
    from tuneforge.config import build_config, load_config_file

    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if config_file is not None:
        return load_config_file(config_file, extra + overrides)
    return build_config({}, extra + overrides)


@app.command("train")
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
    resume_dir: Annotated[Path | None, typer.Option("--resume", help="Continue this run.")] = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Data-parallel processes.")] = 1,
) -> None:
    """Fine-tune a model (LoRA by default). Ctrl-C saves a checkpoint; --resume continues.

    Examples: `tuneforge train -t train.jsonl -v valid.jsonl epochs=2`,
    `tuneforge train -c run.yaml learning_rate_multiplier=2`, `tuneforge train --resume RUN_DIR`.
    """
    from tuneforge.train.plan import make_plan

    flags = {
        "train_file": train_file,
        "validation_file": validation_file,
        "model": model,
        "method": method,
        "output_dir": output_dir,
        "suffix": suffix,
    }
    if resume_dir is not None:
        from tuneforge import run_dir as rd
        from tuneforge.config import build_config

        if any(flags.values()) or overrides or config_file:
            raise UsageError("--resume takes no other config", hint="the run's config.yaml is used")
        config = build_config(rd.read_config(resume_dir))
        run_dir = resume_dir
    else:
        config = _train_config(config_file, overrides or [], flags)
        run_dir = None
    rank = int(os.environ.get("RANK", "0"))
    if nproc > 1:
        # Check everything once here, then start N processes on the same run directory.
        plan = make_plan(config, run_dir)
        _launch_distributed(nproc, config, plan.run_dir, resume=resume_dir is not None)
        return
    _train_here(config, run_dir, resume=resume_dir is not None, show=rank == 0)


def _launch_distributed(nproc: int, config: Any, run_dir: Path, resume: bool) -> None:
    import socket
    import subprocess

    with socket.socket() as sock:  # a free port for the process group's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={port}",
        "--master_addr=127.0.0.1",
        "-m",
        "tuneforge.cli",
        "train",
    ]
    if resume:
        cmd += ["--resume", str(run_dir)]
    else:
        data = config.model_dump(mode="json", exclude_defaults=True) | {"output_dir": str(run_dir)}
        cmd += [f"{k}={json.dumps(v)}" for k, v in data.items()]
    err.print(f"starting {nproc} processes (gloo on CPU, NCCL on GPUs) …")
    result = subprocess.run(cmd, check=False)
    if result.returncode:
        raise typer.Exit(result.returncode)


def _train_here(config: Any, run_dir: Path | None, resume: bool, show: bool) -> None:
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tuneforge.train.recipe import resume as resume_run
    from tuneforge.train.recipe import train

    progress = Progress(
        TextColumn("step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=err,
        disable=not (show and err.is_terminal),
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
        progress.update(state["task"], completed=m["step"], info=f"{info} {rate:.0f} trained tok/s")
        if show and not err.is_terminal:
            err.print(f"step {m['step']}: {info}")

    def on_event(message: str) -> None:
        if show:
            err.print(message)

    from tuneforge.train.plan import make_plan

    with err.status("checking the config and tokenizing the data …"):
        plan = make_plan(config, run_dir)
    with progress:
        state["task"] = progress.add_task("train", total=plan.total_steps, info="loading …")
        state["t0"] = time.time()
        if resume:
            run, last = resume_run(plan.run_dir, plan=plan, on_step=on_step, on_event=on_event)
        else:
            run, last = train(config, plan=plan, on_step=on_step, on_event=on_event)
    if show:
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
            out.print(f'  try it: tuneforge generate {run} "your prompt"')
        if status == "interrupted":
            raise typer.Exit(130)  # the shell convention for "stopped by Ctrl-C"


@runs_app.command("list")
def runs_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Runs with their status and final metrics."""
    from tuneforge import run_dir as rd

    rows = []
    for path in rd.list_runs():
        status = rd.read_status(path) or {}
        config = rd.read_config(path)
        rows.append(
            {
                "run": path.name,
                "path": str(path),
                "status": status.get("status", "?"),
                "step": status.get("step"),
                "total_steps": status.get("total_steps"),
                "model": config.get("model"),
                "method": config.get("method"),
                "final_metrics": status.get("final_metrics") or {},
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("run", "status", "step", "model", "method", "valid loss"):
        table.add_column(col)
    for r in rows:
        fm = r["final_metrics"]
        loss = fm.get("full_valid_loss", fm.get("valid_loss"))
        table.add_row(
            r["run"],
            r["status"],
            f"{r['step']}/{r['total_steps']}",
            str(r["model"]),
            str(r["method"]),
            f"{loss:.4f}" if loss is not None else "-",
        )
    out.print(table if rows else "no runs yet: start one with `tuneforge train`")


def _load_model_arg(model_or_run: str) -> Any:
    """A run directory, a model, or a served `ft:` model id (a job's run, or one checkpoint)."""
    from tuneforge.inference.load import load_for_inference

    if model_or_run.startswith("ft:"):
        from tuneforge.jobs.model_ids import resolve_model_id

        run_dir, weights = resolve_model_id(model_or_run)
        return load_for_inference(run_dir, weights=weights, packed=True)
    return load_for_inference(model_or_run, packed=True)


def _messages(prompt: str, system: str | None) -> list[Any]:
    from tuneforge.data.conversation import Message

    return ([Message("system", system)] if system else []) + [Message("user", prompt)]


@app.command("generate")
def generate_cmd(
    model_or_run: Annotated[
        str, typer.Argument(help="A run directory, a model, or a served `ft:` model id.")
    ],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    system: Annotated[str | None, typer.Option("--system", help="System message.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
) -> None:
    """Answer one prompt with a fine-tuned run (or a base model), greedy by default."""
    from tuneforge.inference.generate import generate

    with err.status("loading …"):
        loaded = _load_model_arg(model_or_run)
    text, _ = generate(
        loaded, _messages(prompt, system), max_new_tokens=max_tokens, temperature=temperature
    )
    print(text)


@app.command("chat")
def chat_cmd(
    model_or_run: Annotated[
        str, typer.Argument(help="A run directory, a model, or a served `ft:` model id.")
    ],
    system: Annotated[str | None, typer.Option("--system", help="System message.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 512,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
) -> None:
    """Chat in the terminal, streamed. Empty line or Ctrl-D ends; /reset forgets the history."""
    from tuneforge.data.conversation import Message
    from tuneforge.inference.generate import stream

    with err.status("loading …"):
        loaded = _load_model_arg(model_or_run)
    history: list[Any] = [Message("system", system)] if system else []
    err.print(f"chatting with {loaded.name} (empty line to quit)")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        history.append(Message("user", line))
        pieces = []
        print("assistant> ", end="", flush=True)
        for piece in stream(loaded, history, max_new_tokens=max_tokens, temperature=temperature):
            print(piece, end="", flush=True)
            pieces.append(piece)
        print()
        history.append(Message("assistant", "".join(pieces)))


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    merged: Annotated[Path, typer.Option("--merged", help="Write a merged HF model folder.")],
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Merge the adapter into the base model: a folder plain transformers loads."""
    from tuneforge.inference.export import export_merged

    with err.status("merging …"):
        path = export_merged(run, merged, overwrite=overwrite)
    out.print(f"wrote {path} (load it with AutoModelForCausalLM.from_pretrained)")


# --------------------------------------------------------------------------------------------
# tuneforge eval / compare / quickstart
# --------------------------------------------------------------------------------------------

MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        help="An extra metric `module:function(answer, reference) -> float`; repeatable.",
    ),
]


class _ApproachProgress:
    """One progress bar per approach on a terminal; a line per finished approach otherwise."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            disable=not err.is_terminal,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done)

    def __enter__(self) -> _ApproachProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


@app.command("eval")
def eval_cmd(
    model_or_run: Annotated[
        str, typer.Argument(help="A run directory, a model, or a served `ft:` model id.")
    ],
    data: Annotated[Path, typer.Option("--data", "-d", help="Held-out test examples.")],
    metric: MetricOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N examples.")] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-new-tokens", min=1, help="Default: the longest reference answer + 25%."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    loss: Annotated[bool, typer.Option(help="Also the loss of the reference answers.")] = True,
    fmt: FormatOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a model's greedy answers on test data: set-F1, exact match, token F1, JSON validity,
    loss of the reference answers, tokens and latency."""
    from tuneforge.data.formats import load_conversations
    from tuneforge.eval.evaluate import answer_room, evaluate, to_request
    from tuneforge.eval.metrics import BUILTIN, load_user_metric

    if not data.is_file():
        raise UsageError(f"{data}: no such file", hint="check the path")
    metrics = dict(BUILTIN)
    for spec in metric or []:
        name, fn = load_user_metric(spec)
        metrics[name] = fn
    requests = [to_request(e, str(data)) for e in load_conversations(data, fmt)][:limit]
    with err.status("loading …"):
        loaded = _load_model_arg(model_or_run)
    if max_new_tokens is None:
        max_new_tokens = answer_room(loaded.tokenizer, [r.reference for r in requests])
    with _ApproachProgress() as progress:
        evaluation = evaluate(
            loaded,
            requests,
            metrics,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            with_loss=loss,
            on_progress=lambda d, t: progress("answering", d, t),
        )
    result = {"model": model_or_run, "data": str(data), "n": len(requests)}
    result |= evaluation.summary()
    result["notes"] = evaluation.notes
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for note in evaluation.notes:
        err.print(Text(f"note: {note}", style="yellow"))
    table = Table(title=f"{escape(model_or_run)} on {escape(str(data))} ({len(requests)} examples)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in result["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("prompt tokens / request", f"{result['prompt_tokens_per_request']:.1f}")
    table.add_row("output tokens / request", f"{result['output_tokens_per_request']:.1f}")
    for q in ("p50", "p95"):
        value = result[f"latency_{q}_s"]
        table.add_row(f"latency {q} (s, one request at a time)", f"{value:.2f}" if value else "-")
    out.print(table)


def _print_summary(summary: dict[str, Any], md: Path, html: Path) -> None:
    verdict = {
        "fine_tune": "fine-tune",
        "prompt_engineering": "stay with prompt engineering",
        "undecided": "undecided",
    }[summary["recommendation"]]
    out.print(Text(f"recommendation: {verdict}", style="bold"))
    for reason in summary["reasons"]:
        out.print(Text(f"  - {reason}"))
    out.print(f"report: {escape(str(html))} (and {escape(md.name)})")


@app.command("compare")
def compare_cmd(
    train_file: Annotated[Path, typer.Option("--train", help="Training examples (the shots).")],
    test_file: Annotated[Path, typer.Option("--test", help="Held-out test examples.")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Base model (default: the runs' base, or the default)."),
    ] = None,
    runs: Annotated[
        list[Path] | None, typer.Option("--run", help="A fine-tuned run directory; repeatable.")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the results.")] = Path(
        "tuneforge-compare"
    ),
    k: Annotated[int, typer.Option("--k", min=1, help="Examples in few-shot/RAG prompts.")] = 4,
    retriever: Annotated[
        str, typer.Option(help="auto (embeddings if installed), embeddings, or bm25.")
    ] = "auto",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N test examples.")] = (
        None
    ),
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1)] = None,
    latency_requests: Annotated[
        int, typer.Option("--latency-requests", min=0, help="Requests timed one at a time.")
    ] = 8,
    loss: Annotated[bool, typer.Option(help="Also the loss of the reference answers.")] = True,
    metric: MetricOpt = None,
    primary_metric: Annotated[str | None, typer.Option("--primary-metric")] = None,
    baselines: Annotated[bool, typer.Option(help="Measure zero-shot, few-shot and RAG.")] = True,
    title: Annotated[
        str | None, typer.Option("--title", help="The use case, as the report names it.")
    ] = None,
    fmt: FormatOpt = None,
) -> None:
    """Is fine-tuning worth it? Zero-shot, few-shot, retrieval (RAG) and each fine-tuned run on
    the same held-out data: quality, prompt tokens, latency, training cost, and a recommendation.
    Writes compare.json, report.md and report.html."""
    if retriever not in ("auto", "embeddings", "bm25"):
        raise UsageError(f"--retriever {retriever!r}", hint="use auto, embeddings or bm25")
    from tuneforge.eval.compare import CompareOptions, Comparison

    options = CompareOptions(
        train_file=train_file,
        test_file=test_file,
        out_dir=out_dir,
        model=model,
        runs=list(runs or []),
        k=k,
        retriever=retriever,
        limit=limit,
        max_new_tokens=max_new_tokens,
        latency_requests=latency_requests,
        with_loss=loss,
        user_metrics=list(metric or []),
        primary_metric=primary_metric,
        data_format=fmt,
        title=title,
    )
    if not baselines and not options.runs:
        raise UsageError("--no-baselines leaves nothing to compare", hint="add --run RUN_DIR")
    with _ApproachProgress() as progress:
        comparison = Comparison(
            options, on_event=lambda m: err.print(Text(m)), on_progress=progress
        )
        if baselines:
            comparison.run_baselines()
        for run in options.runs:
            comparison.run_fine_tuned(run)
    path, md, html = comparison.finish()
    out.print(f"wrote {escape(str(path))}")
    _print_summary(comparison.to_json()["summary"], md, html)
    failed = [a["name"] for a in comparison.approaches if a["status"] != "ok"]
    if failed:
        err.print(Text(f"failed: {', '.join(failed)} (see compare.json)", style="red"))
        raise typer.Exit(1)


@app.command("quickstart")
def quickstart_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything.")] = Path(
        "tuneforge-out"
    ),
    fast: Annotated[
        bool, typer.Option("--fast", help="A smoke version in about 3 minutes (tiny sizes).")
    ] = False,
) -> None:
    """The whole journey on the embedded default model: demo data → validation → baselines →
    LoRA fine-tune → evaluation → report (about 9 minutes on a 2-core CPU; --fast: under 3)."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tuneforge.quickstart import quickstart

    start = time.time()

    def say(message: str) -> None:
        err.print(Text(f"[{time.time() - start:5.0f}s] {message}"))

    bars = _ApproachProgress()
    training = Progress(
        TextColumn("training step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )
    task: dict[str, Any] = {}

    def on_train_start(total: int) -> None:
        training.start()
        task["id"] = training.add_task("train", total=total, info="")

    def on_step(m: dict[str, Any]) -> None:
        info = f"loss {m['train_loss']:.3f}" + (
            f" valid {m['valid_loss']:.3f}" if "valid_loss" in m else ""
        )
        training.update(task["id"], completed=m["step"], info=info)
        if not err.is_terminal:
            say(f"    step {m['step']}: {info}")

    with bars:
        try:
            result = quickstart(
                out_dir,
                fast=fast,
                on_event=say,
                on_progress=bars,
                on_step=on_step,
                on_train_start=on_train_start,
            )
        finally:
            training.stop()
    out.print(f"done in {_duration(time.time() - start)}")
    _print_summary(result.summary, result.report_md, result.report_html)
    out.print(f"compare.json: {escape(str(result.compare_json))}")
    out.print(f"fine-tuned run: {escape(str(result.run_dir))}")
    out.print(f"  chat with it:  tuneforge chat {escape(str(result.run_dir))}")
    out.print(
        "  serve it:      tuneforge serve, then fine-tune through the OpenAI API "
        f"(files.create({escape(str(result.data_dir / 'train.jsonl'))}), "
        "fine_tuning.jobs.create, chat.completions.create); see the README"
    )


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TUNEFORGE_API_KEY",
            help="Require `Authorization: Bearer KEY` on every route but /health.",
        ),
    ] = None,
    max_concurrent_jobs: Annotated[
        int, typer.Option("--max-concurrent-jobs", min=1, help="Fine-tuning jobs run at once.")
    ] = 1,
) -> None:
    """An OpenAI-compatible server: files, fine-tuning jobs, models and chat completions."""
    from tuneforge.api.server import run_server

    run_server(host=host, port=port, api_key=api_key, max_concurrent_jobs=max_concurrent_jobs)


# --------------------------------------------------------------------------------------------


def _quiet_libraries() -> None:
    """Third-party progress bars and deprecation chatter would drown our own output."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    for name in ("transformers", "peft", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning our errors into one message and an exit status."""
    import click

    _quiet_libraries()

    if os.environ.get("TUNEFORGE_DEBUG"):
        app(args=argv)
        return
    try:
        code = app(args=argv, standalone_mode=False)
    except (typer.Exit, click.exceptions.Exit) as exc:
        code = exc.exit_code
    except (typer.Abort, click.exceptions.Abort):
        err.print("aborted")
        code = 130
    except (typer.TyperException, click.ClickException) as exc:
        # Bad options and arguments (typer vendors its own click): usage message, exit 2.
        exc.show()
        code = exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except TuneforgeError as exc:
        err.print(Text(f"error: {exc.message}", style="red"))
        if exc.hint:
            err.print(Text(f"  fix: {exc.hint}"))
        code = exc.exit_code
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # a bug of ours: say so plainly, keep the traceback one env var away
        err.print(Text(f"internal error: {exc.__class__.__name__}: {exc}", style="red"))
        err.print(
            "  This is a bug in tuneforge. Rerun with TUNEFORGE_DEBUG=1 for the traceback "
            "and report it."
        )
        code = 3
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
