"""How sure a comparison is: bootstrap intervals on per-request scores, paired tests between two
approaches, and how many more test requests would settle an open question.

Every approach answers the same test requests in the same order, so two approaches' scores are
paired by position: the paired difference per request removes the requests' own difficulty,
which is most of the variance (a hard recipe is hard for every approach). All randomness comes
from `numpy.random.default_rng(seed)`: the same scores and seed give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000  # percentile-interval endpoints move by < 0.005 between seeds at this count
CHUNK = 1_000  # resamples drawn at once: bounds memory to CHUNK × n indices
Z95 = 1.959964  # the normal quantile of a two-sided 95 % interval

Scores = Sequence[float | None]


def _applicable(scores: Scores) -> np.ndarray:
    return np.array([s for s in scores if s is not None], dtype=float)


def _bootstrap_means(values: np.ndarray, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """Means of `resamples` resamples (with replacement) of `values`' indices."""
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        means[start : start + size] = values[
            rng.integers(0, len(values), (size, len(values)))
        ].mean(axis=1)
    return means


def interval(scores: Scores, seed: int = 0) -> list[float] | None:
    """95 % percentile-bootstrap interval of the mean score, or None with no applicable score."""
    values = _applicable(scores)
    if not len(values):
        return None
    means = _bootstrap_means(values, seed)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


@dataclass(frozen=True)
class PairedGain:
    gain: float  # mean of (a - b) over the requests both scored
    ci95: list[float]
    p_value: float
    test: str  # "mcnemar_exact" (0/1 scores) or "paired_bootstrap"
    n: int  # requests in the pairing
    sd: float  # standard deviation of the per-request differences (ddof 1; 0 for one request)


def paired_gain(a: Scores, b: Scores, seed: int = 0) -> PairedGain | None:
    """How much better `a` is than `b` on the same requests, with a 95 % interval and the p-value
    of "no difference". None when no request has a score from both."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return None
    x, y = np.array(pairs, dtype=float).T
    diff = x - y
    observed = float(diff.mean())
    means = _bootstrap_means(diff, seed)
    ci = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    binary = bool(np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all())
    if binary:
        a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        p, test = mcnemar_exact(a_only, b_only), "mcnemar_exact"
    else:
        # Two-sided bootstrap test: the bootstrap distribution shifted to mean 0 plays the null
        # ("no difference"); p is the share of it at least as far from 0 as what was observed.
        # The +1s count the observed sample itself, so p is never exactly 0.
        shifted = np.abs(means - observed)
        extreme = int((shifted >= abs(observed) - 1e-12).sum())
        p, test = (extreme + 1) / (len(means) + 1), "paired_bootstrap"
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    return PairedGain(observed, ci, min(1.0, p), test, len(diff), sd)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """McNemar's exact test for paired 0/1 outcomes: two-sided p-value that the requests only `a`
    got right and those only `b` got right are equally likely. Under that null the split of the
    a_only + b_only discordant requests is Binomial(n, 1/2), so this is a two-sided binomial test,
    written with `math.comb` to avoid depending on scipy for one formula."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def requests_to_settle(gain: float, sd: float, margin: float, n: int) -> int | None:
    """Test requests *in all* after which a 95 % interval of half-width Z95·sd/√n would no longer
    straddle ±margin, if the mean and spread of the differences stay as observed (normal
    approximation). None when no count would: a gain exactly on the margin, or no spread to use."""
    distance = abs(abs(gain) - margin)
    if distance < 1e-9 or sd <= 0:
        return None
    return max(n + 1, math.ceil((Z95 * sd / distance) ** 2))
