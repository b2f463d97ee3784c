"""OpenAI's Evals API (/v1/evals) in-process: evals, runs over given samples and over a served
model's answers, output items, counts, paging, cancel, resume after a restart, and a 400 naming
the field for each mistake. Answers come from the tiny random model (noise): the tests compare
them with what /v1/chat/completions answers to the same prompt, never with fixed text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from helpers import new_home, open_api, serve_model

from tuneforge.eval.testing_criteria import grade, pick_label, validate_criteria

SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.answer }}",
    "operation": "eq",
}
SIMILAR = {
    "type": "text_similarity",
    "name": "similar",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.answer }}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.8,
}
SLOW = {  # a python grader that takes a while per row: time to cancel or stop mid-run
    "type": "python",
    "name": "slow",
    "source": "import time\ndef grade(sample, item):\n    time.sleep(0.4)\n    return 1.0\n",
}


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def assert_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.fixture(scope="module")
def home(tmp_path_factory, default_model_dir) -> Path:
    return new_home(tmp_path_factory.mktemp("evals"), default_model_dir)


@pytest.fixture(scope="module")
def api(home):
    with pytest.MonkeyPatch.context() as mp, open_api(home, mp) as client:
        yield client


@pytest.fixture(scope="module")
def tiny(api, tiny_model_dir) -> str:
    return serve_model(api, tiny_model_dir)


def new_eval(api, criteria=(EXACT, SIMILAR), schema=SCHEMA, **extra) -> dict:
    response = api.post(
        "/v1/evals",
        json={
            "name": "capitals",
            "data_source_config": {
                "type": "custom",
                "item_schema": schema,
                "include_sample_schema": True,
            },
            "testing_criteria": list(criteria),
        }
        | extra,
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_run(api, eval_id: str, run_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = api.get(f"/v1/evals/{eval_id}/runs/{run_id}").json()
        if run["status"] not in ("queued", "in_progress"):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish: {run}")


def items_of(api, eval_id: str, run_id: str, **query) -> list[dict]:
    url = f"/v1/evals/{eval_id}/runs/{run_id}/output_items"
    return api.get(url, params={"limit": 100} | query).json()["data"]


ROWS = [
    {
        "item": {"question": "Capital of France?", "answer": "Paris"},
        "sample": {"output_text": "Paris"},
    },
    {
        "item": {"question": "Capital of Italy?", "answer": "Rome"},
        "sample": {"output_text": "Rome"},
    },
    {
        "item": {"question": "Capital of Spain?", "answer": "Madrid"},
        "sample": {"output_text": "Lisbon"},
    },
    {"item": {"question": "Capital of Peru?", "answer": "Lima"}, "sample": {"choices": []}},
]


def test_an_eval_is_stored_listed_updated_and_deleted(api):
    created = new_eval(api, metadata={"team": "a"})
    assert created["object"] == "eval" and created["id"].startswith("eval_")
    # as given, each with OpenAI's id "<name>-<uuid>" (what results are named by)
    assert [{k: v for k, v in c.items() if k != "id"} for c in created["testing_criteria"]] == [
        EXACT,
        SIMILAR,
    ]
    assert [c["id"].split("-")[0] for c in created["testing_criteria"]] == ["exact", "similar"]
    schema = created["data_source_config"]["schema"]
    assert created["data_source_config"]["type"] == "custom"
    assert schema["properties"]["item"] == SCHEMA and "sample" in schema["properties"]
    assert api.get(f"/v1/evals/{created['id']}").json() == created
    updated = api.post(f"/v1/evals/{created['id']}", json={"name": "renamed"}).json()
    assert updated["name"] == "renamed" and updated["metadata"] == {"team": "a"}
    other = new_eval(api)
    listed = api.get("/v1/evals", params={"limit": 100}).json()
    ids = [e["id"] for e in listed["data"]]
    assert ids.index(created["id"]) < ids.index(other["id"])  # oldest first, as OpenAI's default
    newest = api.get("/v1/evals", params={"order": "desc", "limit": 1}).json()
    assert newest["data"][0]["id"] == other["id"] and newest["has_more"] is True
    after = api.get("/v1/evals", params={"order": "desc", "limit": 1, "after": other["id"]})
    assert after.json()["data"][0]["id"] == created["id"]
    deleted = api.delete(f"/v1/evals/{created['id']}").json()
    assert deleted == {"object": "eval.deleted", "deleted": True, "eval_id": created["id"]}
    assert_error(api.get(f"/v1/evals/{created['id']}"), 404, "eval_id")


def test_a_jsonl_run_grades_the_rows_own_samples(api):
    evaluation = new_eval(api)
    eid = evaluation["id"]
    created = api.post(
        f"/v1/evals/{eid}/runs",
        json={
            "name": "given",
            "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": ROWS}},
        },
    )
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "queued" and created.json()["id"].startswith("evalrun_")
    run = wait_run(api, eid, created.json()["id"])
    assert run["status"] == "completed", run
    # Paris and Rome pass both; Lisbon fails both; the fourth row has no output_text: errored.
    assert run["result_counts"] == {"total": 4, "passed": 2, "failed": 1, "errored": 1}
    exact, similar = (c["id"] for c in evaluation["testing_criteria"])
    assert run["per_testing_criteria_results"] == [
        {"testing_criteria": exact, "passed": 2, "failed": 2},
        {"testing_criteria": similar, "passed": 2, "failed": 2},
    ]
    items = items_of(api, eid, run["id"])
    assert [i["datasource_item_id"] for i in items] == [0, 1, 2, 3]
    assert [i["status"] for i in items] == ["pass", "pass", "fail", "fail"]
    assert items[2]["results"][0] == {
        "name": exact,
        "type": "string_check",
        "score": 0.0,
        "passed": False,
        "sample": None,
    }
    assert items[2]["datasource_item"] == ROWS[2]["item"]
    assert items[2]["sample"]["output"] == [{"role": "assistant", "content": "Lisbon"}]
    assert "invalid_variable_error" in items[3]["results"][0]["sample"]["error"]
    # filters and paging
    assert [i["datasource_item_id"] for i in items_of(api, eid, run["id"], status="pass")] == [0, 1]
    page = api.get(f"/v1/evals/{eid}/runs/{run['id']}/output_items", params={"limit": 2}).json()
    assert page["has_more"] and page["last_id"] == items[1]["id"]
    rest = items_of(api, eid, run["id"], after=page["last_id"])
    assert [i["id"] for i in rest] == [items[2]["id"], items[3]["id"]]
    lists = (f"/v1/evals/{eid}/runs/{run['id']}/output_items", f"/v1/evals/{eid}/runs", "/v1/evals")
    for url in lists:
        assert_error(api.get(url, params={"after": "outputitem_nope"}), 400, "after")
    one = api.get(f"/v1/evals/{eid}/runs/{run['id']}/output_items/{items[0]['id']}").json()
    assert one == items[0]
    listed = api.get(f"/v1/evals/{eid}/runs", params={"status": "completed"}).json()
    assert [r["id"] for r in listed["data"]] == [run["id"]]


def test_a_model_run_scores_what_chat_completions_answers(api, tiny):
    """Each row's prompt is the template filled with the row, answered as the chat route
    answers it: the output item holds the same text, and graders see it."""
    params = {"temperature": 0, "max_completion_tokens": 6}
    questions = ["Capital of France?", "What is 2 + 2?", "Name a colour."]

    def chat_answer(question: str) -> str:
        body = {
            "model": tiny,
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": question},
            ],
            "temperature": 0,
            "max_completion_tokens": 6,
        }
        return api.post("/v1/chat/completions", json=body).json()["choices"][0]["message"][
            "content"
        ]

    expected = [chat_answer(q) for q in questions]
    content = [
        {"item": {"question": q, "answer": expected[0] if i == 0 else "not what it says"}}
        for i, q in enumerate(questions)
    ]
    evaluation = new_eval(api, criteria=[EXACT])
    created = api.post(
        f"/v1/evals/{evaluation['id']}/runs",
        json={
            "data_source": {
                "type": "completions",
                "model": tiny,
                "input_messages": {
                    "type": "template",
                    "template": [
                        {"role": "developer", "content": "Answer briefly."},
                        {"role": "user", "content": "{{ item.question }}"},
                    ],
                },
                "sampling_params": params,
                "source": {"type": "file_content", "content": content},
            }
        },
    )
    assert created.status_code == 200, created.text
    run = wait_run(api, evaluation["id"], created.json()["id"])
    assert run["status"] == "completed" and run["model"] == tiny
    assert run["result_counts"] == {"total": 3, "passed": 1, "failed": 2, "errored": 0}
    items = items_of(api, evaluation["id"], run["id"])
    assert [i["sample"]["output"][0]["content"] for i in items] == expected
    sample = items[0]["sample"]
    assert sample["input"] == [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": questions[0]},
    ]
    assert sample["temperature"] == 0 and sample["max_completion_tokens"] == 6
    assert sample["usage"]["completion_tokens"] <= 6 and sample["usage"]["prompt_tokens"] > 0
    assert sample["finish_reason"] in ("stop", "length") and sample["error"] is None
    usage = run["per_model_usage"]
    assert usage[0]["model_name"] == tiny and usage[0]["invocation_count"] == 3
    assert usage[0]["completion_tokens"] == sum(
        i["sample"]["usage"]["completion_tokens"] for i in items
    )


def test_stored_completions_are_graded_as_logged_and_as_a_model_answers_them_anew(api, tiny):
    """OpenAI's "monitoring stored completions" flow: chat completions kept with store: true
    and metadata; an eval of type stored_completions; a run without a model grades the stored
    answers, one with a model (item_reference item.input) has it answer the stored prompts."""
    tag = f"caps-{time.time_ns()}"
    questions = ["Capital of France?", "Capital of Peru?", "Name a colour."]
    logged = []
    for i, question in enumerate(questions):
        body = {
            "model": tiny,
            "messages": [
                {"role": "developer", "content": "Answer briefly."},
                {"role": "user", "content": question},
            ],
            "temperature": 0,
            "max_completion_tokens": 5,
            "store": True,
            "metadata": {"usecase": tag, "prompt": "v1" if i < 2 else "v2"},
        }
        logged.append(api.post("/v1/chat/completions", json=body).json())
    other = {"usecase": "other"}
    api.post("/v1/chat/completions", json=body | {"metadata": other}).raise_for_status()
    same = {
        "type": "string_check",
        "name": "same as logged",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.output_text }}",
        "operation": "eq",
    }
    created = api.post(
        "/v1/evals",
        json={
            "data_source_config": {"type": "stored_completions", "metadata": {"usecase": tag}},
            "testing_criteria": [same],
        },
    )
    assert created.status_code == 200, created.text
    evaluation = created.json()
    config = evaluation["data_source_config"]
    assert config["type"] == "stored_completions" and config["metadata"] == {"usecase": tag}
    assert set(config["schema"]["properties"]) == {"item", "sample"}

    def run(data_source: dict) -> dict:
        response = api.post(f"/v1/evals/{evaluation['id']}/runs", json={"data_source": data_source})
        assert response.status_code == 200, response.text
        return wait_run(api, evaluation["id"], response.json()["id"])

    v1 = {"type": "stored_completions", "metadata": {"prompt": "v1"}}
    as_logged = run({"type": "completions", "source": v1})
    assert as_logged["status"] == "completed" and as_logged["model"] == ""
    assert as_logged["result_counts"] == {"total": 2, "passed": 2, "failed": 0, "errored": 0}
    items = items_of(api, evaluation["id"], as_logged["id"])
    for item, completion, question in zip(items, logged, questions, strict=False):
        answer = completion["choices"][0]["message"]["content"]
        assert item["datasource_item"]["id"] == completion["id"]
        assert item["datasource_item"]["input"][1] == {"role": "user", "content": question}
        assert item["sample"]["output"][0]["content"] == answer
        assert item["sample"]["usage"] == completion["usage"] | {"cached_tokens": 0}
        assert item["sample"]["finish_reason"] == completion["choices"][0]["finish_reason"]

    anew = run(
        {
            "type": "completions",
            "model": tiny,
            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 5},
            "source": {"type": "stored_completions"},  # the eval's filter: all three
        }
    )
    assert anew["model"] == tiny
    assert anew["result_counts"] == {"total": 3, "passed": 3, "failed": 0, "errored": 0}
    for item, completion in zip(items_of(api, evaluation["id"], anew["id"]), logged, strict=True):
        assert item["sample"]["usage"]["prompt_tokens"] == completion["usage"]["prompt_tokens"]

    # a logged request with tools is answered anew with them: the same prompt
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    with_tools = api.post(
        "/v1/chat/completions",
        json=body | {"tools": [tool], "metadata": {"usecase": f"{tag}-tools"}},
    ).json()
    tools_run = run(
        {
            "type": "completions",
            "model": tiny,
            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 5},
            "source": {"type": "stored_completions", "metadata": {"usecase": f"{tag}-tools"}},
        }
    )
    (item,) = items_of(api, evaluation["id"], tools_run["id"])
    assert item["sample"]["usage"]["prompt_tokens"] == with_tools["usage"]["prompt_tokens"]
    newest = run({"type": "completions", "source": {"type": "stored_completions", "limit": 1}})
    assert newest["result_counts"]["total"] == 1
    (kept,) = items_of(api, evaluation["id"], newest["id"])
    assert kept["datasource_item"]["id"] == logged[-1]["id"]  # a limit keeps the newest
    later = {"type": "stored_completions", "created_after": logged[-1]["created"]}
    assert_error(
        api.post(
            f"/v1/evals/{evaluation['id']}/runs",
            json={"data_source": {"type": "completions", "source": later}},
        ),
        400,
        "data_source.source",
    )

    # The rows are fixed when the run is created: one deleted before the run grades it is an
    # errored row, not a shifted run. A slow run first holds the (one-at-a-time) runner.
    slow = new_eval(api, criteria=[SLOW])
    api.post(
        f"/v1/evals/{slow['id']}/runs",
        json={
            "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": ROWS}}
        },
    ).raise_for_status()
    queued = api.post(
        f"/v1/evals/{evaluation['id']}/runs",
        json={"data_source": {"type": "completions", "source": v1}},
    ).json()
    assert api.delete(f"/v1/chat/completions/{logged[0]['id']}").status_code == 200
    finished = wait_run(api, evaluation["id"], queued["id"])
    assert finished["result_counts"] == {"total": 2, "passed": 1, "failed": 0, "errored": 1}
    first = items_of(api, evaluation["id"], queued["id"])[0]
    assert first["sample"]["error"]["code"] == "not_found"
    assert logged[0]["id"] in first["sample"]["error"]["message"]


def test_stored_responses_are_graded_as_logged_and_answered_anew(api, tiny):
    """The Responses API's traffic (stored by default): a responses run with source.type
    responses grades the stored answers, filtered as OpenAI's source filters them; with a
    model, that model answers the same prompt (instructions included) anew."""
    tag = f"resp-{time.time_ns()}"
    logged = []
    for i, question in enumerate(["Capital of France?", "Capital of Peru?"]):
        body = {
            "model": tiny,
            "instructions": "Answer briefly." if i == 0 else "Answer in one word.",
            "input": question,
            "temperature": 0,
            "max_output_tokens": 5,
            "metadata": {"usecase": tag},
            "user": f"user-{i}",
            "safety_identifier": f"sid-{i}",
        }
        response = api.post("/v1/responses", json=body)
        assert response.status_code == 200, response.text
        logged.append(response.json())
    created = api.post(
        "/v1/evals",
        json={
            "data_source_config": {"type": "logs", "metadata": {"usecase": tag}},
            "testing_criteria": [
                {
                    "type": "string_check",
                    "name": "same as logged",
                    "input": "{{ sample.output_text }}",
                    "reference": "{{ item.output_text }}",
                    "operation": "eq",
                }
            ],
        },
    )
    assert created.status_code == 200, created.text
    evaluation = created.json()

    def run(data_source: dict) -> dict:
        response = api.post(f"/v1/evals/{evaluation['id']}/runs", json={"data_source": data_source})
        assert response.status_code == 200, response.text
        return wait_run(api, evaluation["id"], response.json()["id"])

    as_logged = run({"type": "responses", "source": {"type": "responses"}})
    assert as_logged["result_counts"] == {"total": 2, "passed": 2, "failed": 0, "errored": 0}
    items = items_of(api, evaluation["id"], as_logged["id"])
    for item, response in zip(items, logged, strict=True):
        text = "".join(p["text"] for o in response["output"] for p in o.get("content", []))
        assert item["datasource_item"]["id"] == response["id"]
        assert item["sample"]["output"][0]["content"] == text
        assert item["datasource_item"]["input"][0] == {
            "role": "system",
            "content": response["instructions"],
        }
    for source in (
        {"instructions_search": "one word"},
        {"users": ["user-1"]},  # the user field, though a safety_identifier is set too
        {"users": ["sid-1", "nobody"]},
    ):
        searched = run({"type": "responses", "source": {"type": "responses"} | source})
        (only,) = items_of(api, evaluation["id"], searched["id"])
        assert only["datasource_item"]["id"] == logged[1]["id"], source
    settings = run({"type": "responses", "source": {"type": "responses", "temperature": 0}})
    assert settings["result_counts"]["total"] == 2

    anew = run(
        {
            "type": "responses",
            "model": tiny,
            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 5},
            "source": {"type": "responses"},
        }
    )
    assert anew["result_counts"]["total"] == 2
    for item, response in zip(items_of(api, evaluation["id"], anew["id"]), logged, strict=True):
        assert item["sample"]["usage"]["prompt_tokens"] == response["usage"]["input_tokens"]
    for source, param in (
        ({"type": "responses", "users": "me"}, "data_source.source.users"),
        ({"type": "responses", "reasoning_effort": "high"}, "data_source.source.reasoning_effort"),
        ({"type": "responses", "temperature": "hot"}, "data_source.source.temperature"),
        ({"type": "responses", "temperature": 0.5}, "data_source.source"),
        ({"type": ["responses"]}, "data_source.source.type"),
        ({"type": "responses", "model": "other"}, "data_source.source"),
    ):
        response = api.post(
            f"/v1/evals/{evaluation['id']}/runs",
            json={"data_source": {"type": "responses", "source": source}},
        )
        assert_error(response, 400, param)
    wrong_kind = {"type": "completions", "source": {"type": "responses"}}
    response = api.post(f"/v1/evals/{evaluation['id']}/runs", json={"data_source": wrong_kind})
    assert_error(response, 400, "data_source.source.type")


def test_a_jsonl_row_with_an_input_field_is_graded_as_given(api):
    """`input` is a common field name of rows; only stored completions' rows are read as
    stored completions."""
    evaluation = new_eval(
        api,
        criteria=[EXACT | {"reference": "{{ item.answer }}"}],
        schema={
            "type": "object",
            "properties": {"input": {"type": "string"}, "answer": {"type": "string"}},
        },
    )
    rows = [{"item": {"input": "q", "answer": "a"}, "sample": {"output_text": "a"}}]
    created = api.post(
        f"/v1/evals/{evaluation['id']}/runs",
        json={
            "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}
        },
    )
    run = wait_run(api, evaluation["id"], created.json()["id"])
    assert run["status"] == "completed", run["error"]
    assert run["result_counts"] == {"total": 1, "passed": 1, "failed": 0, "errored": 0}


@pytest.mark.parametrize(
    ("source", "kind", "param"),
    [
        (
            {"type": "stored_completions", "metadata": {"usecase": "nothing"}},
            "completions",
            "data_source.source",
        ),
        ({"type": "stored_completions"}, "responses", "data_source.source.type"),
        ({"type": "stored_completions", "limit": 0}, "completions", "data_source.source.limit"),
        ({"type": "stored_completions", "since": 1}, "completions", "data_source.source.since"),
        (
            {"type": "stored_completions", "created_after": "x"},
            "completions",
            "data_source.source.created_after",
        ),
    ],
)
def test_a_bad_stored_completions_source_is_a_400_naming_the_field(api, source, kind, param):
    evaluation = new_eval(api, criteria=[EXACT])
    response = api.post(
        f"/v1/evals/{evaluation['id']}/runs",
        json={"data_source": {"type": kind, "source": source}},
    )
    assert_error(response, 400, param)


def test_a_run_reads_rows_from_an_uploaded_evals_file(api, tiny):
    evaluation = new_eval(api, criteria=[EXACT])
    upload = api.post(
        "/v1/files",
        files={"file": ("rows.jsonl", jsonl(ROWS[:3]))},
        data={"purpose": "evals"},
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["purpose"] == "evals"
    source = {"type": "file_id", "id": upload.json()["id"]}
    created = api.post(
        f"/v1/evals/{evaluation['id']}/runs",
        json={"data_source": {"type": "jsonl", "source": source}},
    )
    run = wait_run(api, evaluation["id"], created.json()["id"])
    assert run["result_counts"] == {"total": 3, "passed": 2, "failed": 1, "errored": 0}
    # An evals file is not training data, and a bad evals file names its line.
    job = api.post(
        "/v1/fine_tuning/jobs", json={"model": tiny, "training_file": upload.json()["id"]}
    )
    assert "purpose 'evals'" in assert_error(job, 400, "training_file")["message"]
    bad = api.post(
        "/v1/files",
        files={"file": ("rows.jsonl", jsonl([ROWS[0], {"question": "no item"}]))},
        data={"purpose": "evals"},
    )
    assert "rows.jsonl line 2" in assert_error(bad, 400, "file")["message"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"data_source_config": {"type": "hosted"}}, "data_source_config.type"),
        (
            {"data_source_config": {"type": "logs", "metadata": {"k": 1}}},
            "data_source_config.metadata",
        ),
        (
            {"data_source_config": {"type": "stored_completions", "item_schema": SCHEMA}},
            "data_source_config.item_schema",
        ),
        ({"data_source_config": {"type": "custom"}}, "data_source_config.item_schema"),
        ({"testing_criteria": []}, "testing_criteria"),
        ({"testing_criteria": [{"type": "multi", "name": "m"}]}, "testing_criteria[0].type"),
        (
            {"testing_criteria": [SIMILAR | {"pass_threshold": None}]},
            "testing_criteria[0].pass_threshold",
        ),
        (
            {"testing_criteria": [EXACT | {"reference": "{{ item.capital }}"}]},
            "testing_criteria[0].reference",
        ),
        ({"testing_criteria": [EXACT | {"operation": "regex"}]}, "testing_criteria[0].operation"),
        (
            {"testing_criteria": [SIMILAR | {"evaluation_metric": "cosine"}]},
            "testing_criteria[0].evaluation_metric",
        ),
        (
            {
                "testing_criteria": [
                    {
                        "type": "label_model",
                        "name": "l",
                        "model": "o3-mini",
                        "input": [],
                        "labels": ["a"],
                        "passing_labels": ["a"],
                    }
                ]
            },
            "testing_criteria[0].model",
        ),
    ],
)
def test_a_bad_eval_is_a_400_naming_the_field(api, change, param):
    body = {
        "data_source_config": {"type": "custom", "item_schema": SCHEMA},
        "testing_criteria": [EXACT],
    } | change
    assert_error(api.post("/v1/evals", json=body), 400, param)


def tone_judge(model: str) -> dict:
    return {
        "type": "label_model",
        "name": "tone",
        "model": model,
        "input": [{"role": "user", "content": "Is this polite? {{ sample.output_text }}"}],
        "labels": ["polite", "rude"],
        "passing_labels": ["polite"],
    }


def test_a_label_model_criterion_needs_passing_labels_among_its_labels(tiny):
    judge = tone_judge(tiny) | {"passing_labels": ["kind"]}
    with pytest.raises(Exception, match="passing_labels"):
        validate_criteria([judge], SCHEMA)
    judge["passing_labels"] = ["polite"]
    assert validate_criteria([judge], SCHEMA) == [judge]
    answers = iter(["Polite.", "I would say it is rude, not polite", "no idea"])
    results = grade(
        [judge], {"output_text": "Thanks!"}, {}, judge=lambda model, messages: next(answers)
    )
    assert results[0].passed and results[0].score == 1.0
    results = grade(
        [judge], {"output_text": "Go away"}, {}, judge=lambda model, messages: next(answers)
    )
    assert not results[0].passed and results[0].to_json()["sample"]["label"] == "rude"
    results = grade([judge], {"output_text": "?"}, {}, judge=lambda model, messages: next(answers))
    assert results[0].error and results[0].error.startswith("model_grader_parse_error")


def test_a_label_model_criterion_runs_its_local_judge(api, tiny):
    """The judge is a local model (the tiny one: its answers are noise). Whatever it says, the
    row gets a result with the judge's answer, and a label or a parse error, never a crash."""
    evaluation = new_eval(api, criteria=[tone_judge(tiny)])
    source = {"type": "file_content", "content": ROWS[:2]}
    created = api.post(
        f"/v1/evals/{evaluation['id']}/runs",
        json={"data_source": {"type": "jsonl", "source": source}},
    )
    run = wait_run(api, evaluation["id"], created.json()["id"])
    assert run["status"] == "completed" and run["result_counts"]["total"] == 2
    for item in items_of(api, evaluation["id"], run["id"]):
        (result,) = item["results"]
        assert result["type"] == "label_model" and isinstance(result["sample"]["judge_output"], str)
        label = result["sample"]["label"]
        assert label in ("polite", "rude") or result["sample"]["error"].startswith(
            "model_grader_parse_error"
        )
        assert result["passed"] == (label == "polite")


def test_pick_label():
    assert pick_label(" 'Correct'. ", ["correct", "incorrect"]) == "correct"
    assert pick_label("This is incorrect.", ["correct", "incorrect"]) == "incorrect"
    assert pick_label("correct, not incorrect", ["incorrect", "correct"]) == "correct"
    assert pick_label("maybe", ["correct", "incorrect"]) is None


def test_a_bad_run_is_a_400_naming_the_field(api, tiny):
    evaluation = new_eval(api, criteria=[EXACT])
    url = f"/v1/evals/{evaluation['id']}/runs"
    content = [{"item": {"question": "q", "answer": "a"}}]
    template = {
        "type": "template",
        "template": [{"role": "user", "content": "{{ item.question }}"}],
    }
    model_run = {
        "type": "completions",
        "model": tiny,
        "input_messages": template,
        "source": {"type": "file_content", "content": content},
    }
    cases = [
        ({"type": "jsonl", "source": {"type": "stored_completions"}}, "data_source.source.type"),
        (
            {
                "type": "jsonl",
                "source": {"type": "file_content", "content": [{"item": {"question": "q"}}]},
            },
            "data_source.source",
        ),
        (
            {"type": "jsonl", "source": {"type": "file_id", "id": "file-nope"}},
            "data_source.source.id",
        ),
        ({"type": "jsonl", "model": tiny, "source": model_run["source"]}, "data_source.model"),
        ({"type": "batch"}, "data_source.type"),
        (model_run | {"model": None}, "data_source.model"),
        (model_run | {"model": "gpt-4.1"}, "data_source.model"),
        (model_run | {"input_messages": None}, "data_source.input_messages"),
        (
            model_run
            | {
                "input_messages": {
                    "type": "template",
                    "template": [{"role": "user", "content": "{{ item.topic }}"}],
                }
            },
            "data_source.input_messages.template",
        ),
        (
            model_run
            | {
                "input_messages": {
                    "type": "template",
                    "template": [{"role": "user", "content": "{{ sample.output_text }}"}],
                }
            },
            "data_source.input_messages.template[0].content",
        ),
        (
            model_run | {"sampling_params": {"temperature": 3}},
            "data_source.sampling_params.temperature",
        ),
        (
            model_run | {"sampling_params": {"response_format": {"type": "xml"}}},
            "data_source.sampling_params.response_format",
        ),
        (
            model_run
            | {"sampling_params": {"text": {"format": {"type": "json_schema", "name": "x"}}}},
            "data_source.sampling_params.text.format",
        ),
        (
            model_run | {"sampling_params": {"text": {"format": "json"}}},
            "data_source.sampling_params.text.format",
        ),
        (
            model_run
            | {"input_messages": {"type": "item_reference", "item_reference": "item.history"}},
            "data_source.input_messages.item_reference",
        ),
    ]
    for data_source, param in cases:
        status = (
            404
            if param in ("data_source.source.id", "data_source.model")
            and ("file-nope" in json.dumps(data_source) or data_source.get("model") == "gpt-4.1")
            else 400
        )
        assert_error(api.post(url, json={"data_source": data_source}), status, param)
    missing = api.post(
        url,
        json={
            "data_source": model_run
            | {
                "source": {
                    "type": "file_content",
                    "content": content + [{"item": {"question": 3, "answer": "a"}}],
                }
            }
        },
    )
    assert "content[1]" in assert_error(missing, 400, "data_source.source")["message"]
    assert_error(
        api.post("/v1/evals/eval_nope/runs", json={"data_source": model_run}), 404, "eval_id"
    )


def test_a_cancelled_run_stays_cancelled(api):
    evaluation = new_eval(api, criteria=[SLOW])
    rows = [{"item": {"question": str(i), "answer": "a"}} for i in range(30)]
    created = api.post(
        f"/v1/evals/{evaluation['id']}/runs",
        json={
            "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}
        },
    ).json()
    url = f"/v1/evals/{evaluation['id']}/runs/{created['id']}"
    cancelled = api.post(url)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "canceled"
    time.sleep(2)  # rows in flight when it was cancelled are not stored after it
    run = api.get(url).json()
    assert run["status"] == "canceled"
    assert run["result_counts"]["total"] == len(items_of(api, evaluation["id"], created["id"])) < 30
    assert_error(api.post(url), 400, "run_id")
    deleted = api.delete(url).json()
    assert deleted == {"object": "eval.run.deleted", "deleted": True, "run_id": created["id"]}
    assert_error(api.get(url), 404, "run_id")


def test_a_run_the_server_was_running_when_it_stopped_resumes(tmp_path, default_model_dir):
    """Stop the server mid-run (its lifespan ends), start a new one on the same home: the run
    goes on and grades every row exactly once."""
    home = new_home(tmp_path, default_model_dir)
    rows = [{"item": {"question": str(i), "answer": "a"}} for i in range(24)]
    with pytest.MonkeyPatch.context() as mp:
        with open_api(home, mp) as first:
            evaluation = new_eval(first, criteria=[SLOW])
            run_id = first.post(
                f"/v1/evals/{evaluation['id']}/runs",
                json={
                    "data_source": {
                        "type": "jsonl",
                        "source": {"type": "file_content", "content": rows},
                    }
                },
            ).json()["id"]
            url = f"/v1/evals/{evaluation['id']}/runs/{run_id}"
            deadline = time.time() + 60
            while first.get(url).json()["result_counts"]["total"] < 8:
                assert time.time() < deadline
                time.sleep(0.1)
        with open_api(home, mp) as second:
            stopped = second.get(url).json()
            assert 8 <= stopped["result_counts"]["total"] < 24
            run = wait_run(second, evaluation["id"], run_id)
            assert run["status"] == "completed"
            assert run["result_counts"] == {"total": 24, "passed": 24, "failed": 0, "errored": 0}
            items = items_of(second, evaluation["id"], run_id)
            items += items_of(second, evaluation["id"], run_id, after=items[-1]["id"])
            assert sorted(i["datasource_item_id"] for i in items) == list(range(24))


@pytest.mark.integration
def test_kill_9_of_the_server_mid_run_then_restart_grades_every_row_once(tmp_path):
    """kill -9, not a clean stop: the rows stored before it stay, the rest are graded after
    the restart, none twice."""
    from test_api_openai_client import Server

    home = tmp_path / "home"
    server = Server(home).start()
    rows = [{"item": {"question": str(i), "answer": "a"}} for i in range(20)]
    try:
        evaluation = httpx.post(
            f"{server.url}/v1/evals",
            json={
                "data_source_config": {"type": "custom", "item_schema": SCHEMA},
                "testing_criteria": [SLOW],
            },
        ).json()
        source = {"type": "file_content", "content": rows}
        run = httpx.post(
            f"{server.url}/v1/evals/{evaluation['id']}/runs",
            json={"data_source": {"type": "jsonl", "source": source}},
        ).json()
        url = f"/v1/evals/{evaluation['id']}/runs/{run['id']}"
        deadline = time.time() + 60
        while httpx.get(server.url + url).json()["result_counts"]["total"] < 4:
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        server.kill()
    server = Server(home).start()
    try:
        deadline = time.time() + 90
        while (done := httpx.get(server.url + url).json())["status"] != "completed":
            assert done["status"] == "in_progress" and time.time() < deadline, done
            time.sleep(0.2)
        assert done["result_counts"] == {"total": 20, "passed": 20, "failed": 0, "errored": 0}
        items = httpx.get(server.url + url + "/output_items", params={"limit": 100}).json()
        assert [i["datasource_item_id"] for i in items["data"]] == list(range(20))
    finally:
        server.stop()


def test_a_responses_run_with_an_item_reference_answers_as_chat_does(api, tiny):
    """A `responses` run prompted by `item_reference` (a list of messages in each row), with a
    Responses-shaped function tool: the prompt is the row's messages with the tool, as a chat
    request with the same tool gets it."""
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    messages = [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    chat = api.post(
        "/v1/chat/completions",
        json={
            "model": tiny,
            "messages": messages,
            "temperature": 0,
            "max_completion_tokens": 5,
            "tools": [
                {
                    "type": "function",
                    "function": {k: tool[k] for k in ("name", "description", "parameters")},
                }
            ],
        },
    ).json()
    schema = {"type": "object", "properties": {"messages": {"type": "array"}}}
    evaluation = new_eval(
        api,
        criteria=[EXACT | {"reference": "never this"}],
        schema=schema,
    )
    created = api.post(
        f"/v1/evals/{evaluation['id']}/runs",
        json={
            "data_source": {
                "type": "responses",
                "model": tiny,
                "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
                "sampling_params": {"temperature": 0, "max_completion_tokens": 5, "tools": [tool]},
                "source": {"type": "file_content", "content": [{"item": {"messages": messages}}]},
            }
        },
    )
    assert created.status_code == 200, created.text
    run = wait_run(api, evaluation["id"], created.json()["id"])
    (item,) = items_of(api, evaluation["id"], run["id"])
    assert item["sample"]["input"] == messages
    assert item["sample"]["usage"]["prompt_tokens"] == chat["usage"]["prompt_tokens"]
    assert item["sample"]["output"][0]["content"] == chat["choices"][0]["message"]["content"]
    assert run["result_counts"] == {"total": 1, "passed": 0, "failed": 1, "errored": 0}


def test_a_run_with_a_json_schema_answers_in_it_and_graders_read_the_json(api, tiny):
    """Structured outputs in eval runs: completions' `response_format` and the Responses API's
    `text.format` make every answer JSON that follows the schema, which graders read as
    `{{ sample.output_json.… }}`."""
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["Paris", "Rome", "Madrid"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    graded = EXACT | {"input": "{{ sample.output_json.answer }}"}
    evaluation = new_eval(api, criteria=[graded])
    rows = [{"item": row["item"]} for row in ROWS[:3]]
    template = [{"role": "user", "content": "{{ item.question }}"}]
    formats = {
        "completions": {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "capital", "schema": schema},
            }
        },
        "responses": {
            "text": {"format": {"type": "json_schema", "name": "capital", "schema": schema}}
        },
    }
    for kind, sampling in formats.items():
        created = api.post(
            f"/v1/evals/{evaluation['id']}/runs",
            json={
                "data_source": {
                    "type": kind,
                    "model": tiny,
                    "input_messages": {"type": "template", "template": template},
                    "sampling_params": {"temperature": 0, "max_completion_tokens": 20} | sampling,
                    "source": {"type": "file_content", "content": rows},
                }
            },
        )
        assert created.status_code == 200, created.text
        run = wait_run(api, evaluation["id"], created.json()["id"])
        assert run["result_counts"]["errored"] == 0, run
        for item in items_of(api, evaluation["id"], run["id"]):
            answer = json.loads(item["sample"]["output"][0]["content"])
            assert answer["answer"] in ("Paris", "Rome", "Madrid")
            passed = answer["answer"] == item["datasource_item"]["answer"]
            assert item["results"][0]["passed"] is passed


def test_what_openais_own_examples_send_is_accepted(api, tiny):
    """Spellings from OpenAI's examples and cookbooks: `max_completions_tokens`, a
    `reasoning_effort`, score_model messages as content parts, graders reading into a tool
    call's JSON `arguments`, and an `item_reference` to a conversation with tool turns and
    literal braces (data, not a template)."""
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": tiny,
        "input": [
            {"role": "system", "content": {"type": "input_text", "text": "Score 0 to 1."}},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "{{ sample.output_text }}"}],
            },
        ],
        "pass_threshold": 0.5,
    }
    assert validate_criteria([judge], SCHEMA) == [judge]
    city = {
        "type": "string_check",
        "name": "city",
        "input": "{{ sample.output_tools[0].function.arguments.city }}",
        "reference": "Paris",
        "operation": "eq",
    }
    sample = {
        "output_text": "",
        "output_tools": [
            {"type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}}
        ],
    }
    (result,) = grade([city], sample, {})
    assert result.passed and result.error is None
    conversation = [
        {"role": "user", "content": "Weather in {{ Paris"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    ]
    evaluation = new_eval(api, criteria=[EXACT], schema={"type": "object"})
    created = api.post(
        f"/v1/evals/{evaluation['id']}/runs",
        json={
            "data_source": {
                "type": "completions",
                "model": tiny,
                "input_messages": {"type": "item_reference", "item_reference": "item.conversation"},
                "sampling_params": {
                    "temperature": 0,
                    "max_completions_tokens": 3,
                    "reasoning_effort": "medium",
                },
                "source": {
                    "type": "file_content",
                    "content": [{"item": {"conversation": conversation, "answer": "x"}}],
                },
            }
        },
    )
    assert created.status_code == 200, created.text
    run = wait_run(api, evaluation["id"], created.json()["id"])
    (item,) = items_of(api, evaluation["id"], run["id"])
    assert item["sample"]["max_completion_tokens"] == 3 and item["sample"]["error"] is None
    assert item["sample"]["input"][0]["content"] == "Weather in {{ Paris"
    assert item["sample"]["usage"]["completion_tokens"] <= 3


def test_a_cancel_keeps_the_counts_of_the_rows_stored_before_it(tmp_path):
    """The cancel changes the status on the stored run, in the transaction that reads it: the
    counts written with an output item just before are kept (a cancel that wrote back a run it
    had read earlier lost them)."""
    from tuneforge.jobs.store import Store

    store = Store(tmp_path / "db.sqlite")
    store.add_eval({"id": "eval_1", "created_at": 1, "name": "e"})
    run = {"id": "evalrun_1", "eval_id": "eval_1", "created_at": 1, "status": "in_progress"}
    store.add_eval_run(run | {"result_counts": {"total": 0}})
    item = {"id": "outputitem_1", "run_id": "evalrun_1", "datasource_item_id": 0, "status": "pass"}
    assert store.add_output_item(item, run | {"result_counts": {"total": 1}})
    cancelled = store.set_eval_run_status("evalrun_1", "canceled", only_from=("in_progress",))
    assert cancelled["status"] == "canceled" and cancelled["result_counts"] == {"total": 1}
    assert store.get_eval_run("evalrun_1") == cancelled
    item2 = item | {"id": "outputitem_2", "datasource_item_id": 1}
    assert not store.add_output_item(item2, run | {"result_counts": {"total": 2}})
    assert store.output_item_rows("evalrun_1") == {0}
    assert store.set_eval_run_status("evalrun_1", "completed", only_from=("in_progress",)) is None
