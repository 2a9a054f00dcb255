"""The scheduling policy: a pure function from state, observations and time to actions.

``plan`` decides, per service, how many instances should run and which jobs to
submit, drain and cancel. It reads the clock and the random source only through
its arguments, so the same inputs always give the same actions, and applying
its actions and planning again at the same instant gives no further actions.

Counting: a *slot* is a live, non-draining job, except a replacement while the
job it replaces is still in its slot. The number of slots follows demand between
the minimum and the maximum; during a walltime rollover a slot briefly holds
two jobs, the old one serving until its replacement is ready.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from saia.domain.job import DrainReason, Phase
from saia.domain.spec import ServiceSpec
from saia.domain.state import JobView, ServiceView

# How often a cancel that did not take effect is sent again.
CANCEL_RETRY = 30.0
# Draws of a random port before falling back to a scan of the range.
PORT_DRAWS = 32
# TCP ports, the range a spec's ports are checked against.
PORTS = 65536


@dataclass(frozen=True, slots=True)
class Submit:
    service: str
    port: int
    token: str
    walltime: float
    reason: str
    replaces: UUID | None = None


@dataclass(frozen=True, slots=True)
class Drain:
    job: UUID
    reason: DrainReason


@dataclass(frozen=True, slots=True)
class Cancel:
    job: UUID
    reason: str


Action = Submit | Drain | Cancel


@dataclass(frozen=True, slots=True)
class Observation:
    """What the controller saw this pass, beyond the log."""

    demand: Mapping[str, float] = field(default_factory=dict)  # smoothed in-flight + waiting
    waiting: Mapping[str, int] = field(default_factory=dict)  # requests waiting right now
    last_demand_at: Mapping[str, float] = field(default_factory=dict)
    inflight_by_job: Mapping[UUID, int] = field(default_factory=dict)
    slurm_available: bool = True
    pass_interval: float = 5.0  # the next pass comes at most this much later


def backoff_until(service: ServiceView) -> float | None:
    """Until when submissions wait after consecutive sbatch failures (exponential)."""
    if not service.submit_failures or service.last_failure_at is None:
        return None
    spec = service.spec
    delay = min(spec.backoff_max, spec.backoff_base * 2.0 ** (service.submit_failures - 1))
    return service.last_failure_at + delay


def slots(service: ServiceView, draining: Collection[UUID] = ()) -> list[JobView]:
    """Jobs that hold a slot; ``draining`` adds jobs whose drain is being decided now."""
    active = [job for job in service.jobs.values() if not job.draining and job.id not in draining]
    return _holding_slots(active, service.jobs)


def _holding_slots(active: list[JobView], jobs: Mapping[UUID, JobView]) -> list[JobView]:
    """Of the active jobs, all but replacements whose predecessor is active too."""
    predecessors = [(job, jobs.get(job.replaces)) for job in active if job.replaces is not None]
    if not predecessors:
        return active
    # Jobs are told apart by identity here and in _successors: a UUID hashes in
    # Python and lives in its own objects, which planning need not touch otherwise.
    active_ids = {id(job) for job in active}
    waiting = {
        id(job)
        for job, previous in predecessors
        if previous is not None and id(previous) in active_ids
    }
    return [job for job in active if id(job) not in waiting] if waiting else active


def target(service: ServiceView, obs: Observation, now: float) -> int:
    """How many slots the service should have now."""
    spec = service.spec
    if service.retired:
        return 0
    name = spec.id
    demand = obs.demand.get(name, 0.0)
    waiting = obs.waiting.get(name, 0)
    wanted = math.ceil(demand / spec.inferences_per_instance - 1e-9)
    if waiting > 0:
        wanted = max(wanted, 1)  # scale from zero at once
    if wanted == 0:
        active_at = max(service.last_active_at, obs.last_demand_at.get(name, 0.0))
        running = any(not job.draining for job in service.jobs.values())  # a slot is held
        if now - active_at < spec.idle_time and running:
            wanted = 1  # not idle long enough to scale to zero
    return max(spec.minimum_number_instances, min(spec.maximum_number_instances, wanted))


def plan(
    services: Mapping[str, ServiceView], obs: Observation, now: float, rng: random.Random
) -> list[Action]:
    ports = _live_ports(services.values())
    actions: list[Action] = []
    for service in services.values():
        _plan_service(service, obs, now, rng, ports, actions)
    return actions


def _plan_service(
    service: ServiceView,
    obs: Observation,
    now: float,
    rng: random.Random,
    ports: bytearray,
    actions: list[Action],
) -> None:
    """Append the service's actions to ``actions``."""
    spec = service.spec
    jobs = service.jobs
    active: list[JobView] = []  # neither draining nor drained now
    draining: list[tuple[JobView, float]] = []  # since when, including drains decided now

    def drain(job: JobView, reason: DrainReason) -> None:
        actions.append(Drain(job.id, reason))
        draining.append((job, now))

    can_submit = obs.slurm_available and not service.retired
    until = backoff_until(service)
    if until is not None and now < until:
        can_submit = False

    def submit(reason: str, replaces: UUID | None = None) -> None:
        port = _draw_port(spec.port_min, spec.port_max, ports, rng)
        if port is None:
            return
        ports[port] = 1
        token = f"{rng.getrandbits(64):016x}"
        actions.append(Submit(spec.id, port, token, spec.walltime, reason, replaces))

    successors = _successors(jobs)
    lead = service.lead_time() + obs.pass_interval

    for job in jobs.values():
        if job.draining:
            draining.append((job, job.draining_at if job.draining_at is not None else now))
            continue
        reason: DrainReason | None = None
        if service.retired:
            reason = DrainReason.RETIRED
        elif _unready_too_long(job, spec, now):
            reason = DrainReason.UNREADY
        elif job.phase is Phase.READY and job.failed_probes >= spec.unhealthy_after:
            reason = DrainReason.UNHEALTHY
        elif (expiry := job.expiry) is not None:
            successor = successors.get(id(job))
            if successor is None:
                if expiry - now <= lead and can_submit:
                    submit("walltime", replaces=job.id)
            elif successor.phase is Phase.READY:
                reason = DrainReason.EXPIRING
        if reason is None:
            active.append(job)
        else:
            drain(job, reason)

    current = _holding_slots(active, jobs)
    wanted = target(service, obs, now)
    if wanted > len(current) and can_submit:
        for _ in range(wanted - len(current)):
            submit("demand" if len(current) >= spec.minimum_number_instances else "minimum")
    elif wanted < len(current) and _cooled_down(service, now):
        for job in sorted(current, key=_surplus_order)[: len(current) - wanted]:
            drain(job, DrainReason.SURPLUS)

    for job, since in draining:
        if _should_cancel(job, since, spec, obs, now):
            actions.append(Cancel(job.id, job.draining or "drained"))


def _successors(jobs: Mapping[UUID, JobView]) -> dict[int, JobView]:
    """Each replaced job's replacement (the last one, if several), by the replaced job's id()."""
    found: dict[int, JobView] = {}
    for job in jobs.values():
        if job.replaces is not None and (previous := jobs.get(job.replaces)) is not None:
            found[id(previous)] = job
    return found


def _unready_too_long(job: JobView, spec: ServiceSpec, now: float) -> bool:
    return (
        job.phase is Phase.RUNNING
        and job.started_at is not None
        and now - job.started_at > spec.ready_timeout
    )


def _cooled_down(service: ServiceView, now: float) -> bool:
    last = service.last_scale_at
    return last is None or now - last >= service.spec.cooldown


_SURPLUS_RANK = {Phase.REQUESTED: 0, Phase.SUBMITTED: 0, Phase.RUNNING: 1, Phase.READY: 2}


def _surplus_order(job: JobView) -> tuple[int, float]:
    """Give up first what serves least: not yet started, then not ready, then nearest expiry."""
    rank = _SURPLUS_RANK[job.phase]
    expiry = job.expiry if job.expiry is not None else 0.0
    return rank, expiry


def _should_cancel(
    job: JobView, since: float, spec: ServiceSpec, obs: Observation, now: float
) -> bool:
    """Cancel a draining job once nothing runs on it, or when waiting longer is pointless."""
    if job.phase is Phase.REQUESTED:
        return False  # no Slurm id yet: reconciliation settles it first
    if job.cancel_requested_at is not None and now - job.cancel_requested_at < CANCEL_RETRY:
        return False
    if job.phase is Phase.SUBMITTED or obs.inflight_by_job.get(job.id, 0) == 0:
        return True
    expiry = job.expiry
    return now - since >= spec.drain_timeout or (expiry is not None and now >= expiry)


def _live_ports(services: Iterable[ServiceView]) -> bytearray:
    """1 at each port a live job holds: 64 KiB, where a set of 10,000 ports takes 512 KiB."""
    used = bytearray(PORTS)
    for service in services:
        for job in service.jobs.values():
            if 0 <= job.port < PORTS:  # no other port can be drawn
                used[job.port] = 1
    return used


def _draw_port(low: int, high: int, used: bytearray, rng: random.Random) -> int | None:
    for _ in range(PORT_DRAWS):
        port = rng.randint(low, high)
        if not used[port]:
            return port
    free = [port for port in range(low, high + 1) if not used[port]]
    return rng.choice(free) if free else None
