"""What the application needs from the outside world, as Protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from saia.domain.slurm import SlurmJob


class SlurmError(Exception):
    """Slurm could not be asked, or did not answer in a form saia understands."""


class SlurmUnavailable(SlurmError):
    """The controller did not answer (down, unreachable, timed out)."""


class SubmissionRejected(SlurmError):
    """sbatch answered and refused the job (bad script, partition, limits)."""


class SlurmTimeout(SlurmUnavailable):
    """A command did not finish in time: its effect is unknown until the next look."""


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    service: str
    sbatch: str  # script name in the sbatch folder, never a path
    port: int
    token: str
    walltime: float  # seconds


class Slurm(Protocol):
    def submit(self, request: SubmitRequest) -> str: ...

    def jobs(self) -> list[SlurmJob]: ...

    def cancel(self, slurm_job_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    job: UUID
    host: str
    port: int
    path: str
    slurm_job_id: str = ""  # how the login node names the job, for probes through it
    token: str = ""  # the job's, from which its secret derives (saia.protocol.job_secret)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    latency: float  # seconds
    error: str = ""


class Prober(Protocol):
    def probe(self, targets: Sequence[ProbeTarget], timeout: float) -> dict[UUID, ProbeResult]:
        """A result for each target probed; none for one that could not be (a link down)."""
        ...
