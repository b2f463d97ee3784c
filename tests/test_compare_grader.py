"""`compare --grader` and `eval --grader`: an OpenAI grader as a metric. Its `sample` is the answer
and its `item` the test row (`reference_answer` and the row's other fields); its score is the
metric `grader:<name>` and, by default, the primary one. Bad graders are messages naming the file
(CLI) or `error.param` (API). Runs trained with DPO and GRPO are compared like SFT runs."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import chat_example, write_lines

from tuneforge.data.formats import load_conversations
from tuneforge.errors import UsageError
from tuneforge.eval.compare import CompareOptions, Comparison
from tuneforge.eval.evaluate import to_request
from tuneforge.eval.graders import GraderError, as_metric, read_grader_file, validate_grader
from tuneforge.eval.metrics import score_all

NEVER = "§never-in-an-answer§"  # a needle no answer of a 4-token answer holds
# `like`: the answer contains the row's needle. An empty needle is in every answer (1), NEVER in
# none (0), whatever the random model says: the scores are known before it answers.
NEEDLE = {
    "type": "string_check",
    "name": "needle",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.needle }}",
    "operation": "like",
}
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.reference_answer }}",
    "operation": "eq",
}


def needle_rows(start: int, n: int) -> list[dict]:
    return [chat_example(start + i) | {"needle": "" if i % 2 == 0 else NEVER} for i in range(n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("grader-data")
    train = write_lines(folder / "train.jsonl", needle_rows(0, 12))
    test = write_lines(folder / "test.jsonl", needle_rows(100, 4))
    return train, test


# -- the item, and the grader as a metric, without a model --------------------------------------


def test_the_item_is_the_row_with_its_reference_answer(tmp_path):
    row = chat_example(1) | {"needle": "x", "tags": ["a"]}
    own = chat_example(2) | {"reference_answer": "the row's own"}
    path = write_lines(tmp_path / "t.jsonl", [row, own])
    first, second = (to_request(e, str(path)) for e in load_conversations(path))
    assert first.item == {
        "reference_answer": "The capital of country 1 is City1.",
        "needle": "x",
        "tags": ["a"],
    }  # `messages` is the prompt, not a field (OpenAI's RFT rows)
    assert second.item["reference_answer"] == "the row's own"
    assert second.reference == "The capital of country 2 is City2."


def test_grader_scores_are_what_the_grader_gives_on_known_answers():
    answers = ["Paris", "paris", "Rome"]
    items = [{"reference_answer": "Paris"}] * 3
    metrics = {
        "grader:exact": as_metric(EXACT),
        "grader:ilike": as_metric(EXACT | {"name": "ilike", "operation": "ilike"}),
    }
    means, per_example, problems = score_all(metrics, answers, ["Paris"] * 3, items)
    assert [s["grader:exact"] for s in per_example] == [1.0, 0.0, 0.0]
    assert [s["grader:ilike"] for s in per_example] == [1.0, 1.0, 0.0]
    assert means == {"grader:exact": pytest.approx(1 / 3), "grader:ilike": pytest.approx(2 / 3)}
    assert problems == []
    # A field the row lacks scores 0 with the reason, once per approach, as on OpenAI.
    missing = {"grader:needle": as_metric(NEEDLE)}
    means, _, problems = score_all(missing, answers, ["Paris"] * 3, items)
    assert means == {"grader:needle": 0.0}
    assert problems and "could not grade 3 of 3 answers" in problems[0]
    assert "item.needle" in problems[0]


# -- compare end to end on the tiny model --------------------------------------------------------


def test_compare_with_a_grader_scores_it_and_decides_by_it(files, tiny_model_dir, tmp_path):
    train, test = files
    options = CompareOptions(
        train_file=train,
        test_file=test,
        out_dir=tmp_path / "cmp",
        model=str(tiny_model_dir),
        k=2,
        max_new_tokens=4,
        latency_requests=1,
        retriever="bm25",
        with_loss=False,
        grader=NEEDLE,
    )
    comparison = Comparison(options)
    assert comparison.primary == "grader:needle"
    assert "string_check grader 'needle'" in comparison.primary_reason
    comparison.run_baselines()
    path, md, html = comparison.finish()
    result = json.loads(path.read_text())
    assert result["primary_metric"] == "grader:needle"
    assert result["use_case"]["grader"] == NEEDLE  # the result says what the metric is
    for approach in result["approaches"]:
        assert approach["status"] == "ok", approach["error"]
        # needles "", NEVER, "", NEVER: the empty one is in every answer, NEVER in none
        assert approach["per_request_scores"]["grader:needle"] == [1.0, 0.0, 1.0, 0.0]
        assert approach["metrics"]["grader:needle"] == 0.5
        assert [s["score"] for s in approach["samples"]] == [1.0, 0.0, 1.0, 0.0]
        lo, hi = approach["primary_ci95"]
        assert 0.0 <= lo <= 0.5 <= hi <= 1.0
        assert "exact_match" in approach["metrics"]  # the built-in metrics are still there
    assert "grader:needle (primary)" in md.read_text()
    assert '| grader | {"type": "string_check", "name": "needle"' in md.read_text()
    checker = _check_report()
    html_text = html.read_text()
    assert checker.check_numbers(result, html_text) == []  # grader:needle's numbers as shown
    assert checker.check_decision(result) == []
    # Another primary metric can still be chosen; the grader stays a metric.
    options.primary_metric = "token_f1"
    assert Comparison(options).primary == "token_f1"
    options.primary_metric = "grader:nope"
    with pytest.raises(UsageError, match="grader:needle"):
        Comparison(options)


def test_answers_from_an_earlier_compare_are_scored_again_without_a_model(
    files, tiny_model_dir, tmp_path, monkeypatch
):
    """`--answers-from`: a second comparison with a grader scores the first one's kept answers
    (no model loads); tokens and latency stand as measured; other requests are refused."""
    import tuneforge.inference.load as load

    train, test = files
    setup = {
        "train_file": train,
        "test_file": test,
        "model": str(tiny_model_dir),
        "k": 2,
        "max_new_tokens": 4,
        "latency_requests": 1,
        "retriever": "bm25",
        "with_loss": False,
    }
    first = Comparison(CompareOptions(out_dir=tmp_path / "cmp", **setup))
    first.run_baselines()
    earlier = json.loads(first.finish()[0].read_text())

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(load, "load_for_inference", no_model)
    again = Comparison(
        CompareOptions(
            out_dir=tmp_path / "again", grader=NEEDLE, answers_from=tmp_path / "cmp", **setup
        )
    )
    assert again.primary == "grader:needle"
    again.run_baselines()
    result = json.loads(again.finish()[0].read_text())
    pairs = zip(earlier["approaches"], result["approaches"], strict=True)
    for old, new in pairs:
        assert new["status"] == "ok" and new["answers"] == old["answers"]
        assert new["per_request_scores"]["grader:needle"] == [1.0, 0.0, 1.0, 0.0]
        assert new["per_request_scores"]["token_f1"] == old["per_request_scores"]["token_f1"]
        for key in ("prompt_tokens_per_request", "output_tokens_per_request", "latency_p50_s"):
            assert new[key] == old[key], key
        assert new["notes"][-1].endswith("scored again")
    assert result["summary"]["decided_by"]
    with pytest.raises(UsageError, match="other requests"):
        Comparison(
            CompareOptions(
                out_dir=tmp_path / "x", answers_from=tmp_path / "cmp", **setup | {"k": 3}
            )
        )


def _check_report():
    """scripts/check_report.py, loaded as tests/test_report.py loads it (once per session)."""
    if "check_report" in sys.modules:
        return sys.modules["check_report"]
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("check_report", repo / "scripts/check_report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_report"] = module  # dataclasses look modules up by name
    spec.loader.exec_module(module)
    return module


def test_scores_outside_the_graders_range_are_warned_about(files, tiny_model_dir, tmp_path):
    train, test = files
    doubled = {
        "type": "python",
        "name": "doubled",
        "source": "def grade(sample, item):\n    return 2.0 if item['needle'] else 0.0\n",
    }
    options = CompareOptions(
        train, test, tmp_path / "o", model=str(tiny_model_dir), grader=doubled, k=1,
        limit=2, max_new_tokens=2, latency_requests=0, retriever="bm25", with_loss=False,
    )  # fmt: skip
    comparison = Comparison(options)
    assert not any("doubled" in w for w in comparison.warnings())  # nothing scored yet
    comparison.run_baselines()
    scores = [a["per_request_scores"]["grader:doubled"] for a in comparison.approaches]
    assert scores == [[0.0, 2.0]] * 3  # needles "", NEVER: the python grader ran on each row
    warned = [w for w in comparison.warnings() if w.startswith("grader:doubled")]
    assert warned and "from 0 to 2, outside the [0, 1]" in warned[0]


def test_a_grader_on_another_range_scales_the_margin(files, tiny_model_dir, tmp_path):
    train, test = files
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": str(tiny_model_dir),
        "input": [{"role": "user", "content": "Rate {{ sample.output_text }} from 0 to 10"}],
        "range": [0, 10],
    }
    options = CompareOptions(
        train, test, tmp_path / "o", model=str(tiny_model_dir), grader=judge, max_new_tokens=4
    )
    comparison = Comparison(options)
    assert comparison.primary == "grader:judge" and comparison.margin == pytest.approx(0.5)
    assert "margin is 0.05 of that range, 0.5" in comparison.primary_reason
    assert comparison.to_json()["summary"]["margin"] == pytest.approx(0.5)


def test_a_grader_reading_a_field_a_test_row_lacks_is_refused_before_any_model(files, tmp_path):
    train, test = files
    grader = NEEDLE | {"reference": "{{ item.answer }}"}
    with pytest.raises(GraderError, match=r"test.jsonl line 1: grader 'needle' reads"):
        Comparison(CompareOptions(train, test, tmp_path / "o", model="/not/loaded", grader=grader))


# -- the CLI: --grader files, good and bad; a DPO and a GRPO run ---------------------------------


@pytest.fixture(scope="module", params=["dpo", "grpo"])
def method_run(request, tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny run trained with DPO or GRPO (2 steps)."""
    from tuneforge.config import build_config
    from tuneforge.train.plan import make_plan
    from tuneforge.train.recipe import train

    folder = tmp_path_factory.mktemp(request.param)
    settings: dict = {"objective": request.param, "batch_size": 4, "max_steps": 2}
    if request.param == "dpo":
        rows = [
            {
                "input": {"messages": [{"role": "user", "content": f"Question {i}: a letter."}]},
                "preferred_output": [{"role": "assistant", "content": "A"}],
                "non_preferred_output": [{"role": "assistant", "content": "B"}],
            }
            for i in range(8)
        ]
    else:
        rows = [
            {"messages": [{"role": "user", "content": f"Prompt {i}: one token."}], "letter": "e"}
            for i in range(8)
        ]
        grader = NEEDLE | {"name": "has_e", "reference": "{{ item.letter }}", "operation": "ilike"}
        settings |= {"grader": grader, "grpo_group_size": 4, "max_completion_tokens": 1}
    run = folder / f"{request.param}-run"
    config = {
        "model": str(tiny_model_dir),
        "train_file": str(write_lines(folder / "train.jsonl", rows)),
        "output_dir": str(run),
    }
    train(make_plan(build_config(config | settings)))
    return run


def test_cli_compare_of_a_dpo_or_grpo_run_with_a_grader(run_cli, files, method_run, tmp_path):
    train, test = files
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps(NEEDLE))
    out = tmp_path / "cmp"
    code, stdout, stderr = run_cli(
        "compare", "--train", train, "--test", test, "--run", method_run, "--grader", grader,
        "--out", out, "--k", "2", "--max-tokens", "4", "--latency-requests", "1",
        "--retriever", "bm25", "--no-loss",
    )  # fmt: skip
    assert code == 0, stderr
    result = json.loads((out / "compare.json").read_text())
    tuned = result["approaches"][-1]
    assert tuned["name"] == f"fine_tuned:{method_run.name}" and tuned["status"] == "ok"
    objective = method_run.name.split("-")[0].upper()
    assert f"{objective} fine-tune of" in tuned["description"]
    assert tuned["training_seconds"] > 0 and tuned["loss_curve"]["train"]
    assert tuned["per_request_scores"]["grader:needle"] == [1.0, 0.0, 1.0, 0.0]
    assert result["summary"]["best_fine_tuned"] == tuned["name"]
    # the grader decides: the printed summary weighs it
    assert "scores grader:needle 0.500 against 0.500" in stdout


def test_cli_bad_grader_files_are_messages_naming_the_file_and_field(run_cli, files, tmp_path):
    train, test = files
    run = ["compare", "--train", train, "--test", test, "--out", tmp_path / "o", "--grader"]
    not_json = tmp_path / "not-json.json"
    not_json.write_text('{"type": "string_check",\n  name: "x"}')
    code, _, err = run_cli(*run, not_json)
    assert code != 0 and "Traceback" not in err
    assert f"{not_json}, line 2 column 3: not JSON" in err
    bad_op = tmp_path / "bad-op.json"
    bad_op.write_text(json.dumps(NEEDLE | {"operation": "contains"}))
    code, _, err = run_cli(*run, bad_op)
    assert code != 0 and "Traceback" not in err
    assert f"{bad_op}: grader.operation must be one of eq, ne, like, ilike" in err
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"grader": NEEDLE}))
    code, _, err = run_cli(*run, wrapped)
    assert code != 0 and "keep only the grader object" in err
    code, _, err = run_cli(*run, tmp_path / "missing.json")
    assert code == 2 and "no such file" in err
    lacks = tmp_path / "lacks.json"
    lacks.write_text(json.dumps(EXACT | {"reference": "{{ item.gold }}"}))
    code, _, err = run_cli("eval", "/not/loaded", "--test", test, "--grader", lacks)
    assert code != 0 and "Traceback" not in err
    assert "test.jsonl line 1: grader 'exact' reads {{ item.gold }}" in err


def test_read_grader_file_is_the_graders_validation(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(NEEDLE))
    assert read_grader_file(path) == validate_grader(NEEDLE)
    path.write_text(json.dumps(NEEDLE | {"reference": "{{ nope.x }}"}))
    with pytest.raises(GraderError) as caught:
        read_grader_file(path)
    assert caught.value.param == "grader.reference" and str(path) in caught.value.message


def test_cli_eval_with_a_grader(run_cli, files, tiny_model_dir, tmp_path):
    _, test = files
    grader = tmp_path / "needle.json"
    grader.write_text(json.dumps(NEEDLE))
    code, out, err = run_cli(
        "eval", tiny_model_dir, "--test", test, "--grader", grader, "--max-tokens", "4",
        "--no-loss", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["metrics"]["grader:needle"] == 0.5


# -- the API: a grader in the comparison request -------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory, default_model_dir):
    home = tmp_path_factory.mktemp("grader-home")
    (home / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    from tuneforge.ui import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_HOME", str(home))
        with TestClient(create_app(host="127.0.0.1"), base_url="http://127.0.0.1:8000") as c:
            yield c


def _upload(client, path: Path) -> str:
    response = client.post(
        "/v1/files", files={"file": (path.name, path.read_bytes())}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_api_comparison_with_a_grader(client, files, tiny_model_dir):
    train, test = (_upload(client, p) for p in files)
    url = "/v1/tuneforge/comparisons"
    body = {"test_file": test, "training_file": train, "model": str(tiny_model_dir)}
    for grader, param, says in (
        (NEEDLE | {"operation": "contains"}, "grader.operation", "one of eq, ne, like, ilike"),
        ({"type": "string_check"}, "grader.name", "grader.name is required"),
        (NEEDLE | {"reference": "{{ item.gold }}"}, "grader.reference", "test_file line 1"),
        ("not an object", "grader", ""),
    ):
        refused = client.post(url, json=body | {"grader": grader})
        assert refused.status_code == 400, (grader, refused.text)
        error = refused.json()["error"]
        assert error["param"] == param and says in error["message"], error
    created = client.post(url, json=body | {"grader": NEEDLE, "limit": 4, "max_tokens": 4})
    assert created.status_code == 200, created.text
    assert created.json()["request"]["grader"] == NEEDLE
    deadline = time.time() + 120
    while time.time() < deadline:
        found = client.get(f"{url}/{created.json()['id']}").json()
        if found["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    assert found["status"] == "succeeded", found
    assert found["result"]["primary_metric"] == "grader:needle"
    for approach in found["result"]["approaches"]:
        assert approach["per_request_scores"]["grader:needle"] == [1.0, 0.0, 1.0, 0.0]
