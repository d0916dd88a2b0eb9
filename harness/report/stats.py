"""Small, dependency-free statistics for boot timings: robust spread and a rank test.

Boot times on a shared 2-core host are noisy and skewed (a neighbour's build adds seconds to one
run), so the summaries are median / min / max / MAD, and the comparison is the one-sided
Mann-Whitney U test evaluated by exact permutation (all splits of the pooled samples, or a
fixed-seed random subset when there are too many), which assumes nothing about the distribution.
"""
from __future__ import annotations

import itertools
import math
import random
import statistics
from dataclasses import dataclass

EXACT_LIMIT = 20000        # enumerate every split up to this many; sample beyond
SAMPLED_PERMUTATIONS = 10000


@dataclass
class Spread:
    n: int
    median: float
    min: float
    max: float
    mad: float             # median absolute deviation from the median (unscaled)

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def spread(samples: list[float]) -> Spread:
    if not samples:
        raise ValueError("no samples")
    med = statistics.median(samples)
    mad = statistics.median(abs(x - med) for x in samples)
    return Spread(len(samples), med, min(samples), max(samples), mad)


def _ranks(values: list[float]) -> list[float]:
    """Mid-ranks (ties share the mean of the ranks they span), 1-based."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney_greater(base: list[float], new: list[float]) -> float:
    """One-sided p-value that `new` tends to be larger than `base` (exact permutation of ranks)."""
    if not base or not new:
        return 1.0
    pooled = base + new
    ranks = _ranks(pooled)
    n_new = len(new)
    observed = sum(ranks[len(base):])
    idx = range(len(pooled))
    total = math.comb(len(pooled), n_new)
    eps = 1e-9
    if total <= EXACT_LIMIT:
        hits = sum(1 for combo in itertools.combinations(idx, n_new)
                   if sum(ranks[i] for i in combo) >= observed - eps)
        return hits / total
    rng = random.Random(0)  # fixed seed: the same data always gets the same verdict
    hits = 0
    for _ in range(SAMPLED_PERMUTATIONS):
        combo = rng.sample(range(len(pooled)), n_new)
        if sum(ranks[i] for i in combo) >= observed - eps:
            hits += 1
    return (hits + 1) / (SAMPLED_PERMUTATIONS + 1)


def min_attainable_p(n_base: int, n_new: int) -> float:
    """The smallest p-value the exact test can give for these sample sizes."""
    if n_base == 0 or n_new == 0:
        return 1.0
    return 1 / math.comb(n_base + n_new, n_new)
