"""Split a data set into train, validation and test: `tuneforge data split` and the demo data."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

SPLITS = ("train", "validation", "test")  # also the file names: train.jsonl, …


def split_examples(
    examples: list[dict[str, Any]],
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, list[dict[str, Any]]]:
    """Shuffle deterministically and split into "train", "validation" and "test".

    Validation and test sizes round down and train takes the rest; a held-out split with a
    non-zero fraction still gets one example from a small set, so it evaluates something.
    The input list is not modified.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}"
        )
    order = list(examples)
    random.Random(seed).shuffle(order)
    total = len(order)
    n_val = int(total * fractions[1])
    n_test = int(total * fractions[2])
    if fractions[1] > 0 and n_val == 0 and total >= 3:
        n_val = 1
    if fractions[2] > 0 and n_test == 0 and total >= 3:
        n_test = 1
    n_train = total - n_val - n_test
    return {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
