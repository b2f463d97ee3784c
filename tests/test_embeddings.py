"""/v1/embeddings (`api/embeddings.py`) on all-MiniLM-L6-v2: the vectors equal a plain
transformers forward with sentence-transformers' pooling, the official `openai` package reads
them (it asks for base64), the errors name the input and the fix, and a batch of embedding
requests answers each line as the live endpoint does."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
from helpers import new_home, open_api

from tuneforge.inference.embeddings import HUB_ID, MAX_TOKENS, MODEL_ID, model_folder

pytestmark = pytest.mark.skipif(model_folder() is None, reason="all-MiniLM-L6-v2 not installed")

TEXTS = [
    "How do I bake bread at home?",
    "What is the capital of France?",
    "Paris is the capital of which country?",
    "my bicycle has a puncture",
]


@pytest.fixture(scope="module")
def api(tmp_path_factory, default_model_dir):
    home = new_home(tmp_path_factory.mktemp("embeddings"), default_model_dir)
    with pytest.MonkeyPatch.context() as mp, open_api(home, mp) as client:
        yield client


def reference(texts: list[str]) -> np.ndarray:
    """Each text alone through transformers' BertModel, then sentence-transformers' Pooling
    (mean over the tokens) and Normalize, written out here."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            mean = hidden.mean(0)
            rows.append((mean / mean.norm()).numpy())
    return np.stack(rows)


def embed(api, **body):
    return api.post("/v1/embeddings", json={"model": MODEL_ID, "input": TEXTS} | body)


def test_embeddings_equal_the_model_with_its_pooling_and_find_paraphrases(api):
    response = embed(api)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL_ID
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (4, 384)
    np.testing.assert_allclose(vectors, reference(TEXTS), atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[1, 2] > 0.5 > max(similarity[1, 0], similarity[1, 3])

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder())
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    one = embed(api, input=TEXTS[2], model=HUB_ID).json()  # a string; the hub name works too
    np.testing.assert_allclose(one["data"][0]["embedding"], vectors[2], atol=1e-6)

    packed = embed(api, encoding_format="base64").json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in packed])
    np.testing.assert_allclose(decoded, vectors, atol=1e-7)


def test_the_openai_package_embeds_unchanged(api):
    """`client.embeddings.create` asks for base64 and decodes it: the same vectors."""
    import openai

    client = openai.OpenAI(api_key="unused", base_url=f"{api.base_url}/v1", http_client=api)
    result = client.embeddings.create(model=MODEL_ID, input=TEXTS)
    got = np.array([d.embedding for d in result.data])
    floats = np.array([d["embedding"] for d in embed(api).json()["data"]])
    np.testing.assert_allclose(got, floats, atol=1e-7)
    assert result.usage.prompt_tokens > len(TEXTS)


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        ({"model": "text-embedding-3-small"}, 404, "model", MODEL_ID),
        ({"input": [[101, 2023, 102]]}, 400, "input", "check_embedding_ctx_length"),
        ({"input": ["fine", "word " * (MAX_TOKENS + 10)]}, 400, "input", "input[1] is"),
        ({"input": ""}, 400, "input", "empty"),
        ({"input": []}, 400, "input", "1 to 2048"),
        ({"dimensions": 256}, 400, "dimensions", "384"),
        ({"encoding_format": "int8"}, 400, "encoding_format", None),
        ({"temperature": 0}, 400, "temperature", None),
    ],
)
def test_bad_embedding_requests_are_errors_naming_the_field(api, body, status, param, fragment):
    response = embed(api, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert fragment is None or fragment in error["message"], error


def test_a_chat_model_is_not_an_embedding_model(api, default_model_dir):
    from helpers import serve_model

    chat_model = serve_model(api, default_model_dir)
    response = embed(api, model=chat_model)
    assert response.status_code == 400, response.text
    assert MODEL_ID in response.json()["error"]["message"]


def test_a_batch_of_embedding_requests_answers_as_the_live_endpoint(api):
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL_ID, "input": text},
        }
        for i, text in enumerate(TEXTS)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = api.post("/v1/files", files={"file": ("e.jsonl", content)}, data={"purpose": "batch"})
    assert file.status_code == 200, file.text
    batch = api.post(
        "/v1/batches",
        json={
            "input_file_id": file.json()["id"],
            "endpoint": "/v1/embeddings",
            "completion_window": "24h",
        },
    ).json()
    deadline = time.time() + 120
    while batch["status"] not in ("completed", "failed") and time.time() < deadline:
        time.sleep(0.2)
        batch = api.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "completed", batch
    output = api.get(f"/v1/files/{batch['output_file_id']}/content").text.splitlines()
    answers = [json.loads(line) for line in output]
    assert [a["custom_id"] for a in answers] == ["e0", "e1", "e2", "e3"]
    live = embed(api).json()
    for answer, expected in zip(answers, live["data"], strict=True):
        got = answer["response"]["body"]["data"][0]["embedding"]
        np.testing.assert_allclose(got, expected["embedding"], atol=1e-6)
    assert batch["usage"]["input_tokens"] == live["usage"]["prompt_tokens"]
