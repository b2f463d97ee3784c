"""OpenAI's graders, run locally: a grader JSON scores one model answer (`sample`) for one data
row (`item`) with a number, as `POST /v1/fine_tuning/alpha/graders/run` does on OpenAI.

Types (OpenAI's field names, https://platform.openai.com/docs/guides/graders):

- `string_check`: `input` and `reference` templates, `operation` eq | ne | like (input contains
  reference) | ilike (the same, ignoring case) → 1 or 0.
- `text_similarity`: `evaluation_metric` fuzzy_match | bleu | gleu | rouge_1…rouge_5 | rouge_l →
  a score in [0, 1]. OpenAI does not publish its tokenisation or smoothing, so the numbers here are
  close to OpenAI's, not equal to the digit (see `_bleu` & co. for what they compute). `cosine`
  and `meteor` need an embedding model or WordNet data and are refused.
- `python`: `source` defining `grade(sample, item) -> float`, run in a separate process with a
  wall-clock limit, CPU and memory limits (RLIMIT_CPU, RLIMIT_AS), a scrubbed environment, a
  temporary working folder and, where `unshare -rn` works (Linux user namespaces), no network.
  An exception, a timeout or a non-number scores 0, with the reason in `errors` (a timeout
  as OpenAI's `unresponsive_reward_error`, the others `python_grader_runtime_error`).
- `multi`: `graders` (an object of named graders, none of them `multi`) and `calculate_output`, a
  formula over their names with + - * / ^ and min max abs floor ceil exp sqrt log, parsed with
  `ast` and evaluated by walking the tree (never `eval`).
- `score_model`: a local model (`model`: a registry name, a model folder or a run) as the judge:
  `input` messages (templates) are sent with greedy decoding; the answer's first number (or a JSON
  `{"result": n}`) is the score, clipped to `range` (default [0, 1]); no number → 0.
- tuneforge's extension: `{"type": "python", "name": …, "function": "package.module:function"}`
  calls a function of an importable module in this process (`function(sample, item) -> float`).

Templates: `{{ item.field }}`, `{{ sample.output_text }}`, nested with dots and `[i]`
(`{{ sample.output_json.answer }}`, `{{ sample.output_tools[0].function.name }}` for an answer
of `<tool_call>` blocks: `make_sample`). Strings are inserted as they are, anything else as JSON. A
namespace other than item/sample, or an unclosed `{{`, is an error when the grader is validated; a
field the row does not have scores 0 with `invalid_variable_error`.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.chat_template import parse_tool_calls, tool_call_objects
from tuneforge.errors import TuneforgeError

GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")
STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
SIMILARITY_METRICS = (
    "fuzzy_match",
    "bleu",
    "gleu",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices", "output_audio")
FORMULA_FUNCTIONS = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
MAX_SOURCE_BYTES = 256 * 1024  # OpenAI's limit on a python grader's code
PYTHON_TIMEOUT_S = 120.0  # OpenAI's: 2 minutes per grading execution
PYTHON_MEMORY_BYTES = 2 * 1024**3  # OpenAI's: 2 GB of RAM
TIMED_OUT = "the grader ran over its"  # how a timeout's reason starts (unresponsive_reward_error)
ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)
TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
PATH_PART = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class GraderError(TuneforgeError):
    """A grader that cannot run as written; `param` points into it (e.g. grader.graders.a.input)."""

    code = "invalid_grader"


@dataclass
class Grade:
    """What running a grader gives: OpenAI's `graders/run` answer, less the HTTP wrapping."""

    reward: float
    name: str
    type: str
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ERROR_FLAGS, False))
    details: dict[str, str] = field(default_factory=dict)  # the reasons behind error flags
    execution_time: float = 0.0

    def failed(self, flag: str, reason: str) -> Grade:
        self.reward = 0.0
        self.errors[flag] = True
        self.details[flag] = reason
        return self


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _require(spec: dict, key: str, param: str, kind: type | tuple = str) -> Any:
    if key not in spec:
        raise GraderError(f"{param}.{key} is required", param=f"{param}.{key}")
    value = spec[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise GraderError(
            f"{param}.{key} must be a {names}, got {type(value).__name__}", param=f"{param}.{key}"
        )
    return value


def content_text(content: Any, param: str) -> str:
    """A message's content as text, in every form OpenAI's grader inputs take: a string, one
    `input_text` / `output_text` part, or a list of those parts and strings (joined)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    texts = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") in ("input_text", "output_text"):
            texts.append(str(part.get("text", "")))
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise GraderError(
                f"{param}: a {kind!r} part cannot be run here; tuneforge's models read text "
                "(a string, or input_text / output_text parts)",
                param=f"{param}[{i}]" if isinstance(content, list) else param,
            )
    return "".join(texts)


def check_template(text: str, param: str) -> None:
    """Every `{{ … }}` names item.… or sample.<a sample field>…, and no `{{` is left open."""
    for match in TEMPLATE.finditer(text):
        _parse_variable(match.group(1), param)
    if "{{" in TEMPLATE.sub("", text):
        raise GraderError(
            f"{param}: a `{{{{` is never closed by `}}}}`; write e.g. {{{{ item.answer }}}}",
            param=param,
        )


def _parse_variable(expression: str, param: str) -> tuple[str, list[str | int]]:
    parts: list[str | int] = []
    pos = 0
    while pos < len(expression):
        match = PATH_PART.match(expression, pos)
        if match is None or match.end() == pos:
            raise GraderError(
                f"{param}: `{{{{ {expression} }}}}` is not a variable; write "
                "{{ item.field }} or {{ sample.output_text }}",
                param=param,
            )
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    namespace = parts[0] if parts else None
    if namespace not in ("item", "sample"):
        raise GraderError(
            f"{param}: `{{{{ {expression} }}}}` uses the namespace {namespace!r}; "
            "only `item` (the data row) and `sample` (the model's answer) exist",
            param=param,
        )
    if namespace == "sample" and (len(parts) < 2 or parts[1] not in SAMPLE_FIELDS):
        raise GraderError(
            f"{param}: `{{{{ {expression} }}}}`: a sample has {', '.join(SAMPLE_FIELDS)}",
            param=param,
        )
    if len(parts) < 2:
        raise GraderError(f"{param}: `{{{{ {expression} }}}}` names no field", param=param)
    return str(namespace), parts[1:]


def validate_grader(spec: Any, param: str = "grader", *, inside_multi: bool = False) -> dict:
    """Check a grader JSON; return it as given. Raises GraderError with `param` at the fault."""
    if not isinstance(spec, dict):
        raise GraderError(f"{param} must be an object with a `type`", param=param)
    kind = spec.get("type")
    allowed = GRADER_TYPES if not inside_multi else (*GRADER_TYPES[:-1],)
    if kind == "multi" and inside_multi:
        raise GraderError(
            f"{param}: a multi grader cannot hold another multi grader (OpenAI's rule); "
            "flatten them into one formula",
            param=f"{param}.type",
        )
    if kind == "label_model":
        raise GraderError(
            f"{param}: label_model graders need a hosted model with structured outputs; use "
            "score_model with a local judge, or a python grader",
            param=f"{param}.type",
        )
    if kind not in allowed:
        raise GraderError(
            f"{param}.type {kind!r} is not a grader type; use one of {', '.join(allowed)}",
            param=f"{param}.type",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise GraderError(f"{param}.name is required (a string)", param=f"{param}.name")
    if kind == "string_check":
        for key in ("input", "reference"):
            check_template(_require(spec, key, param), f"{param}.{key}")
        if _require(spec, "operation", param) not in STRING_OPERATIONS:
            raise GraderError(
                f"{param}.operation must be one of {', '.join(STRING_OPERATIONS)}",
                param=f"{param}.operation",
            )
    elif kind == "text_similarity":
        for key in ("input", "reference"):
            check_template(_require(spec, key, param), f"{param}.{key}")
        metric = _require(spec, "evaluation_metric", param)
        if metric in ("cosine", "meteor"):
            raise GraderError(
                f"{param}.evaluation_metric {metric} needs "
                + ("an embedding model" if metric == "cosine" else "WordNet data")
                + f", which tuneforge does not have locally; use one of "
                f"{', '.join(SIMILARITY_METRICS)}",
                param=f"{param}.evaluation_metric",
            )
        if metric not in SIMILARITY_METRICS:
            raise GraderError(
                f"{param}.evaluation_metric must be one of {', '.join(SIMILARITY_METRICS)}",
                param=f"{param}.evaluation_metric",
            )
    elif kind == "python":
        if "function" in spec:
            _load_function(_require(spec, "function", param), f"{param}.function")
        else:
            _check_python_source(_require(spec, "source", param), f"{param}.source")
    elif kind == "score_model":
        _check_judge(_require(spec, "model", param), f"{param}.model")
        messages = _require(spec, "input", param, list)
        if not messages:
            raise GraderError(
                f"{param}.input must hold at least one message", param=f"{param}.input"
            )
        for i, message in enumerate(messages):
            where = f"{param}.input[{i}]"
            if not isinstance(message, dict) or message.get("role") not in (
                "system",
                "developer",
                "user",
                "assistant",
            ):
                raise GraderError(
                    f"{where} must be a message with role system, developer, user or assistant",
                    param=f"{where}.role",
                )
            text = content_text(message.get("content"), f"{where}.content")
            check_template(text, f"{where}.content")
        bounds = spec.get("range", [0, 1])
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, int | float) for b in bounds)
            or bounds[0] >= bounds[1]
        ):
            raise GraderError(f"{param}.range must be [low, high]", param=f"{param}.range")
    else:  # multi
        graders = _require(spec, "graders", param, dict)
        if not graders:
            raise GraderError(f"{param}.graders holds no grader", param=f"{param}.graders")
        for key, sub in graders.items():
            if not key.isidentifier():
                raise GraderError(
                    f"{param}.graders: the name {key!r} cannot be used in a formula; use "
                    "letters, digits and _",
                    param=f"{param}.graders.{key}",
                )
            validate_grader(sub, f"{param}.graders.{key}", inside_multi=True)
        parse_formula(_require(spec, "calculate_output", param), set(graders), param)
    return spec


def _check_judge(model: str, param: str) -> None:
    """A score_model's judge runs here, so it must be a model tuneforge can load: a registry
    name, a model folder or run directory that exists, or a hub id (`org/name`, from the local
    Hugging Face cache when offline). OpenAI's hosted judges (`o3-mini`, `gpt-4.1`) are not."""
    from tuneforge.models import REGISTRY
    from tuneforge.models.registry import looks_like_path

    if model in REGISTRY or Path(model).expanduser().exists():
        return
    if looks_like_path(model):
        raise GraderError(f"{param}: {model}: no such folder", param=param)
    if model.count("/") != 1:
        raise GraderError(
            f"{param} {model!r} is not a model tuneforge can run: score_model graders run their "
            f"judge locally, not on OpenAI's servers; name one of {', '.join(REGISTRY)}, a "
            "model folder, a run directory, or a Hugging Face id (org/name) cached on this "
            "machine",
            param=param,
        )


def _check_python_source(source: str, param: str) -> None:
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise GraderError(f"{param} is over 256 kB (OpenAI's limit)", param=param)
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise GraderError(
            f"{param}: syntax error at line {exc.lineno}: {exc.msg}", param=param
        ) from None
    grade = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "grade"]
    if not grade:
        raise GraderError(f"{param} defines no top-level `def grade(sample, item)`", param=param)
    args = grade[-1].args
    n = len(args.posonlyargs) + len(args.args)
    if n != 2 or args.vararg or args.kwonlyargs or args.kwarg:
        raise GraderError(
            f"{param}: grade must take exactly two arguments (sample, item), it takes {n}",
            param=param,
        )


def _load_function(spec: str, param: str) -> Any:
    from tuneforge.eval.metrics import load_user_metric

    try:
        return load_user_metric(spec)[1]
    except TuneforgeError as exc:
        raise GraderError(f"{param}: {exc.inline()}", param=param) from None


def parse_formula(text: str, names: set[str], param: str = "grader") -> ast.Expression:
    """`calculate_output` → a checked AST: numbers, the graders' names, + - * / ^ (power), unary
    minus, and the eight functions. Anything else is an error naming the piece."""
    where = f"{param}.calculate_output"
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise GraderError(f"{where}: not a formula ({exc.msg})", param=where) from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in names and node.id not in FORMULA_FUNCTIONS:
                raise GraderError(
                    f"{where}: {node.id!r} is not one of the graders ({', '.join(sorted(names))})",
                    param=where,
                )
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FORMULA_FUNCTIONS:
                raise GraderError(
                    f"{where}: only {', '.join(FORMULA_FUNCTIONS)} can be called", param=where
                )
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float) or isinstance(node.value, bool):
                raise GraderError(f"{where}: only numbers are allowed", param=where)
        elif not isinstance(
            node,
            ast.Expression
            | ast.BinOp
            | ast.UnaryOp
            | ast.Add
            | ast.Sub
            | ast.Mult
            | ast.Div
            | ast.Pow
            | ast.USub
            | ast.UAdd
            | ast.Load,
        ):
            raise GraderError(
                f"{where}: {type(node).__name__} is not allowed (use + - * / ^ and "
                f"{', '.join(FORMULA_FUNCTIONS)})",
                param=where,
            )
    return tree


def evaluate_formula(tree: ast.AST, values: dict[str, float]) -> float:
    """Walk a `parse_formula` tree; no eval."""
    if isinstance(tree, ast.Expression):
        return evaluate_formula(tree.body, values)
    if isinstance(tree, ast.Constant):
        return float(tree.value)
    if isinstance(tree, ast.Name):
        return float(values[tree.id])
    if isinstance(tree, ast.UnaryOp):
        value = evaluate_formula(tree.operand, values)
        return -value if isinstance(tree.op, ast.USub) else value
    if isinstance(tree, ast.BinOp):
        a, b = evaluate_formula(tree.left, values), evaluate_formula(tree.right, values)
        if isinstance(tree.op, ast.Add):
            return a + b
        if isinstance(tree.op, ast.Sub):
            return a - b
        if isinstance(tree.op, ast.Mult):
            return a * b
        if isinstance(tree.op, ast.Div):
            return a / b
        if abs(b) > 64 or abs(a) > 1e6:
            raise OverflowError("power too large")
        return float(a**b)
    if isinstance(tree, ast.Call):
        args = [evaluate_formula(arg, values) for arg in tree.args]
        return float(FORMULA_FUNCTIONS[tree.func.id](*args))  # type: ignore[union-attr]
    raise ValueError(type(tree).__name__)


def templates(spec: dict, param: str = "grader") -> list[tuple[str, str, str]]:
    """Every template of a (validated) grader: (grader name, param, text)."""
    found = []
    for key in ("input", "reference"):
        if isinstance(spec.get(key), str):
            found.append((spec["name"], f"{param}.{key}", spec[key]))
    if spec["type"] == "score_model":
        for i, message in enumerate(spec["input"]):
            text = content_text(message["content"], f"{param}.input[{i}].content")
            found.append((spec["name"], f"{param}.input[{i}].content", text))
    for key, sub in (spec.get("graders") or {}).items():
        found.extend(templates(sub, f"{param}.graders.{key}"))
    return found


def check_items(spec: dict, rows: list[tuple[int, dict]], label: str) -> None:
    """Each `{{ item.… }}` of the grader exists in every data row (line, item); the first row
    that lacks one is a GraderError naming the line, the grader and the field."""
    wanted = []
    for name, param, text in templates(spec):
        for match in TEMPLATE.finditer(text):
            namespace, path = _parse_variable(match.group(1), param)
            if namespace == "item":
                wanted.append((name, param, match.group(0), path))
    for line, item in rows:
        for name, param, shown, path in wanted:
            current: Any = item
            for part in path:
                try:
                    current = current[part]
                except (KeyError, IndexError, TypeError):
                    fields = ", ".join(sorted(map(str, item))) or "none"
                    raise GraderError(
                        f"{label} line {line}: grader {name!r} reads {shown}, which the row "
                        f"does not have (its fields: {fields})",
                        param=param,
                    ) from None


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def make_sample(answer: str) -> dict[str, Any]:
    """OpenAI's `sample` for a generated answer, as its graders see one.

    `output_json` when the text parses as JSON. An answer with well-formed `<tool_call>` blocks
    (what a tool-call fine-tune writes) is split as the chat API returns it: `output_tools` holds
    the calls in chat-completions' `tool_calls` shape and `output_text` the text beside them
    ("" when the answer is only calls). `choices` holds that one assistant message.
    """
    parsed = parse_tool_calls(answer)
    output_text = answer if parsed is None else parsed.content or ""
    output_tools = [] if parsed is None else tool_call_objects(parsed.calls)
    return message_sample(output_text, output_tools)


def message_sample(output_text: str, output_tools: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's `sample` for an answer already split into text and tool calls (a stored chat
    completion's message), as `make_sample` makes one."""
    try:
        output_json = json.loads(output_text)
    except (json.JSONDecodeError, ValueError):
        output_json = None
    message: dict[str, Any] = {"role": "assistant", "content": output_text}
    if output_tools:
        message["tool_calls"] = output_tools
    return {
        "output_text": output_text,
        "output_json": output_json,
        "output_tools": output_tools,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if output_tools else "stop",
            }
        ],
        "output_audio": None,
    }


class _MissingVariable(Exception):
    pass


def render(text: str, sample: dict, item: dict) -> str:
    """Fill a template; a field the row or sample lacks raises _MissingVariable."""

    def value(match: re.Match) -> str:
        namespace, path = _parse_variable(match.group(1), "template")
        current: Any = sample if namespace == "sample" else item
        for part in path:
            current = _step(current, part, match.group(0))
        return current if isinstance(current, str) else json.dumps(current, ensure_ascii=False)

    return TEMPLATE.sub(value, text)


def _step(current: Any, part: str | int, shown: str) -> Any:
    """One step of a template path. A string that holds JSON is stepped into as its value, as
    OpenAI's templates do (`{{ sample.output_tools[0].function.arguments.city }}`: the
    arguments of a tool call are a JSON string)."""
    if isinstance(current, str):
        try:
            current = json.loads(current)
        except ValueError:
            raise _MissingVariable(shown) from None
    try:
        return current[part]
    except (KeyError, IndexError, TypeError):
        raise _MissingVariable(shown) from None


def run_grader(spec: dict, sample: dict, item: dict | None = None, *, judge: Any = None) -> Grade:
    """Score one sample; never raises for a bad sample (reward 0 with the reason instead).
    `judge(model, messages) -> str` answers score_model prompts (the default loads the model)."""
    item = item or {}
    started = time.perf_counter()
    grade = Grade(0.0, spec["name"], spec["type"])
    try:
        _run(spec, sample, item, grade, judge)
    except _MissingVariable as exc:
        grade.failed(
            "invalid_variable_error",
            f"grader {spec['name']!r}: {exc} is not in the item or sample",
        )
    except Exception as exc:  # noqa: BLE001 - a grader's failure is a 0 with its reason
        grade.failed("other_error", f"grader {spec['name']!r}: {type(exc).__name__}: {exc}")
    grade.execution_time = time.perf_counter() - started
    if not math.isfinite(grade.reward):
        grade.failed("other_error", f"grader {spec['name']!r} gave {grade.reward}")
    return grade


def _run(spec: dict, sample: dict, item: dict, grade: Grade, judge: Any) -> None:
    kind = spec["type"]
    if kind == "string_check":
        a, b = render(spec["input"], sample, item), render(spec["reference"], sample, item)
        op = spec["operation"]
        hit = {
            "eq": a == b,
            "ne": a != b,
            "like": b in a,
            "ilike": b.lower() in a.lower(),
        }[op]
        grade.reward = 1.0 if hit else 0.0
    elif kind == "text_similarity":
        a, b = render(spec["input"], sample, item), render(spec["reference"], sample, item)
        grade.reward = similarity(spec["evaluation_metric"], a, b)
    elif kind == "python":
        if "function" in spec:
            value = _load_function(spec["function"], "function")(sample, item)
            if isinstance(value, bool) or not isinstance(value, int | float):
                grade.failed(
                    "python_grader_runtime_error",
                    f"{spec['function']} returned {type(value).__name__}, not a number",
                )
                return
            grade.reward = float(value)
        else:
            ok, value = run_python_source(spec["source"], sample, item)
            if ok:
                grade.reward = value
            elif value.startswith(TIMED_OUT):
                grade.failed("unresponsive_reward_error", value)
            else:
                grade.failed("python_grader_runtime_error", value)
    elif kind == "score_model":
        _score_model(spec, sample, item, grade, judge)
    else:
        tree = parse_formula(spec["calculate_output"], set(spec["graders"]))
        for key, sub in spec["graders"].items():
            result = run_grader(sub, sample, item, judge=judge)
            grade.sub_rewards[key] = result.reward
            for flag, raised in result.errors.items():
                if raised:
                    grade.errors[flag] = True
                    grade.details[flag] = result.details.get(flag, "")
        try:
            grade.reward = evaluate_formula(tree, grade.sub_rewards)
        except (ArithmeticError, ValueError) as exc:
            grade.failed("formula_parse_error", f"calculate_output: {type(exc).__name__}: {exc}")


def _score_model(spec: dict, sample: dict, item: dict, grade: Grade, judge: Any) -> None:
    messages = [
        {
            "role": "system" if m["role"] == "developer" else m["role"],
            "content": render(content_text(m["content"], "input"), sample, item),
        }
        for m in spec["input"]
    ]
    answer = (judge or local_judge)(spec["model"], messages)
    low, high = spec.get("range", [0, 1])
    score = None
    try:
        parsed = json.loads(answer)
        if isinstance(parsed, dict) and isinstance(parsed.get("result"), int | float):
            score = float(parsed["result"])
        elif isinstance(parsed, int | float) and not isinstance(parsed, bool):
            score = float(parsed)
    except (json.JSONDecodeError, ValueError):
        found = re.search(r"-?\d+(?:\.\d+)?", answer)
        score = float(found.group()) if found else None
    if score is None:
        grade.failed(
            "model_grader_parse_error",
            f"the judge {spec['model']!r} answered {answer[:200]!r}, which holds no score",
        )
        return
    grade.reward = min(max(score, low), high)


_JUDGES: dict[str, Any] = {}
# One judge call at a time per process: graders run on several threads (the server grades a
# run's rows concurrently), and two threads loading one model at once fail inside
# transformers' meta-device initialisation ("Cannot copy out of meta tensor").
_JUDGE_LOCK = threading.Lock()


def local_judge(model: str, messages: list[dict]) -> str:
    """Greedy answer of a local model (loaded once per process) to the judge prompt."""
    from tuneforge.data.conversation import Message
    from tuneforge.inference.generate import generate
    from tuneforge.inference.load import load_for_inference

    with _JUDGE_LOCK:
        if model not in _JUDGES:
            _JUDGES[model] = load_for_inference(model, packed=True)
        text, _ = generate(
            _JUDGES[model], [Message(m["role"], m["content"]) for m in messages], max_new_tokens=64
        )
    return text


# -- python graders in a separate process -----------------------------------------------------

_RUNNER = r"""
import json, math, resource, socket, sys
limit_as, limit_cpu = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
resource.setrlimit(resource.RLIMIT_CPU, (limit_cpu, limit_cpu + 1))  # SIGXCPU, then SIGKILL
resource.setrlimit(resource.RLIMIT_FSIZE, (2**30, 2**30))
def _no_network(*args, **kwargs):
    raise OSError("python graders have no network")
socket.socket = _no_network
socket.create_connection = _no_network
payload = json.loads(sys.stdin.read())
out = sys.stdout
sys.stdout = sys.stderr  # the grader's prints must not corrupt the answer
try:
    scope = {"__name__": "grader"}
    exec(compile(payload["source"], "grader.py", "exec"), scope)
    value = scope["grade"](payload["sample"], payload["item"])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        result = {"ok": False, "error": f"grade returned {value!r} ({type(value).__name__}), "
                  "not a finite number"}
    else:
        result = {"ok": True, "value": float(value)}
except MemoryError:
    result = {"ok": False, "error": "MemoryError: the grader used more memory than allowed"}
except BaseException as exc:
    import traceback
    result = {"ok": False, "error": "".join(traceback.format_exception_only(exc)).strip()[-2000:]}
out.write(json.dumps(result))
"""


def _network_isolation() -> list[str]:
    """`unshare -rn` (a new user + network namespace: no interfaces but loopback) where the
    kernel allows it; otherwise nothing (the runner still replaces `socket`, which stops casual
    use but is no sandbox)."""
    if not hasattr(_network_isolation, "cached"):
        prefix: list[str] = []
        try:
            if (
                subprocess.run(
                    ["unshare", "-rn", "true"], capture_output=True, timeout=10
                ).returncode
                == 0
            ):
                prefix = ["unshare", "-rn"]
        except (OSError, subprocess.SubprocessError):
            pass
        _network_isolation.cached = prefix  # type: ignore[attr-defined]
    return _network_isolation.cached  # type: ignore[attr-defined]


def run_python_source(
    source: str,
    sample: dict,
    item: dict,
    *,
    timeout: float | None = None,
    memory_bytes: int = PYTHON_MEMORY_BYTES,
) -> tuple[bool, Any]:
    """(True, score) or (False, why). The grader runs in its own process, killed at `timeout`
    (default `PYTHON_TIMEOUT_S`)."""
    timeout = PYTHON_TIMEOUT_S if timeout is None else timeout
    payload = json.dumps({"source": source, "sample": sample, "item": item})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    # The CPU limit is a backstop for a grader that spins several threads: one second over the
    # wall-clock limit, so a single-threaded loop always meets the wall clock first (CPU time
    # cannot pass wall time on one thread); either way it is reported as a timeout.
    cpu = max(1, math.ceil(timeout)) + 1
    cmd = [
        *_network_isolation(),
        sys.executable,
        "-I",  # isolated: no user site, no PYTHON* variables, no cwd on sys.path
        "-c",
        _RUNNER,
        str(memory_bytes),
        str(cpu),
    ]
    with tempfile.TemporaryDirectory(prefix="tuneforge-grader-") as cwd:
        try:
            done = subprocess.run(
                cmd,
                input=payload,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=cwd,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return False, f"{TIMED_OUT} {timeout:g} s limit and was stopped"
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        why = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        if done.returncode == -signal.SIGXCPU:
            return False, f"{TIMED_OUT} {cpu} s CPU-time limit and was stopped"
        if done.returncode < 0:
            why = [f"killed by signal {-done.returncode} (CPU or memory limit)"]
        return False, f"the grader process failed: {why[0][:500]}"
    return (True, result["value"]) if result["ok"] else (False, result["error"])


# -- text similarity --------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    """rouge-score's default tokenisation: lowercase, runs of letters and digits."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _bleu(hypothesis: list[str], reference: list[str]) -> float:
    """Sentence BLEU-4, uniform weights, brevity penalty, add-one smoothing of the 2-4-gram
    precisions (Lin & Och 2004, nltk's `method2`), so one missing 4-gram is not a 0."""
    if not hypothesis or not reference:
        return 0.0
    logs = 0.0
    for n in range(1, 5):
        hyp, ref = _ngrams(hypothesis, n), _ngrams(reference, n)
        overlap = sum((hyp & ref).values())
        total = max(0, len(hypothesis) - n + 1)
        if n == 1:
            if overlap == 0:
                return 0.0
            logs += math.log(overlap / total)
        else:
            logs += math.log((overlap + 1) / (total + 1))
    penalty = (
        1.0 if len(hypothesis) > len(reference) else math.exp(1 - len(reference) / len(hypothesis))
    )
    return penalty * math.exp(logs / 4)


def _gleu(hypothesis: list[str], reference: list[str]) -> float:
    """Google-BLEU (Wu et al. 2016; nltk's `sentence_gleu`): over all 1-4-grams, the minimum of
    precision and recall."""
    hyp = sum((_ngrams(hypothesis, n) for n in range(1, 5)), Counter())
    ref = sum((_ngrams(reference, n) for n in range(1, 5)), Counter())
    if not hyp or not ref:
        return 0.0
    overlap = sum((hyp & ref).values())
    return min(overlap / sum(hyp.values()), overlap / sum(ref.values()))


def _f1(overlap: int, predicted: int, reference: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def _rouge_n(hypothesis: list[str], reference: list[str], n: int) -> float:
    hyp, ref = _ngrams(hypothesis, n), _ngrams(reference, n)
    return _f1(sum((hyp & ref).values()), sum(hyp.values()), sum(ref.values()))


def _rouge_l(hypothesis: list[str], reference: list[str]) -> float:
    """F-measure of the longest common subsequence (rouge-score's `rougeL`)."""
    if not hypothesis or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for token in hypothesis:
        current = [0]
        for j, other in enumerate(reference):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return _f1(previous[-1], len(hypothesis), len(reference))


def _fuzzy(a: str, b: str) -> float:
    """rapidfuzz's `fuzz.WRatio(a, b, processor=default_process) / 100` when rapidfuzz is
    installed (what OpenAI's own example grader uses); otherwise difflib's similarity ratio of
    the same lowercased, punctuation-free strings, which is close but not equal."""
    try:
        from rapidfuzz import fuzz, utils

        return fuzz.WRatio(a, b, processor=utils.default_process) / 100.0
    except ImportError:
        import difflib

        def clean(text: str) -> str:
            return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())

        return difflib.SequenceMatcher(None, clean(a), clean(b)).ratio()


def similarity(metric: str, text: str, reference: str) -> float:
    if metric == "fuzzy_match":
        return _fuzzy(text, reference)
    hyp, ref = _tokens(text), _tokens(reference)
    if metric == "bleu":
        return _bleu(hyp, ref)
    if metric == "gleu":
        return _gleu(hyp, ref)
    if metric == "rouge_l":
        return _rouge_l(hyp, ref)
    return _rouge_n(hyp, ref, int(metric.removeprefix("rouge_")))


# -- a grader as an evaluation metric (`tuneforge eval/compare --grader`) ---------------------

METRIC_PREFIX = "grader:"


def metric_name(spec: dict) -> str:
    """The metric a grader's scores are reported under: `grader:<its name>`, so it never
    collides with a built-in metric or a `--metric` function."""
    return f"{METRIC_PREFIX}{spec['name']}"


def score_range(spec: dict) -> tuple[float, float]:
    """The range a grader's scores lie in: a score_model's `range` (default [0, 1]); [0, 1] for
    the others (string_check gives 0 or 1, text_similarity a similarity). A python or multi
    grader can return any number; it is taken to mean [0, 1], as OpenAI's RFT expects, and
    `compare` warns when its scores fall outside."""
    if spec["type"] == "score_model":
        low, high = spec.get("range", [0, 1])
        return float(low), float(high)
    return 0.0, 1.0


def as_metric(spec: dict, *, judge: Any = None) -> Any:
    """A validated grader as a `RowMetric`: `sample` is the answer, `item` the test row."""
    from tuneforge.eval.metrics import RowMetric

    def score(answer: str, item: dict) -> tuple[float, str | None]:
        grade = run_grader(spec, make_sample(answer), item, judge=judge)
        failure = next(iter(grade.details.values()), None)
        return grade.reward, failure

    low, high = score_range(spec)
    return RowMetric(score, low, high)


def read_grader_file(path: str | os.PathLike) -> dict:
    """One grader object from a JSON file, validated as `graders/validate` does; a problem names
    the file and the grader's field."""
    from pathlib import Path

    from tuneforge.errors import UsageError

    path = Path(path)
    example = '{"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}", '
    example += '"reference": "{{ item.reference_answer }}", "operation": "eq"}'
    if not path.is_file():
        raise UsageError(
            f"--grader {path}: no such file", hint=f"write a grader JSON, e.g. {example}"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise GraderError(
            f"{path}: not UTF-8 text", hint="save the grader JSON as UTF-8", param="grader"
        ) from None
    except json.JSONDecodeError as exc:
        raise GraderError(
            f"{path}, line {exc.lineno} column {exc.colno}: not JSON ({exc.msg})",
            hint=f"the file holds one grader object, e.g. {example}",
            param="grader",
        ) from None
    if isinstance(spec, dict) and "type" not in spec and isinstance(spec.get("grader"), dict):
        raise GraderError(
            f"{path}: the file holds a request body with a `grader` inside",
            hint="keep only the grader object (the value of `grader`) in the file",
            param="grader",
        )
    try:
        return validate_grader(spec)
    except GraderError as exc:
        raise GraderError(
            f"{path}: {exc.message}",
            hint=exc.hint or f"fix `{exc.param}` in the file (OpenAI's grader JSON)",
            param=exc.param,
        ) from None
