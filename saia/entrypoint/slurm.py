"""Slurm's commands on the login node: sbatch, squeue and scancel, for this user's saia jobs.

Each command runs as an argv list (never a shell) from the absolute path the
configuration names, with a timeout, in the allowlisted environment of
saia.entrypoint.settings; its exit code and stderr are checked, and what it
prints is read by saia.protocol.slurm. Failures are refusals with the exit
code the hub acts on: sbatch's own refusal is UNAVAILABLE (69), everything
else (Slurm not answering, a timeout, output saia does not understand) is
TEMPORARY (75), since the next look at the queue tells what happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import timezone

from saia.entrypoint.config import EntrypointConfig, ServiceRule
from saia.entrypoint.refusal import Refusal
from saia.protocol import exits, job_secret
from saia.protocol import slurm as protocol
from saia.protocol.jobs import JobRecord


class LoginSlurm:
    def __init__(self, config: EntrypointConfig, environment: Mapping[str, str], user: str) -> None:
        self.config = config
        self.user = user  # whose jobs are listed and may be cancelled
        commands = config.commands
        self.environment = dict(environment)
        if commands.slurm_conf:
            self.environment["SLURM_CONF"] = commands.slurm_conf

    def jobs(self) -> list[JobRecord]:
        """saia's jobs of this user, from a fresh look at the queue."""
        argv = [self.config.commands.squeue, *protocol.squeue_options(self.user)]
        # squeue prints start times in its zone: make that UTC, free of DST folds.
        result = self._run(argv, protocol.SQUEUE_VARIABLES, {"TZ": "UTC"})
        if result.returncode != 0 or "error" in result.stderr.lower():
            # Seen: `squeue -u nosuchuser` exits 0 with an error and no jobs. An empty
            # listing taken at its word would end every job as lost.
            raise _failed(result)
        try:
            return protocol.read_squeue(result.stdout, timezone.utc).jobs
        except protocol.SlurmParseError as error:
            raise Refusal(f"squeue: {error}", exits.TEMPORARY) from None

    def submit(self, rule: ServiceRule, port: int, token: str) -> str:
        """The new job's id; the script, time limit and job settings are this login node's."""
        config = self.config
        script = os.path.join(config.sbatch_dir, rule.sbatch)
        if not os.path.isfile(script):
            raise Refusal(f"no script {rule.sbatch!r} in {config.sbatch_dir}", exits.CONFIG)
        argv = [
            config.commands.sbatch,
            *protocol.identity_options(rule.id, token, port, rule.time_limit * 60.0),
        ]
        if config.job_output_dir:
            argv.append(f"--output={os.path.join(config.job_output_dir, 'saia-%j.out')}")
        # The operator's options come after saia's, and the service's own last: Slurm
        # takes the last of an option given twice.
        options = rule.job.sbatch_options(config.account, config.partition)
        argv += [*config.sbatch_args, *options, script, str(port)]
        try:
            secret = job_secret.for_job(job_secret.load_key(config.state_dir), token)
        except OSError as error:
            raise Refusal(f"state_dir: {error}", exits.CONFIG) from None
        job = rule.job.variables(config.job_python or sys.executable, rule.id, port, secret)
        result = self._run(argv, (), job)
        if result.returncode != 0:
            if protocol.failure(result.stderr) is None:
                raise Refusal(f"sbatch refused the job: {_describe(result)}", exits.UNAVAILABLE)
            raise _failed(result)
        try:
            return protocol.parse_sbatch_parsable(result.stdout)
        except protocol.SlurmParseError as error:
            # The job may exist: the queue will show it under its token.
            raise Refusal(f"sbatch exited 0: {error}", exits.TEMPORARY) from None

    def cancel(self, job_id: str) -> None:
        argv = [self.config.commands.scancel, f"--user={self.user}", job_id]
        result = self._run(argv, protocol.SCANCEL_VARIABLES, {})
        if result.returncode != 0 and not any(g in result.stderr for g in protocol.ALREADY_GONE):
            raise _failed(result)

    def _run(
        self, argv: list[str], drop: tuple[str, ...], add: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        kept = {k: v for k, v in self.environment.items() if not k.startswith(drop)}
        command = os.path.basename(argv[0])
        try:
            return subprocess.run(
                argv,
                env={**kept, **add},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",  # job names and comments are anyone's bytes
                timeout=self.config.slurm_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            message = f"{command} did not finish within {self.config.slurm_timeout:g} s"
            raise Refusal(message, exits.TEMPORARY) from None
        except OSError as error:
            message = f"cannot run {argv[0]}: {error.strerror or error}"
            raise Refusal(message, exits.CONFIG) from None


def _failed(result: subprocess.CompletedProcess[str]) -> Refusal:
    said = "did not answer" if protocol.failure(result.stderr) else "failed"
    return Refusal(f"Slurm {said}: {_describe(result)}", exits.TEMPORARY)


def _describe(result: subprocess.CompletedProcess[str]) -> str:
    command = os.path.basename(str(result.args[0]))
    stderr = result.stderr.strip() or "(nothing on stderr)"
    return f"{command} exited {result.returncode}: {stderr[:500]}"
