"""Demand smoothing: a time-weighted mean of samples over a window."""

from __future__ import annotations

from collections.abc import Sequence


def smoothed(samples: Sequence[tuple[float, float]], now: float, window: float) -> float:
    """Mean of a step function given by (time, value) samples over [now - window, now].

    Each sample holds until the next one; the last holds until ``now``. Samples
    must be in time order; those older than the window count only from its start.
    """
    if not samples:
        return 0.0
    start = now - window
    total = 0.0
    covered = 0.0
    for index, (at, value) in enumerate(samples):
        until = samples[index + 1][0] if index + 1 < len(samples) else now
        lo, hi = max(at, start), min(until, now)
        if hi > lo:
            total += value * (hi - lo)
            covered += hi - lo
    if covered <= 0.0:
        return samples[-1][1]
    return total / covered
