"""What saia knows of a Slurm job from the queue, independent of how it was read."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from saia.domain.job import FinalState


class SlurmState(StrEnum):
    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    STOPPED = "STOPPED"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    RESIZING = "RESIZING"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REVOKED = "REVOKED"


FINAL_STATES: dict[SlurmState, FinalState] = {
    SlurmState.COMPLETED: FinalState.COMPLETED,
    SlurmState.CANCELLED: FinalState.CANCELLED,
    SlurmState.FAILED: FinalState.FAILED,
    SlurmState.TIMEOUT: FinalState.TIMEOUT,
    SlurmState.NODE_FAIL: FinalState.FAILED,
    SlurmState.PREEMPTED: FinalState.FAILED,
    SlurmState.BOOT_FAIL: FinalState.FAILED,
    SlurmState.DEADLINE: FinalState.TIMEOUT,
    SlurmState.OUT_OF_MEMORY: FinalState.FAILED,
    SlurmState.REVOKED: FinalState.CANCELLED,
}

# States in which the service process runs on its batch host.
RUNNING_STATES = frozenset({SlurmState.RUNNING})


@dataclass(frozen=True, slots=True)
class SlurmJob:
    job_id: str
    service: str  # from the job name saia gave it
    token: str  # from the job comment saia gave it
    port: int  # from the job comment saia gave it
    state: SlurmState
    reason: str = ""
    batch_host: str = ""
    time_used: float = 0.0  # seconds
    time_limit: float | None = None  # seconds; None is UNLIMITED
    start_time: float | None = None  # epoch seconds, None while pending

    @property
    def final(self) -> FinalState | None:
        return FINAL_STATES.get(self.state)
