"""`tuneforge data validate`: the cookbook's checks, ours, statistics and exit codes."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA
from helpers import chat_example, good_examples, write_lines

from tuneforge.data.validate import suggested_epochs, validate_file

TOY = SHARED_DATA / "openai_toy_chat_fine_tuning.jsonl"
RECIPES = SHARED_DATA / "recipes_nlg_sample.csv"


def validate(path, tokenizer, template, **kw):
    kw.setdefault("max_seq_len", 2048)
    return validate_file(path, tokenizer, template, model_name="test", **kw)


def test_toy_file_agrees_with_the_cookbook(run_cli):
    code, out, _ = run_cli(
        "data", "validate", TOY, "--json", "--max-seq-len", "4096", "--no-estimate"
    )
    report = json.loads(out)
    assert report["n_examples"] == 5
    assert report["format_errors"] == {}
    assert report["warnings"]["missing_system"] == 1
    assert report["warnings"]["missing_user"] == 1
    assert report["warnings"]["over_max_length"] == 1
    over = [w for w in report["warning_details"] if w["name"] == "over_max_length"]
    assert [w["line"] for w in over] == [5]
    # The long last example dominates: far longer than the others.
    assert report["token_stats"]["tokens_per_example"]["max"] > 4096
    assert report["token_stats"]["tokens_per_example"]["median"] < 200
    # 5 examples are fewer than OpenAI accepts for training: a file-level error, exit 1.
    assert report["file_errors"] == {"too_few_examples": 1}
    assert code == 1
    # OpenAI's epoch rule: 5 examples → min(25, 100 // 5) = 20 epochs.
    assert report["suggested_epochs"] == 20
    # Billed tokens cap each example at max_seq_len (only the long last one is over it).
    stats = report["token_stats"]
    longest = stats["tokens_per_example"]["max"]
    assert report["billed_tokens"] == 20 * (stats["total_tokens"] - longest + 4096)


def test_recipes_csv_converts_with_a_mapping_and_validates(run_cli, tmp_path):
    out_file = tmp_path / "recipes.jsonl"
    code, _, err = run_cli(
        "data",
        "convert",
        RECIPES,
        out_file,
        "--map",
        "prompt=title+ingredients,completion=NER",
        "--system",
        "Extract the generic ingredients.",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 195
    first = rows[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[1]["content"].startswith("Title: No-Bake Nut Cookies\n\nIngredients: [")
    assert json.loads(first[2]["content"])[0] == "brown sugar"
    code, out, _ = run_cli("data", "validate", out_file, "--json", "--no-estimate")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["n_valid_examples"] == 195
    # The CSV validates directly with the mapping too.
    code, out, _ = run_cli(
        "data",
        "validate",
        RECIPES,
        "--json",
        "--no-estimate",
        "--map",
        "prompt=title+ingredients,completion=NER",
    )
    assert code == 0 and json.loads(out)["n_valid_examples"] == 195


def test_valid_file_exits_zero_with_statistics(tmp_path, tokenizer, template):
    path = write_lines(tmp_path / "ok.jsonl", good_examples(12))
    report = validate(path, tokenizer, template)
    assert report.ok and report.n_valid == 12
    stats = report.token_stats()
    assert stats["messages_per_example"]["max"] == 3
    assert 0 < stats["trained_tokens_per_example"]["min"] < stats["tokens_per_example"]["min"]
    assert report.suggested_epochs == 8  # 12 × 3 < 100 → 100 // 12
    assert report.billed_tokens == 8 * stats["total_tokens"]


@pytest.mark.parametrize(
    ("n", "epochs"), [(1, 25), (5, 20), (34, 3), (50, 3), (8333, 3), (8334, 2), (30000, 1)]
)
def test_openai_epoch_rule(n, epochs):
    assert suggested_epochs(n) == epochs


BAD_EXAMPLES = {
    # name: (bad line, expected field or None)
    "data_type": ('["not", "an", "object"]', None),
    "missing_messages_list": ({"prompt_is": "here"}, "messages"),
    "message_missing_key": (
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        "messages[0].content",
    ),
    "message_unrecognized_key": (
        {
            "messages": [
                {"role": "user", "content": "q", "mood": "happy"},
                {"role": "assistant", "content": "a"},
            ]
        },
        "messages[0].mood",
    ),
    "unrecognized_role": (
        {"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]},
        "messages[0].role",
    ),
    "missing_content": (
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
        "messages[0].content",
    ),
    "example_missing_assistant_message": (
        {"messages": [{"role": "user", "content": "q"}]},
        "messages",
    ),
    "invalid_json": ('{"messages": [', None),
    "invalid_weight": (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "weight": 2},
            ]
        },
        "messages[1].weight",
    ),
    "invalid_tool_call": (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"function": {}}]},
            ]
        },
        "messages[1].tool_calls[0].function.name",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_EXAMPLES))
def test_each_format_error_names_line_and_field(name, tmp_path, run_cli):
    bad, field = BAD_EXAMPLES[name]
    rows = good_examples(12)
    rows.insert(6, bad)  # line 7
    path = write_lines(tmp_path / "bad.jsonl", rows)
    code, out, err = run_cli("data", "validate", path, "--json", "--no-estimate")
    assert code == 1, err
    assert "Traceback" not in out + err
    report = json.loads(out)
    assert report["format_errors"].get(name, 0) >= 1, report["format_errors"]
    matching = [e for e in report["errors"] if e["name"] == name]
    assert matching and matching[0]["line"] == 7
    if field is not None:
        assert matching[0]["field"] == field
    assert report["n_valid_examples"] == 12


def test_duplicates_encoding_and_counts(tmp_path, tokenizer, template):
    path = tmp_path / "mixed.jsonl"
    rows = good_examples(12) + [chat_example(3)]
    write_lines(path, rows)
    with path.open("ab") as f:
        f.write(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    report = validate(path, tokenizer, template)
    assert report.format_errors == {"duplicate_example": 1, "encoding": 1}
    lines = {e.name: e.line for e in report.errors}
    assert lines == {"duplicate_example": 13, "encoding": 14}
    assert "UTF-8" in next(e.message for e in report.errors if e.name == "encoding")


def test_empty_and_too_small_files(tmp_path, run_cli):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out, _ = run_cli("data", "validate", empty, "--json", "--no-estimate")
    assert code == 1 and json.loads(out)["file_errors"] == {"empty_file": 1}
    small = write_lines(tmp_path / "small.jsonl", good_examples(3))
    code, out, _ = run_cli("data", "validate", small, "--json", "--no-estimate")
    assert code == 1 and json.loads(out)["file_errors"] == {"too_few_examples": 1}


def test_command_that_cannot_run_exits_two(tmp_path, run_cli):
    code, _, err = run_cli("data", "validate", tmp_path / "missing.jsonl", "--no-estimate")
    assert code == 2 and "no such file" in err
    path = write_lines(tmp_path / "ok.jsonl", good_examples(12))
    code, _, _ = run_cli("data", "validate", path, "--max-seq-len", "abc")
    assert code == 2
    code, _, err = run_cli("data", "validate", path, "--format", "yaml-of-doom", "--no-estimate")
    assert code == 2 and "unknown format" in err
    code, _, err = run_cli("data", "validate", path, "--max-seq-len", "999999", "--no-estimate")
    assert code == 2 and "context length" in err


def test_truncation_that_removes_every_trained_token_is_flagged(tmp_path, tokenizer, template):
    long_prompt = "word " * 400
    rows = good_examples(12) + [
        {
            "messages": [
                {"role": "user", "content": long_prompt},
                {"role": "assistant", "content": "short answer"},
            ]
        }
    ]
    report = validate(write_lines(tmp_path / "t.jsonl", rows), tokenizer, template, max_seq_len=128)
    assert report.warnings["over_max_length"] == 1
    assert report.warnings["trained_tokens_truncated"] == 1
    assert report.ok  # a warning, not an error


def test_human_report_and_time_estimate(tmp_path, run_cli, tiny_model_dir):
    path = write_lines(tmp_path / "ok.jsonl", good_examples(12))
    code, out, err = run_cli("data", "validate", path, "--model", tiny_model_dir)
    assert code == 0, err
    assert "No errors found" in out
    assert "suggested epochs: 8" in out
    assert "estimated training time here" not in out and "--estimate" in out  # opt-in
    code, out, err = run_cli("data", "validate", path, "--model", tiny_model_dir, "--estimate")
    assert code == 0, err
    assert "estimated training time here" in out
    code, out, _ = run_cli(
        "data", "validate", path, "--model", tiny_model_dir, "--json", "--estimate"
    )
    estimate = json.loads(out)["training_time_estimate"]
    assert estimate["tokens_per_second"] > 0 and estimate["epochs"] == 8
    # Reported values are rounded (seconds to 0.1, tokens/s to 0.1).
    assert estimate["seconds"] == pytest.approx(
        estimate["epochs"] * estimate["tokens_per_epoch"] / estimate["tokens_per_second"],
        rel=0.01,
        abs=0.1,
    )


def test_large_file_streams(tmp_path, tokenizer, template):
    """Many examples validate in one pass; detailed issue lists are capped, counts are not."""
    rows = [chat_example(i) for i in range(3000)] + ['{"bad"'] * 1500
    path = write_lines(tmp_path / "big.jsonl", rows)
    report = validate(path, tokenizer, template)
    assert report.n_valid == 3000
    assert report.format_errors["invalid_json"] == 1500
    assert len(report.errors) == 1000
