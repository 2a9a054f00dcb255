"""The ``jobs`` verb's output: one JSON object per line per saia job, and back.

The remote Slurm adapter on the hub reads these lines into the same SlurmJob
values the local adapter returns, so the controller cannot tell them apart.
"""

from __future__ import annotations

import json
from typing import Any

from saia.domain.slurm import SlurmJob, SlurmState


class WireError(ValueError):
    """A line that is not a job as ``jobs`` prints it."""


def job_line(job: SlurmJob) -> bytes:
    record = {
        "job_id": job.job_id,
        "service": job.service,
        "token": job.token,
        "port": job.port,
        "state": job.state.value,
        "reason": job.reason,
        "batch_host": job.batch_host,
        "time_used": job.time_used,
        "time_limit": job.time_limit,
        "start_time": job.start_time,
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def job_from_line(line: str | bytes) -> SlurmJob:
    try:
        record: Any = json.loads(line)
        job = SlurmJob(
            job_id=_typed(record, "job_id", str),
            service=_typed(record, "service", str),
            token=_typed(record, "token", str),
            port=_typed(record, "port", int),
            state=SlurmState(record["state"]),
            reason=_typed(record, "reason", str),
            batch_host=_typed(record, "batch_host", str),
            time_used=float(_typed(record, "time_used", int | float)),
            time_limit=_optional_number(record, "time_limit"),
            start_time=_optional_number(record, "start_time"),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise WireError(f"not a job line ({error}): {line[:200]!r}") from None
    return job


def _typed(record: Any, key: str, kind: Any) -> Any:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise WireError(f"{key} has the wrong type")
    return value


def _optional_number(record: Any, key: str) -> float | None:
    value = record[key]
    return None if value is None else float(_typed(record, key, int | float))
