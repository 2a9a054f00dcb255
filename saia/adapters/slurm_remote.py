"""Slurm through saia-entrypoint on the login node, over the controller's session.

The same port as saia.adapters.slurm_local, so the controller cannot tell
them apart; the login node runs Slurm's commands behind the session's
``/slurm/jobs``, ``/slurm/submit`` and ``/slurm/cancel/<id>``. Arguments are
checked against saia.protocol.ids before they are sent, and the exit codes the
answers carry map onto the port's errors:

=====================================  ==================================================
what happened                          error
=====================================  ==================================================
no session (nothing sent)              SlurmUnavailable
the answer was lost or came too late   SlurmTimeout: the verb may have run; a submit
                                       is found again by its token in the queue
75: Slurm did not answer in time,      SlurmUnavailable for ``jobs``; SlurmTimeout for
the submit lock is busy                ``submit`` and ``cancel``
69 on submit: sbatch refused the job   SubmissionRejected
70 on submit: the entrypoint failed    SlurmTimeout: sbatch may have run before it failed
77 on cancel: not (or no more) listed  success: nothing of saia's is left to cancel
64, 65, 77: refused                    SlurmError with the entrypoint's reason
78: the login node is misconfigured    SlurmError naming the login node's config problem
the hub and the login node disagree    ServiceMismatch, a SubmissionRejected (nothing sent)
=====================================  ==================================================

Some choices are the login node's, not the hub's: each service's sbatch script,
time limit and job settings come from the entrypoint's configuration, so a
SubmitRequest's ``sbatch`` and ``walltime`` are not sent (a compromised hub
must not pick what runs). They are compared instead: before a submit, the
request is checked against the services the login node's ``/slurm/status``
reports (looked at again once ALLOWLIST_MAX_AGE has passed), and a service the
login node lacks, runs with another script or gives another time limit than
the hub's ``job_expiry_time`` is not submitted: the two files must be set
alike, or the hub would plan with a job that is not the one that runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from saia.adapters.job_records import slurm_job
from saia.adapters.slurm_local import InvalidSubmission, SubmissionUnconfirmed
from saia.adapters.ssh_link import AnswerLost, LinkError
from saia.domain.slurm import SlurmJob
from saia.ports import SlurmError, SlurmTimeout, SlurmUnavailable, SubmissionRejected, SubmitRequest
from saia.protocol import exits, ids
from saia.protocol import session as paths
from saia.protocol.jobs import WireError, job_from_line
from saia.protocol.slurm import walltime_minutes

log = logging.getLogger(__name__)

ALLOWLIST_MAX_AGE = 60.0  # seconds a look at the login node's services is trusted


class ServiceMismatch(SubmissionRejected):
    """The login node would not run the service as the hub's spec describes it."""


@dataclass(frozen=True, slots=True)
class AllowedService:
    """A service as the login node's entrypoint.toml allows it."""

    sbatch: str
    time_limit: int  # minutes


@dataclass(frozen=True, slots=True)
class Allowlist:
    """What the login node's entrypoint.toml allows: its services, and its jobs' ports."""

    services: Mapping[str, AllowedService]
    port_min: int
    port_max: int


class Answer(Protocol):
    @property
    def exit_code(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def reason(self) -> str: ...


class EntrypointCalls(Protocol):
    """What the adapter needs: one request to the entrypoint (see ControlSession.call)."""

    def call(self, method: str, path: str, body: bytes = b"", *, timeout: float) -> Answer: ...


class RemoteSlurm:
    """The Slurm port, by asking saia-entrypoint on the login node."""

    def __init__(
        self,
        entrypoint: EntrypointCalls,
        timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The login node gives Slurm 30 s per command by default and waits as long for
        # its submit lock: a shorter timeout here would cut answers that are coming.
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.entrypoint = entrypoint
        self.timeout = timeout
        self.clock = clock
        self._allowed = Allowlist({}, 0, -1)
        self._allowed_at: float | None = None

    def submit(self, request: SubmitRequest) -> str:
        """The Slurm job id; ``request.sbatch`` and ``request.walltime`` are the login node's,
        and must match what it allows (ServiceMismatch)."""
        body = submit_body(request)
        problem = mismatch(request, self.allowed())
        if problem:
            raise ServiceMismatch(f"the hub and the login node disagree: {problem}")
        answer = self._call("POST", paths.SUBMIT, body)
        if answer.exit_code != exits.OK:
            raise _submit_error(answer)
        job_id = answer.body.decode("ascii", "replace").strip()
        if not ids.SLURM_JOB_ID.fullmatch(job_id):
            # The job may exist: the queue will show it under its token.
            raise SubmissionUnconfirmed(f"submit answered without a job id: {answer.body[:80]!r}")
        return job_id

    def jobs(self) -> list[SlurmJob]:
        answer = self._call("GET", paths.JOBS)
        if answer.exit_code == exits.TEMPORARY:
            raise SlurmUnavailable(_refusal("jobs", answer))
        if answer.exit_code != exits.OK:
            raise SlurmError(_refusal("jobs", answer))
        return parse_jobs(answer.body)

    def allowed(self) -> Allowlist:
        """The login node's services, from a look at its status at most ALLOWLIST_MAX_AGE old."""
        now = self.clock()
        if self._allowed_at is None or now - self._allowed_at >= ALLOWLIST_MAX_AGE:
            answer = self._call("GET", paths.STATUS)
            if answer.exit_code == exits.TEMPORARY:
                raise SlurmUnavailable(_refusal("status", answer))
            if answer.exit_code != exits.OK:
                raise SlurmError(_refusal("status", answer))
            self._allowed, self._allowed_at = parse_status(answer.body), now
        return self._allowed

    def cancel(self, slurm_job_id: str) -> None:
        if not ids.SLURM_JOB_ID.fullmatch(slurm_job_id):
            raise SlurmError(f"not a Slurm job id saia could have: {slurm_job_id!r}")
        answer = self._call("POST", paths.cancel_path(slurm_job_id))
        if answer.exit_code == exits.OK:
            return
        if answer.exit_code == exits.NOT_PERMITTED:
            # The login node lists only saia's jobs: one it does not list is gone (or was
            # never saia's), so there is nothing of saia's left to cancel, as scancel's
            # "Invalid job id" is success for the local adapter.
            log.info("cancel %s: %s", slurm_job_id, answer.reason)
            return
        if answer.exit_code == exits.TEMPORARY:
            raise SlurmTimeout(_refusal("cancel", answer))
        raise SlurmError(_refusal("cancel", answer))

    def _call(self, method: str, path: str, body: bytes = b"") -> Answer:
        try:
            return self.entrypoint.call(method, path, body, timeout=self.timeout)
        except AnswerLost as error:
            raise SlurmTimeout(str(error)) from None
        except LinkError as error:  # LinkDown: nothing was sent
            raise SlurmUnavailable(str(error)) from None


def submit_body(request: SubmitRequest) -> bytes:
    """The body of a submit, checked as the entrypoint checks it."""
    if not ids.SERVICE_ID.fullmatch(request.service):
        raise InvalidSubmission(f"not a service id: {request.service!r}")
    if not ids.is_port(request.port):
        span = f"{ids.PORT_MIN}-{ids.PORT_MAX}"
        raise InvalidSubmission(f"not a port in {span}: {request.port!r}")
    if not ids.TOKEN.fullmatch(request.token):
        raise InvalidSubmission(f"not a token of 16 hex digits: {request.token!r}")
    fields = {"service": request.service, "port": request.port, "token": request.token}
    return json.dumps(fields).encode()


def mismatch(request: SubmitRequest, allowed: Allowlist) -> str:
    """How the login node's allowlist disagrees with a request of the hub's; "" if it agrees."""
    service = f"service {request.service!r}"
    rule = allowed.services.get(request.service)
    if rule is None:
        return f"{service} is not configured on the login node (entrypoint.toml [services])"
    if rule.sbatch != request.sbatch:
        return f"{service} runs {rule.sbatch} on the login node, not {request.sbatch}"
    minutes = walltime_minutes(request.walltime)
    if rule.time_limit != minutes:
        return (
            f"{service} has time_limit = {rule.time_limit} on the login node, "
            f"job_expiry_time = {minutes} on the hub (minutes)"
        )
    if not allowed.port_min <= request.port <= allowed.port_max:
        return (
            f"{service} would listen on port {request.port}, outside the login node's "
            f"{allowed.port_min}-{allowed.port_max}: set its port_min and port_max inside them"
        )
    return ""


def parse_status(body: bytes) -> Allowlist:
    """The services and port range of a ``/slurm/status`` answer; its jobs are not read."""
    try:
        report = json.loads(body)
        services = {
            entry["id"]: AllowedService(entry["sbatch"], entry["time_limit"])
            for entry in report["services"]
        }
        allowed = Allowlist(services, report["port_min"], report["port_max"])
    except (ValueError, KeyError, TypeError):
        raise SlurmError(f"status answered what saia cannot read: {body[:80]!r}") from None
    for service, rule in services.items():
        plain = isinstance(service, str) and isinstance(rule.sbatch, str)
        if not plain or not whole(rule.time_limit):
            raise SlurmError(f"status answered a service saia cannot read: {service!r}")
    if not (whole(allowed.port_min) and whole(allowed.port_max)):
        raise SlurmError(f"status answered a port range saia cannot read: {body[:80]!r}")
    return allowed


def whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_jobs(body: bytes) -> list[SlurmJob]:
    """The jobs of a ``/slurm/jobs`` answer; a line that is not a job raises SlurmError."""
    if body and not body.endswith(b"\n"):
        raise SlurmError(f"jobs answer cut short: ...{body[-80:]!r}")
    try:
        return [slurm_job(job_from_line(line)) for line in body.splitlines()]
    except WireError as error:
        raise SlurmError(f"jobs answered {error}") from None


def _submit_error(answer: Answer) -> SlurmError:
    message = _refusal("submit", answer)
    if answer.exit_code == exits.UNAVAILABLE:
        return SubmissionRejected(message)
    if answer.exit_code in (exits.TEMPORARY, exits.SOFTWARE):
        return SlurmTimeout(message)  # sbatch may have run: the queue will tell by token
    return SlurmError(message)


def _refusal(what: str, answer: Answer) -> str:
    code = answer.exit_code
    if code == exits.CONFIG:
        return f"login node misconfigured ({what} exit {code}): {answer.reason}"
    return f"{what} exit {code}: {answer.reason or '(no reason given)'}"
