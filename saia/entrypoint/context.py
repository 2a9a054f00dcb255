"""What every verb gets: the configuration, stdin and stdout, the clock, and Slurm on demand.

The Slurm adapter (and with it eventsourcing, through SlurmJob) is imported only
when a verb really asks Slurm: a forward answered from the route cache never
pays for it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from saia.entrypoint import exits
from saia.entrypoint.config import EntrypointConfig
from saia.entrypoint.routes import Route, RouteCache

if TYPE_CHECKING:
    from saia.domain.slurm import SlurmJob
    from saia.ports import Slurm

Read = Callable[[], bytes]  # a chunk of stdin; b"" at its end
Write = Callable[[bytes], None]  # to stdout, flushed


class Refusal(Exception):
    """A verb refuses; nothing was changed. Carries the exit code to leave with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class Context:
    config: EntrypointConfig
    read: Read
    write: Write
    clock: Callable[[], float]
    environment: Mapping[str, str]  # for the commands this process starts
    make_slurm: Callable[[], Slurm]  # called once, by the first verb that asks Slurm
    _slurm: Slurm | None = field(default=None, init=False, repr=False)
    _routes: RouteCache | None = field(default=None, init=False, repr=False)

    def slurm(self) -> Slurm:
        if self._slurm is None:
            self._slurm = self.make_slurm()
        return self._slurm

    def jobs(self) -> list[SlurmJob]:
        """saia's jobs of this user, from a fresh look at the queue."""
        with slurm_errors():
            return self.slurm().jobs()

    def routes(self) -> RouteCache:
        if self._routes is None:
            cache_path, max_age = self.config.queue_cache, self.config.queue_cache_seconds
            self._routes = RouteCache(cache_path, max_age, self._look, self.clock)
        return self._routes

    def _look(self) -> list[Route]:
        return [route_of(job) for job in self.jobs()]


def route_of(job: SlurmJob) -> Route:
    return Route(job.job_id, job.service, job.state.value, job.batch_host, job.port)


@contextmanager
def slurm_errors() -> Iterator[None]:
    """The Slurm port's errors as refusals with their exit codes."""
    # Entered only right before Slurm is asked, when the adapter has imported these.
    from saia.ports import (  # noqa: PLC0415 (start-up cost: only verbs that ask Slurm)
        SlurmError,
        SlurmUnavailable,
        SubmissionRejected,
    )

    try:
        yield
    except SubmissionRejected as error:
        raise Refusal(f"sbatch refused the job: {error}", exits.UNAVAILABLE) from None
    except SlurmUnavailable as error:
        raise Refusal(f"Slurm did not answer: {error}", exits.TEMPORARY) from None
    except SlurmError as error:
        raise Refusal(f"Slurm: {error}", exits.TEMPORARY) from None


def local_slurm(config: EntrypointConfig, environment: Mapping[str, str], user: str) -> Slurm:
    """Slurm's commands on this host, listing and cancelling only ``user``'s jobs."""
    from pathlib import Path  # noqa: PLC0415 (start-up cost: only verbs that ask Slurm)

    from saia.adapters import slurm_local  # noqa: PLC0415 (start-up cost, as above)

    commands = config.commands
    slurm_environment = dict(environment)
    if commands.slurm_conf:
        slurm_environment["SLURM_CONF"] = commands.slurm_conf
    account = [f"--account={config.account}"] if config.account else []
    partition = [f"--partition={config.partition}"] if config.partition else []
    return slurm_local.LocalSlurm(
        slurm_local.LocalSlurmSettings(
            sbatch_dir=Path(config.sbatch_dir),
            job_python=config.job_python or sys.executable,
            job_output_dir=Path(config.job_output_dir) if config.job_output_dir else None,
            sbatch_args=(*account, *partition, *config.sbatch_args),
            user=user,
            commands=slurm_local.SlurmCommands(
                sbatch=commands.sbatch, squeue=commands.squeue, scancel=commands.scancel
            ),
            timeout=config.slurm_timeout,
            environment=slurm_environment,
        )
    )
