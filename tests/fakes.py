"""Fakes for fast tests: a Slurm queue in memory (as the hub and the login node see it),
a prober that asks it, a clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from saia.domain.slurm import SlurmJob, SlurmState
from saia.entrypoint.config import ServiceRule
from saia.entrypoint.refusal import Refusal
from saia.ports import (
    ProbeResult,
    ProbeTarget,
    SlurmUnavailable,
    SubmissionRejected,
    SubmitRequest,
)
from saia.protocol import exits
from saia.protocol.jobs import JobRecord


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeJob:
    job_id: str
    service: str
    token: str
    port: int
    limit: float
    state: SlurmState = SlurmState.PENDING
    host: str = ""
    start: float | None = None
    healthy: bool = True


class FakeSlurm:
    """Keeps job states like slurmctld does; tests move them along explicitly."""

    def __init__(self, clock: FakeClock, nodes: int = 4, ready_after: float = 1.0) -> None:
        self.clock = clock
        self.nodes = [f"node{i + 1}" for i in range(nodes)]
        self.queue: dict[str, FakeJob] = {}
        self.available = True
        self.accepting = True
        self.ready_after = ready_after
        self.submitted = 0
        self._next = 1000

    # -- the Slurm port ------------------------------------------------------------

    def submit(self, request: SubmitRequest) -> str:
        if not self.available:
            raise SlurmUnavailable("sbatch: error: Unable to contact slurm controller")
        if not self.accepting:
            raise SubmissionRejected("sbatch: error: Batch job submission failed")
        self._next += 1
        job_id = str(self._next)
        self.queue[job_id] = FakeJob(
            job_id, request.service, request.token, request.port, request.walltime
        )
        self.submitted += 1
        return job_id

    def jobs(self) -> list[SlurmJob]:
        if not self.available:
            raise SlurmUnavailable("squeue: error: Unable to contact slurm controller")
        return [self._view(job) for job in self.queue.values()]

    def cancel(self, slurm_job_id: str) -> None:
        if not self.available:
            raise SlurmUnavailable("scancel: error: Unable to contact slurm controller")
        job = self.queue.get(slurm_job_id)
        if job is not None and job.state in (SlurmState.PENDING, SlurmState.RUNNING):
            job.state = SlurmState.CANCELLED

    # -- what the cluster does by itself -------------------------------------------

    def start_pending(self, limit: int | None = None) -> None:
        pending = [job for job in self.queue.values() if job.state is SlurmState.PENDING]
        for index, job in enumerate(pending[:limit]):
            job.state = SlurmState.RUNNING
            job.host = self.nodes[index % len(self.nodes)]
            job.start = self.clock()

    def expire(self) -> None:
        now = self.clock()
        for job in self.queue.values():
            running = job.state is SlurmState.RUNNING and job.start is not None
            if running and job.start is not None and now >= job.start + job.limit:
                job.state = SlurmState.TIMEOUT

    def fail(self, job_id: str) -> None:
        self.queue[job_id].state = SlurmState.FAILED

    def forget_finished(self) -> None:
        """Finished jobs leave squeue after MinJobAge."""
        self.queue = {
            k: v for k, v in self.queue.items()
            if v.state in (SlurmState.PENDING, SlurmState.RUNNING)
        }

    def running(self) -> list[FakeJob]:
        return [job for job in self.queue.values() if job.state is SlurmState.RUNNING]

    def _view(self, job: FakeJob) -> SlurmJob:
        used = 0.0 if job.start is None else self.clock() - job.start
        return SlurmJob(
            job_id=job.job_id,
            service=job.service,
            token=job.token,
            port=job.port,
            state=job.state,
            batch_host=job.host,
            time_used=used,
            time_limit=job.limit,
            start_time=job.start,
        )


class FakeProber:
    """A job answers once it has run ``ready_after`` seconds and its process is healthy."""

    def __init__(self, slurm: FakeSlurm) -> None:
        self.slurm = slurm

    def probe(self, targets: Sequence[ProbeTarget], timeout: float) -> dict[UUID, ProbeResult]:
        now = self.slurm.clock()
        by_port = {
            (job.host, job.port): job for job in self.slurm.queue.values()
            if job.state is SlurmState.RUNNING
        }
        results: dict[UUID, ProbeResult] = {}
        for target in targets:
            job = by_port.get((target.host, target.port))
            ok = (
                job is not None and job.healthy and job.start is not None
                and now - job.start >= self.slurm.ready_after
            )
            results[target.job] = ProbeResult(ok, 0.001 if ok else timeout)
        return results


class FakeLoginSlurm:
    """The login node's Slurm (saia.entrypoint.slurm.LoginSlurm) over a FakeSlurm queue."""

    def __init__(self, slurm: FakeSlurm) -> None:
        self.slurm = slurm

    def jobs(self) -> list[JobRecord]:
        if not self.slurm.available:
            raise Refusal("Slurm did not answer: squeue: unreachable", exits.TEMPORARY)
        return [
            JobRecord(
                job_id=job.job_id, service=job.service, token=job.token, port=job.port,
                state=job.state.value, batch_host=job.batch_host, time_used=job.time_used,
                time_limit=job.time_limit, start_time=job.start_time,
            )
            for job in self.slurm.jobs()
        ]  # fmt: skip

    def submit(self, rule: ServiceRule, port: int, token: str) -> str:
        if not self.slurm.accepting:
            raise Refusal("sbatch refused the job: Batch job submission failed", exits.UNAVAILABLE)
        request = SubmitRequest(rule.id, rule.sbatch, port, token, rule.time_limit * 60.0)
        return self.slurm.submit(request)

    def cancel(self, job_id: str) -> None:
        self.slurm.cancel(job_id)
