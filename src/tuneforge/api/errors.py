"""Every error leaves the server in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Client mistakes get a 4xx whose message names the field and the fix; `param` is the dotted path
of the field (`messages[0].role`), as OpenAI reports it. A 500 means a bug of ours; it carries no
traceback (that goes to the server log).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.errors import TuneforgeError

log = logging.getLogger("tuneforge.api")

# Union branches show up in pydantic's error locations ("str", "list[str]", "constrained-int");
# they are not fields.
_BRANCH_NAMES = {"str", "int", "float", "bool", "none", "dict", "list", "bytes"}
_SCHEMA_KIND = re.compile(r"[a-z]+(-[a-z]+)+")
_MODEL_BRANCH = re.compile(r"[A-Z][a-z]+([A-Z][a-z]*)+")  # a union's model branch: NamedToolChoice


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(
        error_body(exc.message, exc.type, exc.param, exc.code),
        status_code=exc.status,
        headers=headers,
    )


def not_found(what: str, ident: str, param: str = "id", code: str | None = None) -> APIError:
    return APIError(404, f"No such {what}: {ident}", param=param, code=code)


def check_after(after: str | None, known: bool) -> None:
    """A list's `after` cursor must be an id of that list (as the Responses API's input items
    answer)."""
    if not known:
        raise APIError(
            400,
            f"after: {str(after)[:64]!r} is not an id of this list; pass the last_id of the "
            "page before",
            param="after",
        )


# Names of OpenAI's own models, which code moving from OpenAI still sends.
_OPENAI_MODEL = re.compile(r"^(gpt-|chatgpt-|o[1-9]|davinci-|babbage-|text-embedding-)")


def openai_model_note(model: str) -> str:
    """For a name of one of OpenAI's models: a sentence saying why it is not here."""
    if not _OPENAI_MODEL.match(model):
        return ""
    return (
        f" (`{model}` is one of OpenAI's models, which are not on this machine: tuneforge "
        "fine-tunes and serves open models; name one of them, or a fine-tuned ft: model)"
    )


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist; GET /v1/models lists the models this server has"
        + openai_model_note(model),
        param="model",
        code="model_not_found",
    )


def field_path(loc: tuple[Any, ...]) -> str | None:
    """("body", "messages", 0, "role") → "messages[0].role"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and (
            (part in _BRANCH_NAMES and path)  # a union's branch, never the first field: `bytes`
            or "[" in part
            or _SCHEMA_KIND.fullmatch(part)
            or _MODEL_BRANCH.fullmatch(part)
        ):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or None


def _describe(error: dict[str, Any]) -> str:
    where = field_path(tuple(error["loc"]))
    kind = error["type"]
    if kind == "json_invalid":
        detail = error.get("ctx", {}).get("error", "")
        return f"We could not parse the JSON body of your request ({detail}); send valid JSON"
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {where}"
    if kind == "missing":
        return f"Missing required parameter: '{where}'" if where else "The request body is missing"
    got = error.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {str(got)[:60]!r})"
    message = error["msg"].removeprefix("Value error, ")  # our validators' own words
    return f"Invalid value for '{where or 'body'}': {message}{shown}"


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors()) or [{"loc": (), "type": "invalid", "msg": "invalid request"}]
    # A union field reports one error per branch; the deepest one names the real culprit
    # (messages[0].content[0].type rather than messages[0].content).
    first = max(errors, key=lambda e: len(field_path(tuple(e["loc"])) or ""))
    message = _describe(first)
    if len(errors) > 1:
        others = {_describe(e) for e in errors[:4] if e is not first} - {message}
        if others:
            message += " (also: " + "; ".join(sorted(others)) + ")"
    kind = first["type"]
    param = None if kind == "json_invalid" else field_path(tuple(first["loc"]))
    code = "invalid_json" if kind == "json_invalid" else None
    return error_response(APIError(400, message, param=param, code=code))


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    code = "request_too_large" if exc.status_code == 413 else None
    return error_response(APIError(exc.status_code, message, code=code))


async def _api(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


async def _tuneforge(_: Request, exc: TuneforgeError) -> JSONResponse:
    return error_response(from_tuneforge(exc))


def from_tuneforge(exc: TuneforgeError, *, param: str | None = None) -> APIError:
    """Our error kinds in OpenAI's shape: the kind's status and code, the message on one line,
    `param` the field it names (or the caller's)."""
    return APIError(exc.http_status, exc.inline(), param=exc.param or param, code=exc.code)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        APIError(
            500,
            f"The server had an error while processing your request ({exc.__class__.__name__}); "
            "it is logged on the server",
            type="server_error",
            code="internal_error",
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(TuneforgeError, _tuneforge)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
