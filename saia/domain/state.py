"""What the scheduling policy and the router read: services and their live jobs.

These are plain values kept up to date by the service-state projection; the
policy only reads them. Times are seconds since the epoch (floats), so that
planning for thousands of jobs is cheap arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from saia.domain.job import Phase
from saia.domain.spec import ServiceSpec

# How many recent start-up durations are kept to learn the lead time from.
STARTUP_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class JobView:
    id: UUID
    service: str
    token: str
    port: int
    phase: Phase
    requested_at: float
    walltime: float
    replaces: UUID | None = None
    slurm_job_id: str = ""
    node: str = ""
    started_at: float | None = None
    ready_at: float | None = None
    draining: str = ""
    draining_at: float | None = None
    cancel_requested_at: float | None = None
    failed_probes: int = 0
    last_heartbeat_at: float | None = None

    @property
    def expiry(self) -> float | None:
        return None if self.started_at is None else self.started_at + self.walltime

    @property
    def routable(self) -> bool:
        """Ready, not draining and not being cancelled: new requests may go here."""
        return self.phase is Phase.READY and not self.draining and self.cancel_requested_at is None


@dataclass(slots=True)
class ServiceView:
    spec: ServiceSpec
    registered_at: float
    retired: bool = False
    jobs: dict[UUID, JobView] = field(default_factory=dict)  # live jobs only
    last_active_at: float = 0.0  # last request activity recorded in the log
    last_scale_at: float | None = None  # last scale-up submission or surplus drain
    submit_failures: int = 0  # consecutive; reset by a successful submission
    last_failure_at: float | None = None
    startup_seconds: tuple[float, ...] = ()  # requested -> ready, most recent last
    inflight: int = 0  # requests started and not finished, from the log

    def routing_targets(self) -> list[JobView]:
        return [job for job in self.jobs.values() if job.routable]

    def learned_lead_time(self) -> float:
        """Twice the slowest recent start-up: a replacement needs that long to be ready.

        Capped at half the walltime: otherwise a service that starts slower than
        its walltime would chain replacements without end."""
        return min(2.0 * max(self.startup_seconds, default=0.0), self.spec.walltime / 2.0)

    def lead_time(self) -> float:
        return max(self.spec.lead_time, self.learned_lead_time())
