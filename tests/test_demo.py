"""The generated recipe-assistant demo data set: shape, rules, variety, splits and files."""

from __future__ import annotations

import inspect
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from tuneforge.data import demo
from tuneforge.data.demo import SYSTEM_PROMPT, generate_examples, write_demo
from tuneforge.data.split import split_examples

N = 600
USER_RE = re.compile(r"\ATitle: (.+)\n\nIngredients: (\[.*\])\n\nGeneric ingredients: \Z", re.S)

# Written independently of demo.py's tables so that a table edit cannot quietly weaken the test.
KNOWN_BRANDS = (
    "Kraft", "Campbell's", "Hershey's", "Pillsbury", "Philadelphia", "Jell-O", "Velveeta",
    "Hellmann's", "Bisquick", "Crisco", "Cool Whip", "Eagle Brand", "Karo", "Nestle", "Lipton",
    "Del Monte", "Green Giant", "McCormick", "Heinz", "French's",
)  # fmt: skip


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


UNIT_WORDS = _words(
    "c c. cup cups t t. tsp tsp. teaspoon teaspoons tbsp tbsp. tbs tbs. tablespoon tablespoons "
    "lb lb. lbs lbs. pound pounds oz oz. ounce ounces pkg pkg. package packages box boxes can "
    "cans jar jars bottle bottles carton cartons container tub envelope envelopes packet qt qt. "
    "quart quarts pt pt. gal gal. dash dashes pinch stick sticks slice slices strips sq. squares "
    "bunch head loaf inch"
)
# Words the rules drop; none is part of any generic ("crushed" is left out: "crushed pineapple").
DROPPED_WORDS = _words(
    "chopped diced minced sliced melted softened drained undrained beaten shredded grated cubed "
    "large medium small lean fresh packed optional taste cooked uncooked thawed divided peeled "
    "toasted sifted mashed unsalted granulated all-purpose"
)
PREP_MARKERS = (
    "chopped", "diced", "minced", "sliced", "melted", "softened", "drained", "beaten", "shredded",
    "grated", "cubed", "crushed", "peeled", "thawed", "cooked", "mashed", "sifted", "toasted",
    "crumbled", "divided", "undiluted", "whipped", "room temperature", "cut ", "optional",
    "hulled", "rinsed", "trimmed", "packed", "browned", "separated", "snipped", "pressed",
    "boiling", "halved", "quartered", "pitted", "torn", "broken", "scalded", "chilled", "juiced",
    "deveined", "skinned", "seeded",
)  # fmt: skip


def _parts(example: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """(title, ingredient lines, generic ingredients) of one example."""
    match = USER_RE.match(example["messages"][1]["content"])
    assert match, example["messages"][1]["content"]
    return match[1], json.loads(match[2]), json.loads(example["messages"][2]["content"])


@pytest.fixture(scope="module")
def examples() -> list[dict[str, Any]]:
    return generate_examples(N, seed=0)


@pytest.fixture(scope="module")
def parsed(examples: list[dict[str, Any]]) -> list[tuple[str, list[str], list[str]]]:
    return [_parts(e) for e in examples]


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_examples_and_other_seed_differs() -> None:
    assert generate_examples(50, seed=7) == generate_examples(50, seed=7)
    assert generate_examples(50, seed=7) != generate_examples(50, seed=8)
    # a prefix of a longer run: n only decides where to stop
    assert generate_examples(80, seed=7)[:50] == generate_examples(50, seed=7)


def test_global_rng_neither_used_nor_consulted() -> None:
    random.seed(1)
    first = generate_examples(20, seed=3)
    after = random.random()
    random.seed(1)
    expected_after = random.random()
    random.seed(999)
    second = generate_examples(20, seed=3)
    assert first == second
    assert after == expected_after


def test_no_duplicate_examples(examples: list[dict[str, Any]]) -> None:
    assert len(examples) == N
    assert len({json.dumps(e, sort_keys=True) for e in examples}) == N


def test_zero_and_negative_n() -> None:
    assert generate_examples(0) == []
    with pytest.raises(ValueError):
        generate_examples(-1)


# --- shape -----------------------------------------------------------------------------------


def test_every_example_is_system_user_assistant(examples: list[dict[str, Any]]) -> None:
    for example in examples:
        assert set(example) == {"messages"}
        messages = example["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in messages)
        assert messages[0]["content"] == SYSTEM_PROMPT
    assert SYSTEM_PROMPT == (
        "You are a helpful recipe assistant. You are to extract the generic ingredients from "
        "each of the recipes provided."
    )


def test_user_and_assistant_contents_parse(
    parsed: list[tuple[str, list[str], list[str]]],
) -> None:
    for title, lines, generics in parsed:
        assert title.strip() == title and title
        assert 3 <= len(lines) <= 12
        assert all(isinstance(line, str) and line.strip() == line and line for line in lines)
        assert isinstance(generics, list) and len(generics) >= len(lines)
        for generic in generics:
            assert isinstance(generic, str) and generic
            assert generic == generic.lower() == generic.strip()
        assert len(set(generics)) == len(generics), generics


def test_assistant_content_is_compact_json_dumps(examples: list[dict[str, Any]]) -> None:
    for example in examples[:50]:
        content = example["messages"][2]["content"]
        assert content == json.dumps(json.loads(content))


# --- the extraction rules --------------------------------------------------------------------


def test_every_generic_is_written_in_some_line(
    parsed: list[tuple[str, list[str], list[str]]],
) -> None:
    for _, lines, generics in parsed:
        lowered = [line.lower() for line in lines]
        for generic in generics:
            assert any(generic in line for line in lowered), (generic, lines)


def test_no_brand_in_any_answer(parsed: list[tuple[str, list[str], list[str]]]) -> None:
    brands = {b.lower() for b in (*KNOWN_BRANDS, *demo.BRANDS)}
    all_lines = " ".join(line for _, lines, _ in parsed for line in lines)
    written = [b for b in KNOWN_BRANDS if b in all_lines]
    assert len(written) >= 15, f"brands should appear in the lines; only saw {written}"
    for _, _, generics in parsed:
        for generic in generics:
            assert not any(brand in generic for brand in brands), generic


def test_no_unit_digit_or_dropped_word_in_any_answer(
    parsed: list[tuple[str, list[str], list[str]]],
) -> None:
    for _, _, generics in parsed:
        for generic in generics:
            assert not re.search(r"[\d().,/]", generic), generic
            words = set(generic.split())
            assert not words & UNIT_WORDS, generic
            assert not words & DROPPED_WORDS, generic


def test_alternatives_keep_the_first(parsed: list[tuple[str, list[str], list[str]]]) -> None:
    seen = 0
    for _, lines, generics in parsed:
        for line in lines:
            if "butter or margarine" in line:
                seen += 1
                assert "butter" in generics and "margarine" not in generics, (lines, generics)
    assert seen >= 3


def test_salt_and_pepper_line_gives_both(parsed: list[tuple[str, list[str], list[str]]]) -> None:
    seen = 0
    for _, lines, generics in parsed:
        for i, line in enumerate(lines):
            if "salt and" in line.lower() and "pepper" in line:
                seen += 1
                assert "salt" in generics and "pepper" in generics
                assert len(generics) == len(lines) + 1  # the one two-in-one line
                assert i < len(lines)
    assert seen >= 10


def test_count_nouns_follow_the_number(parsed: list[tuple[str, list[str], list[str]]]) -> None:
    size = r"(large |extra-large |medium )?"
    one = re.compile(rf"1 {size}(slightly |well )?(beaten )?egg\b(?! white| yolk)")
    several = re.compile(rf"[2-9]\d* {size}eggs\b")
    one_egg = several_eggs = 0
    for _, lines, generics in parsed:
        for line in lines:
            if one.match(line):
                one_egg += 1
                assert "egg" in generics and "eggs" not in generics
            if several.match(line):
                several_eggs += 1
                assert "eggs" in generics
    assert one_egg >= 1 and several_eggs >= 5


def test_adjectives_kept_where_recipenlg_keeps_them(
    parsed: list[tuple[str, list[str], list[str]]],
) -> None:
    generics = {g for _, _, gs in parsed for g in gs}
    for kept in ("brown sugar", "sour cream", "cream of mushroom soup", "ground beef"):
        assert kept in generics


# --- variety ---------------------------------------------------------------------------------


def test_variety(parsed: list[tuple[str, list[str], list[str]]]) -> None:
    titles = [title for title, _, _ in parsed]
    assert len(set(titles)) >= 0.8 * N
    generics = {g for _, _, gs in parsed for g in gs}
    assert len(generics) >= 100
    lines = [line for _, ls, _ in parsed for line in ls]
    marked = [
        line
        for line in lines
        if any(m in line.lower() for m in PREP_MARKERS) or any(b in line for b in KNOWN_BRANDS)
    ]
    assert len(marked) >= 0.3 * len(lines)
    assert len(set(lines)) >= 0.6 * len(lines)
    sizes = {len(ls) for _, ls, _ in parsed}
    assert min(sizes) <= 4 and max(sizes) == 12
    # units in many spellings, as RecipeNLG has them
    for unit in ("c.", "tsp.", "Tbsp.", "lb.", "oz.)", "pkg.", "can"):
        assert any(unit in line for line in lines), unit


# --- splits ----------------------------------------------------------------------------------


def _key(example: dict[str, Any]) -> str:
    return json.dumps(example, sort_keys=True)


def test_split_sizes_disjoint_and_complete(examples: list[dict[str, Any]]) -> None:
    original = list(examples)
    splits = split_examples(examples, seed=0)
    assert examples == original  # not shuffled in place
    assert list(splits) == ["train", "validation", "test"]
    assert [len(splits[s]) for s in splits] == [480, 60, 60]
    keys = [{_key(e) for e in splits[s]} for s in splits]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert keys[0] | keys[1] | keys[2] == {_key(e) for e in examples}


def test_split_is_deterministic_and_shuffles(examples: list[dict[str, Any]]) -> None:
    a = split_examples(examples, seed=4)
    assert a == split_examples(examples, seed=4)
    assert a["test"] != split_examples(examples, seed=5)["test"]
    assert a["train"] != examples[:480]


def test_split_small_and_custom_fractions() -> None:
    ten = generate_examples(10, seed=1)
    assert [len(v) for v in split_examples(ten).values()] == [8, 1, 1]
    halves = split_examples(ten, fractions=(0.5, 0.5, 0.0))
    assert [len(v) for v in halves.values()] == [5, 5, 0]
    with pytest.raises(ValueError, match="fractions"):
        split_examples(ten, fractions=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="fractions"):
        split_examples(ten, fractions=(0.9, 0.1))


# --- files -----------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_write_demo_writes_three_parseable_files(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "demo"
    paths = write_demo(out, seed=2, n=50)
    assert set(paths) == {"train", "validation", "test"}
    assert {p.name for p in paths.values()} == {"train.jsonl", "validation.jsonl", "test.jsonl"}
    assert sorted(p.name for p in out.iterdir()) == [
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]  # no temp files left behind
    rows = {split: _read_jsonl(path) for split, path in paths.items()}
    assert [len(rows[s]) for s in ("train", "validation", "test")] == [40, 5, 5]
    assert sorted(map(_key, sum(rows.values(), []))) == sorted(
        map(_key, generate_examples(50, seed=2))
    )
    for split_rows in rows.values():
        for row in split_rows:
            _parts(row)

    # Writing again replaces the files rather than appending.
    write_demo(out, seed=3, n=20)
    assert sum(len(_read_jsonl(p)) for p in paths.values()) == 20


def test_write_demo_defaults_to_600(tmp_path: Path) -> None:
    assert inspect.signature(write_demo).parameters["n"].default == 600
    paths = write_demo(tmp_path)
    assert sum(len(_read_jsonl(p)) for p in paths.values()) == 600


def test_write_demo_rejects_tiny_n(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 10"):
        write_demo(tmp_path / "out", n=9)
    assert not (tmp_path / "out").exists()
