"""Evaluation: metrics, batched generation, baselines, compare.json and its recommendation."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import write_lines
from hypothesis import given
from hypothesis import strategies as st

from tuneforge.data.conversation import Message
from tuneforge.errors import DataError, UsageError
from tuneforge.eval import baselines, stats
from tuneforge.eval.compare import CompareOptions, Comparison, leaked, summarize
from tuneforge.eval.evaluate import Request, evaluate, percentile, reference_loss
from tuneforge.eval.metrics import (
    BUILTIN,
    exact_match,
    json_valid,
    load_user_metric,
    per_label,
    primary_metric_for,
    score_all,
    set_f1,
    token_f1,
)
from tuneforge.inference.generate import generate_batch
from tuneforge.train.plan import make_plan

# -- metrics ---------------------------------------------------------------------------------


def test_set_f1_compares_lists_as_sets_of_normalised_strings():
    ref = '["flour", "brown sugar", "eggs"]'
    assert set_f1('["Eggs", "flour", "Brown Sugar", "eggs"]', ref) == 1.0
    assert set_f1('["flour", "salt"]', ref) == pytest.approx(2 * 1 / (2 + 3))
    assert set_f1("flour, brown sugar, eggs", ref) == 0.0  # not a JSON list: no credit
    assert set_f1('```json\n["flour", "brown sugar", "eggs"]\n```', ref) == 1.0
    assert set_f1('{"a": 1}', ref) == 0.0
    assert set_f1("[]", ref) == 0.0
    assert set_f1("anything", "Paris") is None  # reference not a list: metric does not apply


@given(st.lists(st.text(alphabet="abcdefgh ", min_size=1, max_size=8), max_size=6))
def test_set_f1_properties(items):
    ref = json.dumps(items)
    assert set_f1(ref, ref) == 1.0
    other = json.dumps(items[:1] + ["zzz"])
    assert set_f1(other, ref) == pytest.approx(set_f1(ref, other))
    assert 0.0 <= set_f1(other, ref) <= 1.0


def test_text_metrics():
    assert exact_match("The Paris.", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    # "the" is dropped: 1 of 3 answer tokens is right (precision 1/3, recall 1)
    assert token_f1("the capital is Paris", "Paris") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0
    assert json_valid("[1, 2", "[1]") == 0.0
    assert json_valid("[1, 2]", "[1]") == 1.0
    assert json_valid("[1]", "Paris") is None


def test_user_metric_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="module:function"):
        load_user_metric("nocolon")
    with pytest.raises(UsageError, match="could not import 'no_such_module_xyz'"):
        load_user_metric("no_such_module_xyz:f")
    (tmp_path / "mymetrics.py").write_text(
        "def length(answer, reference):\n    return float(len(answer) < 10)\n"
        "def broken(answer, reference):\n    raise ValueError('boom')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="has no function 'missing'"):
        load_user_metric("mymetrics:missing")
    name, fn = load_user_metric("mymetrics:length")
    assert name == "length" and fn("short", "") == 1.0
    _, broken = load_user_metric("mymetrics:broken")
    means, scores, problems = score_all(
        {"set_f1": set_f1, "broken": broken}, ['["a"]', "x"], ['["a"]', '["b"]']
    )
    assert means == {"set_f1": 0.5}  # the raising metric is left out, the others stand
    assert "broken" not in scores[0]
    assert len(problems) == 1 and "raised on test example 1: ValueError: boom" in problems[0]


def test_percentile_is_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0


# -- generation and loss on the tiny model ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from tuneforge.inference.load import load_for_inference

    return load_for_inference(str(tiny_model_dir))


def _requests(n: int) -> list[Request]:
    return [
        Request(
            (
                Message("system", "List the ingredients."),
                Message("user", f"Recipe {i}: " + "flour and sugar " * (i % 4 + 1)),
            ),
            json.dumps(["flour", "sugar"][: i % 2 + 1]),
        )
        for i in range(n)
    ]


def test_batched_answers_equal_one_at_a_time(tiny):
    requests = _requests(5)
    prompts = [tiny.text.prompt_ids(r.messages) for r in requests]
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding is exercised
    batched = generate_batch(tiny, prompts, max_new_tokens=12)
    alone = [generate_batch(tiny, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == alone


def test_evaluate_counts_tokens_and_times_requests(tiny):
    requests = _requests(7)
    seen = []
    ev = evaluate(
        tiny,
        requests,
        BUILTIN,
        max_new_tokens=6,
        batch_size=3,
        latency_requests=2,
        on_progress=lambda d, t: seen.append((d, t)),
    )
    assert ev.prompt_tokens == [len(tiny.text.prompt_ids(r.messages)) for r in requests]
    assert all(1 <= n <= 6 for n in ev.output_tokens)
    assert len(ev.latencies) == 2 and all(t > 0 for t in ev.latencies)
    assert seen[-1] == (7, 7)
    assert set(ev.metrics) == {"set_f1", "exact_match", "token_f1", "json_valid", "test_loss"}
    summary = ev.summary()
    assert summary["prompt_tokens_per_request"] == pytest.approx(sum(ev.prompt_tokens) / 7)


def test_reference_loss_scores_only_the_answer(tiny):
    import torch

    from tuneforge.data.conversation import Conversation
    from tuneforge.data.tokenize import encode

    request = Request(
        (Message("user", "q1"), Message("assistant", "a shot"), Message("user", "q2")), '["x"]'
    )
    # Independent computation: the answer's tokens are those after the prompt + generation prompt.
    prompt = tiny.text.prompt_ids(request.messages)
    full = encode(
        Conversation(
            (
                Message("user", "q1"),
                Message("assistant", "a shot", weight=0),
                Message("user", "q2"),
                Message("assistant", '["x"]'),
            )
        ),
        tiny.tokenizer,
        tiny.template,
    )
    assert full.input_ids[: len(prompt)] == prompt
    ids = torch.tensor([full.input_ids])
    with torch.no_grad():
        logits = tiny.model(input_ids=ids).logits[0]
    targets = ids[0, len(prompt) :]
    targets = targets[: full.n_trained]  # answer + end-of-turn, not the trailing newline
    expected = torch.nn.functional.cross_entropy(
        logits[len(prompt) - 1 : len(prompt) - 1 + len(targets)], targets
    )
    assert reference_loss(tiny, [request]) == pytest.approx(expected.item(), rel=1e-4)


# -- baselines -------------------------------------------------------------------------------


def test_few_shot_k_shrinks_to_fit_the_budget_and_says_so(tiny):
    train = _requests(6)
    test = _requests(2)
    roomy = baselines.few_shot(tiny, train, test, k=4, budget=10_000)
    assert roomy.examples_in_prompt == 4 and not roomy.notes
    assert sum(m.role == "assistant" for m in roomy.requests[0].messages) == 4
    longest = max(len(tiny.text.prompt_ids(r.messages)) for r in roomy.requests)
    tight = baselines.few_shot(tiny, train, test, k=4, budget=longest - 1)
    assert tight.examples_in_prompt < 4
    assert "k shrank from 4 to" in tight.notes[0]
    assert all(len(tiny.text.prompt_ids(r.messages)) < longest for r in tight.requests)
    # The system prompt stays first; the request's own question stays last.
    assert tight.requests[0].messages[0].role == "system"
    assert tight.requests[0].messages[-1] == test[0].messages[-1]


def test_retrieval_puts_the_most_similar_example_last(tiny):
    def req(text: str) -> Request:
        return Request((Message("user", text),), "[]")

    train = [req("chocolate cake with cocoa"), req("tuna salad"), req("pork chops with apples")]
    test = [req("easy tuna casserole with noodles")]
    built = baselines.retrieval(
        tiny, train, test, k=2, budget=10_000, retriever=baselines.BM25(baselines.documents(train))
    )
    users = [m.content for m in built.requests[0].messages if m.role == "user"]
    assert users[-2] == "tuna salad"  # closest example right before the question
    assert users[-1] == "easy tuna casserole with noodles"
    assert built.examples_in_prompt == 2 and "BM25" in built.description


@pytest.mark.skipif(baselines.embedding_model_folder() is None, reason="embedding model missing")
def test_embedding_retriever_finds_paraphrases():
    docs = ["How do I bake bread?", "What is the capital of France?", "Fixing a flat bike tyre"]
    retriever = baselines.make_retriever(docs, "embeddings")
    assert retriever.top_k(["Paris is the capital of which country?"], 1) == [[1]]
    assert retriever.top_k(["my bicycle has a puncture"], 1) == [[2]]


@pytest.mark.skipif(baselines.embedding_model_folder() is None, reason="embedding model missing")
def test_embeddings_in_length_sorted_batches_equal_one_at_a_time_and_are_kept(
    isolated_home, monkeypatch
):
    import torch

    docs = ["short", "a much longer text about baking bread with flour and water " * 5, "mid one"]
    docs = docs * 30  # 90 texts: two batches of 64, texts of different lengths in each
    retriever = baselines.make_retriever(docs, "embeddings")
    alone = torch.cat([retriever._embed([d]) for d in docs[:3]])
    torch.testing.assert_close(retriever.docs[:3], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(retriever.docs[87:90], alone, atol=1e-5, rtol=0)

    # kept: a second retriever over the same texts reads them back instead of embedding again
    kept = list((isolated_home / "embeddings").glob("*.safetensors"))
    assert len(kept) == 1
    calls = []
    original = baselines.Embeddings._embed
    monkeypatch.setattr(
        baselines.Embeddings,
        "_embed",
        lambda self, texts: calls.append(len(texts)) or original(self, texts),
    )
    again = baselines.make_retriever(docs, "embeddings")
    assert calls == [] and torch.equal(again.docs, retriever.docs)
    kept[0].write_bytes(b"cut short")  # a damaged file is embedded again, not an error
    again = baselines.make_retriever(docs, "embeddings")
    assert calls == [len(docs)] and torch.equal(again.docs, retriever.docs)
    baselines.make_retriever(docs[:5], "embeddings")  # other texts: their own file
    assert calls == [len(docs), 5]

    # a home it cannot write to: the embeddings are still returned, no half file is left
    blocked = isolated_home / "embeddings"
    for file in blocked.iterdir():
        file.unlink()
    blocked.rmdir()
    blocked.write_text("a file where the folder should be")
    assert torch.equal(baselines.make_retriever(docs, "embeddings").docs, retriever.docs)
    assert [p.name for p in isolated_home.iterdir()] == ["embeddings"]


# -- recommendation --------------------------------------------------------------------------


def _approach(name, kind, score, prompt_tokens, latency=1.0, training_tokens=None, n=40):
    """An approach whose `n` requests score `score` on average: the first round(score·n) get 1."""
    hits = round(score * n)
    return _scored(name, kind, [1.0] * hits + [0.0] * (n - hits), prompt_tokens, latency)[
        "approach"
    ] | {"training_tokens": training_tokens}


def _scored(name, kind, scores, prompt_tokens, latency=1.0, training_tokens=None):
    return {
        "approach": {
            "name": name,
            "kind": kind,
            "status": "ok",
            "metrics": {"set_f1": sum(scores) / len(scores)},
            "per_request_scores": {"set_f1": list(scores)},
            "prompt_tokens_per_request": prompt_tokens,
            "latency_p50_s": latency,
            "training_tokens": training_tokens,
        }
    }


def test_summary_recommends_fine_tuning_with_numbers():
    approaches = [
        _approach("zero_shot", "zero_shot", 0.0, 100),
        _approach("few_shot", "few_shot", 0.2, 600, 3.0),
        _approach("retrieval", "retrieval", 0.25, 700, 4.0),
        _approach("fine_tuned:r", "fine_tuned", 0.85, 100, 1.0, training_tokens=10_000),
    ]
    s = summarize(approaches, "set_f1")
    assert s["best_baseline"] == "retrieval" and s["best_fine_tuned"] == "fine_tuned:r"
    assert s["quality_gain"] == pytest.approx(0.6)
    assert s["prompt_tokens_saved_per_request"] == 600
    assert s["prompt_token_ratio"] == pytest.approx(1 / 7)
    assert s["latency_saved_per_request_s"] == pytest.approx(3.0)
    assert s["break_even_requests"] == 50  # 3 × 10,000 training tokens / 600 saved per request
    assert s["recommendation"] == "fine_tune" and s["decided_by"] == "quality"
    lo, hi = s["quality_gain_ci95"]
    assert s["margin"] < lo < 0.6 < hi
    # the first 10 requests are right for both; 24 only fine-tuned gets right, none only retrieval
    assert s["quality_gain_test"] == "mcnemar_exact"
    assert s["quality_gain_p_value"] == pytest.approx(2 * 0.5**24)
    assert s["decision"].startswith("Fine-tune, decided by quality")
    assert any("0.850 against 0.250" in r for r in s["reasons"])
    assert any("median latency is 3.00 s per request shorter" in r for r in s["reasons"])


def test_summary_recommends_prompting_when_fine_tuning_is_worse():
    approaches = [
        _approach("few_shot", "few_shot", 0.7, 600),
        _approach("fine_tuned:r", "fine_tuned", 0.2, 100, training_tokens=1000),
        {**_approach("fine_tuned:x", "fine_tuned", 0.99, 10), "status": "failed"},
    ]
    s = summarize(approaches, "set_f1")
    assert s["best_fine_tuned"] == "fine_tuned:r"  # a failed run never counts
    assert s["recommendation"] == "prompt_engineering" and s["decided_by"] == "quality"
    alone = summarize(approaches[:1], "set_f1")
    assert alone["recommendation"] == "undecided" and alone["decided_by"] == "undecided"


def test_a_worse_fine_tune_is_never_said_to_pay_back():
    """It sends fewer prompt tokens, but a worse answer is not paid for by them (issue 17)."""
    s = summarize(
        [
            _approach("few_shot", "few_shot", 0.7, 600),
            _approach("fine_tuned:r", "fine_tuned", 0.3, 100, training_tokens=1000),
        ],
        "set_f1",
    )
    assert s["recommendation"] == "prompt_engineering"
    assert s["break_even_requests"] is None
    assert not any("paid back" in r for r in s["reasons"] + [s["decision"]])


def test_two_identical_approaches_are_not_told_apart_by_quality():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 0.0] * 5
    s = summarize(
        [
            _scored("few_shot", "few_shot", scores, 500)["approach"],
            _scored("fine_tuned:r", "fine_tuned", scores, 500, training_tokens=1000)["approach"],
        ],
        "set_f1",
    )
    lo, hi = s["quality_gain_ci95"]
    assert lo <= 0 <= hi
    assert s["decided_by"] != "quality"
    assert s["decided_by"] == "cost" and s["recommendation"] == "prompt_engineering"
    assert "not significant" in s["decision"]


def test_equal_quality_with_fewer_prompt_tokens_is_decided_by_cost():
    scores = [0.8, 0.6, 1.0, 0.9, 0.7] * 8
    s = summarize(
        [
            _scored("retrieval", "retrieval", scores, 600, 2.0)["approach"],
            _scored("fine_tuned:r", "fine_tuned", scores, 100, 1.0, 5000)["approach"],
        ],
        "set_f1",
    )
    assert s["decided_by"] == "cost" and s["recommendation"] == "fine_tune"
    assert s["quality_gain_ci95"] == [0.0, 0.0]
    assert s["break_even_requests"] == 30  # 3 × 5000 / 500
    assert "the quality difference is not significant" in s["decision"]
    assert "500 fewer prompt tokens" in s["decision"] and "30 requests" in s["decision"]


def test_a_noisy_small_difference_is_undecided_with_the_requests_that_would_settle_it():
    rng = __import__("random").Random(1)
    base = [float(rng.random() < 0.5) for _ in range(40)]
    tuned = [b if rng.random() < 0.7 else 1 - b for b in base]  # ~12 flips either way
    s = summarize(
        [
            _scored("few_shot", "few_shot", base, 100)["approach"],
            _scored("fine_tuned:r", "fine_tuned", tuned, 400, training_tokens=1000)["approach"],
        ],
        "set_f1",
    )
    lo, hi = s["quality_gain_ci95"]
    assert lo < -0.05 < 0.05 < hi  # straddles the margin on both sides
    assert s["decided_by"] == "undecided" and s["recommendation"] == "undecided"
    assert s["more_requests_needed"] > 0
    assert f"About {s['more_requests_needed']} more test requests" in s["decision"]
    # …and a wider margin makes the same numbers equivalent, so cost decides
    wide = summarize(
        [
            _scored("few_shot", "few_shot", base, 100)["approach"],
            _scored("fine_tuned:r", "fine_tuned", tuned, 400, training_tokens=1000)["approach"],
        ],
        "set_f1",
        margin=0.5,
    )
    assert wide["decided_by"] == "cost" and wide["margin"] == 0.5


def test_the_bootstrap_is_reproducible_by_seed():
    rng = __import__("random").Random(0)
    a = [rng.random() for _ in range(30)]
    b = [min(1.0, x + rng.uniform(-0.1, 0.3)) for x in a]
    first = stats.paired_gain(b, a, seed=7)
    assert first == stats.paired_gain(b, a, seed=7)
    assert first.test == "paired_bootstrap" and 0 < first.p_value < 0.05
    assert first.ci95 != stats.paired_gain(b, a, seed=8).ci95
    assert stats.interval(a, seed=3) == stats.interval(a, seed=3)
    lo, hi = stats.interval(a, seed=3)
    assert lo < sum(a) / len(a) < hi
    assert stats.interval([None, None]) is None
    assert stats.paired_gain([1.0, None], [None, 0.0]) is None


def test_mcnemar_exact_is_a_two_sided_binomial_test():
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    # 8 vs 2 discordant pairs: 2 · P(X ≤ 2), X ~ Binomial(10, 1/2) = 2 · 56 / 1024
    assert stats.mcnemar_exact(8, 2) == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(2, 8) == stats.mcnemar_exact(8, 2)


def test_requests_to_settle_follow_the_observed_spread():
    # gain 0.15, margin 0.05: settled when 1.96·sd/√n < 0.10, sd 0.5 → n ≥ 97
    assert stats.requests_to_settle(0.15, 0.5, 0.05, 40) == 97
    assert stats.requests_to_settle(0.05, 0.5, 0.05, 40) is None  # on the margin: never


def test_a_label_task_is_scored_by_exact_match_with_per_label_numbers():
    labels = ["positive", "negative", "neutral"]
    refs = [labels[i % 3] for i in range(30)]
    metric, why = primary_metric_for(refs[:9], refs)
    assert metric == "exact_match" and "3 short labels" in why
    assert primary_metric_for(['["a", "b"]'], ['["a", "b"]'])[0] == "set_f1"
    sentences = [f"The capital of country {i} is City{i}." for i in range(30)]
    assert primary_metric_for(sentences[:5], sentences)[0] == "token_f1"
    table = per_label(["Positive.", "negative", "positive"], ["positive", "negative", "neutral"])
    assert table["positive"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert table["neutral"] == {"precision": None, "recall": 0.0, "support": 1}


# -- compare end to end (tiny model) ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    from tuneforge.config import build_config
    from tuneforge.data.demo import write_demo
    from tuneforge.train.recipe import train

    data = tmp_path_factory.mktemp("cmpdata")
    write_demo(data, seed=3, n=60)
    run = tmp_path_factory.mktemp("cmprun") / "run"
    config = build_config(
        {
            "model": str(tiny_model_dir),
            "train_file": str(data / "train.jsonl"),
            "validation_file": str(data / "validation.jsonl"),
            "output_dir": str(run),
            "batch_size": 4,
            "max_steps": 2,
            "eval_every": 1,
        }
    )
    train(make_plan(config))
    return data, run


def test_compare_writes_every_approach_and_survives_a_failing_one(
    tiny_run, tiny_model_dir, tmp_path
):
    data, run = tiny_run
    broken = tmp_path / "broken-run"
    broken.mkdir()
    (broken / "config.yaml").write_text(f"model: {tiny_model_dir}\n")  # a run with no model
    options = CompareOptions(
        train_file=data / "train.jsonl",
        test_file=data / "test.jsonl",
        out_dir=tmp_path / "cmp",
        model=str(tiny_model_dir),
        runs=[run, broken],
        k=2,
        limit=4,
        max_new_tokens=8,
        latency_requests=1,
        retriever="bm25",
    )
    comparison = Comparison(options)
    comparison.run_baselines()
    for r in options.runs:
        comparison.run_fine_tuned(r)
    path, md, html = comparison.finish()
    result = json.loads(path.read_text())
    names = [a["name"] for a in result["approaches"]]
    assert names == [
        "zero_shot",
        "few_shot",
        "retrieval",
        "fine_tuned:run",
        "fine_tuned:broken-run",
    ]
    by_name = {a["name"]: a for a in result["approaches"]}
    for name in names[:4]:
        a = by_name[name]
        assert a["status"] == "ok", a["error"]
        assert set(a["metrics"]) >= {"set_f1", "exact_match", "token_f1", "json_valid"}
        assert a["prompt_tokens_per_request"] > 0 and a["output_tokens_per_request"] > 0
        assert a["latency_p50_s"] > 0 and a["latency_p95_s"] >= a["latency_p50_s"]
        assert [s["index"] for s in a["samples"]] == [0, 1, 2, 3]
        per_request = a["per_request_scores"]["set_f1"]
        assert len(per_request) == 4
        assert a["metrics"]["set_f1"] == pytest.approx(sum(per_request) / 4)
        lo, hi = a["primary_ci95"]
        assert lo <= a["metrics"]["set_f1"] <= hi
    assert by_name["zero_shot"]["training_seconds"] is None
    assert by_name["few_shot"]["examples_in_prompt"] == 2
    assert (
        by_name["few_shot"]["prompt_tokens_per_request"]
        > by_name["zero_shot"]["prompt_tokens_per_request"]
    )
    tuned = by_name["fine_tuned:run"]
    assert tuned["training_seconds"] > 0 and tuned["trained_tokens"] > 0
    assert tuned["train_examples_used"] == 8  # 2 steps × batch 4 of the 48 examples
    assert len(tuned["loss_curve"]["train"]) == 2
    assert tuned["loss_curve"]["valid"][0][0] == 0  # the base model's loss before training
    failed = by_name["fine_tuned:broken-run"]
    assert failed["status"] == "failed" and "no model yet" in failed["error"]
    assert result["summary"]["best_fine_tuned"] == "fine_tuned:run"
    assert result["summary"]["decided_by"] in ("quality", "cost", "undecided")
    assert result["summary"]["margin"] == 0.05
    assert result["primary_metric"] == "set_f1"
    assert "JSON list" in result["primary_metric_reason"]
    assert result["use_case"]["n_test_examples"] == 4
    assert "Recommendation" in md.read_text() and html.exists()


def test_leaked_test_examples_are_reported_and_left_out(tiny_model_dir, tmp_path):
    def chat(question, answer, system="Answer briefly."):
        return {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }

    train = [chat(f"What is {i} plus {i}?", str(2 * i)) for i in range(12)]
    test = [
        chat("what is 3   PLUS 3?", "6", system="Another system prompt."),  # a re-typed copy
        chat("What is 20 plus 20?", "40"),
        chat("What is 5 plus 5?", "ten"),  # same question, other answer: still seen in training
        chat("What is 21 plus 21?", "42"),
    ]
    options = CompareOptions(
        train_file=write_lines(tmp_path / "train.jsonl", train),
        test_file=write_lines(tmp_path / "test.jsonl", test),
        out_dir=tmp_path / "out",
        model=str(tiny_model_dir),
        max_new_tokens=4,
    )
    assert leaked(
        [Request((Message("user", "Hi  there"),), "x")],
        [Request((Message("user", "hi there"),), "y"), Request((Message("user", "hi"),), "x")],
        [7, 8],
    ) == [7]
    comparison = Comparison(options)
    assert comparison.leaked_lines == [1, 3]
    assert [r.reference for r in comparison.test] == ["40", "42"]
    result = comparison.to_json()
    assert result["use_case"]["n_leaked_test_examples"] == 2
    assert result["use_case"]["n_test_examples"] == 2
    assert result["schema_version"] == 2
    assert "2 test example(s) also appear in the training file" in result["warnings"][0]
    assert "lines 1, 3" in result["warnings"][0]
    assert "only 2 test requests" in result["warnings"][1]  # too small: said up front
    assert result["primary_metric"] == "token_f1"
    # the same file for both: excluding every example would leave nothing, so they stay, warned
    options.test_file = options.train_file
    same = Comparison(options)
    assert len(same.test) == 12 and same.nothing_held_out
    assert same.warnings()[0].startswith("every one of the 12 test examples is also in the")


def test_compare_scores_a_label_task_by_exact_match(tiny_model_dir, tmp_path):
    def chat(i, label):
        return {
            "messages": [
                {"role": "user", "content": f"Review {i}: it was {label} in every way"},
                {"role": "assistant", "content": label.capitalize()},
            ]
        }

    labels = ["good", "bad", "so-so"]
    train = write_lines(tmp_path / "train.jsonl", [chat(i, labels[i % 3]) for i in range(18)])
    test = write_lines(tmp_path / "test.jsonl", [chat(100 + i, labels[i % 3]) for i in range(6)])
    options = CompareOptions(train, test, tmp_path / "out", model=str(tiny_model_dir))
    comparison = Comparison(options)
    assert comparison.primary == "exact_match" and comparison.label_task
    assert "one of 3 short labels" in comparison.primary_reason
    options.primary_metric = "token_f1"
    chosen = Comparison(options)
    assert chosen.primary == "token_f1"
    assert chosen.primary_reason.startswith("chosen with --primary-metric (detected: every")


def test_compare_refuses_mismatched_or_empty_test_files(tiny_run, tmp_path):
    data, _ = tiny_run
    alpaca = write_lines(tmp_path / "test.jsonl", [{"instruction": "x", "output": "y"}] * 3)
    with pytest.raises(DataError, match="alpaca format but the training file .* openai-chat"):
        Comparison(CompareOptions(data / "train.jsonl", alpaca, tmp_path / "o"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        Comparison(CompareOptions(data / "train.jsonl", empty, tmp_path / "o"))
    with pytest.raises(UsageError, match="not a run directory"):
        Comparison(CompareOptions(data / "train.jsonl", data / "test.jsonl", tmp_path, runs=[data]))


def test_cli_compare_and_eval_errors_are_messages(run_cli, tiny_run, tmp_path):
    data, run = tiny_run
    code, _, err = run_cli("compare", "--train", data / "train.jsonl", "--test", tmp_path / "nope")
    assert code == 2 and "no such test file" in err and "Traceback" not in err
    code, _, err = run_cli("eval", run, "--test", data / "test.jsonl", "--metric", "bad")
    assert code == 2 and "module:function" in err
    code, out, err = run_cli(
        "eval", run, "--test", data / "test.jsonl", "--limit", "2", "--max-tokens", "4",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 2 and "set_f1" in result["metrics"] and "test_loss" in result["metrics"]


@pytest.mark.integration
def test_quickstart_fast_end_to_end(tmp_path):
    """The README's main job in its smoke size, as a user runs it (real model, subprocess)."""
    import subprocess

    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "quickstart", "--fast", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "compare.json").read_text())
    names = [a["name"] for a in result["approaches"]]
    assert names == ["zero_shot", "few_shot", "retrieval", "fine_tuned:run"]
    assert all(a["status"] == "ok" for a in result["approaches"])
    summary = result["summary"]
    assert summary["recommendation"] in ("fine_tune", "prompt_engineering", "undecided")
    assert summary["decided_by"] in ("quality", "cost", "undecided")
    lo, hi = summary["quality_gain_ci95"]
    assert lo <= summary["quality_gain"] <= hi and 0 <= summary["quality_gain_p_value"] <= 1
    assert all(len(a["per_request_scores"]["set_f1"]) == 6 for a in result["approaches"])
    assert "only 6 test requests" in result["warnings"][0]  # the smoke size is warned about
    report = (out / "report.md").read_text()
    assert summary["decision"] in report and " ± " in report
    assert (out / "report.html").exists() and (out / "run" / "model").is_dir()
    assert "recommendation:" in proc.stdout and "tuneforge chat" in proc.stdout
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert step in proc.stderr  # progress is visible the whole way
    check = subprocess.run(
        [sys.executable, "scripts/check_report.py", str(out)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_tool_call_answer_is_evaluated_as_the_text_training_taught(tokenizer, template):
    """A test row whose answer is a tool call: its reference is the `<tool_call>` text the model
    learnt to write (what the server parses calls from), and its tools are in the prompt."""
    from tuneforge.data.chat_template import parse_tool_calls
    from tuneforge.data.formats import Example, parse_record
    from tuneforge.eval.evaluate import to_request
    from tuneforge.models.text import TextSide

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    raw = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "type": "function", "function": call}],
            },
        ],
        "tools": tools,
    }
    parsed = parse_record(raw, "openai-chat")
    assert parsed.errors == []
    request = to_request(Example(1, parsed.conversation), "test.jsonl")
    assert parse_tool_calls(request.reference).calls == (("get_weather", '{"city": "Paris"}'),)
    assert request.tools == tuple(tools)
    text = TextSide(tokenizer, template, 2048, frozenset())
    with_tools = tokenizer.decode(text.prompt_ids(request.messages, request.tools))
    assert "get_weather" in with_tools
    assert "get_weather" not in tokenizer.decode(text.prompt_ids(request.messages))
