"""The recipe-assistant demo data set, generated here so the project never needs a download.

It follows OpenAI's "How to fine-tune chat models" tutorial, which fine-tunes on RecipeNLG: the
user gives a recipe title and its ingredient lines, the assistant answers with the generic
ingredients (RecipeNLG's `NER` column) as a JSON list. We cannot ship RecipeNLG (licence, size,
no network), so we synthesise look-alike recipes from tables, standard library only.

The mapping is rule-based and consistent, which is what makes it learnable by fine-tuning:

- quantities, units, parenthesised sizes, brands, size/quality adjectives ("large", "lean",
  "firmly packed") and preparation ("chopped", ", drained", "at room temperature") are dropped;
- "X or Y" keeps X; "salt and pepper to taste" gives both "salt" and "pepper";
- the generic is the food noun phrase exactly as the line writes it, so it keeps the words
  RecipeNLG keeps ("brown sugar", "cream of mushroom soup", "frozen corn") and follows the
  line's number ("1 egg" -> "egg", "3 large eggs, beaten" -> "eggs").

It is varied enough (about 215 generics, many surface forms per generic) that a 135M model with
few-shot prompting gets it visibly wrong, which is the point of the demo: fine-tuning should
move the score.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.demo_tables import (
    _BY_CAT,
    _BY_NAME,
    _CONFLICTS,
    _CONTAINER_UNITS,
    _COUNT_Q,
    _CUP_Q,
    _CUP_UNITS,
    _DEFAULT_SIZES,
    _FIXED,
    _KINDS,
    _LB_Q,
    _OWNERS,
    _OZ_Q,
    _PREP,
    _SIZE_WEIGHTS,
    _SIZE_WORDS,
    _SMALL_Q,
    _TBSP_Q,
    _TBSP_UNITS,
    _TSP_Q,
    _TSP_UNITS,
    BRANDS,
    _Ingredient,
    _Kind,
)
from tuneforge.data.formats import write_jsonl
from tuneforge.data.split import SPLITS, split_examples

__all__ = ["BRANDS", "SYSTEM_PROMPT", "generate_examples", "write_demo"]

SYSTEM_PROMPT = (
    "You are a helpful recipe assistant. You are to extract the generic ingredients from each "
    "of the recipes provided."
)

DEFAULT_N = 600  # "several hundred": enough to show a fine-tuning gain, small enough for a CPU
MIN_N = 10  # below this the validation and test splits would be empty or a single row


def _is_plural(qty: str) -> bool:
    """English number agreement: "1 cup", "1/2 cup" but "1 1/2 cups", "2 to 3 cups"."""
    return not (qty == "1" or (" " not in qty and "/" in qty))


def _pluralise(unit: str, plural: bool) -> str:
    """Full-word units take an "s"; abbreviations ("c.", "lb.") do not."""
    if not plural or unit.endswith(".") or unit in ("tsp", "Tbs"):
        return unit
    if unit.endswith(("x", "ch")):
        return unit + "es"
    return unit + "s"


@dataclass(frozen=True)
class _Amount:
    prefix: str  # quantity, size and unit, e.g. "2 (16 oz.) pkg."
    plural: bool  # number agreement for count nouns
    suffix: str = ""  # e.g. " to taste"


def _amount(rng: random.Random, measure: str, ing: _Ingredient) -> _Amount:
    """Render the quantity-and-unit part of a line for one measure kind."""
    if measure == "cup":
        qty = rng.choice(_CUP_Q)
        unit = _pluralise(rng.choice(_CUP_UNITS), _is_plural(qty))
        of = " of" if rng.random() < 0.03 else ""
        return _Amount(f"{qty} {unit}{of}", _is_plural(qty))
    if measure in ("tsp", "spoon"):
        # "tsp" things (spices, leavening) come mostly by the teaspoon, "spoon" things mostly
        # by the tablespoon.
        small = rng.random() < (0.8 if measure == "tsp" else 0.3)
        qty = rng.choice(_TSP_Q if small else _TBSP_Q)
        unit = _pluralise(rng.choice(_TSP_UNITS if small else _TBSP_UNITS), _is_plural(qty))
        return _Amount(f"{qty} {unit}", _is_plural(qty))
    if measure == "taste":
        return _Amount("", False, rng.choice((" to taste", " to taste", ", to taste")))
    if measure == "lb":
        if rng.random() < 0.25:
            return _Amount(f"{rng.choice(_OZ_Q)} {rng.choice(('oz.', 'oz.', 'ounces'))}", True)
        qty = rng.choice(_LB_Q)
        plural = _is_plural(qty)
        unit = rng.choice(("lb.", "lb.", "lbs." if plural else "lb.", "pound"))
        return _Amount(f"{qty} {_pluralise(unit, plural)}", plural)
    if measure in _CONTAINER_UNITS:
        qty = rng.choice(_SMALL_Q)
        plural = _is_plural(qty)
        unit = _pluralise(rng.choice(_CONTAINER_UNITS[measure]), plural)
        sizes = ing.sizes or _DEFAULT_SIZES[measure]
        size = f" {rng.choice(sizes)}" if rng.random() < 0.6 else ""
        return _Amount(f"{qty}{size} {unit}", plural)
    if measure == "env":
        qty = rng.choice(("1", "1", "1", "2"))
        plural = _is_plural(qty)
        unit = _pluralise(rng.choice(("envelope", "pkg.", "packet")), plural)
        size = f" {rng.choice(ing.sizes)}" if ing.sizes and rng.random() < 0.4 else ""
        return _Amount(f"{qty}{size} {unit}", plural)
    if measure == "slice":
        qty = rng.choice(("2", "3", "4", "6", "8", "10", "12"))
        return _Amount(f"{qty} {rng.choice(('slices', 'slices', 'strips'))}", True)
    if measure == "clove":
        qty = rng.choice(("1", "2", "2", "3", "4", "6", "2 to 3", "3 to 4"))
        plural = _is_plural(qty)
        large = rng.choice(("", "", "large "))
        return _Amount(f"{qty} {large}{_pluralise('clove', plural)}", plural)
    if measure == "stalk":
        qty = rng.choice(("1", "2", "2", "3", "4"))
        plural = _is_plural(qty)
        return _Amount(f"{qty} {_pluralise(rng.choice(('stalk', 'stalk', 'rib')), plural)}", plural)
    if measure in _FIXED:
        return _Amount(rng.choice(_FIXED[measure]), False)
    if measure == "count":
        if ing.sizes:  # sized things come one or two at a time: "2 (9-inch) pie crusts"
            qty = rng.choice(_SMALL_Q)
            size = f" {rng.choice(ing.sizes)}" if rng.random() < 0.6 else ""
            return _Amount(f"{qty}{size}", _is_plural(qty))
        # Half an onion is normal; half an egg or half a pork chop is not.
        pool = _COUNT_Q + (("1/2",) if ing.cat in ("produce", "fruit") else ())
        qty = rng.choice(pool)
        return _Amount(qty, _is_plural(qty))
    raise ValueError(f"unknown measure {measure!r}")


# --------------------------------------------------------------------------------------------
# Lines, titles, recipes
# --------------------------------------------------------------------------------------------


def _render_line(rng: random.Random, ing: _Ingredient, present: set[str]) -> tuple[str, str]:
    """One ingredient line and its generic. `present` holds the recipe's other generics, so an
    alternative ("butter or margarine") never names something the recipe lists on its own."""
    measure = rng.choice(ing.measures)
    amount = _amount(rng, measure, ing)
    noun = ing.name
    if measure == "count":
        if amount.plural and ing.plural:
            noun = ing.plural
        elif not amount.plural and ing.singular:
            noun = ing.singular
    food = rng.choice(ing.forms).format(noun)

    brand = rng.choice(ing.brands) if ing.brands and rng.random() < 0.3 else ""
    # Size words only make sense for counted things ("1 large onion", not "1 c. large onion").
    pres = [p for p in ing.pre if measure == "count" or p not in _SIZE_WORDS]
    pre = rng.choice(pres) if pres and rng.random() < (0.15 if brand else 0.4) else ""
    before, after = _PREP[ing.prep]
    if ing.prep in ("can", "soup") and measure != "can":  # no "1 lb. salmon, drained"
        before, after = (), ()
    prep_before = prep_after = ""
    if measure != "taste":
        roll = rng.random()
        if roll < 0.22 and before:
            prep_before = rng.choice(before)
        elif roll < 0.5 and after:
            prep_after = rng.choice(after)
    alt = ""
    if ing.alts and rng.random() < 0.3:
        choice = rng.choice(ing.alts)
        if choice not in present:
            alt = f" or {choice}"
    optional = " (optional)" if measure != "taste" and rng.random() < 0.04 else ""

    # Word order as cooks write it: size first ("3 large beaten eggs"), then preparation,
    # brand, the remaining adjective and the food ("1 c. chopped Kraft sharp cheddar cheese").
    size, pre = (pre, "") if pre in _SIZE_WORDS else ("", pre)
    head = " ".join(p for p in (amount.prefix, size, prep_before, brand, pre, food) if p)
    line = f"{head}{alt}{prep_after}{optional}{amount.suffix}"
    if rng.random() < 0.06:  # RecipeNLG capitalises some lines at random; the answer does not
        line = line[0].upper() + line[1:]
    return line, noun


_SALT_AND_PEPPER = (
    "salt and pepper to taste",
    "salt and pepper to taste",
    "Salt and pepper to taste",
    "salt and pepper",
    "salt and pepper, to taste",
    "1/2 tsp. each salt and pepper",
    "salt and freshly ground pepper to taste",
)


def _conflicts(name: str, chosen: list[_Ingredient]) -> bool:
    names = {c.name for c in chosen}
    if name in names:
        return True
    return any(name in group and names & (group - {name}) for group in _CONFLICTS)


def _title(rng: random.Random, kind: _Kind, main: _Ingredient, second: _Ingredient | None) -> str:
    core = rng.choice(main.title)
    if second is not None:
        other = rng.choice(second.title)
        if other != core:  # never "Cheese And Cheese Dip"
            joiner = rng.choice((" And ", " And ", " & ", "-", " ", " 'N' ", " With "))
            core = f"{core}{joiner}{other}"
    dish = rng.choice(kind.dishes)
    if rng.random() < 0.06:  # numbered and tagged variants, as community cookbooks have
        return f"{core} {dish} {rng.choice(('I', 'II', 'III', '(Microwave)', '(Low-Fat)'))}"
    roll = rng.random()
    if roll < 0.35:
        prefix = rng.choice(kind.prefixes) + " "
    elif roll < 0.5:
        prefix = rng.choice(_OWNERS) + "'s "
    else:
        prefix = ""
    return f"{prefix}{core} {dish}"


def _recipe(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """A title, its ingredient lines and the generic ingredients in line order."""
    kind = rng.choices(_KINDS, weights=[k.weight for k in _KINDS])[0]
    main = _BY_NAME[rng.choice(kind.mains)]
    chosen = [main]
    second: _Ingredient | None = None
    if rng.random() < 0.3:
        candidates = [n for n in kind.seconds if not _conflicts(n, chosen)]
        if candidates:
            second = _BY_NAME[rng.choice(candidates)]
            chosen.append(second)

    lo, hi = kind.size
    sizes = [s for s in _SIZE_WEIGHTS if lo <= s <= hi]
    target = rng.choices(sizes, weights=[_SIZE_WEIGHTS[s] for s in sizes])[0]
    for name, p in kind.staples:
        if len(chosen) < target and rng.random() < p and not _conflicts(name, chosen):
            chosen.append(_BY_NAME[name])
    cats = [c for c, _ in kind.pool]
    weights = [w for _, w in kind.pool]
    for _ in range(200):  # bounded: a small pool must not loop forever
        if len(chosen) >= target:
            break
        ing = rng.choice(_BY_CAT[rng.choices(cats, weights=weights)[0]])
        if not _conflicts(ing.name, chosen):
            chosen.append(ing)
    rng.shuffle(chosen)

    present = {c.name for c in chosen}
    lines: list[str] = []
    answers: list[list[str]] = []
    for ing in chosen:
        line, generic = _render_line(rng, ing, present)
        lines.append(line)
        answers.append([generic])

    # RecipeNLG's most common two-in-one line; merged only when three lines would remain.
    if "salt" in present and "pepper" in present and len(lines) > 3 and rng.random() < 0.6:
        salt_at = answers.index(["salt"])
        pepper_at = answers.index(["pepper"])
        lines[salt_at] = rng.choice(_SALT_AND_PEPPER)
        answers[salt_at] = ["salt", "pepper"]
        del lines[pepper_at], answers[pepper_at]

    generics = [g for group in answers for g in group]
    return _title(rng, kind, main, second), lines, generics


def _example(title: str, lines: list[str], generics: list[str]) -> dict[str, Any]:
    user = f"Title: {title}\n\nIngredients: {json.dumps(lines)}\n\nGeneric ingredients: "
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
            {"role": "assistant", "content": json.dumps(generics)},
        ]
    }


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate_examples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` distinct recipe-assistant examples in OpenAI chat fine-tuning format.

    The same `seed` always gives the same list: generation uses its own `random.Random`, never
    the global RNG, so callers' randomness neither affects it nor is affected by it.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    examples: list[dict[str, Any]] = []
    seen: set[str] = set()
    # The space of recipes is astronomically larger than any n we use; the cap only turns a
    # table bug into an error instead of a hang.
    for _ in range(20 * n + 1000):
        if len(examples) == n:
            break
        example = _example(*_recipe(rng))
        key = json.dumps(example, sort_keys=True)
        if key not in seen:
            seen.add(key)
            examples.append(example)
    if len(examples) < n:
        raise RuntimeError(f"could only generate {len(examples)} distinct examples of {n}")
    return examples


def write_demo(out_dir: str | Path, seed: int = 0, n: int = DEFAULT_N) -> dict[str, Path]:
    """Generate `n` examples and write `train.jsonl`, `validation.jsonl` and `test.jsonl`.

    `out_dir` is created if missing; each file is replaced atomically. Returns split -> path.
    """
    if n < MIN_N:
        raise ValueError(
            f"the demo data set needs at least {MIN_N} examples (got n={n}) so that the "
            "validation and test splits are not empty"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = split_examples(generate_examples(n, seed=seed), seed=seed)
    paths: dict[str, Path] = {}
    for name in SPLITS:
        path = out / f"{name}.jsonl"
        write_jsonl(path, splits[name])
        paths[name] = path
    return paths
