"""`report.md` and `report.html` from `compare.json`: the answer to "should I fine-tune?", with
the numbers behind it.

The report shows, in this order: the recommendation with the decision sentence (decided by
quality, by cost, or undecided), the warnings (leaked test examples, a test set too small) and
the reasons; the use case; every approach and how it scored, the primary metric with `±` half
its 95 % interval (failed ones with their error), per-label precision and recall on a label
task; the costs (examples, training time, tokens, latency); the benefits of the best fine-tuned
run over the best alternative, with the gain's interval and p-value; plots (error bars: the
intervals); and a few answers side by side. The HTML is one self-contained file (inline CSS,
plots as `data:` URIs, no scripts) so it can be mailed or archived and still open years later.

Every number the report shows comes from `report_numbers`, and the HTML wraps each one in
`<span data-key="…">` so `scripts/check_report.py` can read them back and compare them with
`compare.json`. Rounding, one rule per kind of number:

| kind | example key | shown as |
|---|---|---|
| metrics, per-example scores, ratios | `approaches.<name>.metrics.set_f1` | 3 decimals (`0.860`) |
| quality gain and its interval | `summary.quality_gain_ci95.0` | 3 decimals with sign (`+0.610`) |
| ± (half an approach's interval) | `approaches.<name>.primary_ci95.half_width` | 3 decimals |
| p-value | `summary.quality_gain_p_value` | 3 decimals (`0.004`), below 0.001 `<0.001` |
| margin | `summary.margin` | 3 decimals (`0.050`) |
| tokens per request | `approaches.<name>.prompt_tokens_per_request` | 1 decimal (`402.0`) |
| latency seconds | `approaches.<name>.latency_p50_s` | 2 decimals (`1.80`) |
| training seconds | `approaches.<name>.training_seconds` | 1 decimal (`301.5`) |
| counts (examples, tokens, requests) | `summary.break_even_requests` | whole number (`275`) |

`primary_ci95.half_width` is the one number not stored as such: (high - low) / 2 of the
approach's `primary_ci95`; the interval itself may be asymmetric, and the plot draws it exactly.
| null or missing | any | `—` |
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import DataError

TEMPLATES = Path(__file__).parent / "templates"  # report.md.j2, report.html.j2

NULL = "—"
MAX_EXAMPLES = 3  # side-by-side answers: enough to see the difference, short enough to read
RECOMMENDATIONS = {
    "fine_tune": "fine-tune",
    "prompt_engineering": "stay with prompt engineering",
    "undecided": "undecided",
}
DECIDED_BY = {"quality": "decided by quality", "cost": "decided by cost", "undecided": ""}
LABEL_FIELDS = ("precision", "recall", "support")
KIND_COLORS = {
    "zero_shot": "#7a828c",
    "few_shot": "#d9822b",
    "retrieval": "#2f6fca",
    "fine_tuned": "#1f8a4c",
}

Formatter = Callable[[Any], str]


def _fixed(decimals: int, *, signed: bool = False) -> Formatter:
    spec = f"{'+' if signed else ''}.{decimals}f"
    return lambda value: format(value, spec)


def _count(value: int | float) -> str:
    """Counts are ints in compare.json; a float one (an estimate) is rounded, not truncated."""
    return str(value) if isinstance(value, int) else format(value, ".0f")


METRIC = _fixed(3)


def P_VALUE(value: float) -> str:  # upper case: a formatter, like METRIC and GAIN
    """3 decimals; below 0.001 as `<0.001`, since "0.000" would read as impossible."""
    return "<0.001" if value < 0.001 else format(value, ".3f")


GAIN = _fixed(3, signed=True)
TOKENS = _fixed(1)
LATENCY = _fixed(2)
TRAINING_SECONDS = _fixed(1)


@dataclass(frozen=True)
class Field:
    """One number of an approach or of the summary: where it lives, its label, its rounding."""

    name: str
    label: str
    fmt: Formatter
    meaning: str = ""


USE_CASE_FIELDS = (
    Field("n_train_examples", "training examples", _count),
    Field("n_test_examples", "held-out test examples", _count),
    Field("max_new_tokens", "max new tokens per answer", _count),
    Field("n_leaked_test_examples", "test examples left out (also in training)", _count),
)
COST_FIELDS = (
    Field("examples_in_prompt", "examples in prompt", _count),
    Field("train_examples_used", "training examples used", _count),
    Field("training_seconds", "training time (s)", TRAINING_SECONDS),
    Field("trained_tokens", "trained tokens", _count),
    Field("prompt_tokens_per_request", "prompt tokens / request", TOKENS),
    Field("output_tokens_per_request", "output tokens / request", TOKENS),
    Field("latency_p50_s", "latency p50 (s)", LATENCY),
    Field("latency_p95_s", "latency p95 (s)", LATENCY),
)
BENEFIT_FIELDS = (
    Field(
        "quality_gain",
        "quality gain",
        GAIN,
        "primary metric of the best fine-tuned run minus that of the best alternative",
    ),
    Field(
        "quality_gain_p_value",
        "p-value of the gain",
        P_VALUE,
        "chance of a gain this large if the two answered equally well (McNemar's exact test "
        "for 0/1 scores, else a paired bootstrap test)",
    ),
    Field(
        "margin",
        "margin",
        METRIC,
        "the smallest quality difference that matters (`--margin`): quality decides only when "
        "the whole interval is beyond ± this",
    ),
    Field("paired_requests", "paired requests", _count, "test requests both approaches scored"),
    Field(
        "more_requests_needed",
        "more test requests needed",
        _count,
        "when undecided: about how many more requests would settle it (from the observed spread)",
    ),
    Field(
        "prompt_tokens_saved_per_request",
        "prompt tokens saved per request",
        TOKENS,
        "the alternative's prompt carries instructions and examples the fine-tuned model learned",
    ),
    Field(
        "prompt_token_ratio",
        "prompt token ratio",
        METRIC,
        "fine-tuned prompt tokens / the alternative's (lower is cheaper)",
    ),
    Field(
        "latency_saved_per_request_s",
        "latency saved per request (s)",
        LATENCY,
        "median latency of the alternative minus the fine-tuned run's, on this machine",
    ),
    Field(
        "break_even_requests",
        "break-even requests",
        _count,
        "requests after which the savings per request have paid back the training cost",
    ),
)


# --- the numbers ------------------------------------------------------------------------------


def _key(*parts: object) -> str:
    return ".".join(str(p) for p in parts)


def _shown(key: str, value: Any, fmt: Formatter) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(
            f"compare.json: {key} should be a number or null, not {value!r}",
            hint="rerun `tuneforge compare` to rewrite compare.json",
        )
    return fmt(value)


def _is_ok(approach: dict[str, Any]) -> bool:
    return approach.get("status") == "ok"


def _ok(compare: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in compare.get("approaches") or [] if _is_ok(a)]


def metric_names(compare: dict[str, Any]) -> list[str]:
    """Every metric any successful approach reports, the primary metric first."""
    names = [compare["primary_metric"]] if compare.get("primary_metric") else []
    for approach in _ok(compare):
        names += [m for m in approach.get("metrics") or {} if m not in names]
    return names


@dataclass(frozen=True)
class Answer:
    approach: str
    text: str | None  # None: this approach has no answer for the example
    score: float | None
    score_key: str


@dataclass(frozen=True)
class Example:
    index: int
    request: str
    reference: str
    answers: tuple[Answer, ...]


def _examples(compare: dict[str, Any]) -> list[Example]:
    """The first `MAX_EXAMPLES` test examples, joined across approaches on their `index`."""
    by_approach = {a["name"]: {s["index"]: s for s in a.get("samples") or []} for a in _ok(compare)}
    indices = list(dict.fromkeys(i for samples in by_approach.values() for i in samples))
    examples = []
    for index in indices[:MAX_EXAMPLES]:
        first = next(s[index] for s in by_approach.values() if index in s)
        answers = tuple(
            Answer(
                name,
                samples[index].get("answer", "") if index in samples else None,
                samples[index].get("score") if index in samples else None,
                _key("approaches", name, "samples", index, "score"),
            )
            for name, samples in by_approach.items()
        )
        examples.append(
            Example(index, first.get("request", ""), first.get("reference", ""), answers)
        )
    return examples


def report_numbers(compare: dict[str, Any]) -> dict[str, str]:
    """Every number the report shows, formatted as shown, keyed by where it is in compare.json
    (`approaches.<name>.metrics.<metric>`, `summary.break_even_requests`, …; sample scores are
    `approaches.<name>.samples.<index>.score`, with the example's `index`, not its position)."""
    numbers: dict[str, str] = {}

    def put(value: Any, fmt: Formatter, *parts: object) -> None:
        key = _key(*parts)
        numbers[key] = _shown(key, value, fmt)

    use_case = compare.get("use_case") or {}
    for field in USE_CASE_FIELDS:
        put(use_case.get(field.name), field.fmt, "use_case", field.name)
    metrics = metric_names(compare)
    for approach in _ok(compare):
        for metric in metrics:
            value = (approach.get("metrics") or {}).get(metric)
            put(value, METRIC, "approaches", approach["name"], "metrics", metric)
        for field in COST_FIELDS:
            put(approach.get(field.name), field.fmt, "approaches", approach["name"], field.name)
    summary = compare.get("summary") or {}
    for field in BENEFIT_FIELDS:
        put(summary.get(field.name), field.fmt, "summary", field.name)
    gain_ci = summary.get("quality_gain_ci95") or [None, None]
    for end, value in enumerate(gain_ci):
        put(value, GAIN, "summary", "quality_gain_ci95", end)
    for approach in _ok(compare):
        if approach.get("primary_ci95"):  # ± only where there is an interval
            put(
                _half_width(approach),
                METRIC,
                "approaches",
                approach["name"],
                "primary_ci95",
                "half_width",
            )
        for label, values in (approach.get("labels") or {}).items():
            for measure, fmt in zip(LABEL_FIELDS, (METRIC, METRIC, _count), strict=True):
                put(
                    values.get(measure),
                    fmt,
                    "approaches",
                    approach["name"],
                    "labels",
                    label,
                    measure,
                )
    for example in _examples(compare):
        for answer in example.answers:
            if answer.text is not None:
                numbers[answer.score_key] = _shown(answer.score_key, answer.score, METRIC)
    return numbers


def _half_width(approach: dict[str, Any]) -> float | None:
    ci = approach.get("primary_ci95")
    return (ci[1] - ci[0]) / 2 if ci else None


def label_names(compare: dict[str, Any]) -> list[str]:
    """The reference labels of a label task, in the order the first approach lists them."""
    return list(dict.fromkeys(label for a in _ok(compare) for label in a.get("labels") or {}))


# --- plots ------------------------------------------------------------------------------------


def _png_base64(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # no version: stable bytes
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _new_figure() -> tuple[Any, Any]:
    """A figure without pyplot: no global state and no window, PNGs drawn by the Agg canvas.
    matplotlib is imported here because it takes a second to import and most commands never
    draw."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(alpha=0.3)
    return fig, ax


def quality_plot(compare: dict[str, Any]) -> str | None:
    """Primary metric against prompt tokens per request, one labelled point per approach: the
    trade-off in one picture (up and to the left is better)."""
    metric = compare.get("primary_metric")
    points = [
        (
            a["name"],
            a.get("kind"),
            a.get("prompt_tokens_per_request"),
            a["metrics"].get(metric),
            a.get("primary_ci95"),
        )
        for a in _ok(compare)
        if a.get("metrics")
    ]
    points = [p for p in points if p[2] is not None and p[3] is not None]
    if not points:
        return None
    fig, ax = _new_figure()
    right = max(p[2] for p in points) * 1.35 or 1  # room on the right for the labels
    # Labels centred on their point, alternately above and below in order of prompt size, so
    # neighbours don't cover each other; near the y axis they start at the point instead.
    for i, (name, kind, tokens, score, ci) in enumerate(sorted(points, key=lambda p: p[2])):
        color = KIND_COLORS.get(kind, "#444")
        ax.scatter([tokens], [score], s=70, color=color, zorder=3)
        if ci:  # the 95 % interval, drawn as it is (it need not be symmetric)
            below, above = max(score - ci[0], 0.0), max(ci[1] - score, 0.0)
            ax.errorbar([tokens], [score], yerr=[[below], [above]], color=color, capsize=4)
        ax.annotate(
            name,
            (tokens, score),
            xytext=(0, 8) if i % 2 == 0 else (0, -16),
            textcoords="offset points",
            ha="left" if tokens < 0.2 * right else "center",
            fontsize=9,
        )
    scores = [p[3] for p in points] + [end for p in points if p[4] for end in p[4]]
    low, high = min(0.0, *scores), max(1.0, *scores)
    ax.set_xlim(0, right)
    ax.set_ylim(low - 0.1 * (high - low), high + 0.08 * (high - low))
    ax.set_xlabel("prompt tokens per request")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} (95% interval) vs prompt size (up and left is better)", fontsize=11)
    return _png_base64(fig)


def loss_plot(compare: dict[str, Any]) -> str | None:
    """Training (line) and validation (dashed, dots) loss of each fine-tuned run."""
    curves = [(a["name"], a["loss_curve"]) for a in _ok(compare) if a.get("loss_curve")]
    if not curves:
        return None
    fig, ax = _new_figure()
    for i, (name, curve) in enumerate(curves):
        if curve.get("train"):
            ax.plot(
                *zip(*curve["train"], strict=True), color=f"C{i}", lw=1.2, label=f"{name} train"
            )
        if curve.get("valid"):
            steps, losses = zip(*curve["valid"], strict=True)
            ax.plot(steps, losses, "o--", color=f"C{i}", label=f"{name} valid")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per trained token)")
    ax.set_title("fine-tuning loss", fontsize=11)
    ax.legend(fontsize=8)
    return _png_base64(fig)


# --- rendering --------------------------------------------------------------------------------


def _md_text(value: Any) -> str:
    """Free text in Markdown: one line, `|` kept out of table syntax, no raw HTML tags."""
    text = NULL if value is None else " ".join(str(value).split())
    return text.replace("|", "\\|").replace("<", "&lt;")


def _md_fence(value: Any) -> str:
    """A fenced block longer than any backtick run inside, so model output cannot close it."""
    text = str(value)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}\n{text}\n{ticks}"


def _context(compare: dict[str, Any]) -> dict[str, Any]:
    summary = compare.get("summary") or {}
    grader = (compare.get("use_case") or {}).get("grader")
    recommendation = summary.get("recommendation") or "undecided"
    return {
        "title": (compare.get("use_case") or {}).get("title") or "fine-tuning comparison",
        "compare": compare,
        "use_case": compare.get("use_case") or {},
        # the grader behind a grader:<name> metric, as given (one line of JSON)
        "grader_json": json.dumps(grader, ensure_ascii=False) if grader else None,
        "summary": summary,
        "recommendation": recommendation,
        "recommendation_label": RECOMMENDATIONS.get(recommendation, recommendation),
        "decided_by_label": DECIDED_BY.get(summary.get("decided_by") or "undecided", ""),
        "warnings": compare.get("warnings") or [],
        "labels": label_names(compare),
        "label_fields": LABEL_FIELDS,
        "primary": compare.get("primary_metric"),
        "metrics": metric_names(compare),
        "ok": _ok(compare),
        "not_ok": [a for a in compare.get("approaches") or [] if not _is_ok(a)],
        "use_case_fields": USE_CASE_FIELDS,
        "cost_fields": COST_FIELDS,
        "benefit_fields": BENEFIT_FIELDS,
        "examples": _examples(compare),
        "null": NULL,
    }


def render_markdown(compare: dict[str, Any]) -> str:
    numbers = report_numbers(compare)
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(text=_md_text, fence=_md_fence)
    template = env.get_template("report.md.j2")
    return template.render(_context(compare), num=lambda *parts: numbers[_key(*parts)])


def render_html(compare: dict[str, Any]) -> str:
    numbers = report_numbers(compare)

    def num(*parts: object) -> Markup:
        key = _key(*parts)
        return Markup('<span class="n" data-key="{}">{}</span>').format(key, numbers[key])

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("report.html.j2")
    plots = {"quality": quality_plot(compare), "loss": loss_plot(compare)}
    return template.render(_context(compare), num=num, plots=plots)


def write_report(compare: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `out_dir`; each appears whole or not at all."""
    markdown, html = render_markdown(compare), render_html(compare)
    md_path, html_path = Path(out_dir) / "report.md", Path(out_dir) / "report.html"
    atomic_write_text(md_path, markdown)
    atomic_write_text(html_path, html)
    return md_path, html_path
