"""OpenAI's graders run locally: each type's score, templates, the python sandbox's limits, the
multi formula, the score_model judge, and bad graders named by their field."""

from __future__ import annotations

import pytest

from tuneforge.eval.graders import (
    GraderError,
    make_sample,
    run_grader,
    similarity,
    validate_grader,
)


def check(operation: str, reference: str = "Paris") -> dict:
    return {
        "type": "string_check",
        "name": "city",
        "input": "{{ sample.output_text }}",
        "reference": reference,
        "operation": operation,
    }


@pytest.mark.parametrize(
    ("operation", "answer", "reward"),
    [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "paris", 1.0),
        ("like", "It is Paris.", 1.0),
        ("like", "It is paris.", 0.0),
        ("ilike", "It is PARIS.", 1.0),
    ],
)
def test_string_check(operation, answer, reward):
    spec = validate_grader(check(operation))
    assert run_grader(spec, make_sample(answer)).reward == reward


def test_templates_read_the_item_and_nested_json():
    spec = check("eq", "{{ item.answer.city }}") | {"input": "{{ sample.output_json.city }}"}
    validate_grader(spec)
    grade = run_grader(spec, make_sample('{"city": "Rome"}'), {"answer": {"city": "Rome"}})
    assert grade.reward == 1.0
    missing = run_grader(spec, make_sample('{"city": "Rome"}'), {"other": 1})
    assert missing.reward == 0.0 and missing.errors["invalid_variable_error"]
    assert "item.answer.city" in missing.details["invalid_variable_error"]


def test_text_similarity_metrics():
    same = "the cat sat on the mat"
    for metric in ("bleu", "gleu", "rouge_1", "rouge_2", "rouge_l", "fuzzy_match"):
        assert similarity(metric, same, same) == pytest.approx(1.0), metric
        assert similarity(metric, same, "completely different words here") < 0.3, metric
    # ROUGE-1 F1 by hand: 5 of 6 unigrams shared with a 6-word reference → 5/6.
    assert similarity("rouge_1", "the cat sat on the rug", same) == pytest.approx(5 / 6)
    # ROUGE-L: longest common subsequence "the cat on the mat" = 5 of 6.
    assert similarity("rouge_l", "the cat lay on the mat", same) == pytest.approx(5 / 6)
    spec = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.reference }}",
        "evaluation_metric": "rouge_1",
    }
    validate_grader(spec)
    assert run_grader(spec, make_sample(same), {"reference": same}).reward == pytest.approx(1.0)


PYTHON_GRADER = """
def grade(sample, item):
    return 1.0 if sample["output_text"].strip() == item["answer"] else 0.25
"""


def test_python_grader_runs_in_its_own_process():
    spec = validate_grader({"type": "python", "name": "py", "source": PYTHON_GRADER})
    assert run_grader(spec, make_sample(" 42 "), {"answer": "42"}).reward == 1.0
    assert run_grader(spec, make_sample("41"), {"answer": "42"}).reward == 0.25


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("raise ValueError('nope')", "ValueError: nope"),
        ("return 'high'", "not a finite number"),
        ("return float('nan')", "not a finite number"),
        ("import socket\n    socket.create_connection(('1.1.1.1', 80))", "network"),
        ("x = bytearray(3 * 1024**3)\n    return 1.0", "memory"),
    ],
)
def test_a_failing_python_grader_scores_zero_with_the_reason(body, fragment):
    source = f"def grade(sample, item):\n    {body}\n"
    grade = run_grader({"type": "python", "name": "bad", "source": source}, make_sample("x"))
    assert grade.reward == 0.0 and grade.errors["python_grader_runtime_error"]
    assert fragment.lower() in grade.details["python_grader_runtime_error"].lower()


def test_a_looping_python_grader_is_stopped_at_its_time_limit(monkeypatch):
    from tuneforge.eval import graders

    monkeypatch.setattr(graders, "PYTHON_TIMEOUT_S", 2)
    source = "def grade(sample, item):\n    while True: pass\n"
    grade = run_grader({"type": "python", "name": "loops", "source": source}, make_sample("x"))
    # OpenAI's flag for a grader that does not answer in time.
    assert grade.reward == 0.0 and grade.errors["unresponsive_reward_error"]
    assert not grade.errors["python_grader_runtime_error"]
    assert "2 s limit" in grade.details["unresponsive_reward_error"]


def test_a_grader_stopped_by_its_cpu_time_limit_is_reported_as_a_timeout():
    # SIGXCPU is what the kernel sends at the CPU-time limit (a grader that spins threads can
    # reach it before the wall clock); it is a timeout, not a crash of the grader.
    source = (
        "import os, signal\ndef grade(sample, item):\n    os.kill(os.getpid(), signal.SIGXCPU)\n"
    )
    grade = run_grader({"type": "python", "name": "cpu", "source": source}, make_sample("x"))
    assert grade.reward == 0.0 and grade.errors["unresponsive_reward_error"]
    assert not grade.errors["python_grader_runtime_error"]
    assert "CPU-time limit" in grade.details["unresponsive_reward_error"]


def test_multi_grader_formula():
    spec = {
        "type": "multi",
        "name": "both",
        "graders": {
            "name": check("ilike", "{{ item.name }}") | {"name": "name"},
            "email": check("like", "@") | {"name": "email"},
        },
        "calculate_output": "(name + email) / 2",
    }
    validate_grader(spec)
    grade = run_grader(spec, make_sample("Ann, ann@example.com"), {"name": "ann"})
    assert grade.reward == 1.0 and grade.sub_rewards == {"name": 1.0, "email": 1.0}
    half = run_grader(spec, make_sample("Bob"), {"name": "ann"})
    assert half.reward == 0.0
    spec["calculate_output"] = "max(name, 0.5) ^ 2 - abs(-email)"
    validate_grader(spec)
    assert run_grader(spec, make_sample("x"), {"name": "ann"}).reward == pytest.approx(0.25)


def test_score_model_parses_the_judges_number():
    spec = {
        "type": "score_model",
        "name": "judge",
        "model": "smollm2-135m-instruct",  # the judge is injected below: nothing loads
        "input": [{"role": "user", "content": "Rate: {{ sample.output_text }}"}],
        "range": [0, 1],
    }
    validate_grader(spec)
    seen = []

    def judge(model, messages):
        seen.append(messages)
        return '{"result": 0.7, "steps": []}'

    assert run_grader(spec, make_sample("hi"), judge=judge).reward == pytest.approx(0.7)
    assert seen[0][0]["content"] == "Rate: hi"
    assert run_grader(spec, make_sample("hi"), judge=lambda m, x: "score: 3").reward == 1.0
    no_number = run_grader(spec, make_sample("hi"), judge=lambda m, x: "great answer")
    assert no_number.reward == 0.0 and no_number.errors["model_grader_parse_error"]


@pytest.mark.integration
def test_score_model_asks_a_real_local_model(monkeypatch):
    """No injected judge: the registry's default model is loaded and answers the rendered prompt
    greedily; its number is the score (the 135M model is no judge of quality, but it can
    repeat a digit, which is enough to show the sample reaches it and its answer is read)."""
    from tuneforge.eval import graders

    monkeypatch.setattr(graders, "_JUDGES", {})
    ask = "Repeat this number and nothing else:"
    spec = validate_grader(
        {
            "type": "score_model",
            "name": "echo",
            "model": "smollm2-135m-instruct",
            "input": [{"role": "user", "content": f"{ask} {{{{ sample.output_text }}}}"}],
            "range": [0, 10],
        }
    )
    assert [run_grader(spec, make_sample(d)).reward for d in ("7", "3", "0")] == [7.0, 3.0, 0.0]
    assert list(graders._JUDGES) == ["smollm2-135m-instruct"]  # loaded once, kept


def test_a_function_grader(tmp_path, monkeypatch):
    (tmp_path / "my_reward.py").write_text(
        "def exact(sample, item):\n    return float(sample['output_text'] == item['a'])\n"
        "def wrong(sample, item):\n    return 'yes'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = validate_grader({"type": "python", "name": "f", "function": "my_reward:exact"})
    assert run_grader(spec, make_sample("x"), {"a": "x"}).reward == 1.0
    wrong = run_grader(
        {"type": "python", "name": "f", "function": "my_reward:wrong"}, make_sample("x")
    )
    assert wrong.reward == 0.0 and "str" in wrong.details["python_grader_runtime_error"]


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"type": "nope", "name": "x"}, "grader.type"),
        ({"type": "label_model", "name": "x"}, "grader.type"),
        (check("eq") | {"operation": "neq"}, "grader.operation"),
        (check("eq") | {"input": "{{ foo.x }}"}, "grader.input"),
        (check("eq") | {"input": "{{ sample.text }}"}, "grader.input"),
        (check("eq") | {"input": "{{ item.x "}, "grader.input"),
        (
            {"type": "python", "name": "p", "source": "def grade(s, i):\n  return (1"},
            "grader.source",
        ),
        (
            {"type": "python", "name": "p", "source": "def grade(a, b, c): return 1"},
            "grader.source",
        ),
        ({"type": "python", "name": "p", "source": "x = 1"}, "grader.source"),
        (
            {
                "type": "text_similarity",
                "name": "s",
                "input": "a",
                "reference": "b",
                "evaluation_metric": "cosine",
            },
            "grader.evaluation_metric",
        ),
        (
            {
                "type": "multi",
                "name": "m",
                "graders": {"a": check("eq")},
                "calculate_output": "a + b",
            },
            "grader.calculate_output",
        ),
        (
            {
                "type": "multi",
                "name": "m",
                "graders": {"a": check("eq")},
                "calculate_output": "__import__('os')",
            },
            "grader.calculate_output",
        ),
        (
            {
                "type": "multi",
                "name": "m",
                "graders": {
                    "inner": {
                        "type": "multi",
                        "name": "i",
                        "graders": {"a": check("eq")},
                        "calculate_output": "a",
                    }
                },
                "calculate_output": "inner",
            },
            "grader.graders.inner.type",
        ),
        (
            {
                "type": "multi",
                "name": "m",
                "graders": {"a": check("eq") | {"input": "{{x.y}}"}},
                "calculate_output": "a",
            },
            "grader.graders.a.input",
        ),
        (  # OpenAI's RFT examples name hosted judges; ours run locally
            {
                "type": "score_model",
                "name": "j",
                "model": "o3-mini-2025-01-31",
                "input": [{"role": "user", "content": "Rate {{ sample.output_text }}"}],
            },
            "grader.model",
        ),
        (
            {
                "type": "score_model",
                "name": "j",
                "model": "./no/such/folder",
                "input": [{"role": "user", "content": "Rate {{ sample.output_text }}"}],
            },
            "grader.model",
        ),
    ],
)
def test_bad_graders_are_named_by_their_field(spec, param):
    with pytest.raises(GraderError) as info:
        validate_grader(spec)
    assert info.value.param == param, info.value.message


# -- the HTTP endpoints (in-process) ----------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from fastapi.testclient import TestClient

    from tuneforge.api.app import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_HOME", str(tmp_path_factory.mktemp("graders-home")))
        with TestClient(create_app()) as client:
            yield client


def test_graders_run_answers_like_openai(api):
    body = {"grader": check("eq"), "model_sample": "Paris", "item": {}}
    answer = api.post("/v1/fine_tuning/alpha/graders/run", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["reward"] == 1.0
    assert data["metadata"]["name"] == "city" and data["metadata"]["type"] == "string_check"
    from tuneforge.eval.graders import ERROR_FLAGS

    assert set(ERROR_FLAGS) <= set(data["metadata"]["errors"])
    assert not any(data["metadata"]["errors"][flag] for flag in ERROR_FLAGS)
    python = {
        "grader": {"type": "python", "name": "p", "source": "def grade(s, i):\n    1/0\n"},
        "model_sample": "x",
    }
    data = api.post("/v1/fine_tuning/alpha/graders/run", json=python).json()
    assert data["reward"] == 0.0 and data["metadata"]["errors"]["python_grader_runtime_error"]
    assert "ZeroDivisionError" in data["metadata"]["errors"]["python_grader_runtime_error_details"]


def test_graders_validate_names_the_bad_field(api):
    good = api.post("/v1/fine_tuning/alpha/graders/validate", json={"grader": check("ilike")})
    assert good.status_code == 200 and good.json() == {"grader": check("ilike")}
    bad = {
        "grader": {
            "type": "multi",
            "name": "m",
            "graders": {"name": check("eq") | {"input": "{{ foo.x }}"}},
            "calculate_output": "name",
        }
    }
    for route in ("validate", "run"):
        answer = api.post(
            f"/v1/fine_tuning/alpha/graders/{route}", json=bad | {"model_sample": "x"}
        )
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["param"] == "grader.graders.name.input", error
        assert "foo" in error["message"]


def test_a_tool_call_answer_reaches_graders_as_output_tools():
    """As OpenAI's graders see a function-calling answer: the calls in `output_tools` (chat
    completions' `tool_calls` shape), the text beside them in `output_text`."""
    answer = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    answer += "\n</tool_call>"
    sample = make_sample(answer)
    assert sample["output_text"] == "Let me look."
    [call] = sample["output_tools"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert sample["choices"][0]["message"]["tool_calls"] == [call]
    assert sample["choices"][0]["finish_reason"] == "tool_calls"
    named = check("eq", "get_weather") | {"input": "{{ sample.output_tools[0].function.name }}"}
    assert run_grader(validate_grader(named), sample).reward == 1.0
    source = (
        "import json\n"
        "def grade(sample, item):\n"
        "    args = json.loads(sample['output_tools'][0]['function']['arguments'])\n"
        "    return float(args['city'] == item['city'])\n"
    )
    python = {"type": "python", "name": "city", "source": source}
    assert run_grader(python, sample, {"city": "Paris"}).reward == 1.0
    assert run_grader(python, sample, {"city": "Rome"}).reward == 0.0
    # plain text, and a block the model left open, stay text with no calls
    for text in ("It is sunny.", '<tool_call>\n{"name": "get_weather", "arguments": {'):
        plain = make_sample(text)
        assert plain["output_text"] == text and plain["output_tools"] == []
        assert plain["choices"][0]["message"] == {"role": "assistant", "content": text}
