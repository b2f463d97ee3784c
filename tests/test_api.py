"""The HTTP API in-process (FastAPI's TestClient, no port): OpenAI-shaped answers, and a 4xx in
OpenAI's error schema for every client mistake we can think of — never a 500.

Chat runs on the tiny random model, which becomes a served base model once a job names it.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from helpers import good_examples

from tuneforge.api.app import create_app
from tuneforge.data.chat_template import tool_call_prefix
from tuneforge.data.conversation import Message

UPLOAD_LIMIT = 64 * 1024
# Jinja's sandbox caps one range() at 100k; nesting two makes 10^10 iterations of output.
HOSTILE_TEMPLATE = (
    "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}{% endfor %}"
)


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def assert_error(response, status: int, *, param: str | None = None, code: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture(scope="module")
def home(tmp_path_factory, default_model_dir) -> Path:
    home = tmp_path_factory.mktemp("api-home")
    # The converted default model, shared read-only: no 30 s conversion per test home.
    (home / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    return home


@pytest.fixture(scope="module")
def api(home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_HOME", str(home))
        with TestClient(create_app(max_upload_bytes=UPLOAD_LIMIT)) as client:
            yield client


def upload(api, content: bytes, filename: str = "train.jsonl", purpose: str = "fine-tune"):
    return api.post("/v1/files", files={"file": (filename, content)}, data={"purpose": purpose})


@pytest.fixture(scope="module")
def training_file(api) -> str:
    response = upload(api, jsonl(good_examples(12)))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def register_base(api, training_file: str, model: str) -> None:
    """A base model is served once a job names it; cancel the job at once (no training)."""
    job = api.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": training_file})
    assert job.status_code == 200, job.text
    assert api.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel").status_code == 200


@pytest.fixture(scope="module")
def tiny(api, training_file, tiny_model_dir) -> str:
    register_base(api, training_file, str(tiny_model_dir))
    return str(tiny_model_dir)


def chat(api, model: str, **body):
    body = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4} | body
    return api.post("/v1/chat/completions", json={"model": model, **body})


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def test_file_round_trip_under_our_own_name(api, home):
    content = jsonl(good_examples(11))
    created = upload(api, content, filename="../../../etc/evil name.jsonl")
    assert created.status_code == 200, created.text
    file = created.json()
    assert file["object"] == "file" and file["id"].startswith("file-")
    assert file["bytes"] == len(content)
    assert file["filename"] == "evil name.jsonl"  # for display only
    assert file["purpose"] == "fine-tune"
    assert (home / "files" / f"{file['id']}.jsonl").read_bytes() == content
    assert not list(home.rglob("evil*"))
    assert api.get(f"/v1/files/{file['id']}").json() == file
    assert file["id"] in [f["id"] for f in api.get("/v1/files").json()["data"]]
    assert api.get(f"/v1/files/{file['id']}/content").content == content
    deleted = api.delete(f"/v1/files/{file['id']}")
    assert deleted.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert not (home / "files" / f"{file['id']}.jsonl").exists()
    assert_error(api.get(f"/v1/files/{file['id']}"), 404, param="file_id")


def test_file_expires_after_as_openai_sends_it(api, home, monkeypatch):
    """files.create(expires_after={"anchor": "created_at", "seconds": N}) arrives as two form
    fields; the file shows its expires_at, and past it the file is gone from every route (the
    scheduler deletes the bytes). Bad values and unknown form fields are 400s naming them."""
    content = jsonl(good_examples(10))
    expiry = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    response = api.post(
        "/v1/files", files={"file": ("t.jsonl", content)}, data={"purpose": "fine-tune"} | expiry
    )
    assert response.status_code == 200, response.text
    file = response.json()
    assert file["expires_at"] == file["created_at"] + 3600
    assert upload(api, content).json()["expires_at"] is None
    assert api.get(f"/v1/files/{file['id']}").json() == file

    later = time.time() + 3601
    monkeypatch.setattr("tuneforge.jobs.store.time.time", lambda: later)
    assert_error(api.get(f"/v1/files/{file['id']}"), 404, param="file_id")
    assert file["id"] not in [f["id"] for f in api.get("/v1/files").json()["data"]]
    deadline = time.monotonic() + 10
    while (home / "files" / f"{file['id']}.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the scheduler's tick (every 0.25 s) deletes it
    assert not (home / "files" / f"{file['id']}.jsonl").exists()

    def post(**data):
        fields = {"purpose": "fine-tune"} | data
        return api.post("/v1/files", files={"file": ("t.jsonl", content)}, data=fields)

    bad_anchor = {"expires_after[anchor]": "last_used", "expires_after[seconds]": "3600"}
    assert_error(post(**bad_anchor), 400, param="expires_after.anchor")
    for seconds in ("60", "2592001", "soon"):
        fields = expiry | {"expires_after[seconds]": seconds}
        assert_error(post(**fields), 400, param="expires_after.seconds")
    assert_error(post(**{"expires_after[seconds]": "3600"}), 400, param="expires_after.anchor")
    assert_error(post(purpse="fine-tune"), 400, param="purpse")


def test_file_list_pages(api):
    ids = [upload(api, jsonl(good_examples(10 + i))).json()["id"] for i in range(3)]
    first = api.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"]
    second = api.get("/v1/files", params={"limit": 2, "after": ids[1]}).json()
    assert second["data"][0]["id"] == ids[0]
    # files.list(order="asc"): oldest first, and `after` pages forward in time.
    everything = [f["id"] for f in api.get("/v1/files", params={"order": "asc"}).json()["data"]]
    assert everything[-3:] == ids
    onward = api.get("/v1/files", params={"order": "asc", "after": ids[0], "limit": 1}).json()
    assert [f["id"] for f in onward["data"]] == [ids[1]] and onward["has_more"]
    assert_error(api.get("/v1/files", params={"order": "sideways"}), 400, param="order")


@pytest.mark.parametrize(
    ("content", "filename", "purpose", "status", "param", "fragment"),
    [
        (jsonl(good_examples(10)), "t.jsonl", "assistants", 400, "purpose", "fine-tune"),
        (b"", "t.jsonl", "fine-tune", 400, "file", "no examples"),
        (jsonl([good_examples(1)[0], "{not json"]), "t.jsonl", "fine-tune", 400, "file", "line 2"),
        (
            jsonl([{"messages": [{"role": "wizard", "content": "x"}]}]),
            "t.jsonl",
            "fine-tune",
            400,
            "file",
            "line 1",
        ),
        (jsonl(good_examples(10)), "t.exe", "fine-tune", 400, "file", ".jsonl"),
        (b"x" * (UPLOAD_LIMIT + 1), "t.jsonl", "fine-tune", 413, "file", "limit"),
    ],
)
def test_bad_uploads_are_refused(api, home, content, filename, purpose, status, param, fragment):
    def stored() -> list[Path]:
        return sorted((home / "files").iterdir()) if (home / "files").exists() else []

    before = stored()
    error = assert_error(upload(api, content, filename, purpose), status, param=param)
    assert fragment in error["message"]
    assert stored() == before  # no temp file left behind


def test_upload_without_a_file_names_the_field(api):
    assert_error(api.post("/v1/files", data={"purpose": "fine-tune"}), 400, param="file")


def test_file_in_use_by_an_unfinished_job_is_kept(api, tiny):
    file_id = upload(api, jsonl(good_examples(13))).json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={"model": tiny, "training_file": file_id}).json()
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    assert_error(api.delete(f"/v1/files/{file_id}"), 409, code="file_in_use")
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert api.delete(f"/v1/files/{file_id}").status_code == 200


# ---------------------------------------------------------------------------------------------
# Fine-tuning jobs (creation checks; training itself is in test_jobs.py)
# ---------------------------------------------------------------------------------------------


def test_a_succeeded_job_lists_its_step_metrics_csv(api, training_file, tiny):
    """OpenAI's `result_files`: one file of purpose fine-tune-results, `step` + the metric names."""
    from tuneforge import run_dir as rd
    from tuneforge.jobs import lifecycle

    job = api.post("/v1/fine_tuning/jobs", json={"model": tiny, "training_file": training_file})
    job_id = job.json()["id"]
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/pause").status_code == 200
    store = api.app.state.store
    row = store.get_job(job_id)
    run = Path(row["run_dir"])
    run.mkdir(parents=True, exist_ok=True)
    rows = [
        {"step": 1, "train_loss": 2.5, "train_mean_token_accuracy": 0.25, "tokens": 10},
        {
            "step": 2,
            "train_loss": 2.0,
            "train_mean_token_accuracy": 0.5,
            "valid_loss": 2.25,
            "valid_mean_token_accuracy": 0.4,
            "full_valid_loss": 2.2,
            "full_valid_mean_token_accuracy": 0.45,
            "tokens": 10,
        },
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rd.write_status(run, status="succeeded", step=2)
    assert store.update_job(job_id, expect=("paused",), status="running")
    assert lifecycle.succeed(store, store.get_job(job_id))
    [file_id] = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["result_files"]
    file = api.get(f"/v1/files/{file_id}").json()
    assert file["purpose"] == "fine-tune-results" and file["filename"] == "step_metrics.csv"
    assert api.get(f"/v1/files/{file_id}/content").text.splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,"
        "full_valid_loss,full_valid_mean_token_accuracy",
        "1,2.5,0.25,,,,",
        "2,2.0,0.5,2.25,0.4,2.2,0.45",
    ]


def test_job_object_is_shaped_like_openais(api, training_file, tiny):
    body = {
        "model": tiny,
        "training_file": training_file,
        "suffix": "my-model",
        "seed": 42,
        "metadata": {"team": "a"},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    }
    job = api.post("/v1/fine_tuning/jobs", json=body).json()
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert job["status"] == "validating_files"
    assert job["seed"] == 42 and job["metadata"] == {"team": "a"}
    assert job["user_provided_suffix"] == "my-model"
    assert job["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert job["method"]["supervised"]["hyperparameters"] == job["hyperparameters"]
    assert job["fine_tuned_model"] is None and job["error"] is None
    for key in ("created_at", "finished_at", "organization_id", "result_files", "trained_tokens"):
        assert key in job
    retrieved = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert retrieved["status"] == "cancelled" and retrieved["finished_at"]


@pytest.mark.parametrize(
    ("patch", "param", "code"),
    [
        ({"training_file": "file-nope"}, "training_file", "invalid_file_id"),
        ({"validation_file": "file-nope"}, "validation_file", "invalid_file_id"),
        ({"model": "no-such-model"}, "model", "model_not_found"),
        ({"model": "ft:x:local::abc"}, "model", "model_not_supported"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", None),
        ({"hyperparameters": {"n_epochs": "three"}}, "hyperparameters.n_epochs", None),
        ({"hyperparameters": {"epochs": 3}}, "hyperparameters.epochs", None),
        ({"method": {"type": "unsupervised"}}, "method.type", None),
        ({"method": {"type": "reinforcement"}}, "method.reinforcement.grader", None),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}}},
            "method.dpo.hyperparameters.beta",
            None,
        ),
        ({"method": {"type": "supervised", "dpo": {}}}, "method.dpo", None),
        ({"training_config": {"objective": "dpo"}}, "training_config.objective", None),
        ({"suffix": "has space"}, "suffix", None),
        ({"suffix": "x" * 65}, "suffix", None),
        ({"seed": -1}, "seed", None),
        ({"metadata": {"k": 1}}, "metadata.k", None),
        ({"integrations": [{"type": "wandb"}]}, "integrations[0].wandb", None),
        ({"integrations": [{"type": "comet", "comet": {}}]}, "integrations[0].type", None),
        # The problem's field, under the object that holds it:
        ({"training_config": {"epochs": 2}}, "training_config.epochs", None),
        ({"training_config": {"lora_rnak": 8}}, "training_config.lora_rnak", None),
        ({"training_config": {"lora_rank": -1}}, "training_config.lora_rank", None),
        ({"extra_field": 1}, "extra_field", None),
        ({"model": 7}, "model", None),
    ],
)
def test_bad_job_requests_name_the_field(api, training_file, tiny, patch, param, code):
    body = {"model": tiny, "training_file": training_file} | patch
    assert_error(api.post("/v1/fine_tuning/jobs", json=body), 400, param=param, code=code)


def test_a_dpo_job_echoes_its_method_and_the_schema_lists_the_methods(api, tiny):
    pair = {
        "input": {"messages": [{"role": "user", "content": "Pick one."}]},
        "preferred_output": [{"role": "assistant", "content": "A"}],
        "non_preferred_output": [{"role": "assistant", "content": "B"}],
    }
    file_id = upload(api, jsonl([pair] * 12)).json()["id"]
    body = {
        "model": tiny,
        "training_file": file_id,
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "n_epochs": 1}}},
    }
    job = api.post("/v1/fine_tuning/jobs", json=body).json()
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"] == {
        "n_epochs": 1,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "beta": "auto",
    }
    stored = api.app.state.store.get_job(job["id"])
    assert stored["training_config"] == {"objective": "dpo"}
    # The accepted method types are in the OpenAPI schema (the Studio's form reads them).
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["Method"]["properties"]["type"]["enum"] == ["supervised", "dpo", "reinforcement"]


RFT_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "n",
        "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
    },
}


def test_a_reinforcement_job_takes_openais_fields_and_checks_its_grader(api, tiny):
    from tuneforge.jobs.spec import job_config

    prompts = [
        {"messages": [{"role": "user", "content": f"Say {i}"}], "answer": str(i)} for i in range(8)
    ]
    upload_answer = upload(api, jsonl(prompts))  # prompts without answers: OpenAI's RFT JSONL
    assert upload_answer.status_code == 200, upload_answer.text
    grader = {
        "type": "string_check",
        "name": "exact",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "operation": "eq",
    }
    body = {
        "model": tiny,
        "training_file": upload_answer.json()["id"],
        "method": {
            "type": "reinforcement",
            "reinforcement": {
                "grader": grader,
                "response_format": RFT_FORMAT,
                "hyperparameters": {
                    "compute_multiplier": 2,
                    "reasoning_effort": "low",
                    "eval_interval": 3,
                    "eval_samples": 2,
                },
            },
        },
    }
    job = api.post("/v1/fine_tuning/jobs", json=body).json()
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert job["method"]["type"] == "reinforcement"
    assert job["method"]["reinforcement"]["grader"] == grader
    assert job["method"]["reinforcement"]["hyperparameters"]["compute_multiplier"] == 2
    assert job["method"]["reinforcement"]["response_format"] == RFT_FORMAT
    stored = api.app.state.store.get_job(job["id"])
    assert stored["training_config"] == {
        "objective": "grpo",
        "grader": grader,
        "response_format": RFT_FORMAT,
    }
    # What the fields become here: 4 × 2 answers per prompt, a validation every 3 steps, the
    # answers sampled under the schema; eval_samples and reasoning_effort change nothing.
    config = job_config(stored, Path("train.jsonl"), None)
    assert (config.grpo_group_size, config.eval_every) == (8, 3)
    assert config.response_format == RFT_FORMAT
    plain = job_config(
        stored | {"hyperparameters": {"compute_multiplier": 2, "eval_interval": 3}},
        Path("train.jsonl"),
        None,
    )
    assert plain == config
    no_schema = body | {
        "method": {
            "type": "reinforcement",
            "reinforcement": {
                "grader": grader,
                "response_format": {"type": "json_schema", "json_schema": {"name": "n"}},
            },
        }
    }
    assert_error(
        api.post("/v1/fine_tuning/jobs", json=no_schema),
        400,
        param="method.reinforcement.response_format",
    )
    bad = body | {
        "method": {
            "type": "reinforcement",
            "reinforcement": {"grader": grader | {"reference": "{{ answer }}"}},
        }
    }
    assert_error(
        api.post("/v1/fine_tuning/jobs", json=bad),
        400,
        param="method.reinforcement.grader.reference",
        code="invalid_grader",
    )


def test_hyperparameters_in_two_places_is_an_error(api, training_file, tiny):
    body = {
        "model": tiny,
        "training_file": training_file,
        "hyperparameters": {"n_epochs": 1},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    }
    assert_error(api.post("/v1/fine_tuning/jobs", json=body), 400, param="hyperparameters")


def test_unknown_job_ids_are_404_everywhere(api):
    for method, suffix in [
        ("get", ""),
        ("post", "/cancel"),
        ("post", "/pause"),
        ("post", "/resume"),
        ("get", "/events"),
        ("get", "/checkpoints"),
    ]:
        response = getattr(api, method)(f"/v1/fine_tuning/jobs/ftjob-nope{suffix}")
        assert_error(response, 404, param="fine_tuning_job_id")


def test_transitions_only_from_their_states(api, training_file, tiny):
    job = api.post("/v1/fine_tuning/jobs", json={"model": tiny, "training_file": training_file})
    job_id = job.json()["id"]
    assert_error(api.post(f"/v1/fine_tuning/jobs/{job_id}/resume"), 400, code="invalid_job_state")
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()["status"] == "paused"
    resumed = api.post(f"/v1/fine_tuning/jobs/{job_id}/resume").json()
    # Resume validates the files again; the scheduler thread may already have moved on by the
    # time the answer is read back (the tokenizer is cached, so validation takes milliseconds).
    assert resumed["status"] in ("validating_files", "queued", "running")
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert_error(api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"), 400, code="invalid_job_state")
    events = api.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    assert events[0]["message"] == "Fine-tuning job cancelled"  # newest first


def test_jobs_list_filters_by_metadata_as_openai(api, training_file, tiny):
    """`jobs.list(metadata={"squad": "a"})` sends `metadata[squad]=a`; every pair must match.

    The key is one no other test in this module uses: the `api` fixture is shared.
    """
    ids = {}
    for name, metadata in [
        ("a1", {"squad": "a"}),
        ("b", {"squad": "b"}),
        ("a2", {"squad": "a", "x": "1"}),
    ]:
        body = {"model": tiny, "training_file": training_file, "metadata": metadata}
        job = api.post("/v1/fine_tuning/jobs", json=body).json()
        api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        ids[name] = job["id"]

    def listed(params) -> list[str]:
        response = api.get("/v1/fine_tuning/jobs", params=params)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["data"]]

    assert listed({"metadata[squad]": "a"}) == [ids["a2"], ids["a1"]]  # newest first
    assert listed({"metadata[squad]": "a", "metadata[x]": "1"}) == [ids["a2"]]
    assert listed({"metadata[squad]": "nobody"}) == []
    page = api.get("/v1/fine_tuning/jobs", params={"metadata[squad]": "a", "limit": 1}).json()
    assert [j["id"] for j in page["data"]] == [ids["a2"]] and page["has_more"] is True
    rest = listed({"metadata[squad]": "a", "after": ids["a2"]})
    assert rest == [ids["a1"]]
    assert_error(
        api.get("/v1/fine_tuning/jobs", params={"metadata": "team"}), 400, param="metadata"
    )


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 101}, {"limit": "many"}])
def test_list_limits_are_checked(api, query):
    assert_error(api.get("/v1/fine_tuning/jobs", params=query), 400, param="limit")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def test_models_list_and_retrieve(api, tiny):
    ids = [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert "smollm2-135m-instruct" in ids and tiny in ids
    model = api.get(f"/v1/models/{tiny}").json()
    assert model["object"] == "model" and model["owned_by"] == "tuneforge"
    assert_error(api.get("/v1/models/gpt-17"), 404, code="model_not_found")
    assert_error(api.get("/v1/models/ft:a:local::b"), 404, code="model_not_found")
    assert_error(api.delete("/v1/models/smollm2-135m-instruct"), 403, code="model_not_deletable")


# ---------------------------------------------------------------------------------------------
# Chat completions
# ---------------------------------------------------------------------------------------------


def test_chat_completion_shape_and_usage(api, tiny):
    response = chat(api, tiny, max_completion_tokens=5, temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == tiny
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_response_format_text_and_logprobs_false_are_accepted(api, tiny):
    """What OpenAI's defaults send explicitly; JSON modes are 400s that say why."""
    body = {"max_tokens": 3, "temperature": 0, "logprobs": False}
    response = chat(api, tiny, response_format={"type": "text"}, **body)
    assert response.status_code == 200, response.text
    error = assert_error(chat(api, tiny, response_format={"type": "xml"}), 400)
    assert "json_schema" in error["message"] and "Value error" not in error["message"]


def teacher_forced_logprobs(model_dir, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """Each answer position's log-probabilities from one plain forward of transformers' model
    over prompt + answer: what the engine's incremental decoding must report."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), -1)


def token_ids(side, entries: list[dict]) -> list[int]:
    """The ids of logprobs entries, from their bytes (byte-level BPE: SmolLM2's tokenizer)."""
    from tuneforge.models.text import _byte_level_table

    char = {byte: ch for ch, byte in _byte_level_table().items()}
    pieces = ["".join(char[b] for b in entry["bytes"]) for entry in entries]
    return side.tokenizer.convert_tokens_to_ids(pieces)


SAMPLED = {"max_tokens": 8, "temperature": 0.7, "seed": 3}  # the tiny model's noise, varied


def test_logprobs_are_the_models_own_and_spell_the_answer(api, tiny, tiny_model_dir):
    """OpenAI's logprobs / top_logprobs: per answer token its text, bytes (which together
    spell the answer), log-probability in the model's own distribution (a plain forward over
    prompt + answer gives the same, whatever the temperature) and the most likely tokens at its
    position, most likely first."""
    from tuneforge.models.text import load_text_side

    response = chat(api, tiny, logprobs=True, top_logprobs=3, **SAMPLED)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    content = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None
    assert len(content) == response.json()["usage"]["completion_tokens"] == 8
    assert (
        bytes(b for entry in content for b in entry["bytes"]).decode()
        == (choice["message"]["content"])
    )
    side = load_text_side(str(tiny_model_dir))
    prompt = side.prompt_ids([Message("user", "Hello there")])
    answer = token_ids(side, content)
    assert len(set(answer)) > 1  # sampled: not one token over and over
    expected = teacher_forced_logprobs(tiny_model_dir, prompt, answer)
    for position, entry in enumerate(content):
        chosen = float(expected[position, answer[position]])
        assert entry["logprob"] == pytest.approx(chosen, abs=1e-4)
        top = entry["top_logprobs"]
        best = expected[position].topk(3)
        assert token_ids(side, top) == best.indices.tolist()
        assert [t["logprob"] for t in top] == pytest.approx(best.values.tolist(), abs=1e-4)

    greedy = chat(api, tiny, max_tokens=4, temperature=0, logprobs=True, top_logprobs=1).json()
    for entry in greedy["choices"][0]["logprobs"]["content"]:
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy took the best
    plain = chat(api, tiny, logprobs=True, **SAMPLED).json()["choices"][0]
    assert all(entry["top_logprobs"] == [] for entry in plain["logprobs"]["content"])
    assert plain["message"] == choice["message"]
    assert chat(api, tiny, **SAMPLED).json()["choices"][0]["logprobs"] is None


def test_presence_and_frequency_penalties_follow_openais_formula(api, default_model_dir):
    """Greedy with penalties (SmolLM2: the tiny model's logits are too far apart for a penalty
    to change its choice): each token is the best of the model's logits less OpenAI's
    penalties for the answer so far (frequency × count, presence once seen), which changes the
    answer; the logprobs reported stay the model's own."""
    from tuneforge.models.text import load_text_side

    model = "smollm2-135m-instruct"
    base = {"max_tokens": 16, "temperature": 0, "logprobs": True}
    plain = chat(api, model, **base).json()["choices"][0]
    side = load_text_side(str(default_model_dir))
    prompt = side.prompt_ids([Message("user", "Hello there")])
    unpenalized = token_ids(side, plain["logprobs"]["content"])
    for presence, frequency in ((-2.0, 0.0), (0.0, -1.0), (1.0, 2.0)):
        body = base | {"presence_penalty": presence, "frequency_penalty": frequency}
        choice = chat(api, model, **body).json()["choices"][0]
        answer = token_ids(side, choice["logprobs"]["content"])
        expected = teacher_forced_logprobs(default_model_dir, prompt, answer)
        for position, token in enumerate(answer):
            seen = torch.tensor(answer[:position], dtype=torch.long)
            counts = torch.bincount(seen, minlength=expected.shape[-1]).float()
            penalized = expected[position] - counts * frequency - (counts > 0).float() * presence
            assert token == int(penalized.argmax()), (presence, frequency, position)
            reported = choice["logprobs"]["content"][position]["logprob"]
            assert reported == pytest.approx(float(expected[position, token]), abs=1e-3)
        assert answer != unpenalized, (presence, frequency, choice["message"]["content"])


def test_streamed_logprobs_add_up_to_the_whole_answers(api, tiny):
    body = {"logprobs": True, "top_logprobs": 2, "stream": True} | SAMPLED
    whole = chat(api, tiny, **body | {"stream": False}).json()["choices"][0]
    messages = [{"role": "user", "content": "Hello there"}]
    with api.stream(
        "POST", "/v1/chat/completions", json={"model": tiny, "messages": messages} | body
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines]
    streamed = [
        entry
        for c in chunks
        for choice in c["choices"]
        if choice["logprobs"]
        for entry in choice["logprobs"]["content"]
    ]
    assert streamed == whole["logprobs"]["content"]


def test_a_stop_string_cuts_the_logprobs_with_the_text(api, tiny):
    first = chat(api, tiny, logprobs=True, **SAMPLED).json()["choices"][0]
    entries = first["logprobs"]["content"]
    stop = bytes(entries[4]["bytes"]).decode(errors="ignore").strip()
    assert stop, entries[4]
    cut = chat(api, tiny, logprobs=True, stop=[stop], **SAMPLED).json()["choices"][0]
    kept = cut["logprobs"]["content"]
    assert cut["finish_reason"] == "stop" and stop not in cut["message"]["content"]
    spelled = bytes(b for entry in kept for b in entry["bytes"]).decode(errors="replace")
    assert spelled.startswith(cut["message"]["content"])
    assert len(kept) < len(entries) and kept == entries[: len(kept)]


SENTIMENT = {
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "sentiment", "schema": schema}}


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1, "seed": 5}])
def test_a_json_schema_response_format_makes_even_noise_follow_the_schema(api, tiny, sampling):
    """Structured outputs by constrained decoding: the tiny random model (noise, never JSON on
    its own) answers with JSON that follows the schema, greedy or sampled, and stops there."""
    free = chat(api, tiny, max_tokens=30, **sampling).json()["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(free)
    response = chat(
        api, tiny, max_tokens=30, response_format=json_schema_format(SENTIMENT), **sampling
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    answer = json.loads(choice["message"]["content"])
    assert choice["finish_reason"] == "stop"
    assert set(answer) == {"label", "score"} and answer["label"] in (
        "positive",
        "negative",
        "neutral",
    )
    assert isinstance(answer["score"], int) and 1 <= answer["score"] <= 5


def test_json_object_mode_starts_an_object_and_the_responses_api_does_the_same(api, tiny):
    content = chat(api, tiny, max_tokens=6, temperature=0, response_format={"type": "json_object"})
    assert content.json()["choices"][0]["message"]["content"].startswith('{"')
    chat_answer = chat(
        api, tiny, max_tokens=30, temperature=0, response_format=json_schema_format(SENTIMENT)
    ).json()["choices"][0]["message"]["content"]
    text_format = {"type": "json_schema", "name": "sentiment", "schema": SENTIMENT, "strict": True}
    response = respond(api, tiny, max_output_tokens=30, text={"format": text_format}).json()
    assert response_text(response) == chat_answer
    assert response["text"]["format"] == text_format


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def stream_text(api, body: dict) -> tuple[str, list[dict]]:
    """The content of a streamed answer, and its chunks' choices."""
    with api.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line and line != "data: [DONE]"]
    choices = [c for line in lines for c in json.loads(line.removeprefix("data: "))["choices"]]
    return "".join(c["delta"].get("content") or "" for c in choices), choices


def test_tools_go_into_the_prompt_and_tool_choice_is_honoured(api, tiny):
    """Tool definitions reach the prompt as training put them there; "none" leaves them out;
    a named function starts the answer as its call (the random model then writes noise, which
    comes back as text, not as a made-up call)."""
    base = {"max_tokens": 3, "temperature": 0}
    plain = chat(api, tiny, **base).json()["usage"]["prompt_tokens"]
    with_tools = chat(api, tiny, tools=[WEATHER_TOOL], **base).json()
    assert with_tools["usage"]["prompt_tokens"] > plain + 20  # the definition is in the prompt
    none = chat(api, tiny, tools=[WEATHER_TOOL], tool_choice="none", **base).json()
    assert none["usage"]["prompt_tokens"] == plain

    named = {"type": "function", "function": {"name": "get_weather"}}
    body = {"tools": [WEATHER_TOOL], "tool_choice": named, **base}
    forced = chat(api, tiny, **body).json()
    (choice,) = forced["choices"]
    assert choice["message"]["content"].startswith(tool_call_prefix("get_weather"))
    assert choice["message"]["tool_calls"] is None and choice["finish_reason"] == "length"
    assert forced["usage"]["prompt_tokens"] > with_tools["usage"]["prompt_tokens"]
    streamed, _ = stream_text(
        api, {"model": tiny, "messages": [{"role": "user", "content": "Hello there"}], **body}
    )
    assert streamed == choice["message"]["content"]  # greedy: the same answer both ways


STRICT_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


def assert_weather_calls(calls: list[dict]) -> None:
    assert calls
    for call in calls:
        assert call["function"]["name"] == "get_weather"
        arguments = json.loads(call["function"]["arguments"])
        assert arguments["city"] in ("Paris", "Oslo") and arguments["unit"] in ("c", "f")
        assert set(arguments) == {"city", "unit"}


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1, "seed": 5}])
def test_strict_tools_make_even_noise_call_with_arguments_that_follow_the_schema(
    api, tiny, sampling
):
    """OpenAI's strict function calling by constrained decoding: with `strict: true` the tiny
    random model (noise) answers a required or named tool_choice with calls whose arguments
    follow the schema, whole and streamed; without it the same request gets no call. The prompt
    is the same either way (strict is a decoding setting, not part of the definition)."""
    named = {"type": "function", "function": {"name": "get_weather"}}
    loose_tool = STRICT_WEATHER | {"function": STRICT_WEATHER["function"] | {"strict": False}}
    base = {"max_tokens": 40, "parallel_tool_calls": False, **sampling}
    loose = chat(api, tiny, tools=[loose_tool], tool_choice=named, **base).json()
    assert loose["choices"][0]["message"]["tool_calls"] is None, loose
    for choice in (named, "required"):
        response = chat(api, tiny, tools=[STRICT_WEATHER], tool_choice=choice, **base)
        assert response.status_code == 200, response.text
        body = response.json()
        (answer,) = body["choices"]
        assert answer["finish_reason"] == "tool_calls", answer
        assert len(answer["message"]["tool_calls"]) == 1
        assert_weather_calls(answer["message"]["tool_calls"])
        if choice is named:  # the same prompt, forced start included
            assert body["usage"]["prompt_tokens"] == loose["usage"]["prompt_tokens"]
    messages = [{"role": "user", "content": "Hello there"}]
    _, chunks = stream_text(
        api,
        {"model": tiny, "messages": messages, "tools": [STRICT_WEATHER], **base}
        | {"tool_choice": "required"},
    )
    deltas = [d for c in chunks for d in c["delta"].get("tool_calls") or ()]
    assert deltas and chunks[-1]["finish_reason"] == "tool_calls"
    assert_weather_calls([{"function": deltas[0]["function"]}])


def test_strict_tools_in_the_responses_api(api, tiny):
    """The Responses API writes `strict` beside the function (its SDK always sends it): a
    strict function's call follows the schema, and the response echoes strict as sent."""
    function = STRICT_WEATHER["function"]
    tool = {"type": "function", **function}
    asked = {"tool_choice": "required", "parallel_tool_calls": False, "max_output_tokens": 40}
    response = respond(api, tiny, tools=[tool], **asked)
    assert response.status_code == 200, response.text
    body = response.json()
    calls = [item for item in body["output"] if item["type"] == "function_call"]
    assert calls, body["output"]
    assert_weather_calls([{"function": call} for call in calls])
    assert body["tools"][0]["strict"] is True


@pytest.mark.parametrize(
    ("tools", "fragment"),
    [
        ([{"parameters": {"type": "objekt"}}], "cannot constrain"),
        ([{"parameters": {"type": "string"}}], "parameters of type 'string'"),
        ([{}, {"description": "again"}], "two tools are functions named 'get_weather'"),
    ],
)
def test_strict_tools_that_cannot_be_held_to_are_a_400_naming_tools(api, tiny, tools, fragment):
    sent = [{"type": "function", "function": STRICT_WEATHER["function"] | t} for t in tools]
    response = chat(api, tiny, tools=sent)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("tools") and fragment in error["message"], error


def test_openai_model_names_get_an_answer_that_says_why_they_are_not_here(api, training_file):
    """Code moving from OpenAI still names gpt-4o-mini: chat's 404 and a job's 400 say that
    OpenAI's models are not on this machine, instead of only "does not exist"."""
    answer = chat(api, "gpt-4o-mini")
    assert answer.status_code == 404
    assert "one of OpenAI's models" in answer.json()["error"]["message"]
    body = {"model": "gpt-4o-mini-2024-07-18", "training_file": training_file}
    job = api.post("/v1/fine_tuning/jobs", json=body)
    assert job.status_code == 400 and job.json()["error"]["param"] == "model"
    assert "one of OpenAI's models" in job.json()["error"]["message"]
    assert "OpenAI" not in chat(api, "my-own-model").json()["error"]["message"]


def test_openai_arguments_that_change_nothing_are_accepted(api, tiny):
    body = {
        "store": False,
        "metadata": {"team": "a"},
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "safety_identifier": "user-1",
        "reasoning_effort": "minimal",
        "parallel_tool_calls": False,
        "tools": [WEATHER_TOOL | {"function": WEATHER_TOOL["function"] | {"strict": False}}],
    }
    response = chat(api, tiny, **body)
    assert response.status_code == 200, response.text
    assert response.json()["service_tier"] == "default"
    streamed = chat(api, tiny, stream=True, stream_options={"include_obfuscation": False})
    assert streamed.status_code == 200, streamed.text


def test_stored_chat_completions_are_listed_filtered_updated_and_deleted(api, tiny):
    """`store: true` keeps the completion (streamed or not) with its metadata and messages;
    OpenAI's list/retrieve/update/delete and messages routes read them back."""
    run = {"suite": f"s-{time.time_ns()}"}  # this test's own rows in the shared server
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
        },
    ]
    first = chat(api, tiny, store=True, metadata=run | {"prompt": "v1"}, messages=messages).json()
    with api.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": tiny,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 6,
            "n": 2,
            "temperature": 1.0,
            "seed": 3,
            "stream": True,
            "store": True,
            "metadata": run | {"prompt": "v2"},
        },
    ) as response:
        chunks = [json.loads(x[6:]) for x in response.iter_lines() if x and x != "data: [DONE]"]
    assert chat(api, tiny, metadata=run).status_code == 200  # store left out: not kept
    assert chat(api, tiny, store=False, metadata=run).status_code == 200

    listed = api.get("/v1/chat/completions", params={"metadata[suite]": run["suite"]}).json()
    assert [c["id"] for c in listed["data"]] == [first["id"], chunks[0]["id"]]  # oldest first
    stored = listed["data"][0]
    assert stored["choices"] == first["choices"] and stored["usage"] == first["usage"]
    assert stored["metadata"] == run | {"prompt": "v1"}
    streamed = api.get(f"/v1/chat/completions/{chunks[0]['id']}").json()
    for index in (0, 1):  # the stored answer is what the stream sent, choice by choice
        sent = "".join(
            c["choices"][0]["delta"].get("content") or ""
            for c in chunks
            if c["choices"] and c["choices"][0]["index"] == index
        )
        assert streamed["choices"][index]["message"]["content"] == sent
    assert (streamed["temperature"], streamed["seed"]) == (1.0, 3)

    v2 = {"metadata[suite]": run["suite"], "metadata[prompt]": "v2"}
    assert [c["id"] for c in api.get("/v1/chat/completions", params=v2).json()["data"]] == [
        chunks[0]["id"]
    ]
    newest = api.get(
        "/v1/chat/completions",
        params={"metadata[suite]": run["suite"], "order": "desc", "limit": 1},
    ).json()
    assert [c["id"] for c in newest["data"]] == [chunks[0]["id"]] and newest["has_more"]
    page = api.get(
        "/v1/chat/completions",
        params={"metadata[suite]": run["suite"], "after": first["id"], "model": tiny},
    ).json()
    assert [c["id"] for c in page["data"]] == [chunks[0]["id"]] and not page["has_more"]
    other = api.get(
        "/v1/chat/completions", params={"model": "other", "metadata[suite]": run["suite"]}
    )
    assert other.json()["data"] == []

    # a streamed tool call is stored with the id the stream sent
    with api.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": tiny,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "max_tokens": 40,
            "tools": [STRICT_WEATHER],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "stream": True,
            "store": True,
            "metadata": run | {"prompt": "tools"},
        },
    ) as response:
        frames = [json.loads(x[6:]) for x in response.iter_lines() if x and x != "data: [DONE]"]
    sent_ids = [
        call["id"]
        for f in frames
        if f["choices"]
        for call in f["choices"][0]["delta"].get("tool_calls") or []
    ]
    kept = api.get(f"/v1/chat/completions/{frames[0]['id']}").json()
    assert sent_ids and [c["id"] for c in kept["choices"][0]["message"]["tool_calls"]] == sent_ids
    assert kept["tools"][0]["function"]["name"] == WEATHER_TOOL["function"]["name"]
    assert api.delete(f"/v1/chat/completions/{frames[0]['id']}").status_code == 200

    said = api.get(f"/v1/chat/completions/{first['id']}/messages").json()["data"]
    assert [m["id"] for m in said] == [f"{first['id']}-0", f"{first['id']}-1"]
    assert [m["role"] for m in said] == ["developer", "user"]
    assert said[1]["content"] == "Hi there" and said[1]["content_parts"][1]["text"] == "there"
    assert said[0]["content_parts"] is None
    second = api.get(
        f"/v1/chat/completions/{first['id']}/messages", params={"after": said[0]["id"]}
    ).json()
    assert [m["id"] for m in second["data"]] == [said[1]["id"]]

    updated = api.post(f"/v1/chat/completions/{first['id']}", json={"metadata": {"k": "v"}})
    assert updated.status_code == 200 and updated.json()["metadata"] == {"k": "v"}
    left = api.get("/v1/chat/completions", params={"metadata[suite]": run["suite"]}).json()
    assert [c["id"] for c in left["data"]] == [chunks[0]["id"]]
    deleted = api.delete(f"/v1/chat/completions/{first['id']}").json()
    assert deleted == {"object": "chat.completion.deleted", "id": first["id"], "deleted": True}
    for response in (
        api.get(f"/v1/chat/completions/{first['id']}"),
        api.get(f"/v1/chat/completions/{first['id']}/messages"),
        api.post(f"/v1/chat/completions/{first['id']}", json={"metadata": {}}),
        api.delete(f"/v1/chat/completions/{first['id']}"),
    ):
        assert_error(response, 404, param="completion_id")
    assert_error(api.get("/v1/chat/completions", params={"after": "nope"}), 400, param="after")
    bad = api.post(f"/v1/chat/completions/{chunks[0]['id']}", json={"metadata": {"k" * 65: "v"}})
    assert_error(bad, 400, param="metadata")


def test_serve_store_keeps_live_completions_that_do_not_say_store_false(
    api, tiny, monkeypatch, run_cli
):
    """`tuneforge serve --store` (OpenAI's "log by default"): a chat completion without
    `store` is kept; `store: false` is not; a batch's lines only when they say store: true."""
    import tuneforge.api.server as server
    import tuneforge.cli._common as common

    started = {}
    monkeypatch.setattr(server, "run_server", lambda factory, **kw: started.update(kw))
    monkeypatch.setattr(common, "use_free_cores", lambda: None)  # this process keeps its threads
    assert run_cli("serve", "--store")[0] in (0, None)
    assert started["store_by_default"] is True
    run_cli("serve")
    assert started["store_by_default"] is False

    monkeypatch.setitem(api.app.state._state, "store_by_default", True)
    tag = {"suite": f"default-{time.time_ns()}"}
    kept = chat(api, tiny, metadata=tag | {"case": "left out"}).json()
    chat(api, tiny, store=False, metadata=tag | {"case": "false"}).raise_for_status()
    line = {"x-tuneforge-background": "1"}  # how the batch runner sends a batch's line
    body = {"model": tiny, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    for case, extra in (("batch", {}), ("batch asked", {"store": True})):
        response = api.post(
            "/v1/chat/completions",
            json=body | extra | {"metadata": tag | {"case": case}},
            headers=line,
        )
        assert response.status_code == 200, response.text
    listed = api.get("/v1/chat/completions", params={"metadata[suite]": tag["suite"]}).json()
    assert [c["metadata"]["case"] for c in listed["data"]] == ["left out", "batch asked"]
    assert listed["data"][0]["id"] == kept["id"]


def test_a_completion_that_cannot_be_stored_says_so(api, tiny, monkeypatch):
    """A full disk under store: true is a 507 naming the failure (streamed: that error event
    instead of [DONE]), not an answer whose log silently went missing."""
    import sqlite3

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(api.app.state.store, "add_chat_completion", full)
    error = assert_error(chat(api, tiny, store=True), 507, code="store_failed")
    assert "database or disk is full" in error["message"]
    with api.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": tiny,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3,
            "stream": True,
            "store": True,
        },
    ) as response:
        lines = [x for x in response.iter_lines() if x]
    assert "data: [DONE]" not in lines
    assert json.loads(lines[-1][6:])["error"]["code"] == "store_failed"
    assert chat(api, tiny).status_code == 200  # without store nothing is written
    monkeypatch.setitem(api.app.state._state, "store_by_default", True)
    assert chat(api, tiny).status_code == 200  # kept only by --store: answered, failure logged


def test_n_choices_and_seeded_sampling(api, tiny):
    body = {"n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 12}
    first = chat(api, tiny, **body).json()
    again = chat(api, tiny, **body).json()
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in first["choices"]]
    assert texts == [c["message"]["content"] for c in again["choices"]]  # seed: reproducible
    assert len(set(texts)) > 1  # each choice samples on its own
    assert first["usage"]["completion_tokens"] == 36


def test_stop_strings_cut_the_answer(api, tiny):
    free = chat(api, tiny, temperature=1.0, seed=3, max_tokens=20).json()
    text = free["choices"][0]["message"]["content"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    cut = chat(api, tiny, temperature=1.0, seed=3, max_tokens=20, stop=[stop]).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_stream_chunks(api, tiny):
    with api.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": tiny,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 5,
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    finished = [
        c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert sorted(f["index"] for f in finished) == [0, 1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 10


def test_message_variants_are_accepted(api, tiny):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"x": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert chat(api, tiny, messages=messages).status_code == 200


@pytest.mark.parametrize(
    ("patch", "param", "code"),
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", None),
        ({"messages": []}, "messages", None),
        ({"messages": "hello"}, "messages", None),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", None),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
            None,
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "1",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
            None,
        ),
        ({"temperature": "hot"}, "temperature", None),
        ({"temperature": 2.5}, "temperature", None),
        ({"top_p": 1.5}, "top_p", None),
        ({"n": 0}, "n", None),
        ({"n": 1000}, "n", None),
        ({"max_tokens": 0}, "max_tokens", None),
        ({"max_tokens": 10**12}, "max_tokens", "context_length_exceeded"),
        ({"max_completion_tokens": 10**6}, "max_completion_tokens", "context_length_exceeded"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", None),
        ({"stop": [""]}, "stop", None),
        ({"seed": "x"}, "seed", None),
        ({"stream": "yes please"}, "stream", None),
        ({"logprobs": "maybe"}, "logprobs", None),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", None),
        ({"presence_penalty": 2.5}, "presence_penalty", None),
        ({"frequency_penalty": -3}, "frequency_penalty", None),
        ({"logit_bias": {"1234": 100}}, "logit_bias", None),
        ({"reasoning_effort": "low"}, "reasoning_effort", None),
        ({"response_format": {"type": "xml"}}, "response_format", None),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format", None),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format",  # no name
            None,
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "objekt"}},
                }
            },
            "response_format.json_schema.schema",
            None,
        ),
        (
            {"tools": [WEATHER_TOOL], "response_format": {"type": "json_object"}},
            "response_format",
            None,
        ),
        ({"top_logprobs": 3}, "top_logprobs", None),  # without logprobs: true
        ({"metadata": {"k" * 65: "v"}}, "metadata", None),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata", None),
        ({"tool_choice": "auto"}, "tool_choice", None),
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "x"}},
            },
            "tool_choice",
            None,
        ),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice", None),
        (
            {"tools": [{"type": "function", "function": {"name": "has space"}}]},
            "tools[0].function.name",
            None,
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools", None),
        ({"model": ""}, "model", None),
    ],
)
def test_bad_chat_requests_are_400_naming_the_field(api, tiny, patch, param, code):
    body = dict(patch)
    model = body.pop("model", tiny)
    assert_error(chat(api, model, **body), 400, param=param, code=code)


# ---------------------------------------------------------------------------------------------
# Responses API
# ---------------------------------------------------------------------------------------------


def respond(api, model: str, **body):
    body = {"input": "Hello there", "max_output_tokens": 4, "temperature": 0} | body
    return api.post("/v1/responses", json={"model": model, **body})


def response_text(body: dict) -> str:
    return "".join(
        part["text"]
        for item in body["output"]
        if item["type"] == "message"
        for part in item["content"]
    )


def stream_events(api, body: dict) -> list[dict]:
    with api.stream("POST", "/v1/responses", json=body | {"stream": True}) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    events = []
    for name, data in zip(lines[::2], lines[1::2], strict=True):
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    return events


def test_a_response_answers_as_the_chat_api_does(api, tiny):
    """The same prompt, tokens and greedy answer as chat completions, in the Responses shape."""
    instructions = "Answer briefly."
    body = respond(api, tiny, instructions=instructions, max_output_tokens=6).json()
    messages = [
        {"role": "system", "content": instructions},
        {"role": "user", "content": "Hello there"},
    ]
    completion = chat(api, tiny, messages=messages, max_tokens=6, temperature=0).json()
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["model"] == tiny and body["instructions"] == instructions
    (message,) = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["id"].startswith("msg_")
    assert message["content"][0]["type"] == "output_text"
    assert response_text(body) == completion["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["input_tokens"] == completion["usage"]["prompt_tokens"]
    assert usage["output_tokens"] == completion["usage"]["completion_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    if completion["choices"][0]["finish_reason"] == "length":  # the budget ran out
        assert body["status"] == message["status"] == "incomplete"
        assert body["incomplete_details"] == {"reason": "max_output_tokens"}
        assert body["completed_at"] is None
    else:
        assert body["status"] == message["status"] == "completed"
        assert body["incomplete_details"] is None and body["completed_at"] >= body["created_at"]


def test_a_stored_response_continues_with_previous_response_id(api, tiny):
    first = respond(api, tiny, input="Hi").json()
    assert first["store"] is True  # OpenAI's default
    assert api.get(f"/v1/responses/{first['id']}").json() == first
    follow = respond(api, tiny, input="And then?", previous_response_id=first["id"]).json()
    assert follow["previous_response_id"] == first["id"]
    # the follow-up's prompt is the whole conversation, as chat would be sent it
    said = response_text(first)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": said},
        {"role": "user", "content": "And then?"},
    ]
    completion = chat(api, tiny, messages=messages, max_tokens=4, temperature=0).json()
    assert follow["usage"]["input_tokens"] == completion["usage"]["prompt_tokens"]
    assert response_text(follow) == completion["choices"][0]["message"]["content"]

    # the input items, as OpenAI lists them: newest first by default, paged with after
    items = api.get(f"/v1/responses/{follow['id']}/input_items").json()
    assert items["object"] == "list" and not items["has_more"]
    [asked] = items["data"]
    assert asked["type"] == "message" and asked["role"] == "user"
    assert asked["content"] == [{"type": "input_text", "text": "And then?"}]
    assert items["first_id"] == items["last_id"] == asked["id"]
    listed = respond(api, tiny, input=[{"role": "user", "content": t} for t in "abc"]).json()
    url = f"/v1/responses/{listed['id']}/input_items"
    newest = api.get(url, params={"limit": 2}).json()
    assert [i["content"][0]["text"] for i in newest["data"]] == ["c", "b"] and newest["has_more"]
    rest = api.get(url, params={"limit": 2, "after": newest["last_id"]}).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["a"] and not rest["has_more"]
    oldest = api.get(url, params={"order": "asc"}).json()
    assert [i["content"][0]["text"] for i in oldest["data"]] == ["a", "b", "c"]
    assert_error(api.get(url, params={"after": "msg_nope"}), 400, param="after")
    assert_error(api.get(url, params={"limit": 101}), 400, param="limit")

    deleted = api.delete(f"/v1/responses/{first['id']}").json()
    assert deleted == {"id": first["id"], "object": "response", "deleted": True}
    assert_error(api.get(f"/v1/responses/{first['id']}"), 404, param="response_id")
    assert_error(api.get(f"/v1/responses/{first['id']}/input_items"), 404, param="response_id")
    assert_error(api.delete(f"/v1/responses/{first['id']}"), 404, param="response_id")
    again = respond(api, tiny, input="More", previous_response_id=first["id"])
    assert_error(again, 400, param="previous_response_id", code="previous_response_not_found")

    unstored = respond(api, tiny, store=False).json()
    assert unstored["store"] is False
    assert_error(api.get(f"/v1/responses/{unstored['id']}"), 404)


def test_a_stored_response_is_kept_30_days(api, home, tiny):
    """OpenAI keeps a stored response for 30 days: past them it is gone from the routes at once,
    and the scheduler's tick deletes it (`Store.expire_responses`)."""
    from tuneforge.jobs.store import Store

    kept, old = (respond(api, tiny, input=text).json() for text in ("Hi", "Hello"))
    store = Store(home / "tuneforge.db")
    with store.transaction() as conn:  # `old` was made 30 days and a minute ago
        conn.execute(
            "UPDATE responses SET created_at = created_at - ? WHERE id = ?",
            (30 * 86400 + 60, old["id"]),
        )
    assert_error(api.get(f"/v1/responses/{old['id']}"), 404, param="response_id")
    follow = respond(api, tiny, input="More", previous_response_id=old["id"])
    assert_error(follow, 400, param="previous_response_id", code="previous_response_not_found")
    assert api.get(f"/v1/responses/{kept['id']}").status_code == 200
    deadline = time.monotonic() + 10
    while store.conn.execute("SELECT 1 FROM responses WHERE id = ?", (old["id"],)).fetchone():
        assert time.monotonic() < deadline, "the scheduler's tick did not delete it"
        time.sleep(0.05)
    assert api.get(f"/v1/responses/{kept['id']}").status_code == 200


def test_response_input_items_become_the_chat_messages(api, tiny):
    """Messages with input_text parts, a function call and its output: the prompt equals the
    chat request with the same conversation."""
    items = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ]
    body = respond(api, tiny, input=items).json()
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    completion = chat(api, tiny, messages=messages, max_tokens=4, temperature=0).json()
    assert body["usage"]["input_tokens"] == completion["usage"]["prompt_tokens"]
    listed = api.get(f"/v1/responses/{body['id']}/input_items", params={"order": "asc"}).json()
    assert [(i["type"], i.get("role")) for i in listed["data"]] == [
        ("message", "developer"),
        ("message", "user"),
        ("function_call", None),
        ("function_call_output", None),
    ]
    call, output = listed["data"][2:]
    assert call["id"].startswith("fc_") and call["call_id"] == "c1" and call["name"] == "f"
    assert output["call_id"] == "c1" and output["output"] == "42"


def test_response_tools_are_chat_tools_in_the_prompt(api, tiny):
    tool = {"type": "function", **WEATHER_TOOL["function"]}
    body = respond(api, tiny, tools=[tool]).json()
    completion = chat(api, tiny, tools=[WEATHER_TOOL], max_tokens=4, temperature=0).json()
    assert body["usage"]["input_tokens"] == completion["usage"]["prompt_tokens"]
    assert body["tools"] == [tool | {"strict": False}] and body["tool_choice"] == "auto"
    named = respond(
        api, tiny, tools=[tool], tool_choice={"type": "function", "name": "get_weather"}
    )
    forced = chat(
        api,
        tiny,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=4,
        temperature=0,
    ).json()
    # the random model writes no well-formed call after the forced opening: text, as in chat
    assert response_text(named.json()) == forced["choices"][0]["message"]["content"]


def test_a_streamed_response_sends_openais_events(api, tiny):
    body = {"model": tiny, "input": "Hello there", "max_output_tokens": 6, "temperature": 0}
    whole = api.post("/v1/responses", json=body).json()
    events = stream_events(api, body)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete" if whole["status"] == "incomplete" else "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == response_text(whole)  # greedy: the same answer both ways
    final = events[-1]["response"]
    assert response_text(final) == deltas and final["usage"] == whole["usage"]
    assert api.get(f"/v1/responses/{final['id']}").json() == final  # stored when it ended


def test_responses_parse_as_the_openai_sdks_types(api, tiny):
    """Every shape of the Responses API validated by the official SDK's own pydantic models
    (the SDK itself builds them without validating, so a missing field would only show when a
    user's code reads it): the response, each stream event, the input items."""
    from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
    from pydantic import TypeAdapter

    tool = {"type": "function", **WEATHER_TOOL["function"]}
    items = [
        {"role": "user", "content": "Hi"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]
    body = {"model": tiny, "input": items, "tools": [tool], "max_output_tokens": 5}
    response = api.post("/v1/responses", json=body).json()
    Response.model_validate(response)
    events = stream_events(api, body)
    for event in events:
        TypeAdapter(ResponseStreamEvent).validate_python(event)
    listed = api.get(f"/v1/responses/{response['id']}/input_items").json()["data"]
    assert len(listed) == 3
    for item in listed:
        TypeAdapter(ResponseItem).validate_python(item)


def test_response_logprobs_are_the_chat_routes(api, tiny):
    """The Responses API's `include: ["message.output_text.logprobs"]` and `top_logprobs`: the
    output_text's logprobs are what chat completions give for the same request, whole and
    streamed (the SDK's types parse both)."""
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    asked = {"include": ["message.output_text.logprobs"], "top_logprobs": 2}
    body = {"model": tiny, "input": "Hello there", "max_output_tokens": 6, "temperature": 0}
    response = api.post("/v1/responses", json=body | asked).json()
    Response.model_validate(response)
    logprobs = response["output"][0]["content"][0]["logprobs"]
    chat_body = {"logprobs": True, "top_logprobs": 2, "max_tokens": 6, "temperature": 0}
    expected = chat(api, tiny, **chat_body).json()["choices"][0]["logprobs"]["content"]
    assert logprobs == expected and len(logprobs) == 6
    assert response["top_logprobs"] == 2

    events = stream_events(api, body | asked)
    for event in events:
        TypeAdapter(ResponseStreamEvent).validate_python(event)
    deltas = [
        entry
        for e in events
        if e["type"] == "response.output_text.delta"
        for entry in e["logprobs"]
    ]
    assert deltas == expected
    (done,) = [e for e in events if e["type"] == "response.output_text.done"]
    assert done["logprobs"] == expected
    plain = api.post("/v1/responses", json=body).json()
    assert plain["output"][0]["content"][0]["logprobs"] == []


def test_a_response_that_fails_mid_stream_ends_with_response_failed(api, tiny, monkeypatch):
    """A failure after the first tokens went out (the 200 is sent): an error event, then
    response.failed carrying the error, as OpenAI ends such a stream; nothing is stored."""
    import asyncio

    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    from tuneforge.inference.engine import Delta, Failed, Generation

    def failing_submit(target, text, prompt, params, n=1):
        generation = Generation(asyncio.get_running_loop(), n)
        generation.events.put_nowait((0, Delta("Hel")))
        generation.events.put_nowait((0, Failed(RuntimeError("the engine broke"))))
        return generation

    monkeypatch.setattr(api.app.state.engine, "submit", failing_submit)
    events = stream_events(api, {"model": tiny, "input": "Hi", "max_output_tokens": 5})
    assert [e["type"] for e in events][-3:] == [
        "response.output_text.delta",
        "error",
        "response.failed",
    ]
    assert events[-3]["delta"] == "Hel"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert "RuntimeError" in failed["error"]["message"] == events[-2]["message"]
    for event in events:
        TypeAdapter(ResponseStreamEvent).validate_python(event)
    assert_error(api.get(f"/v1/responses/{failed['id']}"), 404)


@pytest.mark.parametrize(
    ("patch", "param", "code"),
    [
        ({"input": []}, "input", None),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input", None),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input", None),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input", None),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]},
            "input",
            None,
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input", None),
        ({"tools": [{"type": "web_search"}]}, "tools", None),
        (
            {
                "tools": [
                    {"type": "function", "name": "f", "parameters": {"type": 7}, "strict": True}
                ]
            },
            "tools",
            None,
        ),
        ({"tool_choice": "sometimes"}, "tool_choice", None),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type", None),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format", None),
        ({"reasoning": {"effort": "low"}}, "reasoning", None),
        ({"background": True}, "background", None),
        ({"include": ["reasoning.encrypted_content"]}, "include", None),
        ({"top_logprobs": 21}, "top_logprobs", None),
        ({"truncation": "auto"}, "truncation", None),
        ({"max_output_tokens": 10**6}, "max_output_tokens", "context_length_exceeded"),
        ({"input": "word " * 3000, "max_output_tokens": None}, "input", "context_length_exceeded"),
        ({"temperature": 3}, "temperature", None),
        ({"modalities": ["text"]}, "modalities", None),
    ],
)
def test_bad_response_requests_are_400_naming_the_field(api, tiny, patch, param, code):
    assert_error(respond(api, tiny, **patch), 400, param=param, code=code)


def test_response_unknown_model_is_404_and_unknown_previous_id_400(api, tiny):
    assert_error(respond(api, "gpt-17"), 404, param="model", code="model_not_found")
    missing = respond(api, tiny, previous_response_id="resp_nope")  # a 400 at OpenAI too
    assert_error(missing, 400, param="previous_response_id", code="previous_response_not_found")


def test_prompt_over_the_context_is_context_length_exceeded(api, tiny):
    long = [{"role": "user", "content": "word " * 3000}]  # > the tiny model's 2048 positions
    error = assert_error(
        chat(api, tiny, messages=long, max_tokens=None), 400, code="context_length_exceeded"
    )
    assert "2048" in error["message"]


def test_unknown_model_is_404(api):
    assert_error(chat(api, "gpt-17"), 404, param="model", code="model_not_found")
    assert_error(chat(api, "/etc"), 404, code="model_not_found")  # no arbitrary paths
    assert_error(chat(api, "run\u0000"), 404, code="model_not_found")  # found by schemathesis


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"[1, 2]", b'"a string"', b"null", b'{"model": "x", "messages": [}'],
)
def test_malformed_bodies_are_400(api, raw):
    response = api.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_error(response, 400)


def test_template_injection_in_messages_is_plain_text(api, tiny):
    from tuneforge.data.conversation import Message

    text = api.app.state.catalog.text_side(tiny)
    attack = "{{ 7 * 7 }}{% for i in range(10**9) %}x{% endfor %}{{ ''.__class__ }}"
    ids = text.prompt_ids([Message("user", attack)])
    assert attack in text.tokenizer.decode(ids)  # rendered as data, never evaluated
    assert chat(api, tiny, messages=[{"role": "user", "content": attack}]).status_code == 200


def test_a_hostile_chat_template_is_stopped_by_the_sandbox(api, training_file, tiny, tmp_path):
    hostile = tmp_path / "hostile-model"
    shutil.copytree(tiny, hostile)
    (hostile / "chat_template.jinja").write_text(HOSTILE_TEMPLATE)
    config = hostile / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    register_base(api, training_file, str(hostile))
    error = assert_error(chat(api, str(hostile)), 400, param="messages", code="invalid_messages")
    assert "exceeds" in error["message"] or "took over" in error["message"]


def test_unknown_routes_and_methods_use_the_error_schema(api):
    assert_error(api.get("/v1/nothing"), 404)
    assert_error(api.put("/v1/models"), 405)


def test_oversized_json_bodies_are_413(api, tiny):
    huge = (
        b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (17 << 20) + b'"}]}'
    )
    response = api.post(
        "/v1/chat/completions", content=huge, headers={"content-type": "application/json"}
    )
    assert_error(response, 413)


# ---------------------------------------------------------------------------------------------
# API key
# ---------------------------------------------------------------------------------------------


def test_every_response_carries_its_own_request_id(api, tiny, tmp_path, monkeypatch):
    """OpenAI's `x-request-id`: on answers, errors, streams and the guard's refusals."""
    responses = [
        api.get("/v1/models"),
        api.get("/v1/nowhere"),
        chat(api, tiny, max_tokens=2),
        chat(api, tiny, max_tokens=2, stream=True),
    ]
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    with TestClient(create_app(api_key="s3cret")) as guarded:
        responses.append(guarded.get("/v1/models"))
    assert [r.status_code for r in responses] == [200, 404, 200, 200, 401]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == len(ids)


def test_api_key_guards_every_route_but_health(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    with TestClient(create_app(api_key="s3cret")) as client:
        assert client.get("/health").status_code == 200
        for path in ("/v1/models", "/v1/files", "/v1/fine_tuning/jobs", "/openapi.json"):
            assert_error(client.get(path), 401, code="invalid_api_key")
            assert_error(
                client.get(path, headers={"Authorization": "Bearer wrong"}),
                401,
                code="invalid_api_key",
            )
            assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert_error(client.post("/v1/chat/completions", json={}), 401)


def test_serving_beyond_loopback_needs_an_api_key():
    from tuneforge.api.server import is_loopback, run_server
    from tuneforge.errors import UsageError

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(UsageError, match="api-key"):
        run_server(create_app, host="0.0.0.0", port=0, api_key=None)
