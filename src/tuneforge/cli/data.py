"""`tuneforge data …`: validate, convert, split, preview and generate training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tuneforge.cli._common import (
    FormatOpt,
    MapOpt,
    ModelOpt,
    OverwriteOpt,
    SystemOpt,
    command_group,
    count_lines,
    default_model,
    duration,
    err,
    load_text_side,
    out,
    progress,
    refuse_to_overwrite,
    working,
)
from tuneforge.errors import UsageError

app = command_group("Inspect, validate, convert and generate training data.")


@app.command("validate")
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
        bool,
        typer.Option(
            help="Also estimate the training time here, from timed LoRA steps of the model "
            "(about a minute; the figure varies with what else this machine runs)."
        ),
    ] = False,
) -> None:
    """Check a data file, as OpenAI's cookbook does and more. Shows token statistics.

    Exit status: 0 the data is valid, 1 the data has errors, 2 the command could not run.
    """
    from tuneforge.data.formats import parse_mapping
    from tuneforge.data.validate import validate_file

    model = model or default_model()
    parsed_map = parse_mapping(mapping)
    if not file.is_file():
        raise UsageError(f"{file}: no such file", hint="check the path")
    text = load_text_side(model)
    tokenizer, template, context = text.tokenizer, text.template, text.config_context
    if max_seq_len is None:
        max_seq_len = context or 4096
    elif context and max_seq_len > context:
        raise UsageError(
            f"--max-seq-len {max_seq_len} is over the context length of {model} ({context})",
            hint=f"use --max-seq-len {context} or less",
        )
    total = count_lines(file)
    bar = progress(f"validating {file.name}")
    with bar:
        task = bar.add_task("examples", total=total)
        report = validate_file(
            file,
            tokenizer,
            template,
            model_name=model,
            max_seq_len=max_seq_len,
            fmt=fmt,
            mapping=parsed_map,
            system=system,
            on_example=lambda: bar.advance(task),
        )
    if estimate and report.n_valid:
        from tuneforge.train.estimate import estimate_training_time

        with working("timing a calibration step for the training-time estimate …"):
            est = estimate_training_time(
                model, report.sample, list(report.tokens), report.suggested_epochs, max_seq_len
            )
        report.estimate = est.to_json() if est else None
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


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
            f"estimated training time here: {duration(e['seconds'])} "
            f"({e['tokens_per_second']:.0f} tokens/s measured, LoRA on {e['device']}; "
            "slower while other work runs)"
        )
    elif report.n_valid:
        out.print("training-time estimate: add --estimate (times LoRA steps here, ~1 min)")


@app.command("convert")
def data_convert(
    src: Annotated[Path, typer.Argument(help="Input file.")],
    dst: Annotated[Path, typer.Argument(help="Output .jsonl file.")],
    to: Annotated[str, typer.Option("--to", help="openai-chat or openai-dpo.")] = "openai-chat",
    fmt: FormatOpt = None,
    mapping: MapOpt = None,
    system: SystemOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert a data file to OpenAI chat (or DPO) JSONL. Refuses to write if any row is bad."""
    from tuneforge.data.formats import load_conversations, parse_mapping, write_jsonl

    if to not in ("openai-chat", "openai-dpo"):
        raise UsageError(f"--to {to}: unsupported", hint="use --to openai-chat or --to openai-dpo")
    if dst.resolve() == src.resolve():
        raise UsageError("the output would overwrite the input", hint="name another output file")
    refuse_to_overwrite([dst], overwrite)
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


@app.command("split")
def data_split(
    src: Annotated[Path, typer.Argument(help="Input file (any format `data` reads).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for train/validation/test.jsonl.")],
    validation: Annotated[float, typer.Option(min=0.0, max=0.9, help="Fraction held out.")] = 0.1,
    test: Annotated[float, typer.Option(min=0.0, max=0.9, help="Fraction for testing.")] = 0.1,
    seed: Annotated[int, typer.Option(help="The same seed gives the same split.")] = 0,
    fmt: FormatOpt = None,
    mapping: MapOpt = None,
    system: SystemOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Split data into train/validation/test, seeded.

    Shuffles with the seed and writes OpenAI chat JSONL, so the test examples stay unseen by
    training and by the few-shot and retrieval prompts."""
    from tuneforge.data.formats import load_conversations, parse_mapping, write_jsonl
    from tuneforge.data.split import SPLITS, split_examples

    if validation + test >= 1:
        raise UsageError(
            f"--validation {validation} + --test {test} leaves nothing to train on",
            hint="keep their sum under 1 (e.g. 0.1 each)",
        )
    refuse_to_overwrite([out_dir / f"{name}.jsonl" for name in SPLITS], overwrite)
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


@app.command("preview")
def data_preview(
    file: Annotated[Path, typer.Argument(help="The data file.")],
    n: Annotated[int, typer.Option("-n", min=1, help="How many examples to show.")] = 2,
    model: ModelOpt = "",
    max_seq_len: Annotated[int | None, typer.Option("--max-seq-len", min=1)] = None,
    fmt: FormatOpt = None,
    mapping: MapOpt = None,
    system: SystemOpt = None,
) -> None:
    """Show examples as the model sees them. Trained tokens are marked.

    Trained tokens are green on a terminal, and wrapped in ⟦ ⟧ otherwise.
    """
    from tuneforge.data.formats import iter_parsed, parse_mapping
    from tuneforge.data.tokenize import encode, trained_runs

    model = model or default_model()
    side = load_text_side(model)
    shown = 0
    plain = not out.is_terminal
    for record, parsed in iter_parsed(file, fmt, parse_mapping(mapping), system):
        if shown >= n:
            break
        if parsed.conversation is None:
            for issue in parsed.errors:
                out.print(f"[red]✗[/] {escape(str(file))}: {escape(str(issue))}")
            continue
        enc = encode(parsed.conversation, side.tokenizer, side.template, max_seq_len)
        text = Text()
        for piece, trained in trained_runs(enc):
            if plain and trained:
                piece = f"⟦{piece}⟧"
            text.append(piece, style="bold green" if trained else "dim")
        cut = f", truncated from {enc.full_length}" if enc.truncated else ""
        out.rule(f"line {record.line}: {enc.n_tokens} tokens{cut}, {enc.n_trained} trained")
        out.print(text)
        shown += 1


@app.command("demo")
def data_demo(
    out_dir: Annotated[Path, typer.Argument(help="Folder for train/validation/test.jsonl.")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data.")] = 0,
    n: Annotated[int, typer.Option("--n", min=10, help="Number of examples in all.")] = 600,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the recipe-assistant demo data set. OpenAI chat JSONL, split three ways."""
    from tuneforge.data.demo import write_demo
    from tuneforge.data.split import SPLITS

    refuse_to_overwrite([out_dir / f"{name}.jsonl" for name in SPLITS], overwrite)
    paths = write_demo(out_dir, seed=seed, n=n)
    for split, path in paths.items():
        count = count_lines(path)
        err.print(f"{split:>10}: {escape(str(path))} ({count} examples)")
