"""/v1/evals: OpenAI's Evals API, run on this machine.

An eval is a schema for data rows (`data_source_config`) and `testing_criteria`
(graders with a pass rule, `eval/testing_criteria.py`). A run grades rows against it:

- `jsonl`: rows as given (`source.content`, or an uploaded file of purpose `evals`), each
  `{"item": {...}}` with, optionally, the `sample` (a model's answer made elsewhere);
- `completions` / `responses`: `model` answers each row first, prompted by
  `input_messages` (a `template` of messages with `{{ item.x }}`, or an `item_reference` to a
  list of messages in the row), with `sampling_params`. The answers come from the same path as
  `/v1/chat/completions` (`chat.start` / `chat.collect`), so a row scores what the served model
  answers to that prompt.

Runs are queued and run one at a time on the server's event loop, a few rows at once so that
the engine batches their generations. Each graded row is stored as an output item together with
the run's new counts (one transaction), so a server that stops mid-run (Ctrl-C, kill -9) picks
the run up again on its next start and grades only the rows it had not stored. A cancel is a
compare-and-set on the run's status: the runner's later writes never undo it.

Stored traffic: an eval of `data_source_config.type` `stored_completions` (or `logs`, its newer
name) grades chat completions kept with `store: true` (`api/stored_chat.py`). A `completions`
run with `source.type: stored_completions` picks them by metadata, model and time, fixed when
the run is created (their ids, in `eval_run_completions`; `limit` keeps the newest); without a
`model` it grades the stored answers, with one (and `input_messages` such as `item_reference:
item.input`) that model answers the stored prompts anew, with the logged tools unless
`sampling_params` gives some. Each row's `item` is `{id, model, metadata, input, output_text}`
(`stored_chat.EVAL_ITEM_SCHEMA`). A `responses` run with `source.type: responses` does the same
with stored responses (`responses.eval_row`: the instructions become the prompt's system
message), with OpenAI's filters for them (instructions_search, temperature, top_p, tools,
users).

Not here: image and audio inputs, and
OpenAI's hosted judges (a `label_model` or `score_model` runs a local model:
`eval/graders.py`).
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field, ValidationError

from tuneforge.api import chat, responses, stored_chat
from tuneforge.api.background import Caller, QueueRunner
from tuneforge.api.deps import get_catalog, get_store
from tuneforge.api.errors import APIError, check_after, not_found
from tuneforge.api.files import EVALS_PURPOSE, read_eval_rows
from tuneforge.api.schemas import (
    ChatCompletionRequest,
    Metadata,
    ResponseFunctionTool,
    ResponseTextConfig,
    Strict,
    cursor_page,
)
from tuneforge.errors import TuneforgeError
from tuneforge.eval.graders import GraderError, make_sample
from tuneforge.eval.testing_criteria import (
    CriteriaError,
    check_item_schema,
    check_messages,
    data_source_schema,
    grade,
    item_problem,
    referenced_messages,
    render_prompt,
    validate_criteria,
)

router = APIRouter()

LIVE = ("queued", "in_progress")
ROWS_AT_ONCE = 8  # rows generating at once: the engine batches their decode steps
DEFAULT_MAX_COMPLETION_TOKENS = 512  # a run without max_completion_tokens: a bound per row
MAX_ROWS = 100_000
DEFAULT_SEED = 42  # a run without a seed samples with this one: the same run repeats exactly


class EvalCreate(Strict):
    data_source_config: dict[str, Any] = Field(
        description="`{type: custom, item_schema, include_sample_schema}`: the rows' schema; "
        "`{type: stored_completions, metadata}`: chat completions stored with store: true."
    )
    testing_criteria: list[dict[str, Any]] = Field(
        description="Graders: string_check, text_similarity, python, score_model, label_model."
    )
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None


class EvalUpdate(Strict):
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None


class RunCreate(Strict):
    data_source: dict[str, Any] = Field(
        description="`jsonl`, `completions` or `responses`: where the rows come from and, for "
        "the last two, the model that answers them."
    )
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None


class SamplingParams(Strict):
    """A run's `sampling_params` (both data source types' fields)."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_completions_tokens: int | None = Field(
        None, ge=1, description="The same, as OpenAI's own examples and cookbooks spell it."
    )
    response_format: dict[str, Any] | None = None  # completions
    text: ResponseTextConfig | None = None  # responses: {"format": {...}}
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: str | None = Field(
        None, description="Accepted, changes nothing: tuneforge's models answer without reasoning."
    )

    def max_tokens(self) -> int:
        return (
            self.max_completion_tokens
            or self.max_completions_tokens
            or DEFAULT_MAX_COMPLETION_TOKENS
        )


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _bad(message: str, param: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _from_criteria(exc: GraderError) -> APIError:
    return APIError(400, exc.inline(), param=exc.param, code="invalid_eval")


# ----------------------------------------------------------------------------------------------
# Evals
# ----------------------------------------------------------------------------------------------


def _data_source_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the item schema rows are checked against, the data_source_config the eval shows)."""
    kind = config.get("type")
    if kind in ("logs", "stored_completions"):
        extra = set(config) - {"type", "metadata"}
        if extra:
            raise _bad(
                f"data_source_config has unknown field(s) {', '.join(sorted(extra))}",
                f"data_source_config.{sorted(extra)[0]}",
            )
        metadata = _metadata_filter(config.get("metadata"), "data_source_config.metadata")
        schema = stored_chat.EVAL_ITEM_SCHEMA
        return schema, {
            "type": kind,
            "metadata": metadata or None,
            "schema": data_source_schema(schema, True),
        }
    if kind != "custom":
        raise _bad(
            f"data_source_config.type {kind!r}: use 'custom' (rows you give, with an "
            "item_schema) or 'stored_completions' / 'logs' (chat completions stored with "
            "store: true)",
            "data_source_config.type",
        )
    schema, include = _item_schema(config)
    return schema, {"type": "custom", "schema": data_source_schema(schema, include)}


def _metadata_filter(value: Any, param: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _bad(f'{param} must map keys to string values, e.g. {{"usecase": "chatbot"}}', param)
    return value


def _item_schema(config: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    extra = set(config) - {"type", "item_schema", "include_sample_schema"}
    if extra:
        raise _bad(
            f"data_source_config has unknown field(s) {', '.join(sorted(extra))}",
            f"data_source_config.{sorted(extra)[0]}",
        )
    if "item_schema" not in config:
        raise _bad(
            "data_source_config.item_schema is required: the JSON schema of a row, e.g. "
            '{"type": "object", "properties": {"question": {"type": "string"}}}',
            "data_source_config.item_schema",
        )
    include = config.get("include_sample_schema", False)
    if not isinstance(include, bool):
        raise _bad("include_sample_schema must be true or false", "data_source_config")
    try:
        schema = check_item_schema(config["item_schema"], "data_source_config.item_schema")
    except CriteriaError as exc:
        raise _from_criteria(exc) from None
    return schema, include


def _stored_eval(request: Request, eval_id: str) -> dict[str, Any]:
    body = get_store(request).get_eval(eval_id)
    if body is None:
        raise not_found("eval", eval_id, param="eval_id")
    return body


def eval_object(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if not k.startswith("_")}


@router.post("/v1/evals")
async def create_eval(request: Request, body: EvalCreate) -> dict[str, Any]:
    schema, shown_config = _data_source_config(body.data_source_config)
    try:
        criteria = await run_in_threadpool(validate_criteria, body.testing_criteria, schema)
    except GraderError as exc:
        raise _from_criteria(exc) from None
    created = int(time.time())
    stored = {
        "object": "eval",
        "id": _new_id("eval"),
        "name": body.name or f"eval {time.strftime('%Y-%m-%d %H:%M', time.gmtime(created))}",
        "created_at": created,
        "data_source_config": shown_config,
        # OpenAI gives each criterion an id, "<name>-<uuid>", which names its results
        "testing_criteria": [c | {"id": f"{c['name']}-{uuid.uuid4()}"} for c in criteria],
        "metadata": body.metadata or {},
        "_item_schema": schema,  # what rows are checked against (not shown)
    }
    await run_in_threadpool(get_store(request).add_eval, stored)
    return eval_object(stored)


@router.get("/v1/evals")
def list_evals(
    request: Request,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "asc",
    order_by: Literal["created_at", "updated_at"] = "created_at",
) -> dict[str, Any]:
    store = get_store(request)
    check_after(after, after is None or store.get_eval(after) is not None)
    rows = store.list_evals(after=after, limit=limit + 1, oldest_first=order == "asc", by=order_by)
    return cursor_page([eval_object(r) for r in rows], limit)


@router.get("/v1/evals/{eval_id}")
def retrieve_eval(request: Request, eval_id: str) -> dict[str, Any]:
    return eval_object(_stored_eval(request, eval_id))


@router.post("/v1/evals/{eval_id}")
def update_eval(request: Request, eval_id: str, body: EvalUpdate) -> dict[str, Any]:
    stored = _stored_eval(request, eval_id)
    if body.name is not None:
        stored["name"] = body.name
    if body.metadata is not None:
        stored["metadata"] = body.metadata
    get_store(request).update_eval(stored)
    return eval_object(stored)


@router.delete("/v1/evals/{eval_id}")
def delete_eval(request: Request, eval_id: str) -> dict[str, Any]:
    store = get_store(request)
    _stored_eval(request, eval_id)
    for run in store.list_eval_runs(eval_id, after=None, limit=MAX_ROWS, oldest_first=True):
        if run["status"] in LIVE:
            _runner(request).cancel(run["id"])
    store.delete_eval(eval_id)
    return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}


# ----------------------------------------------------------------------------------------------
# Runs: checking a data source
# ----------------------------------------------------------------------------------------------


def _rows(request: Request, source: Any) -> list[dict[str, Any]]:
    """The rows of `data_source.source`: [{"item": {...}, "sample": {...}?}]."""
    param = "data_source.source"
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "file_content":
        content = source.get("content")
        if not isinstance(content, list) or not content:
            raise _bad(f"{param}.content must hold at least one row", f"{param}.content")
        for i, row in enumerate(content):
            if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
                raise _bad(
                    f'{param}.content[{i}] must be {{"item": {{...}}}} (and, optionally, "sample")',
                    f"{param}.content[{i}]",
                )
            if not isinstance(row.get("sample", {}), dict):
                raise _bad(f"{param}.content[{i}].sample must be an object", f"{param}.content")
        return content
    if kind == "file_id":
        file = get_store(request).get_file(str(source.get("id")))
        if file is None:
            raise not_found("file", str(source.get("id")), param=f"{param}.id")
        if file["purpose"] != EVALS_PURPOSE:
            raise _bad(
                f"file {file['id']} has purpose {file['purpose']!r}; upload eval rows with "
                f'purpose {EVALS_PURPOSE!r}, one {{"item": ...}} per line',
                f"{param}.id",
            )
        try:
            return read_eval_rows(Path(file["path"]), file["filename"])
        except TuneforgeError as exc:
            raise _bad(exc.inline(), f"{param}.id", code="invalid_file_format") from None
    raise _bad(
        f"{param}.type {kind!r}: give the rows as 'file_content' or 'file_id' (a file of "
        f"purpose '{EVALS_PURPOSE}'), or grade stored traffic: chat completions kept with "
        "store: true ('stored_completions', in a 'completions' run) or stored responses "
        "('responses', in a 'responses' run)",
        f"{param}.type",
    )


# The filters of a source of stored traffic, by its type: chat completions kept with
# `store: true`, and responses (kept by default, 30 days), as OpenAI's eval sources take them.
STORED_SOURCE_KEYS = {
    "stored_completions": {"metadata", "model", "created_after", "created_before", "limit"},
    "responses": {
        "metadata",
        "model",
        "created_after",
        "created_before",
        "instructions_search",
        "temperature",
        "top_p",
        "tools",
        "users",
        "reasoning_effort",
    },
}


def _stored_traffic(
    request: Request, stored_eval: dict[str, Any], source: dict[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    """The ids and rows of the stored chat completions (or responses) a run's source picks:
    every filter it gives, and the eval's own metadata filter; oldest first."""
    param = "data_source.source"
    kind = source["type"]
    keys = STORED_SOURCE_KEYS[kind]
    extra = set(source) - keys - {"type"}
    if extra:
        raise _bad(
            f"{param} has unknown field(s) {', '.join(sorted(extra))}; a {kind} source takes "
            f"{', '.join(sorted(keys))}",
            f"{param}.{sorted(extra)[0]}",
        )
    for key in ("created_after", "created_before", "limit"):
        value = source.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise _bad(f"{param}.{key} must be an integer", f"{param}.{key}")
    for key in ("model", "instructions_search"):
        if source.get(key) is not None and not isinstance(source[key], str):
            raise _bad(f"{param}.{key} must be a string", f"{param}.{key}")
    for key in ("temperature", "top_p"):
        value = source.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise _bad(f"{param}.{key} must be a number", f"{param}.{key}")
    for key in ("tools", "users"):
        value = source.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise _bad(f"{param}.{key} must be a list of names", f"{param}.{key}")
    if source.get("reasoning_effort") not in (None, "none", "minimal"):
        raise _bad(
            f"{param}.reasoning_effort: no response here reasoned in hidden tokens; leave it "
            "out (or none)",
            f"{param}.reasoning_effort",
        )
    limit = source.get("limit")
    if limit is not None and not 1 <= limit <= MAX_ROWS:
        raise _bad(f"{param}.limit must be 1 to {MAX_ROWS:,}", f"{param}.limit")
    config = stored_eval["data_source_config"]
    metadata = dict(config.get("metadata") or {}) if config["type"] != "custom" else {}
    metadata |= _metadata_filter(source.get("metadata"), f"{param}.metadata")
    store = get_store(request)
    if kind == "stored_completions":
        found = store.list_chat_completions(
            limit=(limit or MAX_ROWS + 1),
            oldest_first=limit is None,  # a limit keeps the newest (the latest traffic)
            model=source.get("model"),
            metadata=metadata,
            created_after=source.get("created_after"),
            created_before=source.get("created_before"),
            with_messages=True,
        )
        if limit is not None:
            found.reverse()  # graded oldest first
        rows = [stored_chat.eval_row(f) for f in found]
        what = "stored chat completion"
        how = "chat completions are kept when the request sets store: true"
    else:
        found = store.list_responses(
            limit=MAX_ROWS + 1,
            model=source.get("model"),
            metadata=metadata,
            created_after=source.get("created_after"),
            created_before=source.get("created_before"),
            instructions_search=source.get("instructions_search"),
            temperature=source.get("temperature"),
            top_p=source.get("top_p"),
            tools=source.get("tools"),
            users=source.get("users"),
        )
        rows = [responses.eval_row(f) for f in found]
        what = "stored response"
        how = "responses are kept for 30 days unless the request sets store: false"
    if not found:
        filters = [f"metadata {k}={v!r}" for k, v in metadata.items()]
        filters += [
            f"{k}={source[k]!r}" for k in sorted(keys - {"metadata"}) if source.get(k) is not None
        ]
        raise _bad(
            f"no {what} matches {param} ({', '.join(filters) or 'no filter'}): {how}",
            param,
        )
    return [f["body"]["id"] for f in found], rows


def _where(source: dict[str, Any], index: int) -> str:
    if source["type"] == "file_id":
        return f"file {source['id']} row {index + 1}"
    if source["type"] in STORED_SOURCE_KEYS:
        return f"stored {source['type'].removeprefix('stored_')} {index + 1} of the run"
    return f"data_source.source.content[{index}]"


def _prompts(data_source: dict[str, Any], rows: list[dict[str, Any]]) -> list[list[dict]]:
    """Each row's prompt messages, made now so that a row they cannot be made for is a 400."""
    spec = data_source.get("input_messages")
    param = "data_source.input_messages"
    kind = spec.get("type") if isinstance(spec, dict) else None
    try:
        if kind == "template":
            template = check_messages(
                spec.get("template"), f"{param}.template", namespaces=("item",)
            )
            make = lambda item: render_prompt(template, item)  # noqa: E731
        elif kind == "item_reference":
            reference = spec.get("item_reference")
            if not isinstance(reference, str):
                raise _bad(f"{param}.item_reference must be a string", f"{param}.item_reference")
            make = lambda item: referenced_messages(item, reference)  # noqa: E731
        else:
            raise _bad(
                f'{param} is required with a model: {{"type": "template", "template": '
                f'[messages with {{{{ item.field }}}}]}} or {{"type": "item_reference", '
                f'"item_reference": "item.messages"}}',
                param,
            )
    except CriteriaError as exc:
        raise _from_criteria(exc) from None
    prompts = []
    for i, row in enumerate(rows):
        if row.get("_missing"):  # a stored completion deleted before the run graded it
            prompts.append([])
            continue
        try:
            prompts.append(make(row["item"]))
        except CriteriaError as exc:
            where = _where(data_source["source"], i)
            raise APIError(400, f"{where}: {exc.message}", param=exc.param) from None
    return prompts


def _invalid(exc: ValidationError, prefix: str, *, skip: int = 0) -> APIError:
    """A 400 for pydantic's first complaint, its location under `prefix` (`skip`: how many
    leading parts of the location `prefix` already names)."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"][skip:] if not str(p).startswith("function-")]
    param = ".".join([prefix, *loc])
    return _bad(f"{param}: {first['msg'].removeprefix('Value error, ')}", param)


def _chat_tools(kind: str, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools or kind == "completions":
        return tools
    out = []
    for i, tool in enumerate(tools):  # the Responses API writes a function tool flat
        try:
            out.append(ResponseFunctionTool.model_validate(tool).as_chat_tool())
        except ValidationError:
            raise _bad(
                "only function tools can be given to a local model",
                f"data_source.sampling_params.tools[{i}]",
            ) from None
    return out


def chat_request(
    data_source: dict[str, Any], messages: list[dict], row_tools: list[dict] | None = None
) -> ChatCompletionRequest:
    """The chat request a run sends for one row (`row_tools`: a stored completion's own tools,
    used when sampling_params gives none, so a re-answer sees the prompt that was logged)."""
    params = SamplingParams.model_validate(data_source.get("sampling_params") or {})
    text_format = None
    if params.text and params.text.format:  # the Responses API's flat format → chat's
        text_format = params.text.format.as_response_format()
    return ChatCompletionRequest.model_validate(
        {
            "model": data_source["model"],
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": DEFAULT_SEED if params.seed is None else params.seed,
            "max_completion_tokens": params.max_tokens(),
            "response_format": params.response_format or text_format,
            "tools": _chat_tools(data_source["type"], params.tools) or row_tools,
        }
    )


async def _check_model_source(
    request: Request, data_source: dict[str, Any], prompts: list[list[dict]]
) -> None:
    model = data_source.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(
            f"data_source.model is required for a {data_source['type']} run: the model that "
            "answers each row (GET /v1/models lists them)",
            "data_source.model",
        )
    try:
        SamplingParams.model_validate(data_source.get("sampling_params") or {})
    except ValidationError as exc:
        raise _invalid(exc, "data_source.sampling_params") from None
    try:
        chat_request(data_source, prompts[0])
    except ValidationError as exc:  # what the chat route refuses, e.g. a bad response_format
        loc = exc.errors()[0]["loc"]
        field = str(loc[0]) if loc else "response_format"
        where = "input_messages" if field == "messages" else f"sampling_params.{field}"
        raise _invalid(exc, f"data_source.{where}", skip=1) from None
    try:
        await run_in_threadpool(get_catalog(request).get, model)
    except APIError as exc:
        exc.param = "data_source.model"
        raise


# ----------------------------------------------------------------------------------------------
# Runs: routes
# ----------------------------------------------------------------------------------------------


def _stored_run(request: Request, eval_id: str, run_id: str) -> dict[str, Any]:
    run = get_store(request).get_eval_run(run_id)
    if run is None or run["eval_id"] != eval_id:
        raise not_found("eval run", run_id, param="run_id")
    return run


def _runner(request: Request) -> EvalRunner:
    return request.app.state.evals


def _report_url(request: Request, eval_id: str, run_id: str) -> str:
    """The run's page in the Studio when the server has one (OpenAI links its dashboard here),
    else its output items."""
    page = getattr(request.app.state, "eval_run_page", None)
    if page is None:
        return str(request.url_for("list_output_items", eval_id=eval_id, run_id=run_id))
    return str(request.base_url).rstrip("/") + page.format(eval_id=eval_id, run_id=run_id)


@router.post("/v1/evals/{eval_id}/runs")
async def create_run(request: Request, eval_id: str, body: RunCreate) -> dict[str, Any]:
    stored = _stored_eval(request, eval_id)
    data_source = body.data_source
    kind = data_source.get("type")
    if kind not in ("jsonl", "completions", "responses"):
        raise _bad(
            f"data_source.type {kind!r}: use 'jsonl' (rows with their answers), or "
            "'completions' / 'responses' (a model answers each row)",
            "data_source.type",
        )
    source = data_source.get("source")
    completion_ids = None
    traffic = source.get("type") if isinstance(source, dict) else None
    if isinstance(traffic, str) and traffic in STORED_SOURCE_KEYS:
        # OpenAI's pairing: stored chat completions in a completions run, responses in a
        # responses run
        wanted = "completions" if traffic == "stored_completions" else "responses"
        if kind != wanted:
            raise _bad(
                f"a {traffic} source belongs to a '{wanted}' run (this one is {kind!r})",
                "data_source.source.type",
            )
        completion_ids, rows = await run_in_threadpool(_stored_traffic, request, stored, source)
    else:
        rows = await run_in_threadpool(_rows, request, source)
    if len(rows) > MAX_ROWS:
        raise _bad(f"a run grades at most {MAX_ROWS:,} rows", "data_source.source")
    for i, row in enumerate(rows):
        if problem := item_problem(stored["_item_schema"], row["item"]):
            raise _bad(f"{_where(data_source['source'], i)}: {problem}", "data_source.source")
    model = ""
    if _grades_given_samples(data_source):
        extra = set(data_source) - {"type", "source"}
        if extra:
            raise _bad(
                f"this run grades the rows' own samples (the stored answers); "
                f"{', '.join(sorted(extra))} belong to a run with a model that answers them",
                f"data_source.{sorted(extra)[0]}",
            )
    else:
        prompts = await run_in_threadpool(_prompts, data_source, rows)
        await _check_model_source(request, data_source, prompts)
        model = data_source["model"]
    run_id = _new_id("evalrun")
    run = {
        "object": "eval.run",
        "id": run_id,
        "eval_id": eval_id,
        "name": body.name
        or f"{Path(model).name or source['type']} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "created_at": int(time.time()),
        "status": "queued",
        "model": model,
        "data_source": data_source,
        "metadata": body.metadata or {},
        "error": None,
        "report_url": _report_url(request, eval_id, run_id),
        "result_counts": {"total": 0, "passed": 0, "failed": 0, "errored": 0},
        "per_testing_criteria_results": [
            {"testing_criteria": c["id"], "passed": 0, "failed": 0}
            for c in stored["testing_criteria"]
        ],
        "per_model_usage": [],
    }
    await run_in_threadpool(get_store(request).add_eval_run, run, completion_ids)
    _runner(request).submit(run_id)
    return run


@router.get("/v1/evals/{eval_id}/runs")
def list_runs(
    request: Request,
    eval_id: str,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "asc",
    status: Literal["queued", "in_progress", "completed", "canceled", "failed"] | None = None,
) -> dict[str, Any]:
    _stored_eval(request, eval_id)
    store = get_store(request)
    earlier = None if after is None else store.get_eval_run(after)
    check_after(after, after is None or (earlier is not None and earlier["eval_id"] == eval_id))
    rows = store.list_eval_runs(
        eval_id, after=after, limit=limit + 1, oldest_first=order == "asc", status=status
    )
    return cursor_page(rows, limit)


@router.get("/v1/evals/{eval_id}/runs/{run_id}")
def retrieve_run(request: Request, eval_id: str, run_id: str) -> dict[str, Any]:
    return _stored_run(request, eval_id, run_id)


@router.post("/v1/evals/{eval_id}/runs/{run_id}")
def cancel_run(request: Request, eval_id: str, run_id: str) -> dict[str, Any]:
    _stored_run(request, eval_id, run_id)
    if get_store(request).set_eval_run_status(run_id, "canceled", only_from=LIVE) is None:
        run = _stored_run(request, eval_id, run_id)
        raise APIError(
            400,
            f"Cannot cancel run {run_id}: it is {run['status']}; only queued or in_progress "
            "runs can be canceled",
            param="run_id",
            code="invalid_run_state",
        )
    _runner(request).cancel(run_id)
    return _stored_run(request, eval_id, run_id)


@router.delete("/v1/evals/{eval_id}/runs/{run_id}")
def delete_run(request: Request, eval_id: str, run_id: str) -> dict[str, Any]:
    if _stored_run(request, eval_id, run_id)["status"] in LIVE:
        _runner(request).cancel(run_id)
    get_store(request).delete_eval_run(run_id)
    return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}


@router.get("/v1/evals/{eval_id}/runs/{run_id}/output_items")
def list_output_items(
    request: Request,
    eval_id: str,
    run_id: str,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "asc",
    status: Literal["pass", "fail"] | None = None,
) -> dict[str, Any]:
    _stored_run(request, eval_id, run_id)
    store = get_store(request)
    check_after(after, after is None or store.get_output_item(run_id, after) is not None)
    rows = store.list_output_items(
        run_id, after=after, limit=limit + 1, oldest_first=order == "asc", status=status
    )
    return cursor_page(rows, limit)


@router.get("/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
def retrieve_output_item(
    request: Request, eval_id: str, run_id: str, output_item_id: str
) -> dict[str, Any]:
    _stored_run(request, eval_id, run_id)
    item = get_store(request).get_output_item(run_id, output_item_id)
    if item is None:
        raise not_found("output item", output_item_id, param="output_item_id")
    return item


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------


class EvalRunner(QueueRunner):
    """Runs queued eval runs one at a time on the server's event loop."""

    def _unfinished(self) -> list[str]:
        return [run["id"] for run in self.app.state.store.eval_runs_with_status(*LIVE)]

    async def _fail(self, run_id: str, code: str, message: str) -> None:
        self.stopped.add(run_id)  # rows still generating stop at their next step
        await run_in_threadpool(
            self.app.state.store.set_eval_run_status,
            run_id,
            "failed",
            only_from=LIVE,
            error={"code": code, "message": message},
        )

    async def _execute(self, run_id: str) -> None:
        store = self.app.state.store
        run = await run_in_threadpool(store.get_eval_run, run_id)
        if run is None or run["status"] not in LIVE:
            return
        stored = await run_in_threadpool(store.get_eval, run["eval_id"])
        started = await run_in_threadpool(
            store.set_eval_run_status, run_id, "in_progress", only_from=LIVE
        )
        if stored is None or started is None:
            return
        run = started
        data_source = run["data_source"]
        try:
            rows = await run_in_threadpool(self._rows, run)
            prompts = (
                [[] for _ in rows]
                if _grades_given_samples(data_source)
                else await run_in_threadpool(_prompts, data_source, rows)
            )
        except (APIError, TuneforgeError) as exc:
            await self._fail(run_id, "invalid_data_source", exc.message)
            return
        done = await run_in_threadpool(store.output_item_rows, run_id)
        client = self.caller(run_id)
        lock = asyncio.Lock()
        gate = asyncio.Semaphore(ROWS_AT_ONCE)

        async def one(index: int) -> None:
            async with gate:
                if run_id in self.stopped:
                    return
                item = await self._grade_row(
                    client, stored, run, index, rows[index], prompts[index]
                )
                if run_id in self.stopped:
                    return
                async with lock:
                    _count(run, item)
                    snapshot = copy.deepcopy(run)
                    if not await run_in_threadpool(store.add_output_item, item, snapshot):
                        self.stopped.add(run_id)  # cancelled or deleted meanwhile

        try:
            await asyncio.gather(*(one(i) for i in range(len(rows)) if i not in done))
        except BaseException:
            self.stopped.add(run_id)  # the other rows stop too (the loop marks the run failed)
            raise
        if run_id not in self.stopped:
            await run_in_threadpool(
                store.set_eval_run_status, run_id, "completed", only_from=("in_progress",)
            )
        self.stopped.discard(run_id)  # nothing of this run generates any more

    def _rows(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        source = run["data_source"]["source"]
        if source["type"] in STORED_SOURCE_KEYS:
            is_response = source["type"] == "responses"
            row_of = responses.eval_row if is_response else stored_chat.eval_row
            found = self.app.state.store.eval_run_completions(run["id"], responses=is_response)
            return [
                {"item": {"id": cid}, "_missing": True} if stored is None else row_of(stored)
                for cid, stored in found
            ]
        if source["type"] == "file_content":
            return source["content"]
        file = self.app.state.store.get_file(source["id"])
        if file is None:
            raise TuneforgeError(f"the run's file {source['id']} was deleted before it ran")
        return read_eval_rows(Path(file["path"]), file["filename"])

    async def _grade_row(
        self,
        client: Caller,
        stored: dict[str, Any],
        run: dict[str, Any],
        index: int,
        row: dict[str, Any],
        prompt: list[dict],
    ) -> dict[str, Any]:
        item = row["item"]
        if row.get("_missing"):
            sample, shown = _given_sample(None)
            shown["error"] = {
                "code": "not_found",
                "message": f"{item['id']} was deleted (or expired) before the run graded it",
            }
        elif _grades_given_samples(run["data_source"]):
            sample, shown = _given_sample(row.get("sample"))
            if row.get("_stored"):  # a stored completion: what it was asked, how it finished
                shown["input"] = item["input"]
                if used := sample.get("usage"):
                    shown["usage"] = _usage(used["prompt_tokens"], used["completion_tokens"])
                shown["output"] = [sample["choices"][0]["message"]]
                shown["finish_reason"] = sample["choices"][0]["finish_reason"]
        else:
            sample, shown = await self._generate(client, run, prompt, row)
        if shown["error"] is None:
            results = await run_in_threadpool(grade, stored["testing_criteria"], sample, item)
        else:
            results = []
        errored = shown["error"] is not None or any(r.error for r in results)
        return {
            "object": "eval.run.output_item",
            "id": _new_id("outputitem"),
            "run_id": run["id"],
            "eval_id": run["eval_id"],
            "created_at": int(time.time()),
            "status": "pass" if results and all(r.passed for r in results) else "fail",
            "datasource_item_id": index,
            "datasource_item": item,
            "results": [r.to_json() for r in results],
            "sample": shown,
            "_errored": errored,  # for the run's counts; not shown
        }

    async def _generate(
        self, client: Caller, run: dict[str, Any], prompt: list[dict], row: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's answer to one row: the grader's sample, and OpenAI's `sample` object."""
        request_chat = chat_request(run["data_source"], prompt, row.get("_tools"))
        shown: dict[str, Any] = {
            "input": prompt,
            "output": [],
            "finish_reason": "",
            "model": run["model"],
            "usage": _usage(0, 0),
            "error": None,
            "temperature": 1.0 if request_chat.temperature is None else request_chat.temperature,
            "max_completion_tokens": request_chat.max_completion_tokens,
            "top_p": 1.0 if request_chat.top_p is None else request_chat.top_p,
            "seed": request_chat.seed,
        }
        tools = request_chat.prompt_tools() is not None
        answer = chat.Answer(request_chat.forced_call() or "", tools)
        try:
            started = await chat.start(client, request_chat)  # type: ignore[arg-type]
            finished = None
            if isinstance(started, chat.Started):
                finished = await chat.collect(started, client, [answer])  # type: ignore[arg-type]
        except APIError as exc:
            shown["error"] = {"code": exc.code or exc.type, "message": exc.message}
            return {}, shown
        if finished is None:  # the run was cancelled while this row generated
            shown["error"] = {"code": "canceled", "message": "the run was canceled"}
            return {}, shown
        content, calls = answer.final(parallel=True)
        output: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            output["tool_calls"] = calls
        shown["output"] = [output]
        shown["finish_reason"] = "tool_calls" if calls else finished[0].reason
        shown["usage"] = _usage(started.prompt_tokens, finished[0].completion_tokens)
        sample = make_sample(answer.text) | {"model": run["model"]}
        return sample, shown


def _grades_given_samples(data_source: dict[str, Any]) -> bool:
    """Whether a run grades the rows' own samples (a jsonl run; a completions run of stored
    completions without a model: the stored answers) rather than a model's new answers."""
    if data_source["type"] == "jsonl":
        return True
    source = data_source.get("source")
    stored = isinstance(source, dict) and str(source.get("type")) in STORED_SOURCE_KEYS
    return stored and data_source.get("model") is None and "input_messages" not in data_source


def _given_sample(given: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A jsonl row's own sample, for the graders as given and for the output item in OpenAI's
    shape. A row without one is graded with an empty sample (`{{ sample.… }}` then errors)."""
    given = given or {}
    text = given.get("output_text")
    if text is None and given.get("choices"):
        text = (given["choices"][0].get("message") or {}).get("content")
    shown = {
        "input": [],
        "output": [{"role": "assistant", "content": text}] if text is not None else [],
        "finish_reason": "",
        "model": str(given.get("model", "")),
        "usage": _usage(0, 0),
        "error": None,
        "temperature": 0.0,
        "max_completion_tokens": 0,
        "top_p": 0.0,
        "seed": 0,
    }
    return given, shown


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cached_tokens": 0,
    }


def _count(run: dict[str, Any], item: dict[str, Any]) -> None:
    """Add one graded row to the run's counts (the row's private `_errored` is removed)."""
    errored = item.pop("_errored")
    counts = run["result_counts"]
    counts["total"] += 1
    if errored:
        counts["errored"] += 1
    elif item["status"] == "pass":
        counts["passed"] += 1
    else:
        counts["failed"] += 1
    by_name = {c["testing_criteria"]: c for c in run["per_testing_criteria_results"]}
    for result in item["results"]:
        entry = by_name.get(result["name"])
        if entry is not None:
            entry["passed" if result["passed"] else "failed"] += 1
    usage = item["sample"]["usage"]
    if run["model"] and item["sample"]["error"] is None:
        if not run["per_model_usage"]:
            run["per_model_usage"].append(
                {"model_name": run["model"], "invocation_count": 0} | _usage(0, 0)
            )
        entry = run["per_model_usage"][0]
        entry["invocation_count"] += 1
        for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
            entry[key] += usage[key]
