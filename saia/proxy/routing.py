"""Which job answers: least outstanding requests among the ready, non-draining jobs
that have not just refused a connection, and the bounded per-service queue of
requests that wait for one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol
from uuid import UUID

from saia.demand import DemandTracker
from saia.domain.state import JobView
from saia.projections.service_state import ServiceState
from saia.proxy.errors import ProxyError
from saia.proxy.settings import ProxySettings


class RoutingTable(Protocol):
    """What the proxy reads of the Hub: the live projection and the lock guarding it."""

    @property
    def state(self) -> ServiceState: ...

    @property
    def lock(self) -> AbstractContextManager[object]: ...


class Router:
    def __init__(
        self,
        table: RoutingTable,
        demand: DemandTracker,
        settings: ProxySettings,
        wake: Callable[[], None],
    ) -> None:
        self._table = table
        self._demand = demand
        self._settings = settings
        self._wake = wake
        # Counted here, not read from the tracker: it is the proxy's own, exact and lock-free.
        self.inflight: dict[UUID, int] = {}
        self.waiting: dict[str, int] = {}
        # Jobs that refused a connection, and until when no request is sent to them.
        self._set_aside: dict[UUID, float] = {}

    def resolve(self, model: str) -> str | None:
        """The id of the service that a client's model (an id or an alias) names, if any."""
        with self._table.lock:
            return self._table.state.service_named(model)

    def pick(self, service: str, exclude: set[UUID]) -> JobView | None:
        with self._table.lock:
            view = self._table.state.services.get(service)
            targets = [] if view is None else view.routing_targets()
        targets = [job for job in targets if job.id not in exclude]
        if self._set_aside:
            now = time.monotonic()
            targets = [job for job in targets if self._set_aside.get(job.id, 0.0) <= now]
        if not targets:
            return None
        return min(targets, key=lambda job: self.inflight.get(job.id, 0))

    def acquire(self, service: str, job: JobView, was_waiting: bool) -> None:
        self.inflight[job.id] = self.inflight.get(job.id, 0) + 1
        if was_waiting:
            self._demand.routed(service, job.id, time.time())
        else:
            self._demand.started(service, job.id, time.time())

    def release(self, service: str, job: JobView) -> None:
        left = self.inflight.get(job.id, 0) - 1
        if left > 0:
            self.inflight[job.id] = left
        else:
            self.inflight.pop(job.id, None)
        self._demand.finished(service, job.id, time.time())

    def set_aside(self, job: JobView) -> None:
        """No requests for the job that refused a connection, for ``unreachable_pause``;
        and the controller looks now: a job that died is usually gone from Slurm's queue
        by then, and replaced, while the requests it would have failed wait."""
        now = time.monotonic()
        self._set_aside = {key: until for key, until in self._set_aside.items() if until > now}
        self._set_aside[job.id] = now + self._settings.unreachable_pause
        self._wake()

    def enter_queue(self, service: str) -> None:
        """Join the service's wait queue (429 when full); the wait counts as demand."""
        waiting = self.waiting.get(service, 0)
        if waiting >= self._settings.max_waiting_per_service:
            raise ProxyError(429, f"too many requests wait for {service!r}", "queue_full")
        self.waiting[service] = waiting + 1
        self._demand.started(service, None, time.time(), waiting=True)
        self._wake()  # scale from zero at once, not at the controller's next tick

    def leave_queue(self, service: str, routed: bool) -> None:
        self.waiting[service] = max(0, self.waiting.get(service, 0) - 1)
        if not routed:
            self._demand.finished(service, None, time.time(), waiting=True)

    async def wait_for_target(self, service: str, deadline: float) -> JobView:
        """Poll the projection until a job is routable; 503 with Retry-After at the deadline."""
        while True:
            job = self.pick(service, set())
            if job is not None:
                return job
            if time.monotonic() >= deadline:
                headers = {"retry-after": str(self._settings.retry_after_seconds)}
                raise ProxyError(503, f"no backend of {service!r} became ready in time",
                                 "no_backend", headers)  # fmt: skip
            await asyncio.sleep(self._settings.poll_interval)
