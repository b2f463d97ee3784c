"""Answer-quality metrics: pure functions of (answer, reference) → a score in [0, 1], or None when
the metric does not apply to that reference (set-F1 of a reference that is not a JSON list).
A `RowMetric` reads the whole test row instead of only its reference: an OpenAI grader
(`graders.as_metric`), scored under the name `grader:<its name>`.

Normalisation follows SQuAD's evaluation script (lowercase, drop punctuation and the articles
a/an/the, collapse whitespace), the usual choice for exact match and token F1 on short answers.
"""

from __future__ import annotations

import importlib
import json
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneforge.errors import UsageError

Metric = Callable[[str, str], "float | None"]

# The key under which a test row's reference answer (its last assistant message) reaches a
# grader, as `{{ item.reference_answer }}`: the name OpenAI's grader examples use. A row with a
# field of that name keeps its own.
REFERENCE_KEY = "reference_answer"


@dataclass(frozen=True)
class RowMetric:
    """A metric of (answer, the test row as a dict) → (score, why it failed or None). A failure
    still scores (a grader that cannot read the answer gives 0, as OpenAI's do); the reason is
    reported once per approach with how many answers it hit."""

    score: Callable[[str, dict[str, Any]], tuple[float, str | None]]
    low: float = 0.0  # the range the scores lie in: the margin is a share of high - low
    high: float = 1.0


# The smallest quality difference that matters, in the primary metric's units (0-1 for the
# built-in metrics): a gain whose whole 95 % interval lies beyond ±MARGIN decides by quality; one
# whose interval lies inside it is "equivalent", and cost decides. 0.05 is one answer in twenty
# on accuracy: below that, users rarely notice a difference, and proving a smaller one takes
# several hundred test requests. (Here, not in compare.py, so the CLI can show it without
# importing the models.)
DEFAULT_MARGIN = 0.05

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def token_f1(answer: str, reference: str) -> float:
    got, want = normalize(answer).split(), normalize(reference).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def _json(text: str) -> Any:
    """Parse `text` as JSON, tolerating a Markdown code fence around it; raises ValueError."""
    text = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    return json.loads(fenced.group(1) if fenced else text)


def json_valid(answer: str, reference: str) -> float | None:
    """1 when the answer parses as JSON; applies only where the reference itself is JSON."""
    try:
        _json(reference)
    except ValueError:
        return None
    try:
        _json(answer)
    except ValueError:
        return 0.0
    return 1.0


def _as_set(value: Any) -> set[str] | None:
    if not isinstance(value, list):
        return None
    return {normalize(json.dumps(v) if not isinstance(v, str) else v) for v in value}


def set_f1(answer: str, reference: str) -> float | None:
    """F1 between the answer's JSON list and the reference's, as sets of normalised strings.

    Order and duplicates don't matter (an ingredient list is a set); an answer that is not a JSON
    list scores 0. Applies only where the reference is a JSON list.
    """
    try:
        want = _as_set(_json(reference))
    except ValueError:
        return None
    if want is None:
        return None
    try:
        got = _as_set(_json(answer))
    except ValueError:
        return 0.0
    if not got or not want:
        return float(got == want)
    hits = len(got & want)
    return 2 * hits / (len(got) + len(want)) if hits else 0.0


BUILTIN: dict[str, Metric] = {
    "set_f1": set_f1,
    "exact_match": exact_match,
    "token_f1": token_f1,
    "json_valid": json_valid,
}


# A "label task": every reference is a short answer from a small set the examples repeat
# (sentiment, category, yes/no). People read such a task's quality as accuracy, so exact match is
# its primary metric; token F1 would give "not spam" half credit for "spam".
LABEL_MAX_WORDS = 4
LABEL_MAX_DISTINCT = 20
LABEL_MIN_REPEATS = 2  # each label appears this many times on average: a set, not free text


def primary_metric_for(references: list[str], label_references: list[str]) -> tuple[str, str]:
    """The primary metric for these test references, and why, in words. `label_references`
    (training and test answers) decide whether the answers come from a small label set."""
    if references and all(set_f1(r, r) is not None for r in references):
        return "set_f1", "every reference is a JSON list, compared as a set (set-F1)"
    labels = {normalize(r) for r in label_references}
    short = all(len(normalize(r).split()) <= LABEL_MAX_WORDS for r in label_references)
    if (
        references
        and short
        and len(labels) <= LABEL_MAX_DISTINCT
        and len(label_references) >= LABEL_MIN_REPEATS * len(labels)
    ):
        return "exact_match", (
            f"every reference is one of {len(labels)} short labels, so the score is accuracy "
            "(exact match), with precision and recall per label"
        )
    return "token_f1", "the references are free text, scored by word overlap (token F1)"


def per_label(answers: list[str], references: list[str]) -> dict[str, dict[str, float | int]]:
    """Precision, recall and support (test references) of each reference label, by normalised
    exact match; precision is None for a label the approach never answered."""
    out: dict[str, dict[str, float | int]] = {}
    got = [normalize(a) for a in answers]
    want = [normalize(r) for r in references]
    for label in sorted(set(want)):
        hits = sum(g == w == label for g, w in zip(got, want, strict=True))
        said, support = got.count(label), want.count(label)
        out[label] = {
            "precision": hits / said if said else None,
            "recall": hits / support,
            "support": support,
        }
    return out


def load_user_metric(spec: str) -> tuple[str, Metric]:
    """`package.module:function` → (function name, function). The function takes
    (answer, reference) and returns a number in [0, 1] (or None when it does not apply)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(
            f"--metric {spec!r}: expected `module:function`",
            hint="e.g. --metric mymetrics:score, where mymetrics.py is importable",
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while importing
        raise UsageError(
            f"--metric {spec!r}: could not import {module_name!r} ({exc.__class__.__name__}: "
            f"{exc})",
            hint="check the module name and that its folder is on PYTHONPATH",
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(
            f"--metric {spec!r}: {module_name} has no function {attr!r}",
            hint=f"define `def {attr}(answer: str, reference: str) -> float` in {module_name}",
        )
    return attr, fn


def _row_scores(
    name: str, metric: RowMetric, answers: list[str], items: list[dict[str, Any]]
) -> tuple[list[float], str | None]:
    """Every answer's score, and one line on the answers the metric failed on (or None)."""
    values, failures = [], []
    for answer, item in zip(answers, items, strict=True):
        value, failure = metric.score(answer, item)
        values.append(value)
        if failure:
            failures.append(failure)
    if not failures:
        return values, None
    return values, (
        f"{name} could not grade {len(failures)} of {len(answers)} answers (each of them "
        f"scores 0, as on OpenAI); the first: {failures[0]}"
    )


def score_all(
    metrics: dict[str, Metric | RowMetric],
    answers: list[str],
    references: list[str],
    items: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, float], list[dict[str, float | None]], list[str]]:
    """Mean of each metric over the examples it applies to, the per-example scores, and the
    problems met (a user metric that raises or returns a non-number is reported, not fatal).
    `items` are the test rows a `RowMetric` reads (default: only the reference, as
    `{REFERENCE_KEY: …}`)."""
    per_example: list[dict[str, float | None]] = [{} for _ in answers]
    means: dict[str, float] = {}
    problems: list[str] = []
    for name, fn in metrics.items():
        if isinstance(fn, RowMetric):
            rows = items if items is not None else [{REFERENCE_KEY: r} for r in references]
            scores, problem = _row_scores(name, fn, answers, rows)
            for i, value in enumerate(scores):
                per_example[i][name] = value
            if scores:
                means[name] = sum(scores) / len(scores)
            if problem:
                problems.append(problem)
            continue
        values: list[float] = []
        for i, (answer, reference) in enumerate(zip(answers, references, strict=True)):
            try:
                value = fn(answer, reference)
                if value is not None:
                    value = float(value)
            except Exception as exc:  # a user metric may raise anything
                problems.append(
                    f"metric {name!r} raised on test example {i + 1}: "
                    f"{exc.__class__.__name__}: {exc}; it is left out for this approach"
                )
                values = []
                for scores in per_example:
                    scores.pop(name, None)
                break
            per_example[i][name] = value
            if value is not None:
                values.append(value)
        if values:
            means[name] = sum(values) / len(values)
    return means, per_example, problems
