"""Slurm through its commands on this machine: sbatch, squeue and scancel.

Each command runs as an argv list (never a shell) from an absolute path, with a
timeout, and its exit code and stderr are checked; what it prints is read by
saia.protocol.slurm. Errors map onto the port's:

- the controller cannot be reached: SlurmUnavailable;
- a command (or Slurm's own RPC) timed out, or sbatch's answer is unreadable:
  SlurmTimeout, since the effect is unknown until the next look at the queue;
- sbatch answered and refused, or saia refused the request before sbatch ran:
  SubmissionRejected;
- anything else: SlurmError.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

from saia.adapters.job_records import slurm_job
from saia.domain.slurm import SlurmJob
from saia.ports import (
    SlurmError,
    SlurmTimeout,
    SlurmUnavailable,
    SubmissionRejected,
    SubmitRequest,
)
from saia.protocol import slurm as protocol
from saia.protocol.ids import SBATCH_NAME, SERVICE_ID, SLURM_JOB_ID, TOKEN
from saia.protocol.job_settings import JobSettings

log = logging.getLogger(__name__)



class InvalidSubmission(SubmissionRejected):
    """saia refused the request before running sbatch (script name, port, token...)."""


class SubmissionUnconfirmed(SlurmTimeout):
    """sbatch exited 0 but printed no job id: the job may exist; the queue will tell."""


@dataclass(frozen=True, slots=True)
class SlurmCommands:
    sbatch: str = "/usr/bin/sbatch"
    squeue: str = "/usr/bin/squeue"
    scancel: str = "/usr/bin/scancel"


@dataclass(frozen=True, slots=True)
class LocalSlurmSettings:
    sbatch_dir: Path  # the only folder scripts are taken from
    job_python: str  # absolute path; jobs get it as SAIA_PYTHON
    job_output_dir: Path | None = None  # None: Slurm's default, the submit directory
    sbatch_args: tuple[str, ...] = ()  # e.g. ("--partition=gpu", "--account=llm")
    # Whose jobs are listed and may be cancelled; None: everyone's. With None any user
    # can name a job like saia's and so forge or garble saia's view of the queue:
    # leave it None only where every submitter is trusted (a dev cluster, tests).
    user: str | None = None
    commands: SlurmCommands = field(default_factory=SlurmCommands)
    timeout: float = 30.0  # seconds per command; Slurm itself gives up after about 9 s
    # The commands' environment; None: saia's own. sbatch passes it on to the job.
    environment: Mapping[str, str] | None = None
    # A job's secret from its token (saia.protocol.job_secret), for its environment;
    # None: jobs get none and answer anyone.
    job_secret: Callable[[str], str] | None = None
    # Each service's job settings (saia.toml's [jobs.<id>]): its options and variables.
    jobs: Mapping[str, JobSettings] = field(default_factory=dict)


class LocalSlurm:
    """The Slurm port, by running Slurm's commands on this host."""

    def __init__(self, settings: LocalSlurmSettings) -> None:
        paths = {
            "sbatch_dir": str(settings.sbatch_dir),
            "job_python": settings.job_python,
            "commands.sbatch": settings.commands.sbatch,
            "commands.squeue": settings.commands.squeue,
            "commands.scancel": settings.commands.scancel,
        }
        if settings.job_output_dir is not None:
            paths["job_output_dir"] = str(settings.job_output_dir)
        for name, path in paths.items():
            if not os.path.isabs(path):
                raise ValueError(f"{name} must be an absolute path, not {path!r}")
        for arg in settings.sbatch_args:
            if arg.startswith(protocol.SAIAS_OPTIONS):
                raise ValueError(f"sbatch_args may not set {arg!r}: saia sets it itself")
        if not settings.timeout > 0:
            raise ValueError(f"timeout must be positive, not {settings.timeout!r}")
        self.settings = settings
        self._reported: set[str] = set()

    # -- the Slurm port ------------------------------------------------------------

    def submit(self, request: SubmitRequest) -> str:
        argv = self.sbatch_argv(request)
        secret = self.settings.job_secret
        job_environment = self._job_settings(request.service).variables(
            self.settings.job_python, request.service, request.port,
            "" if secret is None else secret(request.token))  # fmt: skip
        result = self._run(argv, self._environment((), job_environment))
        if result.returncode != 0:
            raise _unreachable(result) or SubmissionRejected(_describe(result))
        if result.stderr.strip():
            log.warning("sbatch for %s: %s", request.service, result.stderr.strip())
        try:
            return protocol.parse_sbatch_parsable(result.stdout)
        except protocol.SlurmParseError as error:
            raise SubmissionUnconfirmed(f"sbatch exited 0: {error}") from None

    def jobs(self) -> list[SlurmJob]:
        argv = [self.settings.commands.squeue, *protocol.squeue_options(self.settings.user)]
        # squeue prints start times in its zone: make that UTC, free of DST folds.
        result = self._run(argv, self._environment(protocol.SQUEUE_VARIABLES, {"TZ": "UTC"}))
        if result.returncode != 0:
            raise _unreachable(result) or SlurmError(_describe(result))
        if "error" in result.stderr.lower():
            # Seen: `squeue -u nosuchuser` exits 0 with an error and no jobs. An empty
            # listing taken at its word would end every job as lost.
            raise SlurmError(_describe(result))
        try:
            listing = protocol.read_squeue(result.stdout, UTC)
        except protocol.SlurmParseError as error:
            raise SlurmError(str(error)) from None
        for odd in listing.malformed:
            if odd.job_id not in self._reported:  # once per job, not once per pass
                self._reported.add(odd.job_id)
                log.warning(
                    "job %s is named like saia's but %s; ignored: %r",
                    odd.job_id, odd.problem, odd.line,
                )
        return [slurm_job(record) for record in listing.jobs]

    def cancel(self, slurm_job_id: str) -> None:
        if not SLURM_JOB_ID.fullmatch(slurm_job_id):
            raise SlurmError(f"not a Slurm job id saia could have: {slurm_job_id!r}")
        argv = [self.settings.commands.scancel, *self._user_filter(), slurm_job_id]
        result = self._run(argv, self._environment(protocol.SCANCEL_VARIABLES, {}))
        if result.returncode == 0 or any(gone in result.stderr for gone in protocol.ALREADY_GONE):
            return
        raise _unreachable(result) or SlurmError(_describe(result))

    # -- building and running commands ---------------------------------------------

    def sbatch_argv(self, request: SubmitRequest) -> list[str]:
        """The sbatch command for a request, or InvalidSubmission; runs nothing."""
        script = self._script(request.sbatch)
        if not SERVICE_ID.fullmatch(request.service):
            raise InvalidSubmission(f"not a service id: {request.service!r}")
        if not TOKEN.fullmatch(request.token):
            raise InvalidSubmission(f"not a token of 16 hex digits: {request.token!r}")
        if not 1 <= request.port <= 65535:
            raise InvalidSubmission(f"not a port: {request.port!r}")
        if not math.isfinite(request.walltime) or request.walltime <= 0:
            raise InvalidSubmission(f"not a walltime in seconds: {request.walltime!r}")
        argv = [
            self.settings.commands.sbatch,
            *protocol.identity_options(
                request.service, request.token, request.port, request.walltime
            ),
        ]
        if self.settings.job_output_dir is not None:
            argv.append(f"--output={self.settings.job_output_dir / 'saia-%j.out'}")
        # Operator options come after saia's, so that they may override --time or --output,
        # and the service's own last: Slurm takes the last of an option given twice.
        argv.extend(self.settings.sbatch_args)
        argv.extend(self._job_settings(request.service).sbatch_options())
        argv.extend([str(script), str(request.port)])
        return argv

    def _job_settings(self, service: str) -> JobSettings:
        return self.settings.jobs.get(service, JobSettings())

    def _script(self, name: str) -> Path:
        # A plain file name (no '/', no leading dot, so no '..'): a request can only
        # pick one of the scripts the operator put in sbatch_dir.
        if not SBATCH_NAME.fullmatch(name):
            raise InvalidSubmission(f"not a plain sbatch script name: {name!r}")
        script = self.settings.sbatch_dir / name
        if not script.is_file():
            raise InvalidSubmission(f"no script {name!r} in {self.settings.sbatch_dir}")
        return script

    def _user_filter(self) -> list[str]:
        return [] if self.settings.user is None else [f"--user={self.settings.user}"]

    def _environment(self, drop: Sequence[str], add: Mapping[str, str]) -> dict[str, str]:
        # Inherited, not configuration: the commands need SLURM_CONF, PATH and the like.
        base = os.environ if self.settings.environment is None else self.settings.environment
        kept = {name: value for name, value in base.items() if not name.startswith(tuple(drop))}
        return {**kept, **add}

    def _run(
        self, argv: list[str], environment: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        command = Path(argv[0]).name
        try:
            return subprocess.run(
                argv,
                env=environment,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",  # job names and comments are anyone's bytes
                timeout=self.settings.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SlurmTimeout(
                f"{command} did not finish within {self.settings.timeout:g} s"
            ) from None
        except OSError as error:
            raise SlurmError(f"cannot run {argv[0]}: {error.strerror or error}") from None


def _describe(result: subprocess.CompletedProcess[str]) -> str:
    command = Path(str(result.args[0])).name
    stderr = result.stderr.strip() or "(nothing on stderr)"
    return f"{command} exited {result.returncode}: {stderr}"


def _unreachable(result: subprocess.CompletedProcess[str]) -> SlurmUnavailable | None:
    kind = protocol.failure(result.stderr)
    if kind == "timeout":
        return SlurmTimeout(_describe(result))
    if kind == "unreachable":
        return SlurmUnavailable(_describe(result))
    return None
