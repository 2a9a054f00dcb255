"""Measuring helpers the benchmarks share: interleaved medians, and the floor of any
rebuild or catch-up (reading and decoding the log)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from saia.adapters.store import EventLog
from saia.projections.reader import BATCH


def median_of(repeats: int, *measures: Callable[[], float]) -> list[float]:
    """Run the measures interleaved, ``repeats`` times; the median of each."""
    results: list[list[float]] = [[] for _ in measures]
    for _ in range(repeats):
        for result, measure in zip(results, measures, strict=True):
            result.append(measure())
    return [statistics.median(result) for result in results]


def read_and_decode_rate(log: EventLog) -> float:
    """Events a second that reading every row and decoding it takes, nothing else."""
    to_domain_event = log.mapper.to_domain_event
    position, count = 0, 0
    started = time.perf_counter()
    while batch := log.recorder.select_notifications(
        start=position, limit=BATCH, inclusive_of_start=False
    ):
        for notification in batch:
            to_domain_event(notification)
        position = batch[-1].id
        count += len(batch)
    return count / (time.perf_counter() - started)
