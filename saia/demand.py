"""Demand as the proxy sees it: in-flight and waiting requests per service, over time."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from saia.domain.demand import smoothed


@dataclass(frozen=True, slots=True)
class DemandSnapshot:
    demand: dict[str, float]
    waiting: dict[str, int]
    last_demand_at: dict[str, float]
    inflight_by_job: dict[UUID, int]


class DemandTracker:
    """Thread-safe counters fed by the proxy and read by the controller once a pass."""

    def __init__(self, max_samples: int = 4096) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        self._waiting: dict[str, int] = {}
        self._inflight: dict[str, int] = {}
        self._inflight_by_job: dict[UUID, int] = {}
        self._last_demand_at: dict[str, float] = {}
        self._max_samples = max_samples

    def set(self, service: str, inflight: int, waiting: int, now: float) -> None:
        """Record the current counts of a service (tests and simulations set them directly)."""
        with self._lock:
            self._inflight[service] = inflight
            self._waiting[service] = waiting
            self._sample(service, now)

    def started(self, service: str, job: UUID | None, now: float, waiting: bool = False) -> None:
        with self._lock:
            if waiting:
                self._waiting[service] = self._waiting.get(service, 0) + 1
            else:
                self._inflight[service] = self._inflight.get(service, 0) + 1
                if job is not None:
                    self._inflight_by_job[job] = self._inflight_by_job.get(job, 0) + 1
            self._sample(service, now)

    def routed(self, service: str, job: UUID, now: float) -> None:
        """A waiting request got a backend."""
        with self._lock:
            self._waiting[service] = max(0, self._waiting.get(service, 0) - 1)
            self._inflight[service] = self._inflight.get(service, 0) + 1
            self._inflight_by_job[job] = self._inflight_by_job.get(job, 0) + 1
            self._sample(service, now)

    def finished(self, service: str, job: UUID | None, now: float, waiting: bool = False) -> None:
        with self._lock:
            if waiting:
                self._waiting[service] = max(0, self._waiting.get(service, 0) - 1)
            else:
                self._inflight[service] = max(0, self._inflight.get(service, 0) - 1)
                if job is not None:
                    left = self._inflight_by_job.get(job, 0) - 1
                    if left > 0:
                        self._inflight_by_job[job] = left
                    else:
                        self._inflight_by_job.pop(job, None)
            self._sample(service, now)

    def waiting_total(self) -> int:
        with self._lock:
            return sum(self._waiting.values())

    def snapshot(self, windows: Mapping[str, float], now: float) -> DemandSnapshot:
        with self._lock:
            for service in self._samples:
                self._sample(service, now)
            demand = {
                service: smoothed(samples, now, windows.get(service, 60.0))
                for service, samples in self._samples.items()
            }
            return DemandSnapshot(
                demand=demand,
                waiting=dict(self._waiting),
                last_demand_at=dict(self._last_demand_at),
                inflight_by_job=dict(self._inflight_by_job),
            )

    def _sample(self, service: str, now: float) -> None:
        value = self._inflight.get(service, 0) + self._waiting.get(service, 0)
        samples = self._samples.setdefault(service, deque(maxlen=self._max_samples))
        if value > 0 or (samples and samples[-1][1] > 0):
            self._last_demand_at[service] = now  # demand held until this moment
        samples.append((now, float(value)))
