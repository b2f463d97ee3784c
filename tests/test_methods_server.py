"""The new methods through a real `tuneforge serve`, driven by the official `openai` package with
only `base_url` changed: a DPO job killed with -9 mid-run and resumed from its checkpoint, and
`graders.run` / `graders.validate` answering in OpenAI's types."""

from __future__ import annotations

import math
import os
import signal

import pytest
from helpers import write_lines
from test_api_openai_client import Server, wait_for_job
from test_jobs import messages, metric_steps, wait_for_checkpoint

from tuneforge import run_dir as rd

pytestmark = pytest.mark.integration


def pair(i: int) -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": f"Question {i}: pick a letter."}]},
        "preferred_output": [{"role": "assistant", "content": "A"}],
        "non_preferred_output": [{"role": "assistant", "content": "B"}],
    }


def test_openai_client_runs_a_dpo_job_that_survives_kill_9(tiny_model_dir, tmp_path):
    from openai import OpenAI

    server = Server(tmp_path / "home").start()
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        path = write_lines(tmp_path / "pairs.jsonl", [pair(i) for i in range(16)])
        valid = write_lines(tmp_path / "valid.jsonl", [pair(100 + i) for i in range(4)])
        with path.open("rb") as f:
            training = client.files.create(file=f, purpose="fine-tune")
        with valid.open("rb") as f:
            validation = client.files.create(file=f, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=str(tiny_model_dir),
            training_file=training.id,
            validation_file=validation.id,
            method={
                "type": "dpo",
                "dpo": {"hyperparameters": {"beta": 0.5, "n_epochs": 3, "batch_size": 4}},
            },
            extra_body={"training_config": {"checkpoint_every": 1}},
        )
        assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.5
        os.kill(wait_for_checkpoint(server, job.id, step=3), signal.SIGKILL)
        done = wait_for_job(client, job.id)
        assert done.status == "succeeded", done.error
        assert done.method.dpo.hyperparameters.n_epochs == 3
        log = messages(server, job.id)
        assert any(m.startswith("resumed from checkpoint step-") for m in log), log
        assert metric_steps(server, job.id) == list(range(1, 13))
        run = server.home / "jobs" / job.id / "run"
        rows = rd.read_metrics(run)
        assert rows[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert rd.read_config(run)["dpo_beta"] == 0.5
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        metrics = [e.data for e in events if e.type == "metrics"]
        assert metrics and all("rewards/margins" in d and "train_loss" in d for d in metrics)
        # The fine-tuned model answers like any other.
        reply = client.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": "Question 7: pick a letter."}],
            max_tokens=4,
        )
        assert reply.choices[0].message.content is not None
    finally:
        server.stop()


def test_openai_client_runs_and_validates_graders(tmp_path):
    import openai
    from openai import OpenAI

    server = Server(tmp_path / "home").start()
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        graders = client.fine_tuning.alpha.graders
        check = {
            "type": "string_check",
            "name": "city",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.city }}",
            "operation": "eq",
        }
        assert graders.run(grader=check, model_sample="Paris", item={"city": "Paris"}).reward == 1
        assert graders.run(grader=check, model_sample="paris", item={"city": "Paris"}).reward == 0
        fuzzy = {
            "type": "python",
            "name": "fuzzy",
            "source": "import difflib\n"
            "def grade(sample, item):\n"
            "    return difflib.SequenceMatcher(None, sample['output_text'], "
            "item['reference_answer']).ratio()\n",
        }
        answer = graders.run(
            grader=fuzzy,
            model_sample="fuzzy wuzzy was a bear",
            item={"reference_answer": "fuzzy wuzzy had no hair"},
        )
        assert 0.4 < answer.reward < 0.9
        assert answer.metadata.errors.python_grader_runtime_error is False
        multi = {
            "type": "multi",
            "name": "both",
            "graders": {"a": check | {"name": "a"}, "b": fuzzy | {"name": "b"}},
            "calculate_output": "(a + b) / 2",
        }
        answer = graders.run(
            grader=multi, model_sample="Paris", item={"city": "Paris", "reference_answer": "Paris"}
        )
        assert answer.reward == 1.0 and answer.sub_rewards == {"a": 1.0, "b": 1.0}
        assert graders.validate(grader=check).grader.name == "city"
        with pytest.raises(openai.BadRequestError) as info:
            graders.validate(grader=check | {"input": "{{ foo.x }}"})
        assert info.value.param == "grader.input"
    finally:
        server.stop()


def test_openai_client_runs_a_reinforcement_job(tiny_model_dir, tmp_path):
    """Reinforcement jobs with a python and a string_check grader: RFT prompts upload, the
    grader is checked when the job is created, the worker trains, and events carry OpenAI's
    reward message."""
    from openai import OpenAI

    server = Server(tmp_path / "home").start()
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        prompts = [
            {"messages": [{"role": "user", "content": f"Prompt {i}"}], "want": "e"}
            for i in range(8)
        ]
        path = write_lines(tmp_path / "prompts.jsonl", prompts)
        with path.open("rb") as f:
            training = client.files.create(file=f, purpose="fine-tune")
        grader = {
            "type": "python",
            "name": "has_want",
            "source": "def grade(sample, item):\n"
            "    return float(item['want'] in sample['output_text'].lower())\n",
        }
        job = client.fine_tuning.jobs.create(
            model=str(tiny_model_dir),
            training_file=training.id,
            method={
                "type": "reinforcement",
                "reinforcement": {
                    "grader": grader,
                    "hyperparameters": {"n_epochs": 1, "batch_size": 4, "compute_multiplier": 2},
                },
            },
            extra_body={"training_config": {"max_completion_tokens": 2}},
        )
        assert job.method.type == "reinforcement"
        done = wait_for_job(client, job.id)
        assert done.status == "succeeded", done.error
        assert done.method.reinforcement.hyperparameters.compute_multiplier == 2
        log = messages(server, job.id)
        assert any("preflight" in m for m in log), log
        assert any("train mean reward=" in m for m in log), log
        config = rd.read_config(server.home / "jobs" / job.id / "run")
        assert config["objective"] == "grpo" and config["grpo_group_size"] == 8

        # The same prompts scored by a string_check grader, OpenAI's other common kind.
        has_e = {
            "type": "string_check",
            "name": "has_e",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.want }}",
            "operation": "ilike",
        }
        second = client.fine_tuning.jobs.create(
            model=str(tiny_model_dir),
            training_file=training.id,
            method={
                "type": "reinforcement",
                "reinforcement": {
                    "grader": has_e,
                    "hyperparameters": {"n_epochs": 1, "batch_size": 4},
                },
            },
            extra_body={"training_config": {"max_completion_tokens": 2}},
        )
        done = wait_for_job(client, second.id)
        assert done.status == "succeeded", done.error
        assert done.method.reinforcement.grader.type == "string_check"
        assert any("train mean reward=" in m for m in messages(server, second.id))
    finally:
        server.stop()
