"""What-if: the recorded demand replayed through the policy with other settings.

Demand is rebuilt from the log's Request events (in flight per service over time);
a simulated clock runs a planning pass every ``interval`` seconds, as the
controller would, against an instant-start cluster. A request that arrives while
its service has no routable job waits until a pass makes one.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from saia.domain.job import Job
from saia.domain.policy import Observation, plan
from saia.domain.request import Request
from saia.domain.spec import ServiceSpec
from saia.domain.state import ServiceView
from saia.replay.fake_cluster import InstantCluster

SEED = 0  # the policy's ports and tokens: fixed, so that a simulation repeats exactly


@dataclass(slots=True)
class Waits:
    requests: int = 0  # requests that had to wait
    total_seconds: float = 0.0
    longest_seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.requests += 1
        self.total_seconds += seconds
        self.longest_seconds = max(self.longest_seconds, seconds)


@dataclass(frozen=True, slots=True)
class ServiceOutcome:
    service: str
    requests: int
    recorded_jobs_started: int
    jobs_started: int
    job_hours: float
    waited: Waits


@dataclass(slots=True)
class _Demand:
    inflight: Counter[str] = field(default_factory=Counter)
    waiting: dict[str, list[float]] = field(default_factory=dict)  # arrival times
    last_at: dict[str, float] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    open: dict[UUID, str] = field(default_factory=dict)  # request -> service, in flight


def simulate(
    events: Iterable[Any],
    specs: Iterable[ServiceSpec],
    interval: float,
    on_event: Callable[[], None] | None = None,
) -> list[ServiceOutcome]:
    services: dict[str, ServiceView] = {}
    pending_specs = {spec.id: spec for spec in specs}
    cluster = InstantCluster(services)
    demand = _Demand()
    waits = {name: Waits() for name in pending_specs}
    recorded_started: Counter[str] = Counter()
    job_service: dict[UUID, str] = {}
    rng = random.Random(SEED)
    clock: float | None = None
    now = 0.0

    def run_pass(at: float) -> None:
        cluster.expire(at)
        obs = Observation(
            demand={name: float(count) for name, count in demand.inflight.items()},
            waiting={name: len(times) for name, times in demand.waiting.items()},
            last_demand_at=demand.last_at,
            pass_interval=interval,
        )
        cluster.act(plan(services, obs, at, rng), at)
        for name, arrivals in demand.waiting.items():
            if arrivals and services[name].routing_targets():
                for arrived in arrivals:
                    waits[name].add(at - arrived)
                arrivals.clear()

    for event in events:
        if on_event is not None:
            on_event()
        if isinstance(event, Job.Requested):
            job_service[event.originator_id] = event.service
            continue
        if isinstance(event, Job.Started):
            recorded_started[job_service.get(event.originator_id, "")] += 1
            continue
        if not isinstance(event, Request.Started | Request.Finished | Request.Rejected
                          | Request.Abandoned):
            continue
        # Only requests move the clock: the proxy records them as they happen, while
        # one save may hold a job's whole recorded life, far ahead of the demand.
        now = event.timestamp.timestamp()
        if clock is None:
            clock = now
            for spec in pending_specs.values():
                services[spec.id] = ServiceView(spec=spec, registered_at=now, last_active_at=now)
        while clock <= now:  # every pass due before this event
            run_pass(clock)
            clock += interval
        if isinstance(event, Request.Started):
            if event.service in services:
                _arrive(services[event.service], demand, event.originator_id, now)
        else:
            _leave(services, demand, event.originator_id, now)
    return [
        ServiceOutcome(
            name,
            demand.requests[name],
            recorded_started[name],
            cluster.started[name],
            (cluster.job_seconds[name] + cluster.running_seconds(name, now)) / 3600.0,
            waits[name],
        )
        for name in sorted(services)
    ]


def _arrive(view: ServiceView, demand: _Demand, request: UUID, now: float) -> None:
    name = view.spec.id
    demand.inflight[name] += 1
    demand.requests[name] += 1
    demand.last_at[name] = now
    demand.open[request] = name
    view.last_active_at = now
    if not view.routing_targets():
        demand.waiting.setdefault(name, []).append(now)


def _leave(services: dict[str, ServiceView], demand: _Demand, request: UUID, now: float) -> None:
    name = demand.open.pop(request, None)
    if name is None:
        return
    demand.inflight[name] -= 1
    demand.last_at[name] = now
    services[name].last_active_at = now
