"""The login node's job records (saia.protocol.jobs) as the domain's SlurmJob values."""

from __future__ import annotations

from saia.domain.slurm import SlurmJob, SlurmState
from saia.protocol.jobs import JobRecord


def slurm_job(record: JobRecord) -> SlurmJob:
    return SlurmJob(
        job_id=record.job_id,
        service=record.service,
        token=record.token,
        port=record.port,
        state=SlurmState(record.state),
        reason=record.reason,
        batch_host=record.batch_host,
        time_used=record.time_used,
        time_limit=record.time_limit,
        start_time=record.start_time,
    )
