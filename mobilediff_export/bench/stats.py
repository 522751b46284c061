"""Summaries of timing samples: median, p90, min, max, as every report in the harness gives them.

Percentiles use the nearest-rank method (the value of a real run, never an interpolation
between two), so ``p90`` of ten runs is the ninth fastest, as the phone apps compute it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 100]."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """``{n, median, p90, min, max, mean}`` of timings in milliseconds."""
    if not samples:
        return {"n": 0, "median": None, "p90": None, "min": None, "max": None, "mean": None}
    return {
        "n": len(samples),
        "median": round(percentile(samples, 50), 3),
        "p90": round(percentile(samples, 90), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
        "mean": round(sum(samples) / len(samples), 3),
    }


def time_ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Milliseconds one call of ``fn`` takes on the wall clock, and what it returned."""
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


def repeat_ms(fn: Callable[[], Any], warmup: int, iterations: int) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``iterations`` times timed (ms each)."""
    for _ in range(warmup):
        fn()
    return [time_ms(fn)[0] for _ in range(iterations)]
