"""saia's jobs as the login node reports them: one JSON object per line, and back.

The entrypoint reads them off the queue (saia.protocol.slurm) and answers
``GET /slurm/jobs`` with these lines; the hub turns each into the domain's
SlurmJob, so the controller cannot tell a remote queue from a local one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

# Every state squeue prints; a state outside these is output saia does not know.
STATES = frozenset(
    {
        "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED",
        "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT",
        "RESV_DEL_HOLD", "SPECIAL_EXIT", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT",
        "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED",
    }
)  # fmt: skip
RUNNING = "RUNNING"
# The states of a job that is over.
FINAL_STATES = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
     "DEADLINE", "OUT_OF_MEMORY", "REVOKED"}
)  # fmt: skip


class WireError(ValueError):
    """A line that is not a job record."""


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    service: str  # from the job name saia gave it
    token: str  # from the job comment saia gave it
    port: int  # from the job comment saia gave it
    state: str  # one of STATES
    reason: str = ""
    batch_host: str = ""  # empty until the job runs
    time_used: float = 0.0  # seconds
    time_limit: float | None = None  # seconds; None is UNLIMITED
    start_time: float | None = None  # epoch seconds; None while pending

    @property
    def running(self) -> bool:
        """Whether its service can be reached: running, on a known host."""
        return self.state == RUNNING and bool(self.batch_host)

    @property
    def ended(self) -> bool:
        return self.state in FINAL_STATES


def job_line(job: JobRecord) -> bytes:
    return json.dumps(asdict(job), separators=(",", ":")).encode() + b"\n"


def job_from_line(line: str | bytes) -> JobRecord:
    try:
        record: Any = json.loads(line)
        if not isinstance(record, dict) or set(record) != _FIELDS:
            raise WireError("not the fields of a job")
        job = JobRecord(
            job_id=_typed(record, "job_id", str),
            service=_typed(record, "service", str),
            token=_typed(record, "token", str),
            port=_typed(record, "port", int),
            state=_typed(record, "state", str),
            reason=_typed(record, "reason", str),
            batch_host=_typed(record, "batch_host", str),
            time_used=float(_typed(record, "time_used", (int, float))),
            time_limit=_optional_number(record, "time_limit"),
            start_time=_optional_number(record, "start_time"),
        )
        if job.state not in STATES:
            raise WireError(f"unknown state {job.state!r}")
    except (ValueError, KeyError, TypeError) as error:
        raise WireError(f"not a job line ({error}): {line[:200]!r}") from None
    return job


_FIELDS = frozenset(JobRecord.__dataclass_fields__)


def _typed(record: Any, key: str, kind: Any) -> Any:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise WireError(f"{key} has the wrong type")
    return value


def _optional_number(record: Any, key: str) -> float | None:
    value = record[key]
    return None if value is None else float(_typed(record, key, (int, float)))
