"""Reconciliation: what the log must record so that it agrees with the Slurm queue.

A pure function of the live jobs in the log and the saia jobs in the queue. It
adopts a requested job whose token is queued (the controller died between
recording the request and hearing sbatch answer), records starts and ends,
ends a job that vanished from the queue as lost, and decides what to do with a
saia job in the queue that the log does not know: adopted or cancelled, as
configured, when it belongs to a service in the log. A job of a service the log
has never heard of is left alone: it is some other saia's (a second instance,
or a test, under the same account), and cancelling it is not this one's call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from saia.domain.job import FinalState, Phase
from saia.domain.slurm import RUNNING_STATES, SlurmJob
from saia.domain.state import ServiceView


class UnknownJobPolicy(StrEnum):
    ADOPT = "adopt"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class MarkSubmitted:
    job: UUID
    slurm_job_id: str


@dataclass(frozen=True, slots=True)
class MarkStarted:
    job: UUID
    node: str
    at: float


@dataclass(frozen=True, slots=True)
class CorrectWalltime:
    """Slurm's time limit for the job, not the one saia asked for: expiry follows Slurm."""

    job: UUID
    walltime: float


@dataclass(frozen=True, slots=True)
class MarkEnded:
    job: UUID
    final_state: FinalState


@dataclass(frozen=True, slots=True)
class MarkNotSubmitted:
    job: UUID
    error: str


@dataclass(frozen=True, slots=True)
class Adopt:
    slurm: SlurmJob


@dataclass(frozen=True, slots=True)
class CancelUnknown:
    slurm: SlurmJob
    why: str


Correction = (
    MarkSubmitted | MarkStarted | CorrectWalltime | MarkEnded | MarkNotSubmitted | Adopt
    | CancelUnknown
)


def reconcile(
    services: Mapping[str, ServiceView],
    queue: Sequence[SlurmJob],
    known_tokens: AbstractSet[str],
    now: float,
    unknown: UnknownJobPolicy,
) -> list[Correction]:
    by_token = {job.token: job for job in queue}
    corrections: list[Correction] = []
    for service in services.values():
        for job in service.jobs.values():
            seen = by_token.get(job.token)
            limit = None if seen is None or seen.final is not None else seen.time_limit
            if limit is not None and limit != job.walltime:
                corrections.append(CorrectWalltime(job.id, limit))
            if job.phase is Phase.REQUESTED:
                if seen is not None:
                    corrections.append(MarkSubmitted(job.id, seen.job_id))
                    corrections.extend(_progress(job.id, Phase.SUBMITTED, seen, now))
                elif now - job.requested_at > service.spec.submit_grace:
                    corrections.append(MarkNotSubmitted(job.id, "not in the queue after sbatch"))
            elif seen is None:
                lost = FinalState.CANCELLED if job.cancel_requested_at else FinalState.LOST
                corrections.append(MarkEnded(job.id, lost))
            else:
                corrections.extend(_progress(job.id, job.phase, seen, now))
    for seen in queue:
        if seen.token in known_tokens or seen.final is not None:
            continue
        service_view = services.get(seen.service)
        if service_view is None:
            continue
        if service_view.retired:
            corrections.append(CancelUnknown(seen, "its service is retired"))
        elif unknown is UnknownJobPolicy.ADOPT:
            corrections.append(Adopt(seen))
        else:
            corrections.append(CancelUnknown(seen, "not in the log"))
    return corrections


def _progress(job: UUID, phase: Phase, seen: SlurmJob, now: float) -> list[Correction]:
    """Corrections that bring a queued job's phase up to what Slurm reports."""
    out: list[Correction] = []
    running = seen.state in RUNNING_STATES or seen.final is not None
    if phase is Phase.SUBMITTED and running and seen.batch_host:
        start = seen.start_time if seen.start_time is not None else now
        out.append(MarkStarted(job, seen.batch_host, start))
    final = seen.final
    if final is not None:
        out.append(MarkEnded(job, final))
    return out
