"""The Job aggregate: one Slurm submission, from its request to its end.

The port assignment is the Requested event: it is recorded, with the token that
goes into the Slurm job, before sbatch runs, so a crash between the two can be
reconciled against the queue instead of leaking or duplicating a GPU job.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from saia.domain.errors import InvalidTransition
from saia.domain.ids import job_id


class Phase(StrEnum):
    REQUESTED = "requested"  # recorded, sbatch not yet confirmed
    SUBMITTED = "submitted"  # in the Slurm queue, not running
    RUNNING = "running"  # started on a node, not yet answering its probe
    READY = "ready"  # answering its probe: a routing target unless draining
    ENDED = "ended"


class FinalState(StrEnum):
    COMPLETED = "completed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    FAILED = "failed"
    LOST = "lost"  # gone from the queue without saia seeing how it ended
    NOT_SUBMITTED = "not_submitted"  # sbatch refused it or never ran


class DrainReason(StrEnum):
    EXPIRING = "expiring"  # its replacement is ready; walltime is near
    SURPLUS = "surplus"  # demand fell
    UNHEALTHY = "unhealthy"  # probes failed
    UNREADY = "unready"  # not ready within the ready timeout
    RETIRED = "retired"  # its service was retired
    UNKNOWN = "unknown"  # adopted from the queue and not wanted


class Job(Aggregate):
    TOPIC = "saia.Job"

    class Event(Aggregate.Event):
        TOPIC = "saia.Job.Event"

    class Requested(Aggregate.Created):
        TOPIC = "saia.Job.Requested"
        service: str
        port: int
        token: str
        walltime: float
        replaces: str  # id of the job this one replaces, or ""
        reason: str

    class Submitted(Event):
        TOPIC = "saia.Job.Submitted"
        slurm_job_id: str

    class SubmissionFailed(Event):
        TOPIC = "saia.Job.SubmissionFailed"
        error: str

    class Started(Event):
        TOPIC = "saia.Job.Started"
        node: str

    class WalltimeCorrected(Event):
        """Slurm gave the job another time limit than was asked (the login node's own)."""

        TOPIC = "saia.Job.WalltimeCorrected"
        walltime: float

    class BecameReady(Event):
        TOPIC = "saia.Job.BecameReady"

    class Heartbeat(Event):
        TOPIC = "saia.Job.Heartbeat"
        ok: bool
        latency: float

    class Draining(Event):
        TOPIC = "saia.Job.Draining"
        reason: str

    class CancelRequested(Event):
        TOPIC = "saia.Job.CancelRequested"
        reason: str

    class Ended(Event):
        TOPIC = "saia.Job.Ended"
        final_state: str

    @staticmethod
    def create_id(
        service: str,
        port: int,
        token: str,
        walltime: float,
        replaces: str,
        reason: str,
        timestamp: datetime,
    ) -> UUID:
        return job_id(token)

    @classmethod
    def request(
        cls,
        service: str,
        port: int,
        token: str,
        walltime: float,
        at: datetime,
        replaces: UUID | None = None,
        reason: str = "",
    ) -> Job:
        return cls(
            service=service,
            port=port,
            token=token,
            walltime=walltime,
            replaces=str(replaces) if replaces else "",
            reason=reason,
            timestamp=at,
        )

    @event(Requested)
    def __init__(
        self,
        service: str,
        port: int,
        token: str,
        walltime: float,
        replaces: str,
        reason: str,
        timestamp: datetime,
    ) -> None:
        self.service = service
        self.port = port
        self.token = token
        self.walltime = walltime
        self.phase = Phase.REQUESTED
        self.slurm_job_id = ""
        self.node = ""
        self.draining = ""
        self.cancel_requested = False
        self.final_state = ""

    @property
    def live(self) -> bool:
        return self.phase is not Phase.ENDED

    def _require(self, allowed: set[Phase], action: str) -> None:
        if self.phase not in allowed:
            raise InvalidTransition(f"job {self.token}", self.phase.value, action)

    def submitted(self, slurm_job_id: str, at: datetime) -> None:
        self._require({Phase.REQUESTED}, "be submitted")
        self._submitted(slurm_job_id=slurm_job_id, timestamp=at)

    @event(Submitted)
    def _submitted(self, slurm_job_id: str, timestamp: datetime) -> None:
        self.slurm_job_id = slurm_job_id
        self.phase = Phase.SUBMITTED

    def submission_failed(self, error: str, at: datetime) -> None:
        self._require({Phase.REQUESTED}, "fail submission")
        self._submission_failed(error=error, timestamp=at)

    @event(SubmissionFailed)
    def _submission_failed(self, error: str, timestamp: datetime) -> None:
        self.phase = Phase.ENDED
        self.final_state = FinalState.NOT_SUBMITTED.value

    def started(self, node: str, at: datetime) -> None:
        self._require({Phase.SUBMITTED}, "start")
        self._started(node=node, timestamp=at)

    @event(Started)
    def _started(self, node: str, timestamp: datetime) -> None:
        self.node = node
        self.phase = Phase.RUNNING

    def walltime_seen(self, walltime: float, at: datetime) -> None:
        """What Slurm says the job's time limit is; recorded only where it differs."""
        self._require({Phase.REQUESTED, Phase.SUBMITTED, Phase.RUNNING, Phase.READY},
                      "change its walltime")  # fmt: skip
        if walltime != self.walltime:
            self._walltime_corrected(walltime=walltime, timestamp=at)

    @event(WalltimeCorrected)
    def _walltime_corrected(self, walltime: float, timestamp: datetime) -> None:
        self.walltime = walltime

    def became_ready(self, at: datetime) -> None:
        self._require({Phase.RUNNING}, "become ready")
        self._became_ready(timestamp=at)

    @event(BecameReady)
    def _became_ready(self, timestamp: datetime) -> None:
        self.phase = Phase.READY

    def heartbeat(self, ok: bool, latency: float, at: datetime) -> None:
        self._require({Phase.RUNNING, Phase.READY}, "beat")
        self._heartbeat(ok=ok, latency=latency, timestamp=at)

    @event(Heartbeat)
    def _heartbeat(self, ok: bool, latency: float, timestamp: datetime) -> None:
        pass  # observations only: the projections keep what they need

    def drain(self, reason: DrainReason, at: datetime) -> None:
        self._require({Phase.REQUESTED, Phase.SUBMITTED, Phase.RUNNING, Phase.READY}, "drain")
        if self.draining:
            raise InvalidTransition(f"job {self.token}", "draining", "drain again")
        self._draining(reason=reason.value, timestamp=at)

    @event(Draining)
    def _draining(self, reason: str, timestamp: datetime) -> None:
        self.draining = reason

    def request_cancel(self, reason: str, at: datetime) -> None:
        """Recorded before scancel runs, so that a vanished job is known as cancelled."""
        self._require({Phase.REQUESTED, Phase.SUBMITTED, Phase.RUNNING, Phase.READY}, "cancel")
        self._cancel_requested(reason=reason, timestamp=at)

    @event(CancelRequested)
    def _cancel_requested(self, reason: str, timestamp: datetime) -> None:
        self.cancel_requested = True

    def end(self, final_state: FinalState, at: datetime) -> None:
        self._require({Phase.SUBMITTED, Phase.RUNNING, Phase.READY}, "end")
        self._ended(final_state=final_state.value, timestamp=at)

    @event(Ended)
    def _ended(self, final_state: str, timestamp: datetime) -> None:
        self.phase = Phase.ENDED
        self.final_state = final_state
