"""A real `tuneforge serve` on loopback, driven by the official `openai` package exactly as
OpenAI's "How to fine-tune chat models" tutorial does, with only `base_url` changed.

The tiny random model trains in seconds; its answers are noise, so the tests check structure:
statuses, events, ids, usage counts, stream chunks and `data: [DONE]`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import good_examples, write_lines

pytestmark = pytest.mark.integration

TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m tuneforge.cli serve` in a subprocess, with its own TUNEFORGE_HOME."""

    def __init__(self, home: Path, *extra: str) -> None:
        self.home = home
        self.extra = extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = home / f"server-{self.port}.log"

    def start(self, timeout: float = 120) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"TUNEFORGE_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "tuneforge.cli", "serve", "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, *self.extra], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not start in {timeout} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for_job(client, job_id: str, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("serve-home")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def finished_job(client, tiny_model_dir, tmp_path_factory):
    """The tutorial's steps: upload, create, poll the events until the job is done."""
    path = write_lines(tmp_path_factory.mktemp("data") / "train.jsonl", good_examples(12))
    with path.open("rb") as f:
        training = client.files.create(file=f, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model=str(tiny_model_dir))
    assert job.status == "validating_files"
    return wait_for_job(client, job.id), training


def test_tutorial_upload_create_poll(client, finished_job):
    job, training = finished_job
    assert job.status == "succeeded", job.error
    assert job.object == "fine_tuning.job"
    assert job.training_file == training.id
    assert job.fine_tuned_model == f"ft:tiny-llama:local::{job.id.removeprefix('ftjob-')}"
    assert job.trained_tokens > 0
    assert job.finished_at >= job.created_at
    # `auto` hyperparameters come back resolved, as OpenAI's do once the job ran.
    assert job.hyperparameters.n_epochs == 8  # OpenAI's rule: 100 // 12 examples
    assert job.hyperparameters.batch_size == 4
    assert job.method.type == "supervised"

    events = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=100).data
    events.reverse()  # newest first, as the tutorial reverses them
    messages = [e.message for e in events]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert "Files validated, moving job to queued state" in messages
    assert messages[-1] == "The job has successfully completed"
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(1, 25))
    assert metrics[0].message.startswith("Step 1/24: training loss=")
    assert {"train_loss", "train_mean_token_accuracy"} <= set(metrics[0].data)

    page = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=3)
    older = client.fine_tuning.jobs.list_events(
        fine_tuning_job_id=job.id, limit=3, after=page.data[-1].id
    )
    assert page.has_more and [e.id for e in older.data] == [e.id for e in events[-6:-3]][::-1]

    listed = client.fine_tuning.jobs.list(limit=10)
    assert job.id in [j.id for j in listed.data]


def test_tutorial_chat_with_the_fine_tuned_model(client, finished_job):
    job, _ = finished_job
    messages = [
        {"role": "system", "content": "You answer with the capital city."},
        {"role": "user", "content": "What is the capital of country number 3?"},
    ]
    completion = client.chat.completions.create(
        model=job.fine_tuned_model, messages=messages, max_tokens=8, temperature=0
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion._request_id.startswith("req_")  # the SDK reads x-request-id
    assert completion.model == job.fine_tuned_model
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 10 and 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    stream = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == usage.total_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content  # greedy: the same answer both ways

    # OpenAI's classification recipe: the first token's probability and its alternatives
    scored = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=messages,
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    (first,) = scored.choices[0].logprobs.content
    assert first.token == scored.choices[0].message.content
    assert 0 < math.exp(first.logprob) <= 1 and bytes(first.bytes).decode() == first.token
    assert [t.token for t in first.top_logprobs][0] == first.token
    assert len(first.top_logprobs) == 3


def test_structured_outputs_parse_into_a_pydantic_model(client, finished_job):
    """The SDK's structured-outputs helper: `chat.completions.parse` with a pydantic class sends
    its strict JSON schema; the answer follows it (even from the tiny model's noise) and comes
    back parsed. The Responses API's `responses.parse` does the same."""
    from typing import Literal

    import openai
    from pydantic import BaseModel

    class Capital(BaseModel):
        country: Literal["France", "Italy", "Japan"]
        population_millions: int

    job, _ = finished_job
    messages = [{"role": "user", "content": "Which capital? Answer in JSON."}]
    completion = client.chat.completions.parse(
        model=job.fine_tuned_model, messages=messages, response_format=Capital, max_tokens=40
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Capital) and parsed.country in ("France", "Italy", "Japan")
    response = client.responses.parse(
        model=job.fine_tuned_model, input=messages, text_format=Capital, max_output_tokens=40
    )
    assert isinstance(response.output_parsed, Capital)

    # A pydantic class as a strict function tool (what the Agents SDK sends): the call's
    # arguments follow its schema and come back parsed.
    called = client.chat.completions.parse(
        model=job.fine_tuned_model,
        messages=messages,
        tools=[openai.pydantic_function_tool(Capital)],
        tool_choice={"type": "function", "function": {"name": "Capital"}},
        max_tokens=40,
    )
    (call,) = called.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Capital)


def test_responses_api_with_the_fine_tuned_model(client, finished_job):
    """OpenAI's newer API for the same model: `responses.create`, its stream helper (which
    checks the events' order as it rebuilds the response), retrieve, previous_response_id and
    delete, through the official SDK."""
    import openai

    job, _ = finished_job
    asked = {"model": job.fine_tuned_model, "max_output_tokens": 8, "temperature": 0}
    instructions = "You answer with the capital city."
    question = "What is the capital of country number 3?"
    response = client.responses.create(input=question, instructions=instructions, **asked)
    completion = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[
            {"role": "system", "content": instructions},
            {"role": "user", "content": question},
        ],
        max_tokens=8,
        temperature=0,
    )
    assert response.object == "response" and response.status in ("completed", "incomplete")
    assert response.output_text == completion.choices[0].message.content
    assert response.usage.input_tokens == completion.usage.prompt_tokens

    with client.responses.stream(input=question, instructions=instructions, **asked) as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    # the SDK rebuilt the response from the events; an answer cut by max_output_tokens ends
    # with response.incomplete, as OpenAI's does
    last = events[-1]
    assert last.type == f"response.{response.status}"
    assert "".join(deltas) == last.response.output_text == response.output_text

    assert client.responses.retrieve(response.id).output_text == response.output_text
    follow = client.responses.create(
        input="And of country number 4?", previous_response_id=response.id, **asked
    )
    assert follow.previous_response_id == response.id
    assert follow.usage.input_tokens > response.usage.total_tokens  # the whole conversation
    (item,) = client.responses.input_items.list(follow.id).data
    assert item.type == "message" and item.content[0].text == "And of country number 4?"
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_batch_api_as_openais_batch_guide_drives_it(client, finished_job, tmp_path):
    """OpenAI's Batch guide, step by step, with the fine-tuned model: upload the requests
    (purpose batch), create, poll, download the output file and match it by custom_id; each
    answer is what a live chat completion answers."""
    job, _ = finished_job
    questions = {f"request-{i}": f"What is the capital of country number {i}?" for i in (1, 2)}
    lines = [
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": job.fine_tuned_model,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 8,
                "temperature": 0,
            },
        }
        for custom_id, question in questions.items()
    ]
    path = write_lines(tmp_path / "batchinput.jsonl", lines)
    with path.open("rb") as f:
        batch_input_file = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(
        input_file_id=batch_input_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"description": "nightly eval job"},
    )
    deadline = time.time() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.time() < deadline, batch
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts.completed == 2 and batch.request_counts.failed == 0
    assert batch.metadata == {"description": "nightly eval job"}
    results = [
        json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()
    ]
    assert sorted(r["custom_id"] for r in results) == sorted(questions)
    for result in results:
        live = client.chat.completions.create(
            **next(x["body"] for x in lines if x["custom_id"] == result["custom_id"])
        )
        answer = result["response"]["body"]["choices"][0]["message"]["content"]
        assert answer == live.choices[0].message.content
    assert batch.id in [b.id for b in client.batches.list(limit=10).data]


def test_evals_api_as_openais_getting_started_guide_drives_it(
    client, server, finished_job, tmp_path
):
    """OpenAI's evals guide, unchanged but for base_url: create an eval with a string_check,
    upload the rows (purpose "evals"), run them through the fine-tuned model, poll the run,
    read the output items. Every object parses as the SDK's own pydantic types."""
    import openai
    from openai.types import EvalCreateResponse
    from openai.types.evals import RunRetrieveResponse
    from openai.types.evals.runs import OutputItemListResponse

    job, _ = finished_job
    instructions = "You answer with the capital city."
    questions = [f"What is the capital of country number {i}?" for i in range(3)]
    first = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[
            {"role": "developer", "content": instructions},
            {"role": "user", "content": questions[0]},
        ],
        max_completion_tokens=8,
        temperature=0,
    )
    answers = [first.choices[0].message.content, "no such answer", "nor this"]
    evaluation = client.evals.create(
        name="Capitals",
        data_source_config={
            "type": "custom",
            "item_schema": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"],
            },
            "include_sample_schema": True,
        },
        testing_criteria=[
            {
                "type": "string_check",
                "name": "Match the expected answer",
                "input": "{{ sample.output_text }}",
                "operation": "eq",
                "reference": "{{ item.answer }}",
            }
        ],
    )
    rows = [{"item": {"question": q, "answer": a}} for q, a in zip(questions, answers, strict=True)]
    with write_lines(tmp_path / "rows.jsonl", rows).open("rb") as f:
        file = client.files.create(file=f, purpose="evals")
    run = client.evals.runs.create(
        evaluation.id,
        name="fine-tuned",
        data_source={
            "type": "completions",
            "model": job.fine_tuned_model,
            "input_messages": {
                "type": "template",
                "template": [
                    {"role": "developer", "content": instructions},
                    {"role": "user", "content": "{{ item.question }}"},
                ],
            },
            "sampling_params": {"temperature": 0, "max_completion_tokens": 8},
            "source": {"type": "file_id", "id": file.id},
        },
    )
    deadline = time.time() + 120
    while run.status in ("queued", "in_progress"):
        assert time.time() < deadline, run
        time.sleep(0.3)
        run = client.evals.runs.retrieve(run.id, eval_id=evaluation.id)
    assert run.status == "completed"
    assert (run.result_counts.total, run.result_counts.passed) == (3, 1)
    criterion = evaluation.testing_criteria[0]
    assert criterion.id.startswith("Match the expected answer-")  # OpenAI's "<name>-<uuid>"
    assert run.per_testing_criteria_results[0].testing_criteria == criterion.id
    assert run.per_model_usage[0].model_name == job.fine_tuned_model
    items = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id).data
    assert [i.datasource_item_id for i in items] == [0, 1, 2]
    assert [i.status for i in items] == ["pass", "fail", "fail"]
    assert items[0].sample.output[0].content == answers[0]
    assert items[0].results[0].passed and items[0].results[0].score == 1.0
    assert [r.id for r in client.evals.runs.list(evaluation.id).data] == [run.id]

    # The SDK builds its objects without checking them; check the wire JSON against its types.
    # OpenAI sends `"error": null` for a run and a sample without one, which the types declare
    # as required objects: those two are filled before validating.
    def raw(path: str) -> dict:
        return httpx.get(f"{server.url}/v1{path}", timeout=10).json()

    no_error = {"code": "", "message": ""}
    EvalCreateResponse.model_validate(raw(f"/evals/{evaluation.id}"), strict=False)
    wire = raw(f"/evals/{evaluation.id}/runs/{run.id}")
    RunRetrieveResponse.model_validate(wire | {"error": wire["error"] or no_error})
    for item in raw(f"/evals/{evaluation.id}/runs/{run.id}/output_items")["data"]:
        item["sample"]["error"] = item["sample"]["error"] or no_error
        OutputItemListResponse.model_validate(item)
    client.evals.delete(evaluation.id)
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(run.id, eval_id=evaluation.id)


def test_stored_completions_as_openais_monitoring_cookbook_drives_them(client, finished_job):
    """OpenAI's cookbook "Monitoring stored completions", but for base_url and the grader (a
    string_check where it uses a hosted judge): log completions with store=True and metadata,
    page through them, then grade one prompt version's answers with an eval run."""
    from openai import omit

    job, _ = finished_job
    usecase = f"push_notifications_summarizer-{time.time_ns()}"
    notifications = ["- New message from Sarah", "- Weather alert", "- Your package arrived"]
    logged = []
    # the last answer is a JSON object of one word: one that ends (finish_reason stop), where
    # the tiny model's noise otherwise runs to its token limit
    mood = {
        "type": "object",
        "properties": {"mood": {"enum": ["calm", "busy"]}},
        "required": ["mood"],
        "additionalProperties": False,
    }
    ends = {"type": "json_schema", "json_schema": {"name": "mood", "schema": mood}}
    for i, text in enumerate(notifications):
        logged.append(
            client.chat.completions.create(
                model=job.fine_tuned_model,
                messages=[
                    {"role": "developer", "content": "Summarize the push notifications."},
                    {"role": "user", "content": text},
                ],
                store=True,
                metadata={"prompt_version": "v1" if i < 2 else "v2", "usecase": usecase},
                max_completion_tokens=8 if i < 2 else 32,
                response_format=ends if i == 2 else omit,
                temperature=0,
            )
        )
    pages = client.chat.completions.list(metadata={"usecase": usecase}, limit=2)
    assert [c.id for c in pages] == [c.id for c in logged]  # the SDK follows the cursor
    stored = client.chat.completions.retrieve(logged[0].id)
    assert stored.choices[0].message.content == logged[0].choices[0].message.content
    assert stored.metadata == {"prompt_version": "v1", "usecase": usecase}
    said = client.chat.completions.messages.list(logged[0].id).data
    assert [(m.role, m.content) for m in said][1] == ("user", notifications[0])

    evaluation = client.evals.create(
        name="Push Notification Summary Grader",
        data_source_config={"type": "stored_completions", "metadata": {"usecase": usecase}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "Says something",
                "input": "{{ sample.output_text }}",
                "operation": "ne",
                "reference": "",
            }
        ],
    )
    run = client.evals.runs.create(
        eval_id=evaluation.id,
        name="v1-run",
        data_source={
            "type": "completions",
            "source": {"type": "stored_completions", "metadata": {"prompt_version": "v1"}},
        },
    )
    deadline = time.time() + 60
    while run.status in ("queued", "in_progress"):
        assert time.time() < deadline, run
        time.sleep(0.2)
        run = client.evals.runs.retrieve(run.id, eval_id=evaluation.id)
    assert run.status == "completed" and run.result_counts.total == 2
    items = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id).data
    assert [i.sample.output[0].content for i in items] == [
        c.choices[0].message.content for c in logged[:2]
    ]

    # Distillation with the SDK alone (the README's snippet): the logged conversations that
    # ended by themselves, with their answers, as a training file.
    lines = []
    for c in client.chat.completions.list(metadata={"usecase": usecase}):
        if c.choices[0].finish_reason != "stop":
            continue
        prompt = client.chat.completions.messages.list(c.id, limit=100).data
        messages = [{"role": m.role, "content": m.content} for m in prompt]
        messages.append({"role": "assistant", "content": c.choices[0].message.content})
        lines.append(json.dumps({"messages": messages}) + "\n")
    stopped = [c for c in logged if c.choices[0].finish_reason == "stop"]
    assert len(lines) == len(stopped) >= 1, [c.choices[0].finish_reason for c in logged]
    data = "".join(lines).encode()
    file = client.files.create(file=("distilled.jsonl", data), purpose="fine-tune")
    assert file.status == "processed"

    updated = client.chat.completions.update(logged[2].id, metadata={"reviewed": "yes"})
    assert updated.metadata == {"reviewed": "yes"}
    deleted = client.chat.completions.delete(logged[2].id)
    assert deleted.deleted and deleted.object == "chat.completion.deleted"
    assert [c.id for c in client.chat.completions.list(metadata={"usecase": usecase})] == [
        c.id for c in logged[:2]
    ]


def test_files_expire_after_as_the_sdk_sends_it(client, tmp_path):
    path = write_lines(tmp_path / "train.jsonl", good_examples(10))
    with path.open("rb") as f:
        file = client.files.create(
            file=f, purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600}
        )
    assert file.expires_at == file.created_at + 3600
    assert client.files.retrieve(file.id).expires_at == file.expires_at


def test_stream_ends_with_done_on_the_wire(server, finished_job):
    job, _ = finished_job
    body = {
        "model": job.fine_tuned_model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_checkpoints_are_models_too(client, finished_job):
    job, _ = finished_job
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [24, 21, 18]  # last 3 epochs, newest first
    assert checkpoints[1].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-21"
    assert checkpoints[1].metrics.train_loss > 0
    completion = client.chat.completions.create(
        model=checkpoints[1].fine_tuned_model_checkpoint,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
    )
    assert completion.usage.completion_tokens <= 3
    assert client.models.retrieve(checkpoints[1].fine_tuned_model_checkpoint).owned_by == "local"
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]


def test_openai_errors_come_back_typed(client, finished_job):
    import openai

    job, _ = finished_job
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="ft:tiny-llama:local::000000", messages=[{"role": "user", "content": "hi"}]
        )
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "wizard", "content": "hi"}]
        )
    assert bad_role.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model=job.fine_tuned_model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=10**9,
        )
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")


def test_cli_generate_uses_a_served_model_id(server, finished_job):
    job, _ = finished_job
    env = os.environ | {"TUNEFORGE_HOME": str(server.home), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tuneforge.cli", "generate", job.fine_tuned_model, "hi"]
    done = subprocess.run(
        [*cmd, "--max-tokens", "3"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "generate", "ft:x:local::nope", "hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 2
    assert "unknown fine-tuned model" in unknown.stderr and "fix:" in unknown.stderr


WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
ASKED = {"role": "user", "content": "Weather in Paris?"}
CALLED = {
    "role": "assistant",
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
REPLY = "It is 18 °C in Paris."


def test_function_calling_with_a_model_fine_tuned_on_tool_calls(
    client, default_model_dir, tmp_path
):
    """OpenAI's function-calling fine-tune, end to end: train on conversations with `tools`,
    then call the model with the same tools. The answer comes back as `tool_calls` the SDK
    parses (whole and streamed), and the tool's result sent back gets the trained reply.

    The real SmolLM2 (by its folder, so the server converts nothing): a LoRA on the random tiny
    model cannot sharpen its output enough to write a call exactly (its loss stays near 9.6).
    """

    def row(i: int) -> dict:  # one conversation; only the call ids differ, as in real logs
        called = {**CALLED, "tool_calls": [CALLED["tool_calls"][0] | {"id": f"call_{i}"}]}
        result = {"role": "tool", "tool_call_id": f"call_{i}", "content": '{"temp_c": 18}'}
        return {
            "messages": [ASKED, called, result, {"role": "assistant", "content": REPLY}],
            "tools": WEATHER_TOOLS,
        }

    with write_lines(tmp_path / "tools.jsonl", [row(i) for i in range(10)]).open("rb") as f:
        training = client.files.create(file=f, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=training.id,
        model=str(default_model_dir),
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 5}},
        },
        extra_body={"training_config": {"learning_rate": 2e-3}},  # learnt in 4 steps
    )
    job = wait_for_job(client, job.id, timeout=900)  # the real model, beside another worker
    assert job.status == "succeeded", job.error

    asked = {"model": job.fine_tuned_model, "tools": WEATHER_TOOLS, "temperature": 0}
    completion = client.chat.completions.create(messages=[ASKED], **asked)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert choice.message.content is None

    chunks = list(client.chat.completions.create(messages=[ASKED], stream=True, **asked))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather")]
    assert json.loads(deltas[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)

    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'}
    answer = client.chat.completions.create(messages=[ASKED, choice.message, result], **asked)
    assert answer.choices[0].message.content == REPLY
    assert answer.choices[0].message.tool_calls is None

    forced = client.chat.completions.create(
        messages=[ASKED],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        **asked,
    )
    assert [c.function.name for c in forced.choices[0].message.tool_calls] == ["get_weather"]
    # tool_choice "none" (the tools left out of the prompt): test_api.py's
    # test_tools_go_into_the_prompt_and_tool_choice_is_honoured, on the tiny model.

    # The Responses API: the call is a function_call item; its output, sent back with
    # previous_response_id, gets the trained reply.
    tools = [{"type": "function", **WEATHER_TOOLS[0]["function"]}]
    asked = {"model": job.fine_tuned_model, "tools": tools, "temperature": 0}
    response = client.responses.create(input=[ASKED], **asked)
    (item,) = response.output
    assert item.type == "function_call" and item.name == "get_weather", response.output
    assert json.loads(item.arguments) == {"city": "Paris"} and item.call_id.startswith("call_")
    events = list(client.responses.create(input=[ASKED], stream=True, **asked))
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [(i.type, i.name, json.loads(i.arguments)) for i in done] == [
        ("function_call", "get_weather", {"city": "Paris"})
    ]
    output = {"type": "function_call_output", "call_id": item.call_id, "output": '{"temp_c": 18}'}
    reply = client.responses.create(input=[output], previous_response_id=response.id, **asked)
    assert reply.output_text == REPLY
    (sent,) = client.responses.input_items.list(reply.id).data
    assert sent.type == "function_call_output" and sent.call_id == item.call_id
