"""Small statistics over rounds: percentiles, median and spread."""

from __future__ import annotations

import statistics
from typing import Sequence


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
