"""OpenAI's Batch API (/v1/batches) in-process: a batch answers every line as the live endpoint
answers the same request, writes the output and error files in the input's order, fails with
the bad lines named, cancels keeping what it answered, and resumes after a restart answering
each line once. Answers come from the tiny random model (noise): the tests compare them with
what the live endpoint answers to the same body, never with fixed text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import good_examples, new_home, open_api, serve_model

from tuneforge.api import batches

TERMINAL = ("completed", "failed", "cancelled", "expired")


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def assert_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.fixture(scope="module")
def home(tmp_path_factory, default_model_dir) -> Path:
    return new_home(tmp_path_factory.mktemp("batches"), default_model_dir)


@pytest.fixture(scope="module")
def api(home):
    with pytest.MonkeyPatch.context() as mp, open_api(home, mp) as client:
        yield client


@pytest.fixture(scope="module")
def tiny(api, tiny_model_dir) -> str:
    return serve_model(api, tiny_model_dir)


def chat_line(custom_id: str, model: str, question: str, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 6,
        }
        | body,
    }


def upload(api: TestClient, rows: list, name: str = "batch.jsonl") -> str:
    response = api.post("/v1/files", files={"file": (name, jsonl(rows))}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def create(api: TestClient, file_id: str, endpoint: str = "/v1/chat/completions", **extra):
    return api.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"} | extra,
    )


def wait(api: TestClient, batch_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        batch = api.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in TERMINAL:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


def lines_of(api: TestClient, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    meta = api.get(f"/v1/files/{file_id}").json()
    assert meta["purpose"] == "batch_output", meta
    text = api.get(f"/v1/files/{file_id}/content").text
    return [json.loads(line) for line in text.splitlines()]


def test_a_batch_answers_every_line_as_the_live_endpoint_does(api, tiny):
    questions = ["Capital of France?", "Two plus two?", "Name a colour.", "Say hi.", "Why?"]
    rows = [chat_line(f"q{i}", tiny, q) for i, q in enumerate(questions)]
    rows.insert(2, chat_line("too-hot", tiny, "Hello", temperature=5))  # the route's 400
    rows.insert(4, chat_line("streamed", tiny, "Hello", stream=True))  # not in a batch
    created = create(api, upload(api, rows), metadata={"purpose": "nightly"})
    assert created.status_code == 200, created.text
    batch = created.json()
    assert batch["object"] == "batch" and batch["status"] == "in_progress"
    assert batch["model"] == tiny and batch["metadata"] == {"purpose": "nightly"}
    assert batch["request_counts"] == {"total": 7, "completed": 0, "failed": 0}

    done = wait(api, batch["id"])
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 7, "completed": 5, "failed": 2}
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert done[stamp] >= done["created_at"], stamp
    answered = lines_of(api, done["output_file_id"])
    assert [a["custom_id"] for a in answered] == ["q0", "q1", "q2", "q3", "q4"]
    prompt_tokens = completion_tokens = 0
    for line, row in zip(
        answered, [r for r in rows if r["custom_id"].startswith("q")], strict=True
    ):
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        live = api.post("/v1/chat/completions", json=row["body"]).json()
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == tiny
        assert body["choices"][0]["message"] == live["choices"][0]["message"]
        assert body["usage"] == live["usage"]
        prompt_tokens += body["usage"]["prompt_tokens"]
        completion_tokens += body["usage"]["completion_tokens"]
    assert done["usage"]["input_tokens"] == prompt_tokens
    assert done["usage"]["output_tokens"] == completion_tokens
    assert done["usage"]["total_tokens"] == prompt_tokens + completion_tokens

    failed = {line["custom_id"]: line for line in lines_of(api, done["error_file_id"])}
    assert list(failed) == ["too-hot", "streamed"]
    live = api.post("/v1/chat/completions", json=rows[2]["body"])
    assert failed["too-hot"]["response"]["status_code"] == live.status_code == 400
    assert failed["too-hot"]["response"]["body"] == live.json()
    assert failed["streamed"]["response"]["body"]["error"]["param"] == "stream"

    listed = api.get("/v1/batches", params={"limit": 100}).json()
    assert listed["object"] == "list" and batch["id"] in [b["id"] for b in listed["data"]]


def test_a_responses_batch_answers_as_the_responses_api_does(api, tiny):
    body = {"model": tiny, "input": "Capital of France?", "temperature": 0, "max_output_tokens": 6}
    rows = [{"custom_id": "r1", "method": "POST", "url": "/v1/responses", "body": body}]
    batch = create(api, upload(api, rows), endpoint="/v1/responses").json()
    done = wait(api, batch["id"])
    assert done["status"] == "completed" and done["error_file_id"] is None, done
    (line,) = lines_of(api, done["output_file_id"])
    answer = line["response"]["body"]
    live = api.post("/v1/responses", json=body).json()
    assert (
        answer["object"] == "response"
        and answer["output"][0]["content"][0]["text"] == (live["output"][0]["content"][0]["text"])
    )
    assert done["usage"]["input_tokens"] == answer["usage"]["input_tokens"] > 0


def test_the_list_pages_newest_first(api, tiny):
    ids = [create(api, upload(api, [chat_line("a", tiny, "Hi")])).json()["id"] for _ in range(3)]
    first = api.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = api.get("/v1/batches", params={"limit": 2, "after": first["last_id"]}).json()
    assert rest["data"][0]["id"] == ids[0]
    assert_error(api.get("/v1/batches", params={"after": "batch_nope"}), 400, "after")
    for batch_id in ids:
        wait(api, batch_id)


@pytest.mark.parametrize(
    ("line", "code", "param"),
    [
        ("{not json", "invalid_json_line", None),
        ({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions"}, None, "body"),
        ({"custom_id": "", "method": "POST", "url": "/u", "body": {"model": "m"}}, None, None),
        ({"custom_id": "a", "method": "GET", "url": "/u", "body": {"model": "m"}}, None, None),
    ],
)
def test_a_malformed_batch_file_is_refused_at_upload_naming_the_line(api, line, code, param):
    good = {"custom_id": "a", "method": "POST", "url": "/u", "body": {"model": "m"}}
    response = api.post(
        "/v1/files",
        files={"file": ("mine.jsonl", jsonl([good | {"custom_id": "first"}, line]))},
        data={"purpose": "batch"},
    )
    error = assert_error(response, 400, "file")
    assert "mine.jsonl line 2:" in error["message"], error
    assert error["code"] == "invalid_file_format"


def test_upload_names_duplicate_ids_mixed_models_and_files_that_are_not_jsonl(api, tiny):
    line = {"custom_id": "same", "method": "POST", "url": "/u", "body": {"model": "m"}}
    error = assert_error(
        api.post(
            "/v1/files",
            files={"file": ("dup.jsonl", jsonl([line, line]))},
            data={"purpose": "batch"},
        ),
        400,
    )
    assert "dup.jsonl line 2: custom_id 'same' is on line 1 too" in error["message"]
    two_models = [chat_line("a", tiny, "Hi"), "", chat_line("b", "smollm2-135m-instruct", "Hi")]
    response = api.post(
        "/v1/files", files={"file": ("two.jsonl", jsonl(two_models))}, data={"purpose": "batch"}
    )
    error = assert_error(response, 400, "file")
    assert (
        "two.jsonl line 3: model 'smollm2-135m-instruct' differs from line 1's"
        in (error["message"])
    )
    csv = api.post(
        "/v1/files", files={"file": ("rows.csv", b"a,b\n1,2\n")}, data={"purpose": "batch"}
    )
    assert_error(csv, 400, "file")
    empty = api.post("/v1/files", files={"file": ("e.jsonl", b"\n")}, data={"purpose": "batch"})
    assert "holds no requests" in assert_error(empty, 400, "file")["message"]


def test_a_batch_of_requests_it_cannot_send_fails_naming_the_line(api, tiny):
    other_url = [chat_line("a", tiny, "Hi") | {"url": "/v1/responses"}]
    failed = create(api, upload(api, other_url)).json()
    assert failed["status"] == "failed" and failed["failed_at"] == failed["created_at"]
    (problem,) = failed["errors"]["data"]
    assert problem["code"] == "invalid_url" and problem["line"] == 1 and problem["param"] == "url"
    assert "endpoint='/v1/responses'" in problem["message"]

    unknown = create(api, upload(api, [chat_line("a", "no-such-model", "Hi")])).json()
    assert unknown["status"] == "failed"
    (problem,) = unknown["errors"]["data"]
    assert problem["code"] == "model_not_found" and problem["line"] == 1
    assert problem["message"].startswith("batch.jsonl line 1: The model `no-such-model`")
    assert unknown["request_counts"]["total"] == 1 and unknown["output_file_id"] is None


def test_a_bad_create_is_a_400_naming_the_field(api, tiny):
    file_id = upload(api, [chat_line("a", tiny, "Hi")])
    assert_error(create(api, file_id, endpoint="/v1/moderations"), 400, "endpoint")
    assert_error(create(api, file_id, completion_window="1h"), 400, "completion_window")
    assert_error(create(api, "file-nope"), 404, "input_file_id")
    training = api.post(
        "/v1/files",
        files={"file": ("train.jsonl", jsonl(good_examples(12)))},
        data={"purpose": "fine-tune"},
    ).json()["id"]
    assert "purpose 'batch'" in assert_error(create(api, training), 400, "input_file_id")["message"]
    assert_error(create(api, file_id, colour="blue"), 400, "colour")
    assert_error(api.get("/v1/batches/batch_nope"), 404, "batch_id")


def test_a_cancel_keeps_the_answered_lines_and_accounts_for_every_request(api, tiny, monkeypatch):
    monkeypatch.setattr(batches, "REQUESTS_AT_ONCE", 1)
    rows = [chat_line(f"c{i}", tiny, f"Count to {i}", max_tokens=40) for i in range(30)]
    batch = create(api, upload(api, rows)).json()
    deadline = time.time() + 60
    while api.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] < 2:
        assert time.time() < deadline
        time.sleep(0.05)
    cancelling = api.post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelling.status_code == 200, cancelling.text
    assert cancelling.json()["status"] == "cancelling" and cancelling.json()["cancelling_at"]
    done = wait(api, batch["id"])
    assert done["status"] == "cancelled" and done["cancelled_at"], done
    answered = lines_of(api, done["output_file_id"])
    left = lines_of(api, done["error_file_id"])
    assert 2 <= len(answered) == done["request_counts"]["completed"] < 30
    assert [line["custom_id"] for line in answered + left] == [r["custom_id"] for r in rows]
    assert all(line["error"]["code"] == "batch_cancelled" for line in left)
    again = api.post(f"/v1/batches/{batch['id']}/cancel")
    assert assert_error(again, 409, "batch_id")["code"] == "invalid_batch_state"


def test_a_batch_the_server_cannot_go_on_with_fails_keeping_what_it_answered(
    api, tiny, monkeypatch
):
    """A failure of the server's own (here the database refusing the third answer, as on a
    full disk) fails the batch, but the answers stored before it are in the output file and
    every other line in the error file with the failure's code: nothing answered is lost."""
    import sqlite3

    monkeypatch.setattr(batches, "REQUESTS_AT_ONCE", 1)
    store = api.app.state.store
    original = store.add_batch_output
    calls = []

    def full_disk(*args):
        calls.append(args)
        if len(calls) == 3:
            raise sqlite3.OperationalError("database or disk is full")
        return original(*args)

    monkeypatch.setattr(store, "add_batch_output", full_disk)
    rows = [chat_line(f"f{i}", tiny, f"Question {i}") for i in range(5)]
    done = wait(api, create(api, upload(api, rows)).json()["id"])
    assert done["status"] == "failed" and done["failed_at"], done
    (problem,) = done["errors"]["data"]
    assert problem["code"] == "server_error" and "disk is full" in problem["message"]
    answered = lines_of(api, done["output_file_id"])
    left = lines_of(api, done["error_file_id"])
    assert [line["custom_id"] for line in answered] == ["f0", "f1"]
    assert [line["custom_id"] for line in left] == ["f2", "f3", "f4"]
    assert all(line["error"]["code"] == "server_error" for line in left)
    assert done["request_counts"]["completed"] == 2


def test_the_runner_goes_on_when_even_recording_a_failure_fails(api, tiny, monkeypatch):
    """The database refusing the answers and then the failed status too: that batch stays
    where it was (the next start resumes it), and the runner answers the next batch."""
    import sqlite3

    store = api.app.state.store

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as broken_db:
        broken_db.setattr(store, "add_batch_output", broken)
        broken_db.setattr(store, "set_batch_status", broken)
        stuck = create(api, upload(api, [chat_line("s0", tiny, "Hi")])).json()
        deadline = time.time() + 60
        runner = api.app.state.batches
        while runner.current is not None or not runner._queue.empty():
            assert time.time() < deadline
            time.sleep(0.05)
    assert api.get(f"/v1/batches/{stuck['id']}").json()["status"] == "in_progress"
    done = wait(api, create(api, upload(api, [chat_line("n0", tiny, "Hi")])).json()["id"])
    assert done["status"] == "completed", done


def test_a_batchs_lines_are_background_work_and_live_chat_is_not(api, tiny, monkeypatch):
    """The engine admits background rows after live ones (tests/test_engine.py); here: a
    batch's lines reach it marked so, a live request does not."""
    engine = api.app.state.engine
    seen = []
    original = engine.submit

    def recording(target, text, prompt, params, **kw):
        seen.append(params.background)
        return original(target, text, prompt, params, **kw)

    monkeypatch.setattr(engine, "submit", recording)
    done = wait(api, create(api, upload(api, [chat_line("b0", tiny, "Hi")])).json()["id"])
    assert done["status"] == "completed" and seen == [True]
    live = chat_line("x", tiny, "Hi")["body"]
    assert api.post("/v1/chat/completions", json=live).status_code == 200
    assert seen == [True, False]


def test_a_batch_the_server_was_answering_when_it_stopped_resumes(
    tmp_path, default_model_dir, tiny_model_dir, monkeypatch
):
    """Stop the server mid-batch (its lifespan ends), start a new one on the same home: the
    batch goes on and answers every line exactly once."""
    monkeypatch.setattr(batches, "REQUESTS_AT_ONCE", 2)
    home = new_home(tmp_path, default_model_dir)
    with pytest.MonkeyPatch.context() as mp:
        with open_api(home, mp) as first:
            model = serve_model(first, tiny_model_dir)
            rows = [chat_line(f"r{i}", model, f"Row {i}", max_tokens=24) for i in range(16)]
            batch_id = create(first, upload(first, rows)).json()["id"]
            deadline = time.time() + 60
            while first.get(f"/v1/batches/{batch_id}").json()["request_counts"]["completed"] < 3:
                assert time.time() < deadline
                time.sleep(0.05)
        with open_api(home, mp) as second:
            stopped = second.get(f"/v1/batches/{batch_id}").json()
            assert 3 <= stopped["request_counts"]["completed"] < 16
            done = wait(second, batch_id)
            assert done["status"] == "completed"
            assert done["request_counts"] == {"total": 16, "completed": 16, "failed": 0}
            answered = lines_of(second, done["output_file_id"])
            assert [line["custom_id"] for line in answered] == [f"r{i}" for i in range(16)]
            assert len({line["id"] for line in answered}) == 16


def test_finalizing_twice_writes_each_file_once(api, tiny):
    """A finalizing a crash interrupted runs again on the next start: same files, no copies."""
    batch = create(api, upload(api, [chat_line("a", tiny, "Hi")])).json()
    done = wait(api, batch["id"])
    runner = api.app.state.batches
    files = runner._write_files(api.app.state.store.get_batch(batch["id"]))
    assert files == {"output_file_id": done["output_file_id"], "error_file_id": None}
    outputs = api.get("/v1/files", params={"purpose": "batch_output"}).json()["data"]
    assert [f["id"] for f in outputs].count(done["output_file_id"]) == 1


def test_a_server_with_an_api_key_and_a_host_check_answers_its_own_batches(
    tmp_path, default_model_dir, tiny_model_dir
):
    """The lines reach the endpoint through the server's own guard: with --api-key and the
    Host check of a loopback server, they must carry the key and a host it accepts."""
    from tuneforge.ui import create_app as create_studio_app

    home = new_home(tmp_path, default_model_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_HOME", str(home))
        app = create_studio_app(host="127.0.0.1", api_key="sesame")
        headers = {"Authorization": "Bearer sesame"}
        with TestClient(app, base_url="http://localhost:8000", headers=headers) as api:
            model = serve_model(api, tiny_model_dir)
            done = wait(api, create(api, upload(api, [chat_line("a", model, "Hi")])).json()["id"])
            assert done["request_counts"] == {"total": 1, "completed": 1, "failed": 0}, done
            (line,) = lines_of(api, done["output_file_id"])
            assert line["response"]["body"]["object"] == "chat.completion"


def test_lines_python_parses_but_json_does_not_are_refused_at_upload(api):
    nan = '{"custom_id": "a", "method": "POST", "url": "/u", "body": {"model": "m", "t": NaN}}'
    deep = '{"custom_id": "b", "method": "POST", "url": "/u", "body": ' + "[" * 100_000
    for line, why in ((nan, "NaN is not a JSON number"), (deep, "nested too deeply")):
        response = api.post(
            "/v1/files", files={"file": ("odd.jsonl", jsonl([line]))}, data={"purpose": "batch"}
        )
        assert why in assert_error(response, 400, "file")["message"]


def test_a_line_that_cannot_be_sent_is_that_lines_error_not_the_batchs(api, tiny, monkeypatch):
    import httpx

    send = httpx.ASGITransport.handle_async_request

    async def flaky(self, request):
        if b"boom" in request.content:
            raise RuntimeError("the wire broke")
        return await send(self, request)

    monkeypatch.setattr(httpx.ASGITransport, "handle_async_request", flaky)
    rows = [chat_line("bad", tiny, "boom"), chat_line("good", tiny, "Hi")]
    done = wait(api, create(api, upload(api, rows)).json()["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    (failed,) = lines_of(api, done["error_file_id"])
    assert failed["custom_id"] == "bad" and failed["response"]["status_code"] == 500
    assert "the wire broke" in failed["response"]["body"]["error"]["message"]


def test_a_batch_left_cancelling_is_finished_at_the_start_not_behind_the_others(
    tmp_path, default_model_dir, tiny_model_dir, monkeypatch
):
    """A server stopped between a cancel and its files: at the next start the cancelled batch
    is finished at once, while an earlier batch still has lines to answer."""
    from tuneforge.jobs.store import Store

    monkeypatch.setattr(batches, "REQUESTS_AT_ONCE", 1)
    home = new_home(tmp_path, default_model_dir)
    with pytest.MonkeyPatch.context() as mp:
        with open_api(home, mp) as first:
            model = serve_model(first, tiny_model_dir)
            long = [chat_line(f"l{i}", model, f"Row {i}", max_tokens=48) for i in range(40)]
            ahead = create(first, upload(first, long)).json()["id"]
            behind = create(first, upload(first, [chat_line("s", model, "Hi")])).json()["id"]
        Store(home / "tuneforge.db").set_batch_status(
            behind, "cancelling", only_from=("in_progress",)
        )
        with open_api(home, mp) as second:
            done = wait(second, behind, timeout=30)
            assert done["status"] == "cancelled"
            assert second.get(f"/v1/batches/{ahead}").json()["status"] == "in_progress"
            (left,) = lines_of(second, done["error_file_id"])
            assert left["error"]["code"] == "batch_cancelled"
            second.post(f"/v1/batches/{ahead}/cancel")
            wait(second, ahead)
