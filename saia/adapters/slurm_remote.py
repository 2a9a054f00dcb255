"""Slurm through saia-entrypoint on the login node, over the hub's SSH link.

The same port as saia.adapters.slurm_local, so the controller cannot tell
them apart; the login node runs the local adapter behind its verbs (``jobs``,
``submit``, ``cancel``). Arguments are checked against the entrypoint's own
grammar before they are sent, and its exit codes map onto the port's errors:

=====================================  ==================================================
what happened                          error
=====================================  ==================================================
the link is down (nothing sent)        SlurmUnavailable
the answer was lost or came too late   SlurmTimeout: the verb may have run; a submit
                                       is found again by its token in the queue
75: Slurm did not answer in time,      SlurmUnavailable for ``jobs``; SlurmTimeout for
the submit lock is busy                ``submit`` and ``cancel``
69 on submit: sbatch refused the job   SubmissionRejected
70 on submit: the entrypoint failed    SlurmTimeout: sbatch may have run before it failed
77 on cancel: not (or no more) listed  success: nothing of saia's is left to cancel
64, 65, 77: refused                    SlurmError with the entrypoint's reason
78: the login node is misconfigured    SlurmError naming the login node's config problem
=====================================  ==================================================

Two choices are the login node's, not the hub's: the sbatch script and the
time limit of each service come from the entrypoint's configuration, so a
SubmitRequest's ``sbatch`` and ``walltime`` are not sent (a compromised hub
must not pick what runs). The hub's ``job_expiry_time`` should match the
login node's ``time_limit``, or its replacements come too late.
"""

from __future__ import annotations

import logging
from typing import Protocol

from saia.adapters.slurm_local import InvalidSubmission, SubmissionUnconfirmed
from saia.adapters.ssh_link import AnswerLost, Completed, LinkError
from saia.domain.slurm import SlurmJob
from saia.domain.spec import SERVICE_ID
from saia.entrypoint import exits, grammar, wire
from saia.ports import SlurmError, SlurmTimeout, SlurmUnavailable, SubmissionRejected, SubmitRequest

log = logging.getLogger(__name__)

_ENTRYPOINT_PREFIX = "saia-entrypoint: "


class CommandLink(Protocol):
    """What the adapter needs of a link: run one entrypoint command (see SshLink.run)."""

    def run(self, command: str, stdin: bytes = b"", *, timeout: float) -> Completed: ...


class RemoteSlurm:
    """The Slurm port, by asking saia-entrypoint on the login node."""

    def __init__(self, link: CommandLink, timeout: float = 60.0) -> None:
        # The login node gives Slurm 30 s per command by default and waits as long for
        # its submit lock: a shorter timeout here would cut answers that are coming.
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.link = link
        self.timeout = timeout

    def submit(self, request: SubmitRequest) -> str:
        """The Slurm job id; ``request.sbatch`` and ``request.walltime`` are the login node's."""
        command = submit_command(request)
        answer = self._run(command)
        if answer.exit_code != exits.OK:
            raise _submit_error(answer)
        job_id = answer.stdout.decode("ascii", "replace").strip()
        if not grammar.SLURM_JOB_ID.fullmatch(job_id):
            # The job may exist: the queue will show it under its token.
            raise SubmissionUnconfirmed(f"submit exited 0 without a job id: {answer.stdout[:80]!r}")
        return job_id

    def jobs(self) -> list[SlurmJob]:
        answer = self._run("jobs")
        if answer.exit_code == exits.TEMPORARY:
            raise SlurmUnavailable(_refusal("jobs", answer))
        if answer.exit_code != exits.OK:
            raise SlurmError(_refusal("jobs", answer))
        return parse_jobs(answer.stdout)

    def cancel(self, slurm_job_id: str) -> None:
        if not grammar.SLURM_JOB_ID.fullmatch(slurm_job_id):
            raise SlurmError(f"not a Slurm job id saia could have: {slurm_job_id!r}")
        answer = self._run(f"cancel {slurm_job_id}")
        if answer.exit_code == exits.OK:
            return
        if answer.exit_code == exits.NOT_PERMITTED:
            # The login node lists only saia's jobs: one it does not list is gone (or was
            # never saia's), so there is nothing of saia's left to cancel, as scancel's
            # "Invalid job id" is success for the local adapter.
            log.info("cancel %s: %s", slurm_job_id, _said(answer))
            return
        if answer.exit_code == exits.TEMPORARY:
            raise SlurmTimeout(_refusal("cancel", answer))
        raise SlurmError(_refusal("cancel", answer))

    def _run(self, command: str) -> Completed:
        try:
            return self.link.run(command, timeout=self.timeout)
        except AnswerLost as error:
            raise SlurmTimeout(str(error)) from None
        except LinkError as error:  # LinkDown: nothing was sent
            raise SlurmUnavailable(str(error)) from None


def submit_command(request: SubmitRequest) -> str:
    """The ``submit`` verb for a request, checked as the entrypoint's grammar checks it."""
    if not SERVICE_ID.fullmatch(request.service):
        raise InvalidSubmission(f"not a service id: {request.service!r}")
    port = str(request.port)
    if not grammar.PORT.fullmatch(port) or not grammar.PORT_MIN <= request.port <= grammar.PORT_MAX:
        span = f"{grammar.PORT_MIN}-{grammar.PORT_MAX}"
        raise InvalidSubmission(f"not a port in {span}: {request.port!r}")
    if not grammar.TOKEN.fullmatch(request.token):
        raise InvalidSubmission(f"not a token of 16 hex digits: {request.token!r}")
    return f"submit {request.service} {port} {request.token}"


def parse_jobs(stdout: bytes) -> list[SlurmJob]:
    """The jobs of a ``jobs`` answer; a line that is not a job raises SlurmError."""
    if stdout and not stdout.endswith(b"\n"):
        raise SlurmError(f"jobs answer cut short: ...{stdout[-80:]!r}")
    try:
        return [wire.job_from_line(line) for line in stdout.splitlines()]
    except wire.WireError as error:
        raise SlurmError(f"jobs answered {error}") from None


def _submit_error(answer: Completed) -> SlurmError:
    message = _refusal("submit", answer)
    if answer.exit_code == exits.UNAVAILABLE:
        return SubmissionRejected(message)
    if answer.exit_code in (exits.TEMPORARY, exits.SOFTWARE):
        return SlurmTimeout(message)  # sbatch may have run: the queue will tell by token
    return SlurmError(message)


def _refusal(verb: str, answer: Completed) -> str:
    code = answer.exit_code
    if code == exits.CONFIG:
        return f"login node misconfigured ({verb} exited {code}): {_said(answer)}"
    return f"{verb} exited {code}: {_said(answer)}"


def _said(answer: Completed) -> str:
    """The entrypoint's one-line reason, without its program-name prefix."""
    text = answer.stderr.decode("utf-8", "replace").strip()
    return text.removeprefix(_ENTRYPOINT_PREFIX)[:500] or "(nothing on stderr)"
