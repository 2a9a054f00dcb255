"""RemoteSlurm over a fake session: what it sends, how it reads answers, how exit codes map."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pytest

from saia.adapters.control_session import Answer
from saia.adapters.slurm_local import InvalidSubmission, SubmissionUnconfirmed
from saia.adapters.slurm_remote import (
    ALLOWLIST_MAX_AGE,
    AllowedService,
    Allowlist,
    RemoteSlurm,
    ServiceMismatch,
    mismatch,
    parse_jobs,
    parse_status,
    submit_body,
)
from saia.adapters.ssh_link import AnswerLost, LinkDown
from saia.domain.slurm import SlurmJob, SlurmState
from saia.ports import (
    Slurm,
    SlurmError,
    SlurmTimeout,
    SlurmUnavailable,
    SubmissionRejected,
    SubmitRequest,
)
from saia.protocol import exits
from saia.protocol.jobs import JobRecord, job_line

TOKEN = "0123456789abcdef"
REQUEST = SubmitRequest("llama", "vllm.sbatch", 20001, TOKEN, 3600.0)
RUNNING = SlurmJob(
    job_id="17", service="llama", token=TOKEN, port=20001, state=SlurmState.RUNNING,
    batch_host="node1", time_used=12.0, time_limit=3600.0, start_time=1_800_000_000.0,
)  # fmt: skip
PENDING = SlurmJob("18", "llama", "fedcba9876543210", 20002, SlurmState.PENDING, "Priority")

Reply = Answer | Exception


@dataclass
class FakeEntrypoint:
    """Answers each request from a table, or with a function; remembers what was sent."""

    answers: dict[str, Reply] = field(default_factory=dict)
    answer: Callable[[str], Reply] | None = None
    sent: list[tuple[str, bytes, float]] = field(default_factory=list)

    def call(self, method: str, path: str, body: bytes = b"", *, timeout: float) -> Answer:
        request = f"{method} {path}"
        self.sent.append((request, body, timeout))
        reply = self.answer(request) if self.answer else self.answers[request]
        if isinstance(reply, Exception):
            raise reply
        return reply


def line(job: SlurmJob) -> bytes:
    return job_line(JobRecord(**{**asdict(job), "state": job.state.value}))


def ok(body: bytes = b"") -> Answer:
    return Answer(exits.OK, body, "")


def refused(code: int, reason: str) -> Answer:
    return Answer(code, b"", reason)


def remote(**answers: Reply) -> tuple[RemoteSlurm, FakeEntrypoint]:
    entrypoint = FakeEntrypoint(answers=answers)
    return RemoteSlurm(entrypoint, timeout=42.0), entrypoint


JOBS = "GET /slurm/jobs"
STATUS = "GET /slurm/status"
SUBMIT = "POST /slurm/submit"
CANCEL_17 = "POST /slurm/cancel/17"


def status(*services: tuple[str, str, int]) -> Answer:
    """A /slurm/status answer as the entrypoint gives it, for (id, sbatch, time_limit)."""
    rows = [{"id": s, "sbatch": b, "time_limit": t, "jobs": []} for s, b, t in services]
    return ok(json.dumps({"services": rows, "unconfigured_jobs": [], "port_min": 20000,
                          "port_max": 29999}).encode())  # fmt: skip


AGREEING = status(("llama", "vllm.sbatch", 60), ("other", "testservice.sbatch", 5))


def submitting(answer: Reply) -> tuple[RemoteSlurm, FakeEntrypoint]:
    """A login node that allows REQUEST's service as the hub describes it, and answers its
    submit with ``answer``."""
    entrypoint = FakeEntrypoint(answer=lambda request: AGREEING if request == STATUS else answer)
    return RemoteSlurm(entrypoint), entrypoint


# -- what is sent ------------------------------------------------------------------


def test_remote_slurm_is_a_slurm_port() -> None:
    """RemoteSlurm satisfies the Slurm Protocol the controller uses."""
    slurm: Slurm = RemoteSlurm(FakeEntrypoint())
    assert isinstance(slurm, RemoteSlurm)


def test_submit_sends_service_port_and_token_but_not_script_or_walltime() -> None:
    """submit sends service, port and token; the login node picks the script and time."""
    slurm, entrypoint = submitting(ok(b"17\n"))
    assert slurm.submit(REQUEST) == "17"
    [(request, body, timeout)] = [sent for sent in entrypoint.sent if sent[0] != STATUS]
    assert (request, timeout) == ("POST /slurm/submit", 60.0)
    assert json.loads(body) == {"service": "llama", "port": 20001, "token": TOKEN}


def test_every_command_carries_the_configured_timeout() -> None:
    """jobs and cancel are sent with the adapter's timeout and no body."""
    slurm, entrypoint = remote(**{JOBS: ok(), CANCEL_17: ok()})
    slurm.jobs()
    slurm.cancel("17")
    assert entrypoint.sent == [(JOBS, b"", 42.0), (CANCEL_17, b"", 42.0)]


@pytest.mark.parametrize(
    "request_",
    [
        SubmitRequest("llama;id", "vllm.sbatch", 20001, TOKEN, 60.0),
        SubmitRequest("../llama", "vllm.sbatch", 20001, TOKEN, 60.0),
        SubmitRequest("", "vllm.sbatch", 20001, TOKEN, 60.0),
        SubmitRequest("llama", "vllm.sbatch", 80, TOKEN, 60.0),
        SubmitRequest("llama", "vllm.sbatch", 65536, TOKEN, 60.0),
        SubmitRequest("llama", "vllm.sbatch", -20001, TOKEN, 60.0),
        SubmitRequest("llama", "vllm.sbatch", 20001, "0123456789ABCDEF", 60.0),
        SubmitRequest("llama", "vllm.sbatch", 20001, "$(reboot)", 60.0),
        SubmitRequest("llama", "vllm.sbatch", 20001, TOKEN + " x", 60.0),
    ],
)
def test_arguments_the_entrypoint_would_refuse_are_never_sent(request_: SubmitRequest) -> None:
    """A service, port or token outside the protocol's patterns is refused before sending."""
    slurm, entrypoint = submitting(ok(b"17\n"))
    with pytest.raises(InvalidSubmission):
        slurm.submit(request_)
    assert entrypoint.sent == []


def test_a_submit_body_holds_exactly_the_three_fields() -> None:
    """The body names service, port and token, nothing else."""
    assert json.loads(submit_body(REQUEST)) == {"service": "llama", "port": 20001, "token": TOKEN}


@pytest.mark.parametrize("job_id", ["", "0", "17;id", "17 18", "17_1", "17.batch", "-1"])
def test_cancel_refuses_anything_but_a_job_id(job_id: str) -> None:
    """cancel of something that is not a plain job number raises and sends nothing."""
    slurm, entrypoint = remote()
    with pytest.raises(SlurmError):
        slurm.cancel(job_id)
    assert entrypoint.sent == []


# -- reading answers ---------------------------------------------------------------


def test_jobs_reads_wire_lines_into_the_same_values() -> None:
    """Each line of the jobs answer becomes the SlurmJob the login node printed."""
    slurm, _ = remote(**{JOBS: ok(line(RUNNING) + line(PENDING))})
    assert slurm.jobs() == [RUNNING, PENDING]


def test_an_empty_queue_is_no_jobs() -> None:
    """An empty jobs answer is an empty list."""
    slurm, _ = remote(**{JOBS: ok()})
    assert slurm.jobs() == []


@pytest.mark.parametrize(
    "stdout",
    [
        b"not json\n",
        line(RUNNING) + b"\n",  # a blank line
        line(RUNNING)[:-20] + b"\n",
        line(RUNNING)[:-1],  # cut short: no final newline
        line(RUNNING).replace(b'"RUNNING"', b'"SLEEPING"'),
        line(RUNNING).replace(b'"port":20001', b'"port":"20001"'),
        line(RUNNING).replace(b'"job_id"', b'"extra":1,"job_id"'),
        b'{"job_id":"17"}\n',
        b"[]\n",
        b"\xff\xfe\n",
    ],
)
def test_a_line_that_is_not_a_job_is_an_error_never_a_guess(stdout: bytes) -> None:
    """Any line the wire parser does not understand makes the whole answer a SlurmError."""
    with pytest.raises(SlurmError) as raised:
        parse_jobs(stdout)
    assert not isinstance(raised.value, SlurmUnavailable)


@pytest.mark.parametrize("stdout", [b"", b"\n", b"17 18\n", b"Submitted batch job 17\n", b"17;c"])
def test_submit_without_a_job_id_is_unconfirmed(stdout: bytes) -> None:
    """An exit 0 without a plain job id leaves the outcome to the queue (SlurmTimeout)."""
    slurm, _ = submitting(ok(stdout))
    with pytest.raises(SubmissionUnconfirmed) as raised:
        slurm.submit(REQUEST)
    assert isinstance(raised.value, SlurmTimeout)


# -- exit codes and link failures ----------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (LinkDown("SSH link is down: connection refused"), SlurmUnavailable),
        (AnswerLost("submit: channel broke: EOF"), SlurmTimeout),
        (AnswerLost("submit: no answer within 60 s"), SlurmTimeout),
        (refused(exits.TEMPORARY, "another submission holds the lock; try again"), SlurmTimeout),
        (refused(exits.SOFTWARE, "internal error (KeyError)"), SlurmTimeout),
        (refused(exits.UNAVAILABLE, "sbatch refused the job: invalid partition"),
         SubmissionRejected),
        (refused(exits.NOT_PERMITTED, "service 'llama' is not configured here"), SlurmError),
        (refused(exits.REFUSED, "port '1' is not a number from 1024 to 65535"), SlurmError),
        (refused(exits.BAD_DATA, "command contains control characters"), SlurmError),
        (refused(exits.CONFIG, "/etc/saia.toml: field 'port_min': not an integer"), SlurmError),
    ],
)  # fmt: skip
def test_submit_failures_map_onto_the_ports_errors(answer: Reply, error: type[Exception]) -> None:
    """Each way a submit can fail raises the port's error the controller expects for it."""
    slurm, _ = submitting(answer)
    with pytest.raises(SlurmError) as raised:
        slurm.submit(REQUEST)
    assert type(raised.value) is error


def test_only_a_refused_submit_is_a_rejection() -> None:
    """Refusals other than sbatch's (69) are not SubmissionRejected, and none is a timeout."""
    for code in (exits.NOT_PERMITTED, exits.REFUSED, exits.BAD_DATA, exits.CONFIG):
        slurm, _ = submitting(refused(code, "no"))
        with pytest.raises(SlurmError) as raised:
            slurm.submit(REQUEST)
        assert not isinstance(raised.value, SubmissionRejected | SlurmUnavailable)


def test_refusals_carry_the_entrypoints_reason() -> None:
    """The error names the operation, the exit code and the entrypoint's reason."""
    slurm, _ = submitting(refused(exits.NOT_PERMITTED, "port 20001 belongs to saia job 9"))
    with pytest.raises(SlurmError, match=r"^submit exit 77: port 20001 belongs to saia job 9$"):
        slurm.submit(REQUEST)


def test_a_misconfigured_login_node_says_so() -> None:
    """Exit 78 is reported as the login node's misconfiguration, with the file and field."""
    slurm, _ = remote(**{JOBS: refused(exits.CONFIG, "/etc/saia.toml: field 'state_dir': missing")})
    with pytest.raises(SlurmError, match=r"login node misconfigured .*field 'state_dir'"):
        slurm.jobs()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (LinkDown("down"), SlurmUnavailable),
        (AnswerLost("jobs: no answer within 60 s"), SlurmTimeout),
        (refused(exits.TEMPORARY, "Slurm did not answer: squeue timed out"), SlurmUnavailable),
        (refused(exits.CONFIG, "bad config"), SlurmError),
        (refused(exits.SOFTWARE, "internal error (KeyError)"), SlurmError),
        (refused(exits.REFUSED, "no such path in a session"), SlurmError),
    ],
)
def test_jobs_failures_map_onto_the_ports_errors(answer: Reply, error: type[Exception]) -> None:
    """A failed jobs is unavailable when it may pass, a plain SlurmError when it will not."""
    slurm, _ = remote(**{JOBS: answer})
    with pytest.raises(SlurmError) as raised:
        slurm.jobs()
    assert type(raised.value) is error


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (LinkDown("down"), SlurmUnavailable),
        (AnswerLost("cancel: channel broke"), SlurmTimeout),
        (refused(exits.TEMPORARY, "Slurm did not answer"), SlurmTimeout),
        (refused(exits.CONFIG, "bad config"), SlurmError),
        (refused(exits.SOFTWARE, "internal error (KeyError)"), SlurmError),
    ],
)
def test_cancel_failures_map_onto_the_ports_errors(answer: Reply, error: type[Exception]) -> None:
    """A cancel whose outcome is unknown is a SlurmTimeout; nothing sent is SlurmUnavailable."""
    slurm, _ = remote(**{CANCEL_17: answer})
    with pytest.raises(SlurmError) as raised:
        slurm.cancel("17")
    assert type(raised.value) is error


def test_cancelling_a_job_the_login_node_does_not_list_is_done() -> None:
    """77 on cancel means no such saia job is left: cancelling is idempotent, as locally."""
    slurm, _ = remote(**{CANCEL_17: refused(exits.NOT_PERMITTED, "job 17 is not saia's")})
    slurm.cancel("17")


# -- the login node's allowlist and the hub's services ------------------------------


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (SubmitRequest("absent", "vllm.sbatch", 20001, TOKEN, 3600.0),
         "service 'absent' is not configured on the login node"),
        (SubmitRequest("llama", "testservice.sbatch", 20001, TOKEN, 3600.0),
         "service 'llama' runs vllm.sbatch on the login node, not testservice.sbatch"),
        (SubmitRequest("llama", "vllm.sbatch", 20001, TOKEN, 7200.0),
         "service 'llama' has time_limit = 60 on the login node, job_expiry_time = 120 on the hub"),
        (SubmitRequest("llama", "vllm.sbatch", 30001, TOKEN, 3600.0),
         "service 'llama' would listen on port 30001, outside the login node's 20000-29999"),
    ],
)  # fmt: skip
def test_a_service_the_login_node_allows_otherwise_is_not_submitted(
    request_: SubmitRequest, problem: str
) -> None:
    """A service missing on the login node, with another script, another time limit or a
    port outside the login node's range is refused before the submit is sent, saying how
    the two sides disagree."""
    slurm, entrypoint = submitting(ok(b"17\n"))
    with pytest.raises(ServiceMismatch, match="the hub and the login node disagree") as raised:
        slurm.submit(request_)
    assert problem in str(raised.value)
    assert isinstance(raised.value, SubmissionRejected)  # the controller backs off
    assert [sent[0] for sent in entrypoint.sent] == [STATUS]


def test_the_login_nodes_services_are_looked_at_again_once_a_minute() -> None:
    """Submits within ALLOWLIST_MAX_AGE reuse one look at the status; a later one looks again,
    so a corrected entrypoint.toml is seen."""
    now = [0.0]
    answers = {STATUS: status(("llama", "vllm.sbatch", 30)), SUBMIT: ok(b"17\n")}
    entrypoint = FakeEntrypoint(answer=lambda request: answers[request])
    slurm = RemoteSlurm(entrypoint, clock=lambda: now[0])
    with pytest.raises(ServiceMismatch):
        slurm.submit(REQUEST)
    answers[STATUS] = AGREEING
    now[0] = ALLOWLIST_MAX_AGE - 1
    with pytest.raises(ServiceMismatch):
        slurm.submit(REQUEST)
    now[0] = ALLOWLIST_MAX_AGE
    assert slurm.submit(REQUEST) == "17"
    assert [sent[0] for sent in entrypoint.sent] == [STATUS, STATUS, SUBMIT]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (LinkDown("down"), SlurmUnavailable),
        (refused(exits.TEMPORARY, "Slurm did not answer"), SlurmUnavailable),
        (refused(exits.CONFIG, "/etc/entrypoint.toml: field 'state_dir': missing"), SlurmError),
        (ok(b"not json"), SlurmError),
        (ok(b'{"services": [{"id": "llama"}]}'), SlurmError),
        (ok(b'{"services": [{"id": "llama", "sbatch": "v", "time_limit": "60"}]}'), SlurmError),
        (ok(b'{"services": [], "port_min": 20000}'), SlurmError),
        (ok(b'{"services": [], "port_min": 20000, "port_max": "29999"}'), SlurmError),
    ],
)
def test_a_status_that_cannot_be_had_or_read_stops_the_submit(
    answer: Reply, error: type[Exception]
) -> None:
    """Without a readable allowlist nothing is submitted; the error says why."""
    entrypoint = FakeEntrypoint(answer=lambda request: answer)
    with pytest.raises(SlurmError) as raised:
        RemoteSlurm(entrypoint).submit(REQUEST)
    assert type(raised.value) is error
    assert [sent[0] for sent in entrypoint.sent] == [STATUS]


def test_the_status_report_is_read_into_allowed_services() -> None:
    """parse_status reads each service's script and time limit from the entrypoint's report."""
    assert parse_status(AGREEING.body) == Allowlist({
        "llama": AllowedService("vllm.sbatch", 60),
        "other": AllowedService("testservice.sbatch", 5),
    }, 20000, 29999)  # fmt: skip
    assert mismatch(REQUEST, parse_status(AGREEING.body)) == ""


def test_timeout_must_be_positive() -> None:
    """A zero or negative timeout is a configuration error."""
    with pytest.raises(ValueError, match="timeout"):
        RemoteSlurm(FakeEntrypoint(), timeout=0)
