"""`report.md` and `report.html` from `compare.json`: the answer to "should I fine-tune?", with
the numbers behind it.

The report shows, in this order: the recommendation and its reasons; the use case; every
approach and how it scored (failed ones with their error); the costs (examples, training time,
tokens, latency); the benefits of the best fine-tuned run over the best alternative; plots; and a
few answers side by side. The HTML is one self-contained file (inline CSS, plots as `data:` URIs,
no scripts) so it can be mailed or archived and still open years later.

Every number the report shows comes from `report_numbers`, and the HTML wraps each one in
`<span data-key="…">` so `scripts/check_report.py` can read them back and compare them with
`compare.json`. Rounding, one rule per kind of number:

| kind | example key | shown as |
|---|---|---|
| metrics, per-example scores, ratios | `approaches.<name>.metrics.set_f1` | 3 decimals (`0.860`) |
| quality gain | `summary.quality_gain` | 3 decimals with sign (`+0.610`) |
| tokens per request | `approaches.<name>.prompt_tokens_per_request` | 1 decimal (`402.0`) |
| latency seconds | `approaches.<name>.latency_p50_s` | 2 decimals (`1.80`) |
| training seconds | `approaches.<name>.training_seconds` | 1 decimal (`301.5`) |
| counts (examples, tokens, requests) | `summary.break_even_requests` | whole number (`275`) |
| null or missing | any | `—` |
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import DataError

NULL = "—"
MAX_EXAMPLES = 3  # side-by-side answers: enough to see the difference, short enough to read
RECOMMENDATIONS = {
    "fine_tune": "fine-tune",
    "prompt_engineering": "stay with prompt engineering",
    "undecided": "undecided",
}
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
    for example in _examples(compare):
        for answer in example.answers:
            if answer.text is not None:
                numbers[answer.score_key] = _shown(answer.score_key, answer.score, METRIC)
    return numbers


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
        (a["name"], a.get("kind"), a.get("prompt_tokens_per_request"), a["metrics"].get(metric))
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
    for i, (name, kind, tokens, score) in enumerate(sorted(points, key=lambda p: p[2])):
        ax.scatter([tokens], [score], s=70, color=KIND_COLORS.get(kind, "#444"), zorder=3)
        ax.annotate(
            name,
            (tokens, score),
            xytext=(0, 8) if i % 2 == 0 else (0, -16),
            textcoords="offset points",
            ha="left" if tokens < 0.2 * right else "center",
            fontsize=9,
        )
    scores = [p[3] for p in points]
    low, high = min(0.0, *scores), max(1.0, *scores)
    ax.set_xlim(0, right)
    ax.set_ylim(low - 0.1 * (high - low), high + 0.08 * (high - low))
    ax.set_xlabel("prompt tokens per request")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs prompt size (up and left is better)", fontsize=11)
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
    recommendation = summary.get("recommendation") or "undecided"
    return {
        "title": (compare.get("use_case") or {}).get("title") or "fine-tuning comparison",
        "compare": compare,
        "use_case": compare.get("use_case") or {},
        "summary": summary,
        "recommendation": recommendation,
        "recommendation_label": RECOMMENDATIONS.get(recommendation, recommendation),
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
        autoescape=False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(text=_md_text, fence=_md_fence)
    template = env.from_string(MARKDOWN_TEMPLATE)
    return template.render(_context(compare), num=lambda *parts: numbers[_key(*parts)])


def render_html(compare: dict[str, Any]) -> str:
    numbers = report_numbers(compare)

    def num(*parts: object) -> Markup:
        key = _key(*parts)
        return Markup('<span class="n" data-key="{}">{}</span>').format(key, numbers[key])

    env = Environment(
        autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    template = env.from_string(HTML_TEMPLATE)
    plots = {"quality": quality_plot(compare), "loss": loss_plot(compare)}
    return template.render(_context(compare), num=num, plots=plots)


def write_report(compare: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `out_dir`; each appears whole or not at all."""
    markdown, html = render_markdown(compare), render_html(compare)
    md_path, html_path = Path(out_dir) / "report.md", Path(out_dir) / "report.html"
    atomic_write_text(md_path, markdown)
    atomic_write_text(html_path, html)
    return md_path, html_path


MARKDOWN_TEMPLATE = """\
# Fine-tune or not? {{ title | text }}

**Recommendation: {{ recommendation_label }}**
{%- if summary.get("best_fine_tuned") %} ({{ summary.best_fine_tuned | text }}
{%- if summary.get("best_baseline") %} vs {{ summary.best_baseline | text }}{% endif %}){% endif %}


{% for reason in summary.get("reasons") or [] %}
- {{ reason | text }}
{% endfor %}

Quality gain {{ num("summary", "quality_gain") }} {{ primary | text }}, \
{{ num("summary", "prompt_tokens_saved_per_request") }} prompt tokens saved per request, \
break-even after {{ num("summary", "break_even_requests") }} requests.

## Use case

| | |
|---|---|
| task | {{ title | text }} |
| model | {{ use_case.get("model") | text }} |
| train file | {{ use_case.get("train_file") | text }} |
| test file | {{ use_case.get("test_file") | text }} |
{% for f in use_case_fields %}
| {{ f.label }} | {{ num("use_case", f.name) }} |
{% endfor %}
| primary metric | {{ primary | text }} |
| machine | {{ compare.get("machine") | text }} |
| created | {{ compare.get("created_at") | text }} |

System prompt:

{{ (use_case.get("system_prompt") or null) | fence }}

## Alternatives and how each scored

| approach |
{%- for m in metrics %} {{ m | text }}{% if m == primary %} (primary){% endif %} |{% endfor %}

|---|{% for m in metrics %}---:|{% endfor %}

{% for a in ok %}
| {{ a.name | text }} |
{%- for m in metrics %} {{ num("approaches", a.name, "metrics", m) }} |{% endfor %}

{% endfor %}

{% for a in ok %}
- **{{ a.name | text }}**: {{ a.get("description") | text }}
{%- for note in a.get("notes") or [] %}; note: {{ note | text }}{% endfor %}

{% endfor %}
{% for a in not_ok %}
- **{{ a.name | text }}: {{ a.get("status") | text }}**: {{ a.get("error") | text }}
{% endfor %}

## Costs

| approach |{% for f in cost_fields %} {{ f.label }} |{% endfor %}

|---|{% for f in cost_fields %}---:|{% endfor %}

{% for a in ok %}
| {{ a.name | text }} |
{%- for f in cost_fields %} {{ num("approaches", a.name, f.name) }} |{% endfor %}

{% endfor %}

## Benefits of fine-tuning

Best fine-tuned run: {{ summary.get("best_fine_tuned") | text }}; \
best alternative: {{ summary.get("best_baseline") | text }}.

| | value | meaning |
|---|---:|---|
{% for f in benefit_fields %}
| {{ f.label }} | {{ num("summary", f.name) }} | {{ f.meaning }} |
{% endfor %}

Plots (quality against prompt tokens, loss curves) are in `report.html`.

## Example answers
{% for e in examples %}

### Test example {{ e.index }}

Request:

{{ e.request | fence }}

Reference:

{{ e.reference | fence }}
{% for ans in e.answers %}

**{{ ans.approach | text }}**
{%- if ans.text is none %}: no answer for this example
{% else %}, score {{ num(ans.score_key) }}:

{{ ans.text | fence }}
{% endif %}
{% endfor %}
{% endfor %}

---
Rounding: metrics and scores 3 decimals, tokens per request 1, latency seconds 2, training
seconds 1, counts whole; {{ null }} means no value (e.g. no training for a prompting approach).
"""


HTML_TEMPLATE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fine-tune or not? {{ title }}</title>
<style>
body { font: 15px/1.45 system-ui, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d232a;
       background: #eef0f3; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 40px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 2px; }
h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid #e3e6ea; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta, .muted { color: #5b6570; font-size: 13px; }
.rec { border-left: 8px solid; border-radius: 8px; padding: 14px 20px; margin: 16px 0 8px; }
.rec h2 { border: 0; margin: 0 0 6px; font-size: 23px; }
.rec ul { margin: 6px 0; padding-left: 20px; }
.rec-fine_tune { background: #e7f5ec; border-color: #1f8a4c; }
.rec-prompt_engineering { background: #e8f0fb; border-color: #2f6fca; }
.rec-undecided { background: #fdf4e3; border-color: #c98a12; }
.headline { font-size: 16px; }
.headline .n { font-weight: 700; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; font-size: 14px; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 5px 8px; text-align: left;
         vertical-align: top; }
th { background: #f1f3f6; font-weight: 600; }
th.num { text-align: right; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.primary { font-weight: 700; }
.failed td { color: #b42318; }
.badge { display: inline-block; border-radius: 4px; padding: 0 6px; font-size: 12px;
         background: #fde7e5; color: #b42318; font-weight: 600; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; margin: 4px 0;
      border: 1px solid #e3e6ea; border-radius: 6px; padding: 6px 8px; font-size: 12.5px;
      max-height: 14em; overflow: auto; }
.plots { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
figure { margin: 0; }
figure img { width: 100%; height: auto; border: 1px solid #e3e6ea; border-radius: 6px; }
figcaption { font-size: 13px; color: #5b6570; }
.answers { display: grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr)); gap: 10px; }
.card { border: 1px solid #e3e6ea; border-radius: 8px; padding: 6px 8px; }
.card h4 { margin: 0 0 2px; font-size: 13px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
</style>
</head>
<body>
<main>
<h1>Fine-tune or not? {{ title }}</h1>
<div class="meta">{{ compare.get("created_at") or null }} ·
 {{ compare.get("machine") or null }}</div>

<section class="rec rec-{{ recommendation }}">
<h2>Recommendation: {{ recommendation_label }}
{%- if summary.get("best_fine_tuned") %} ({{ summary.best_fine_tuned }}
{%- if summary.get("best_baseline") %} vs {{ summary.best_baseline }}{% endif %}){% endif %}</h2>
<div class="headline">Quality gain {{ num("summary", "quality_gain") }} {{ primary }} ·
{{ num("summary", "prompt_tokens_saved_per_request") }} prompt tokens saved per request ·
break-even after {{ num("summary", "break_even_requests") }} requests</div>
{% if summary.get("reasons") %}
<ul>{% for reason in summary.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
{% endif %}
</section>

<h2>Use case</h2>
<div class="pair">
<table>
<tr><th>task</th><td>{{ title }}</td></tr>
<tr><th>model</th><td>{{ use_case.get("model") or null }}</td></tr>
<tr><th>train / test file</th><td>{{ use_case.get("train_file") or null }} /
 {{ use_case.get("test_file") or null }}</td></tr>
{% for f in use_case_fields %}
<tr><th>{{ f.label }}</th><td class="num">{{ num("use_case", f.name) }}</td></tr>
{% endfor %}
<tr><th>primary metric</th><td>{{ primary or null }}</td></tr>
</table>
<div><div class="muted">system prompt</div>
<pre>{{ use_case.get("system_prompt") or null }}</pre></div>
</div>

<h2>Alternatives and how each scored</h2>
<table>
<tr><th>approach</th><th>what it is</th>
{% for m in metrics %}
<th class="num{% if m == primary %} primary{% endif %}">{{ m }}</th>
{% endfor %}
</tr>
{% for a in ok %}
<tr><td><b>{{ a.name }}</b></td><td>{{ a.get("description") or null }}
{% for note in a.get("notes") or [] %}<div class="muted">note: {{ note }}</div>{% endfor %}</td>
{% for m in metrics %}
<td class="num{% if m == primary %} primary{% endif %}">
{{- num("approaches", a.name, "metrics", m) }}</td>
{% endfor %}
</tr>
{% endfor %}
{% for a in not_ok %}
<tr class="failed"><td><b>{{ a.name }}</b></td>
<td colspan="{{ metrics | length + 1 }}">
<span class="badge">{{ a.get("status") or "failed" }}</span>
 {{ a.get("error") or null }}</td></tr>
{% endfor %}
</table>

<div class="plots">
{% if plots.quality %}
<figure><img alt="{{ primary }} against prompt tokens per request"
 src="data:image/png;base64,{{ plots.quality }}">
<figcaption>Quality against prompt tokens per request, one point per approach that ran.</figcaption>
</figure>
{% else %}<p class="muted">No approach has both a {{ primary }} and a prompt size to plot.</p>
{% endif %}
{% if plots.loss %}
<figure><img alt="training and validation loss of each fine-tuned run"
 src="data:image/png;base64,{{ plots.loss }}">
<figcaption>Training (line) and validation (dots) loss of each fine-tuned run;
 validation at step 0, where present, is the base model.</figcaption></figure>
{% else %}<p class="muted">No fine-tuned run has a loss curve.</p>
{% endif %}
</div>

<h2>Costs</h2>
<table>
<tr><th>approach</th>{% for f in cost_fields %}<th class="num">{{ f.label }}</th>{% endfor %}</tr>
{% for a in ok %}
<tr><td><b>{{ a.name }}</b></td>
{% for f in cost_fields %}<td class="num">{{ num("approaches", a.name, f.name) }}</td>{% endfor %}
</tr>
{% endfor %}
</table>

<h2>Benefits of fine-tuning</h2>
<p>Best fine-tuned run: <b>{{ summary.get("best_fine_tuned") or null }}</b>;
best alternative: <b>{{ summary.get("best_baseline") or null }}</b>.</p>
<table>
<tr><th></th><th class="num">value</th><th>meaning</th></tr>
{% for f in benefit_fields %}
<tr><th>{{ f.label }}</th><td class="num">{{ num("summary", f.name) }}</td>
<td>{{ f.meaning }}</td></tr>
{% endfor %}
</table>

<h2>Example answers</h2>
{% for e in examples %}
<h3>Test example {{ e.index }}</h3>
<div class="pair">
<div><div class="muted">request</div><pre>{{ e.request }}</pre></div>
<div><div class="muted">reference</div><pre>{{ e.reference }}</pre></div>
</div>
<div class="answers">
{% for ans in e.answers %}
<div class="card"><h4>{{ ans.approach }}
{%- if ans.text is not none %} · score {{ num(ans.score_key) }}{% endif %}</h4>
{% if ans.text is none %}<div class="muted">no answer for this example</div>
{% else %}<pre>{{ ans.text }}</pre>{% endif %}
</div>
{% endfor %}
</div>
{% else %}
<p class="muted">compare.json holds no sample answers.</p>
{% endfor %}

<p class="muted">Rounding: metrics and scores 3 decimals, tokens per request 1, latency seconds 2,
training seconds 1, counts whole; {{ null }} means no value (e.g. no training for a prompting
approach). Schema version {{ compare.get("schema_version") or null }}.</p>
</main>
</body>
</html>
"""
