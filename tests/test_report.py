"""The compare report: numbers equal compare.json, HTML is self-contained and safe, failures and
nulls render, and the checker catches a tampered report."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.eval.compare import _empty as empty_approach
from tuneforge.eval.report import NULL, report_numbers, write_report

REPO = Path(__file__).resolve().parents[1]
INJECTION = "<script>alert(1)</script>"
FT = "fine_tuned:run-abc"


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_report", REPO / "scripts/check_report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_report"] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


check_report = _load_checker()

REQUESTS = {
    3: (
        'Title: Easy Fudge\n\nIngredients: ["3 c. sugar", "1 stick butter", "1 c. milk"]\n\n'
        "Generic ingredients: "
    ),
    17: (
        'Title: Tuna Casserole\n\nIngredients: ["1 can tuna", "2 c. noodles"]\n\n'
        "Generic ingredients: "
    ),
    25: 'Title: Quick Bread\n\nIngredients: ["2 c. flour", "1 tsp. salt"]\n\nGeneric ingredients: ',
}
REFERENCES = {
    3: '["sugar", "butter", "milk"]',
    17: '["tuna", "noodles"]',
    25: '["flour", "salt"]',
}


def _samples(answers: dict[int, tuple[str, float | None]]) -> list[dict[str, Any]]:
    return [
        {"index": i, "request": REQUESTS[i], "reference": REFERENCES[i], "answer": a, "score": s}
        for i, (a, s) in answers.items()
    ]


def _approach(name: str, kind: str, **fields: Any) -> dict[str, Any]:
    """An approach as `compare.json` holds it (compare's own skeleton), succeeded by default."""
    ok = {"status": "ok", "description": "", "examples_in_prompt": 0, "train_examples_used": 0}
    return empty_approach(name, kind) | ok | fields


def make_compare() -> dict[str, Any]:
    """A realistic compare.json: three prompting approaches, one good fine-tuned run, one failed
    run, a user metric (`calorie_guess`) and model output that tries HTML injection."""
    return {
        "schema_version": 2,
        "created_at": "2026-11-28T04:00:00Z",
        "machine": "2-core AMD EPYC 7B13, CPU, torch 2.13.0",
        "use_case": {
            "title": "recipe ingredient extraction",
            "system_prompt": "List the generic ingredients of the recipe as a JSON array.",
            "model": "smollm2-135m-instruct",
            "train_file": "out/data/train.jsonl",
            "test_file": "out/data/test.jsonl",
            "n_train_examples": 480,
            "n_test_examples": 40,
            "max_new_tokens": 96,
            "n_leaked_test_examples": 1,
            "leaked_test_lines": [12],
        },
        "primary_metric": "set_f1",
        "primary_metric_reason": "every reference is a JSON list, compared as a set (set-F1)",
        "warnings": ["1 test example(s) also appear in the training file (test file lines 12)"],
        "approaches": [
            _approach(
                "zero_shot",
                "zero_shot",
                description="the base model with the data's system prompt",
                metrics={"set_f1": 0.0, "exact_match": 0.0, "token_f1": 0.1234, "json_valid": 0.0},
                primary_ci95=[0.0, 0.0],
                prompt_tokens_per_request=71.325,
                output_tokens_per_request=60.2,
                latency_p50_s=1.8049,
                latency_p95_s=2.9,
                samples=_samples(
                    {
                        3: ("Sure! Here are the ingredients: sugar, butter", 0.0),
                        17: (INJECTION, 0.0),
                    }
                    | {25: ("flour and salt", 0.0)}
                ),
            ),
            _approach(
                "few_shot",
                "few_shot",
                description="6 training examples in the prompt",
                examples_in_prompt=6,
                train_examples_used=6,
                notes=["k shrank from 8 to 6 to fit the 2048-token context"],
                metrics={
                    "set_f1": 0.2104,
                    "exact_match": 0.05,
                    "token_f1": 0.31,
                    "json_valid": 0.6,
                },
                primary_ci95=[0.15, 0.2704],
                prompt_tokens_per_request=402.95,
                output_tokens_per_request=22.4,
                latency_p50_s=2.4,
                latency_p95_s=3.15,
                samples=_samples(
                    {3: ('["sugar", "butter"]', 0.8), 17: ('["tuna"]', 0.6667), 25: ("[]", None)}
                ),
            ),
            _approach(
                "retrieval",
                "retrieval",
                description="the 6 most similar training examples (BM25) in the prompt",
                examples_in_prompt=6,
                train_examples_used=480,
                metrics={"set_f1": 0.25, "exact_match": 0.1, "token_f1": 0.35, "json_valid": 0.7},
                primary_ci95=[0.18, 0.33],
                prompt_tokens_per_request=473.35,
                output_tokens_per_request=20.1,
                latency_p50_s=2.9,
                latency_p95_s=4.0,
                samples=_samples(
                    {3: ('["sugar", "milk"]', 0.6667), 17: ('["tuna", "noodles"]', 1.0)}
                    | {25: ('["flour"]', 0.6667)}
                ),
            ),
            _approach(
                FT,
                "fine_tuned",
                description="LoRA fine-tune of smollm2-135m-instruct on 480 examples",
                train_examples_used=480,
                metrics={
                    "set_f1": 0.86,
                    "exact_match": 0.55,
                    "token_f1": 0.9,
                    "json_valid": 1.0,
                    "calorie_guess": 12.3456,
                },
                primary_ci95=[0.7912, 0.92],
                prompt_tokens_per_request=71.3,
                output_tokens_per_request=12.0,
                latency_p50_s=1.8,
                latency_p95_s=2.2,
                training_seconds=301.55,
                trained_tokens=51234,
                run_dir="/home/u/.cache/tuneforge/runs/run-abc",
                loss_curve={
                    "train": [[s, 1.9 * 0.93**s] for s in range(1, 41)],
                    "valid": [[0, 1.467], [10, 0.8], [20, 0.5], [30, 0.42], [40, 0.4]],
                },
                samples=_samples(
                    {3: ('["sugar", "butter", "milk"]', 1.0), 17: ('["tuna", "noodles"]', 1.0)}
                    | {25: ('["flour", "salt"]', 1.0)}
                ),
            ),
            _approach(
                "fine_tuned:run-broken",
                "fine_tuned",
                status="failed",
                error=f"run-broken: the run has no model yet {INJECTION}",
                train_examples_used=None,
            ),
        ],
        "summary": {
            "best_baseline": "retrieval",
            "best_fine_tuned": FT,
            "quality_gain": 0.61,
            "quality_gain_ci95": [0.5123, 0.7],
            "quality_gain_p_value": 0.0004,
            "quality_gain_test": "mcnemar_exact",
            "paired_requests": 40,
            "margin": 0.05,
            "more_requests_needed": None,
            "prompt_tokens_saved_per_request": 402.05,
            "prompt_token_ratio": 0.1506,
            "latency_saved_per_request_s": None,
            "break_even_requests": 275,
            "recommendation": "fine_tune",
            "decided_by": "quality",
            "decision": "Fine-tune, decided by quality: fine_tuned:run-abc is better on set_f1 by "
            "more than the margin 0.05 (95% interval of the gain +0.512 to +0.700).",
            "reasons": [
                "fine-tuned set_f1 0.860 vs 0.250 for retrieval (+0.610)",
                "402 fewer prompt tokens per request: training pays back after 275 requests",
            ],
        },
    }


@pytest.fixture()
def compare() -> dict[str, Any]:
    return make_compare()


@pytest.fixture()
def written(compare: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    md_path, html_path = write_report(compare, tmp_path)
    assert (md_path, html_path) == (tmp_path / "report.md", tmp_path / "report.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md"]  # no temps
    (tmp_path / "compare.json").write_text(json.dumps(compare), encoding="utf-8")
    return md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")


def _outside_fences(markdown: str) -> str:
    """The Markdown text that is not inside a fenced code block (where raw HTML is inert)."""
    return re.sub(r"^(`{3,})\n.*?\n\1$", "", markdown, flags=re.S | re.M)


# --- numbers ----------------------------------------------------------------------------------


def test_numbers_are_formatted_by_kind_and_null_is_a_dash(compare: dict[str, Any]) -> None:
    numbers = report_numbers(compare)
    assert numbers[f"approaches.{FT}.metrics.set_f1"] == "0.860"
    assert numbers[f"approaches.{FT}.metrics.calorie_guess"] == "12.346"  # a user metric
    assert numbers["approaches.zero_shot.metrics.calorie_guess"] == NULL  # not measured there
    assert numbers["approaches.zero_shot.prompt_tokens_per_request"] == "71.3"
    assert numbers["approaches.zero_shot.latency_p50_s"] == "1.80"
    assert numbers["approaches.zero_shot.training_seconds"] == NULL
    assert numbers[f"approaches.{FT}.training_seconds"] == "301.6"
    assert numbers[f"approaches.{FT}.trained_tokens"] == "51234"
    assert numbers["approaches.few_shot.samples.17.score"] == "0.667"
    assert numbers["approaches.few_shot.samples.25.score"] == NULL
    assert numbers["summary.quality_gain"] == "+0.610"
    assert numbers["summary.prompt_tokens_saved_per_request"] == "402.1"
    assert numbers["summary.break_even_requests"] == "275"
    assert numbers["summary.latency_saved_per_request_s"] == NULL
    assert numbers["use_case.n_test_examples"] == "40"
    assert not any(k.startswith("approaches.fine_tuned:run-broken.") for k in numbers)


def test_a_non_number_in_compare_json_is_a_data_error(compare: dict[str, Any]) -> None:
    from tuneforge.errors import DataError

    compare["approaches"][0]["latency_p50_s"] = "fast"
    with pytest.raises(DataError, match=r"approaches\.zero_shot\.latency_p50_s"):
        report_numbers(compare)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    metric=st.none() | finite,
    tokens=st.none() | finite,
    latency=st.none() | finite,
    seconds=st.none() | finite,
    count=st.none() | st.integers(0, 10**9) | finite,
)
def test_every_shown_number_is_a_rounding_of_the_raw_value(
    metric: float | None,
    tokens: float | None,
    latency: float | None,
    seconds: float | None,
    count: float | None,
) -> None:
    compare = make_compare()
    approach = compare["approaches"][3]
    approach["metrics"]["set_f1"] = metric
    approach |= {"prompt_tokens_per_request": tokens, "latency_p95_s": latency}
    approach |= {"training_seconds": seconds, "trained_tokens": count}
    compare["summary"] |= {"quality_gain": metric, "break_even_requests": count}
    assert check_report.check_against_compare(compare, report_numbers(compare)) == []


def test_the_raw_value_check_catches_a_wrong_rounding(compare: dict[str, Any]) -> None:
    numbers = report_numbers(compare)
    numbers[f"approaches.{FT}.metrics.set_f1"] = "0.861"
    numbers["approaches.zero_shot.training_seconds"] = "0.0"
    numbers["approaches.few_shot.primary_ci95.half_width"] = "0.061"  # (0.2704 - 0.15) / 2
    numbers["summary.quality_gain_ci95.1"] = "+0.710"
    assert check_report.check_against_compare(compare, numbers) == [
        "approaches.zero_shot.training_seconds: shown '0.0', compare.json has None",
        f"approaches.{FT}.metrics.set_f1: shown '0.861', compare.json has 0.86",
        "summary.quality_gain_ci95.1: shown '+0.710', compare.json has 0.7",
        "approaches.few_shot.primary_ci95.half_width: shown '0.061', compare.json has "
        f"{(0.2704 - 0.15) / 2!r}",
    ]
    assert check_report.agrees("<0.001", 0.0004) and not check_report.agrees("<0.001", 0.002)


# --- markdown ---------------------------------------------------------------------------------


def test_markdown_answers_the_questions_with_the_numbers(written: tuple[str, str]) -> None:
    markdown, _ = written
    assert markdown.startswith("# Fine-tune or not? recipe ingredient extraction\n")
    assert f"**Recommendation: fine-tune** ({FT} vs retrieval)" in markdown
    assert "- fine-tuned set_f1 0.860 vs 0.250 for retrieval (+0.610)" in markdown
    assert "| quality gain | +0.610 |" in markdown
    assert "| prompt tokens saved per request | 402.1 |" in markdown
    assert "| break-even requests | 275 |" in markdown
    assert "| latency saved per request (s) | — |" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| approach | set_f1"))
    assert header.index("set_f1 (primary)") < header.index("exact_match")
    assert "calorie_guess" in header
    assert f"| {FT} | 0.860 ± 0.064 | 0.550 | 0.900 | 1.000 | 12.346 |" in markdown
    assert "| zero_shot | 0 | 0 | — | — | 71.3 | 60.2 | 1.80 | 2.90 |" in markdown
    assert "| 95% interval of the gain | +0.512 to +0.700 |" in markdown
    assert "| p-value of the gain | <0.001 |" in markdown and "| margin | 0.050 |" in markdown
    assert "- **fine_tuned:run-broken: failed**: run-broken: the run has no model yet" in markdown
    assert "k shrank from 8 to 6" in markdown
    assert "**few_shot**, score 0.667:" in markdown


def test_the_decision_and_the_warnings_come_first(written: tuple[str, str]) -> None:
    markdown, html = written
    head = markdown.split("## Use case")[0]
    assert f"**Recommendation: fine-tune** ({FT} vs retrieval), decided by quality" in head
    lines = [line for line in head.splitlines() if line]
    assert lines[2].startswith("Fine-tune, decided by quality:")  # the decision sentence
    assert lines[3].startswith("> **Warning:** 1 test example(s) also appear in the training")
    assert "(95% interval +0.512 to +0.700, p = <0.001, margin 0.050)" in head
    assert html.index("Fine-tune, decided by quality:") < html.index("Warning:")
    assert html.index("Warning:") < html.index("<h2>Use case</h2>")
    assert f'data-key="approaches.{FT}.primary_ci95.half_width">0.064<' in html


def test_a_label_task_shows_precision_and_recall_per_label(
    compare: dict[str, Any], tmp_path: Path
) -> None:
    compare["primary_metric"] = "exact_match"
    compare["approaches"][3]["labels"] = {
        "negative": {"precision": 0.75, "recall": 0.6, "support": 5},
        "positive": {"precision": None, "recall": 0.0, "support": 2},
    }
    compare["approaches"][0]["labels"] = {
        "negative": {"precision": 1.0, "recall": 0.2, "support": 5}
    }
    md_path, html_path = write_report(compare, tmp_path)
    markdown, html = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    assert "| negative | 1.000 / 0.200 (5) | — | — | 0.750 / 0.600 (5) |" in markdown
    assert "| positive | — | — | — | — / 0.000 (2) |" in markdown
    assert check_report.check_numbers(compare, html) == []
    key = f"approaches.{FT}.labels.negative.recall"
    tampered = html.replace(f'data-key="{key}">0.600<', f'data-key="{key}">0.700<')
    assert tampered != html
    assert check_report.check_numbers(compare, tampered) == [
        f"approaches.{FT}.labels.negative.recall: report.html shows '0.700', compare.json gives "
        "'0.600'"
    ]


def test_checker_recomputes_the_decision_from_the_interval(compare: dict[str, Any]) -> None:
    assert check_report.check_decision(compare) == []
    compare["summary"]["quality_gain_ci95"] = [0.01, 0.7]  # no longer clears the 0.05 margin
    assert check_report.check_decision(compare) == [
        "summary.decided_by: 'quality', but the gain's interval [0.01, 0.7] does not clear the "
        "margin ±0.05"
    ]
    compare["summary"] |= {"decided_by": "undecided", "recommendation": "fine_tune"}
    assert check_report.check_decision(compare) == [
        "summary.recommendation: 'fine_tune' does not go with decided_by 'undecided'",
        "summary.more_requests_needed: undecided, but not how many more",
    ]
    compare["approaches"][3]["primary_ci95"] = [0.9, 0.95]
    assert (
        f"approaches.{FT}.primary_ci95: [0.9, 0.95] does not contain the point estimate 0.86"
        in (check_report.check_decision(compare))
    )


def test_markdown_keeps_model_output_inert(written: tuple[str, str]) -> None:
    markdown, _ = written
    assert INJECTION in markdown  # shown verbatim, inside a code block
    assert "<script" not in _outside_fences(markdown)  # the error message is escaped


def test_markdown_fence_outlasts_backticks_in_the_answer(
    compare: dict[str, Any], tmp_path: Path
) -> None:
    compare["approaches"][0]["samples"][0]["answer"] = "```\n# not a heading\n````"
    markdown = write_report(compare, tmp_path)[0].read_text(encoding="utf-8")
    assert "`````\n```\n# not a heading\n````\n`````" in markdown


# --- html -------------------------------------------------------------------------------------


def test_html_numbers_match_compare_json(compare: dict[str, Any], written: tuple[str, str]) -> None:
    _, html = written
    assert check_report.check_numbers(compare, html) == []
    shown = dict(check_report.parse_report(html).numbers)
    assert shown[f"approaches.{FT}.metrics.set_f1"] == "0.860"
    assert shown["approaches.zero_shot.training_seconds"] == NULL


def test_html_is_self_contained_and_escapes_model_output(written: tuple[str, str]) -> None:
    _, html = written
    assert check_report.check_self_contained(html) == []
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    images = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert len(images) == 2 and all(i.startswith("data:image/png;base64,iVBOR") for i in images)
    assert "<script" not in html.lower()
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2  # the answer and the error


def test_html_shows_the_recommendation_first_and_the_failure(written: tuple[str, str]) -> None:
    _, html = written
    assert html.index("Recommendation: fine-tune") < html.index("<h2>Use case</h2>")
    assert 'class="rec rec-fine_tune"' in html
    assert '<span class="badge">failed</span>' in html
    assert "run-broken: the run has no model yet" in html
    assert "k shrank from 8 to 6" in html


def test_checker_catches_a_tampered_number(
    compare: dict[str, Any], written: tuple[str, str]
) -> None:
    _, html = written
    key = "summary.break_even_requests"
    tampered = html.replace(f'data-key="{key}">275<', f'data-key="{key}">27<')
    assert tampered != html
    assert check_report.check_numbers(compare, tampered) == [
        f"{key}: report.html shows '27', compare.json gives '275'"  # shown twice, one problem
    ]


def test_checker_catches_a_missing_and_an_unknown_number(
    compare: dict[str, Any], written: tuple[str, str]
) -> None:
    _, html = written
    key = f"approaches.{FT}.metrics.calorie_guess"
    tampered = html.replace(f'data-key="{key}"', 'data-key="approaches.retrieval.metrics.bleu"')
    assert check_report.check_numbers(compare, tampered) == [
        "approaches.retrieval.metrics.bleu: in report.html but not a number the report should show",
        f"{key}: missing from report.html",
    ]


def test_checker_catches_a_report_written_from_other_numbers(
    compare: dict[str, Any], written: tuple[str, str]
) -> None:
    _, html = written
    changed = copy.deepcopy(compare)
    changed["approaches"][2]["metrics"]["set_f1"] = 0.3
    assert check_report.check_numbers(changed, html) == [
        "approaches.retrieval.metrics.set_f1: report.html shows '0.250', compare.json gives '0.300'"
    ]


def test_checker_script_exit_codes(
    compare: dict[str, Any],
    written: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(check_report, "find_chromium", lambda: None)  # the render has its own test
    assert check_report.main([str(tmp_path)]) == 0
    assert "numbers match compare.json" in capsys.readouterr().out
    assert check_report.main([str(tmp_path), "--screenshot", str(tmp_path / "s.png")]) == 2
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    (tmp_path / "report.html").write_text(html.replace(">0.860<", ">0.870<"), encoding="utf-8")
    assert check_report.main([str(tmp_path)]) == 1
    assert f"approaches.{FT}.metrics.set_f1: report.html shows '0.870'" in capsys.readouterr().err
    assert check_report.main([str(tmp_path / "nowhere")]) == 2


def test_checker_finds_the_comparison_in_a_run_directory(
    written: tuple[str, str], tmp_path: Path
) -> None:
    run = tmp_path.parent / f"{tmp_path.name}-run"
    run.mkdir()
    (run / "compare").symlink_to(tmp_path, target_is_directory=True)
    assert check_report.find_files(run) == (
        run / "compare/compare.json",
        run / "compare/report.html",
    )


def test_report_without_fine_tuned_runs_or_summary(compare: dict[str, Any], tmp_path: Path) -> None:
    """Every fine-tuned run failed: no loss plot, summary all null, the report still renders."""
    compare["approaches"] = [a for a in compare["approaches"] if a["kind"] != "fine_tuned"]
    compare["approaches"][1]["samples"] = compare["approaches"][1]["samples"][:1]  # index 3 only
    compare["summary"] = {k: None for k in compare["summary"]}
    md_path, html_path = write_report(compare, tmp_path)
    markdown, html = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    assert "**Recommendation: undecided**" in markdown
    assert "| break-even requests | — |" in markdown
    assert "**few_shot**: no answer for this example" in markdown
    assert "No fine-tuned run has a loss curve." in html
    assert html.count("<img") == 1
    assert check_report.check_numbers(compare, html) == []


# --- rendering in a real browser ----------------------------------------------------------------


@pytest.mark.integration
def test_chromium_renders_a_non_blank_report(written: tuple[str, str], tmp_path: Path) -> None:
    chromium = check_report.find_chromium()
    if chromium is None:
        if os.environ.get("CI") == "true":  # .ci/run installs it: a missing browser is a failure
            pytest.fail("no Chromium on this CI machine (apt-get install chromium)")
        pytest.skip("no Chromium on this machine")
    png = tmp_path / "shot.png"
    check_report.screenshot(chromium, tmp_path / "report.html", png)
    problems, description = check_report.check_screenshot(png)
    assert problems == [], description
    size, share = check_report.ink(png)
    assert size == check_report.WINDOW and share > check_report.MIN_INK
    # ...and the same check fails on a blank page, so it can tell the two apart.
    (tmp_path / "blank.html").write_text("<!doctype html><title>blank</title>", encoding="utf-8")
    check_report.screenshot(chromium, tmp_path / "blank.html", png)
    problems, _ = check_report.check_screenshot(png)
    assert problems == [f"{png}: 0.0% non-white pixels: a blank or broken render"]
