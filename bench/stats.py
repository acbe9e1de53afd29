"""Small statistics over rounds: percentiles, median, spread and the median's confidence interval."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

CONFIDENCE = 0.95


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, nearest-rank; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(int(round(q / 100 * len(sorted_values) + 0.5)) - 1, 0)
    return sorted_values[min(rank, len(sorted_values) - 1)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> float:
    """Half the range across rounds as a fraction of the median (0.05 = +-5%)."""
    if len(values) < 2:
        return 0.0
    mid = median(values)
    return (max(values) - min(values)) / 2 / mid if mid else 0.0


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A confidence interval for the median that assumes nothing of how rounds vary:
    the j-th smallest and j-th largest value, j the largest for which the median lies
    between them with at least `confidence` (each round is as likely above the median
    as below it, so the count below is binomial). Fewer than 6 rounds cannot reach
    95 %: their interval is the whole range."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    j, below = 1, 1 / 2**n  # P(fewer than j+1 rounds below the median), for j + 1
    while j < (n + 1) // 2:
        below += math.comb(n, j) / 2**n
        if below > tail:
            break
        j += 1
    return ordered[j - 1], ordered[n - j]
