"""tuneforge extensions on stored files: the validation report and the trained-token preview.

`GET /v1/files/{id}/validation` is `tuneforge data validate --json` for an uploaded file (with a
length histogram and, on request, the measured time estimate); `GET /v1/files/{id}/preview` is
`tuneforge data preview`: each example rendered through the model's chat template, cut into runs
of trained and untrained text. Both read the file with the model's own tokenizer, so they say
what training will see. Messages name the client's filename, never the server's path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from tuneforge.api.deps import get_catalog, get_store
from tuneforge.api.errors import APIError, not_found
from tuneforge.errors import TuneforgeError
from tuneforge.models import DEFAULT_MODEL

router = APIRouter(tags=["tuneforge extensions"])

ModelQuery = Annotated[
    str,
    Query(
        max_length=512,
        description="The base model whose tokenizer and chat template to use "
        f"(default {DEFAULT_MODEL}).",
    ),
]
MaxLenQuery = Annotated[
    int | None,
    Query(ge=1, le=1_048_576, description="Maximum tokens per example (default: the context)."),
]


def _stored(request: Request, file_id: str) -> tuple[Path, str]:
    row = get_store(request).get_file(file_id)
    if row is None:
        raise not_found("File", file_id, param="file_id")
    return Path(row["path"]), row["filename"]


def _text_side(request: Request, model: str, max_seq_len: int | None) -> tuple[Any, int]:
    from tuneforge.api.fine_tuning import check_base_model

    check_base_model(model)
    try:
        side = get_catalog(request).text_side(model)
    except TuneforgeError as exc:
        raise APIError(400, exc.inline(), param="model", code="model_not_found") from None
    context = side.config_context or 4096
    if max_seq_len is not None and max_seq_len > context:
        raise APIError(
            400,
            f"max_seq_len {max_seq_len} is over the context length of {model} ({context})",
            param="max_seq_len",
        )
    return side, max_seq_len or context


def _for_client(exc: TuneforgeError, path: Path, filename: str) -> APIError:
    return APIError(400, exc.inline().replace(str(path), filename), param="file_id")


@router.get("/v1/files/{file_id}/validation")
def file_validation(
    request: Request,
    file_id: str,
    model: ModelQuery = DEFAULT_MODEL,
    max_seq_len: MaxLenQuery = None,
    estimate: Annotated[
        bool,
        Query(
            description="Also time two LoRA steps of the model on this data and estimate the "
            "training time (seconds to a minute; the figure varies with the machine's load)."
        ),
    ] = False,
) -> dict[str, Any]:
    """The file's validation report (tuneforge extension): OpenAI's cookbook checks and ours,
    errors and warnings with line and field, token statistics, a histogram of example lengths,
    billed tokens, suggested epochs and, with `estimate=true`, the measured time estimate."""
    from tuneforge.data.validate import validate_file

    path, filename = _stored(request, file_id)
    side, limit = _text_side(request, model, max_seq_len)
    try:
        report = validate_file(
            path, side.tokenizer, side.template, model_name=model, max_seq_len=limit
        )
    except TuneforgeError as exc:
        raise _for_client(exc, path, filename) from None
    if estimate and report.n_valid:
        from tuneforge.train.estimate import estimate_training_time

        est = estimate_training_time(
            model, report.sample, list(report.tokens), report.suggested_epochs, limit
        )
        report.estimate = est.to_json() if est else None
    return report.to_json() | {"object": "file.validation", "path": filename, "file_id": file_id}


@router.get("/v1/files/{file_id}/preview")
def file_preview(
    request: Request,
    file_id: str,
    model: ModelQuery = DEFAULT_MODEL,
    max_seq_len: MaxLenQuery = None,
    offset: Annotated[int, Query(ge=0, description="Examples to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=50)] = 5,
) -> dict[str, Any]:
    """Examples as the model sees them (tuneforge extension): the chat-template text cut into
    `segments` of `{text, trained}`, with token counts and whether truncation cut the end."""
    from tuneforge.data.formats import iter_parsed
    from tuneforge.data.tokenize import encode, trained_runs

    path, filename = _stored(request, file_id)
    side, max_len = _text_side(request, model, max_seq_len)
    data: list[dict[str, Any]] = []
    index = -1
    has_more = False
    try:
        for record, parsed in iter_parsed(path):
            index += 1
            if index < offset:
                continue
            if len(data) == limit:
                has_more = True
                break
            item: dict[str, Any] = {"line": record.line, "index": index}
            if parsed.conversation is None:
                data.append(item | {"errors": [e.to_dict() for e in parsed.errors]})
                continue
            enc = encode(parsed.conversation, side.tokenizer, side.template, max_len)
            data.append(
                item
                | {
                    "n_tokens": enc.n_tokens,
                    "n_trained": enc.n_trained,
                    "full_length": enc.full_length,
                    "truncated": enc.truncated,
                    "segments": [{"text": t, "trained": on} for t, on in trained_runs(enc)],
                    "errors": [],
                }
            )
    except TuneforgeError as exc:
        raise _for_client(exc, path, filename) from None
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_offset": offset + len(data) if has_more else None,
        "model": model,
        "max_seq_len": max_len,
    }
