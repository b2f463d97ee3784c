"""`tuneforge eval`, `tuneforge compare`, `tuneforge quickstart`: is fine-tuning worth it?"""

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
    ModelOrRunArg,
    duration,
    err,
    load_model_arg,
    note,
    out,
    progress,
    use_free_cores,
    working,
)
from tuneforge.errors import UsageError
from tuneforge.eval.metrics import DEFAULT_MARGIN

MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        help="An extra metric `module:function(answer, reference) -> float`; repeatable.",
    ),
]

GraderOpt = Annotated[
    Path | None,
    typer.Option(
        "--grader",
        help="A JSON file with one OpenAI grader (as POST /v1/fine_tuning/alpha/graders/run "
        "takes it): each answer is its `sample`, the test row its `item` "
        "({{ item.reference_answer }} is the reference answer). Scored as grader:<name>.",
    ),
]


class _ApproachProgress:
    """One progress bar per approach on a terminal; a line per finished approach otherwise."""

    def __init__(self) -> None:
        self.progress = progress("{task.description}")
        self.tasks: dict[str, Any] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done)
        if done == total and not err.is_terminal:
            note(f"{name}: {done}/{total} done")

    def __enter__(self) -> _ApproachProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def eval_cmd(
    model_or_run: ModelOrRunArg,
    data: Annotated[Path, typer.Option("--test", help="Held-out test examples.")],
    metric: MetricOpt = None,
    grader: GraderOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N examples.")] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            min=1,
            help="Most tokens per answer (default: the longest reference answer + 25%).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    loss: Annotated[bool, typer.Option(help="Also the loss of the reference answers.")] = True,
    fmt: FormatOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a model's answers on test data. Greedy answers scored by set-F1, exact match,
    token F1, JSON validity (and a --grader) and the loss of the reference answers, with tokens
    and latency."""
    from tuneforge.data.formats import load_conversations
    from tuneforge.eval import graders
    from tuneforge.eval.evaluate import answer_room, evaluate, to_request
    from tuneforge.eval.metrics import BUILTIN, Metric, RowMetric, load_user_metric

    if not data.is_file():
        raise UsageError(f"{data}: no such file", hint="check the path")
    metrics: dict[str, Metric | RowMetric] = dict(BUILTIN)
    for spec in metric or []:
        name, fn = load_user_metric(spec)
        metrics[name] = fn
    examples = load_conversations(data, fmt)[:limit]
    requests = [to_request(e, str(data)) for e in examples]
    if grader is not None:
        spec = graders.read_grader_file(grader)
        graders.check_items(
            spec, [(e.line, r.item) for e, r in zip(examples, requests, strict=True)], str(data)
        )
        metrics[graders.metric_name(spec)] = graders.as_metric(spec)
    use_free_cores()
    with working(f"loading {model_or_run} …"):
        loaded = load_model_arg(model_or_run)
    if max_new_tokens is None:
        max_new_tokens = answer_room(loaded.tokenizer, [r.reference for r in requests])
    with _ApproachProgress() as bars:
        evaluation = evaluate(
            loaded,
            requests,
            metrics,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            with_loss=loss,
            on_progress=lambda d, t: bars("answering", d, t),
        )
    result = {"model": model_or_run, "data": str(data), "n": len(requests)}
    result |= evaluation.summary()
    result["notes"] = evaluation.notes
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for remark in evaluation.notes:
        note(f"note: {remark}", style="yellow")
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


def _run_folder(name_or_path: str) -> Path:
    from tuneforge import run_dir as rd

    found = rd.find_run(name_or_path)
    if found is None:
        raise UsageError(
            f"--run {name_or_path}: no such run",
            hint="name a run from `tuneforge runs list`, or its folder",
        )
    return found


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(Text(f"warning: {warning}", style="yellow"))


def _print_summary(summary: dict[str, Any], md: Path, html: Path) -> None:
    verdict = {
        "fine_tune": "fine-tune",
        "prompt_engineering": "stay with prompt engineering",
        "undecided": "undecided",
    }[summary["recommendation"]]
    decided = {"quality": " (decided by quality)", "cost": " (decided by cost)"}.get(
        summary.get("decided_by") or "", ""
    )
    out.print(Text(f"recommendation: {verdict}{decided}", style="bold"))
    if summary.get("decision"):
        out.print(Text(f"  {summary['decision']}"))
    for reason in summary["reasons"]:
        out.print(Text(f"  - {reason}"))
    out.print(f"report: {escape(str(html))} (and {escape(md.name)})")


def compare_cmd(
    train_file: Annotated[Path, typer.Option("--train", help="Training examples (the shots).")],
    test_file: Annotated[Path, typer.Option("--test", help="Held-out test examples.")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Base model (default: the runs' base, or the default)."),
    ] = None,
    runs: Annotated[
        list[str] | None,
        typer.Option("--run", help="A fine-tuned run (its name or folder); repeatable."),
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
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", min=1, help="Most tokens per answer (default: as eval)."),
    ] = None,
    latency_requests: Annotated[
        int, typer.Option("--latency-requests", min=0, help="Requests timed one at a time.")
    ] = 8,
    loss: Annotated[bool, typer.Option(help="Also the loss of the reference answers.")] = True,
    metric: MetricOpt = None,
    grader: GraderOpt = None,
    primary_metric: Annotated[
        str | None,
        typer.Option(
            "--primary-metric",
            help="The metric that decides (default: the --grader's grader:<name> if given, "
            "else by task: set_f1 for JSON lists, exact_match for short labels, token_f1 for "
            "free text).",
        ),
    ] = None,
    margin: Annotated[
        float,
        typer.Option(
            "--margin",
            min=0.0,
            max=1.0,
            help="The smallest quality difference that matters, on the primary metric (for a "
            "grader: a share of its range): quality decides only when the gain's 95% interval "
            "is beyond ±margin; inside it, cost does.",
        ),
    ] = DEFAULT_MARGIN,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the few-shot examples and the bootstrap.")
    ] = 0,
    baselines: Annotated[bool, typer.Option(help="Measure zero-shot, few-shot and RAG.")] = True,
    answers_from: Annotated[
        Path | None,
        typer.Option(
            "--answers-from",
            help="An earlier compare's --out folder: score its answers again (e.g. with a new "
            "--grader or --metric) instead of generating them, for the approaches it measured "
            "on the same requests.",
        ),
    ] = None,
    title: Annotated[
        str | None, typer.Option("--title", help="The use case, as the report names it.")
    ] = None,
    fmt: FormatOpt = None,
) -> None:
    """Is fine-tuning worth it? Measure it against prompting.

    Zero-shot, few-shot, retrieval (RAG) and each fine-tuned run on the same held-out data:
    quality, prompt tokens, latency, training cost, and a recommendation. Writes compare.json,
    report.md and report.html."""
    if retriever not in ("auto", "embeddings", "bm25"):
        raise UsageError(f"--retriever {retriever!r}", hint="use auto, embeddings or bm25")
    from tuneforge.eval.compare import CompareOptions, Comparison
    from tuneforge.eval.graders import read_grader_file

    options = CompareOptions(
        train_file=train_file,
        test_file=test_file,
        out_dir=out_dir,
        model=model,
        runs=[_run_folder(r) for r in runs or []],
        k=k,
        retriever=retriever,
        limit=limit,
        max_new_tokens=max_new_tokens,
        latency_requests=latency_requests,
        with_loss=loss,
        user_metrics=list(metric or []),
        grader=read_grader_file(grader) if grader is not None else None,
        primary_metric=primary_metric,
        data_format=fmt,
        seed=seed,
        margin=margin,
        title=title,
        answers_from=answers_from,
    )
    if not baselines and not options.runs:
        raise UsageError("--no-baselines leaves nothing to compare", hint="add --run RUN_DIR")
    use_free_cores()
    with _ApproachProgress() as bars:
        comparison = Comparison(options, on_event=lambda m: err.print(Text(m)), on_progress=bars)
        if baselines:
            comparison.run_baselines()
        for run in options.runs:
            comparison.run_fine_tuned(run)
    path, md, html = comparison.finish()
    out.print(f"wrote {escape(str(path))}")
    result = comparison.to_json()
    _print_warnings(result["warnings"])
    _print_summary(result["summary"], md, html)
    failed = [a["name"] for a in comparison.approaches if a["status"] != "ok"]
    if failed:
        err.print(Text(f"failed: {', '.join(failed)} (see compare.json)", style="red"))
        raise typer.Exit(1)


def quickstart_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything.")] = Path(
        "tuneforge-out"
    ),
    fast: Annotated[
        bool, typer.Option("--fast", help="A smoke version in about 3 minutes (tiny sizes).")
    ] = False,
) -> None:
    """The whole journey on the embedded default model.

    Demo data → validation → baselines → LoRA fine-tune → evaluation → report (about 10
    minutes on a 2-core CPU; --fast: a few)."""
    import time

    from tuneforge.quickstart import quickstart

    use_free_cores()
    start = time.time()

    def say(message: str) -> None:
        note(f"[{time.time() - start:5.0f}s] {message}")

    bars = _ApproachProgress()
    training = progress(
        "training step {task.completed}/{task.total}", total_column="remaining", info=True
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
    out.print(f"done in {duration(time.time() - start)}")
    _print_warnings(result.warnings)
    _print_summary(result.summary, result.report_md, result.report_html)
    out.print(f"compare.json: {escape(str(result.compare_json))}")
    out.print(f"fine-tuned run: {escape(str(result.run_dir))}")
    out.print(f"  chat with it:  tuneforge chat {escape(str(result.run_dir))}")
    out.print(
        "  serve it:      tuneforge serve, then fine-tune through the OpenAI API "
        f"(files.create({escape(str(result.data_dir / 'train.jsonl'))}), "
        "fine_tuning.jobs.create, chat.completions.create); see the README"
    )
