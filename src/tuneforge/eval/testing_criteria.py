"""OpenAI's Evals API, the part that is not HTTP: an eval's data rows (`item`), its
`testing_criteria` (graders with a pass rule), the prompts a run renders from each row, and the
pass/fail of one answer. `api/evals.py` stores evals and runs and drives the model; this module
decides what each row scores.

Where OpenAI's rules are written down we follow them
(https://platform.openai.com/docs/api-reference/evals): `string_check` passes when it matches;
`text_similarity` needs a `pass_threshold`; `python` and `score_model` may carry one.
Not written down, so chosen here and documented in the README: a `python` or `score_model`
criterion without `pass_threshold` passes at the top of its range (1, or `range[1]`).
`label_model` runs a local judge (`graders.local_judge`) that is asked to answer with one of the
labels; the first label its answer names is the label, and it passes when that label is one of
`passing_labels`. OpenAI's criteria have no `multi` grader, so neither do ours.

Rows are checked against the eval's `item_schema` by its `required` fields and the JSON type of
each top-level property: enough to name the row and field a run would fail on, without a JSON
Schema library (none of this field's libraries needs one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tuneforge.eval.graders import (
    TEMPLATE,
    GraderError,
    _MissingVariable,
    _parse_variable,
    check_template,
    content_text,
    local_judge,
    render,
    run_grader,
    templates,
    validate_grader,
)

CRITERIA_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model")
ROLES = ("system", "developer", "user", "assistant")
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}
# What a sample holds, as the eval's schema shows it (`include_sample_schema`).
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array"},
    },
    "required": ["model", "choices"],
}


class CriteriaError(GraderError):
    """An eval or run that cannot work as written; `param` points at the field."""

    code = "invalid_eval"


# ----------------------------------------------------------------------------------------------
# The eval: its item schema and testing criteria
# ----------------------------------------------------------------------------------------------


def data_source_schema(item_schema: dict[str, Any], include_sample: bool) -> dict[str, Any]:
    """The `schema` an eval shows for its rows: `item`, and `sample` when runs make one."""
    properties: dict[str, Any] = {"item": item_schema}
    if include_sample:
        properties["sample"] = SAMPLE_SCHEMA
    return {"type": "object", "properties": properties, "required": list(properties)}


def check_item_schema(schema: Any, param: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise CriteriaError(f"{param} must be a JSON schema object", param=param)
    for key, spec in (schema.get("properties") or {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        kinds = kind if isinstance(kind, list) else [kind]
        if kind is not None and not all(k in JSON_TYPES for k in kinds):
            raise CriteriaError(
                f"{param}.properties.{key}.type {kind!r} is not a JSON type; use one of "
                f"{', '.join(JSON_TYPES)}",
                param=f"{param}.properties.{key}.type",
            )
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise CriteriaError(f"{param}.required must be a list of field names", param=param)
    return schema


def item_problem(schema: dict[str, Any], item: Any) -> str | None:
    """Why a row does not fit the item schema (its required fields and their JSON types)."""
    if not isinstance(item, dict):
        return f"an item must be a JSON object, got {type(item).__name__}"
    for name in schema.get("required", []):
        if name not in item:
            return f"it has no {name!r}, which the eval's item_schema requires"
    for name, spec in (schema.get("properties") or {}).items():
        if name not in item or not isinstance(spec, dict) or "type" not in spec:
            continue
        kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        if not any(_fits(item[name], kind) for kind in kinds if kind in JSON_TYPES):
            shown = type(item[name]).__name__
            return f"{name!r} is {shown}, and the item_schema says {spec['type']}"
    return None


def _fits(value: Any, kind: str) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, not to JSON
        return kind == "boolean"
    return isinstance(value, JSON_TYPES[kind])


def check_messages(messages: Any, param: str, *, namespaces: tuple[str, ...]) -> list[dict]:
    """Template messages (a judge's `input`, a run's `input_messages.template`) as
    [{"role", "content"}], each template checked and naming only `namespaces`."""
    if not isinstance(messages, list) or not messages:
        raise CriteriaError(f"{param} must hold at least one message", param=param)
    out = []
    for i, message in enumerate(messages):
        where = f"{param}[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise CriteriaError(
                f"{where} must be a message with role {', '.join(ROLES)}", param=f"{where}.role"
            )
        text = content_text(message.get("content"), f"{where}.content")
        check_template(text, f"{where}.content")
        for match in TEMPLATE.finditer(text):
            namespace, _ = _parse_variable(match.group(1), f"{where}.content")
            if namespace not in namespaces:
                raise CriteriaError(
                    f"{where}.content: {match.group(0)} cannot be filled here: a run's prompt "
                    "is made before the model answers, so it reads only {{ item.… }}",
                    param=f"{where}.content",
                )
        out.append({"role": message["role"], "content": text})
    return out


def validate_criteria(criteria: Any, item_schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Check an eval's testing criteria; return them as given. Every `{{ item.x }}` must be a
    property of the item schema, where the schema lists its properties."""
    param = "testing_criteria"
    if not isinstance(criteria, list) or not criteria:
        raise CriteriaError(f"{param} must hold at least one grader", param=param)
    for i, spec in enumerate(criteria):
        where = f"{param}[{i}]"
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in CRITERIA_TYPES:
            raise CriteriaError(
                f"{where}.type {kind!r} is not a testing criterion; use one of "
                f"{', '.join(CRITERIA_TYPES)}",
                param=f"{where}.type",
            )
        if kind == "label_model":
            _check_label_model(spec, where)
        else:
            inner = {k: v for k, v in spec.items() if k not in ("pass_threshold", "image_tag")}
            validate_grader(inner, where)
        threshold = spec.get("pass_threshold")
        if kind == "text_similarity" and threshold is None:
            raise CriteriaError(
                f"{where}.pass_threshold is required for text_similarity (the score in [0, 1] "
                "at which an answer passes)",
                param=f"{where}.pass_threshold",
            )
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int | float)
        ):
            raise CriteriaError(
                f"{where}.pass_threshold must be a number", param=f"{where}.pass_threshold"
            )
        _check_item_fields(spec, where, item_schema)
    return criteria


def _check_label_model(spec: dict[str, Any], where: str) -> None:
    from tuneforge.eval.graders import _check_judge

    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise CriteriaError(f"{where}.name is required (a string)", param=f"{where}.name")
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise CriteriaError(f"{where}.model is required", param=f"{where}.model")
    _check_judge(model, f"{where}.model")
    check_messages(spec.get("input"), f"{where}.input", namespaces=("item", "sample"))
    labels, passing = spec.get("labels"), spec.get("passing_labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise CriteriaError(
            f"{where}.labels must be a list of label strings", param=f"{where}.labels"
        )
    if (
        not isinstance(passing, list)
        or not passing
        or not all(isinstance(x, str) and x in labels for x in passing)
    ):
        raise CriteriaError(
            f"{where}.passing_labels must be a non-empty subset of labels ({', '.join(labels)})",
            param=f"{where}.passing_labels",
        )


def _criterion_templates(spec: dict[str, Any], where: str) -> list[tuple[str, str]]:
    if spec["type"] == "label_model":
        messages = check_messages(spec["input"], f"{where}.input", namespaces=("item", "sample"))
        return [(f"{where}.input[{i}].content", m["content"]) for i, m in enumerate(messages)]
    return [(param.replace("grader", where, 1), text) for _, param, text in templates(spec)]


def _check_item_fields(spec: dict[str, Any], where: str, item_schema: dict[str, Any]) -> None:
    properties = item_schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return
    for param, text in _criterion_templates(spec, where):
        for match in TEMPLATE.finditer(text):
            namespace, path = _parse_variable(match.group(1), param)
            if namespace == "item" and path[0] not in properties:
                raise CriteriaError(
                    f"{param}: {match.group(0)} names {path[0]!r}, which the item_schema does "
                    f"not have (its properties: {', '.join(properties)})",
                    param=param,
                )


# ----------------------------------------------------------------------------------------------
# A run: prompts from rows, and grading one answer
# ----------------------------------------------------------------------------------------------


def render_prompt(template: list[dict], item: dict[str, Any]) -> list[dict[str, str]]:
    """A run's `input_messages.template` filled with one row. A field the row lacks raises
    CriteriaError naming it."""
    try:
        return [{"role": m["role"], "content": render(m["content"], {}, item)} for m in template]
    except _MissingVariable as exc:
        raise CriteriaError(
            f"the prompt template reads {exc}, which the row does not have",
            param="data_source.input_messages.template",
        ) from None


def referenced_messages(item: dict[str, Any], reference: str) -> list[dict[str, str]]:
    """The messages an `item_reference` (e.g. `item.input_trajectory`) points at in a row."""
    namespace, path = _parse_variable(reference.strip(), "data_source.input_messages")
    if namespace != "item":
        raise CriteriaError(
            f"item_reference {reference!r} must point into the row: item.<field>",
            param="data_source.input_messages.item_reference",
        )
    current: Any = item
    for part in path:
        try:
            current = current[part]
        except (KeyError, IndexError, TypeError):
            raise CriteriaError(
                f"the row has no {reference}", param="data_source.input_messages.item_reference"
            ) from None
    if isinstance(current, str):
        return [{"role": "user", "content": current}]
    return conversation(current, reference)


def conversation(messages: Any, where: str) -> list[dict[str, Any]]:
    """A row's own messages (an `item_reference`): chat messages as they are, `{{ }}` included
    (they are data, not templates), tool calls and tool results kept."""
    param = "data_source.input_messages.item_reference"
    if not isinstance(messages, list) or not messages:
        raise CriteriaError(f"{where} must be a list of messages", param=param)
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (*ROLES, "tool"):
            raise CriteriaError(
                f"{where}[{i}] must be a message with role {', '.join(ROLES)} or tool", param=param
            )
        kept = {k: message[k] for k in ("tool_calls", "tool_call_id", "name") if k in message}
        content = message.get("content")
        text = None if content is None else content_text(content, f"{where}[{i}].content")
        out.append({"role": message["role"], "content": text} | kept)
    return out


@dataclass
class Result:
    """One criterion on one answer: OpenAI's output item `results[]` entry."""

    name: str
    type: str
    score: float
    passed: bool
    error: str | None = None  # why it could not grade (the item then counts as errored)
    details: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        sample = dict(self.details or {})
        if self.error:
            sample["error"] = self.error
        return {
            "name": self.name,
            "type": self.type,
            "score": self.score,
            "passed": self.passed,
            "sample": sample or None,
        }


def passes(spec: dict[str, Any], score: float) -> bool:
    threshold = spec.get("pass_threshold")
    if threshold is None:
        threshold = spec.get("range", [0, 1])[1] if spec["type"] == "score_model" else 1.0
    return score >= threshold


def grade(
    criteria: list[dict[str, Any]], sample: dict[str, Any], item: dict[str, Any], judge: Any = None
) -> list[Result]:
    """Every criterion on one answer; never raises for a bad answer."""
    results = []
    for spec in criteria:
        if spec["type"] == "label_model":
            results.append(_label_model(spec, sample, item, judge or local_judge))
            results[-1].name = spec.get("id", spec["name"])
            continue
        inner = {k: v for k, v in spec.items() if k not in ("pass_threshold", "image_tag")}
        outcome = run_grader(inner, sample, item, judge=judge)
        raised = [flag for flag, on in outcome.errors.items() if on]
        error = None
        if raised:
            error = f"{raised[0]}: {outcome.details.get(raised[0], '')}".rstrip(": ")
        results.append(
            Result(
                spec.get("id", spec["name"]),
                spec["type"],
                outcome.reward,
                not raised and passes(spec, outcome.reward),
                error,
            )
        )
    return results


def _label_model(spec: dict, sample: dict, item: dict, judge: Any) -> Result:
    labels = spec["labels"]
    try:
        messages = [
            {
                "role": "system" if m["role"] == "developer" else m["role"],
                "content": render(m["content"], sample, item),
            }
            for m in check_messages(spec["input"], "input", namespaces=("item", "sample"))
        ]
    except _MissingVariable as exc:
        return Result(spec["name"], "label_model", 0.0, False, f"invalid_variable_error: {exc}")
    messages.append(
        {"role": "user", "content": f"Answer with exactly one of these labels: {', '.join(labels)}"}
    )
    try:
        answer = judge(spec["model"], messages)
    except Exception as exc:  # noqa: BLE001 - the judge failing is this row's error, not the run's
        return Result(spec["name"], "label_model", 0.0, False, f"model_grader_server_error: {exc}")
    label = pick_label(answer, labels)
    details = {"judge_output": answer, "label": label}
    if label is None:
        return Result(
            spec["name"],
            "label_model",
            0.0,
            False,
            f"model_grader_parse_error: the judge answered {answer[:200]!r}, no label of "
            f"{', '.join(labels)}",
            details,
        )
    passed = label in spec["passing_labels"]
    return Result(spec["name"], "label_model", float(passed), passed, None, details)


def pick_label(answer: str, labels: list[str]) -> str | None:
    """The label a judge's answer gives: the whole answer if it is one (ignoring case, quotes
    and a full stop), else the label named first in it."""
    bare = answer.strip().strip("\"'`.").strip().lower()
    for label in labels:
        if bare == label.lower():
            return label
    found = [
        (m.start(), label)
        for label in labels
        if (m := re.search(rf"(?<!\w){re.escape(label.lower())}(?!\w)", answer.lower()))
    ]
    return min(found)[1] if found else None
