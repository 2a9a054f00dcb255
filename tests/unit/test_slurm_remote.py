"""RemoteSlurm over a fake link: what it sends, how it reads answers, how exit codes map."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from saia.adapters.slurm_local import InvalidSubmission, SubmissionUnconfirmed
from saia.adapters.slurm_remote import RemoteSlurm, parse_jobs, submit_command
from saia.adapters.ssh_link import AnswerLost, Completed, LinkDown
from saia.domain.slurm import SlurmJob, SlurmState
from saia.entrypoint import exits, grammar
from saia.entrypoint.wire import job_line
from saia.ports import (
    Slurm,
    SlurmError,
    SlurmTimeout,
    SlurmUnavailable,
    SubmissionRejected,
    SubmitRequest,
)

TOKEN = "0123456789abcdef"
REQUEST = SubmitRequest("llama", "vllm.sbatch", 20001, TOKEN, 3600.0)
RUNNING = SlurmJob(
    job_id="17", service="llama", token=TOKEN, port=20001, state=SlurmState.RUNNING,
    batch_host="node1", time_used=12.0, time_limit=3600.0, start_time=1_800_000_000.0,
)  # fmt: skip
PENDING = SlurmJob("18", "llama", "fedcba9876543210", 20002, SlurmState.PENDING, "Priority")

Answer = Completed | Exception


@dataclass
class FakeLink:
    """Answers each command from a table, or with a function; remembers what was sent."""

    answers: dict[str, Answer] = field(default_factory=dict)
    answer: Callable[[str], Answer] | None = None
    sent: list[tuple[str, bytes, float]] = field(default_factory=list)

    def run(self, command: str, stdin: bytes = b"", *, timeout: float) -> Completed:
        self.sent.append((command, stdin, timeout))
        reply = self.answer(command) if self.answer else self.answers[command]
        if isinstance(reply, Exception):
            raise reply
        return reply


def ok(stdout: bytes = b"") -> Completed:
    return Completed(exits.OK, stdout, b"")


def refused(code: int, reason: str) -> Completed:
    return Completed(code, b"", f"saia-entrypoint: {reason}\n".encode())


def remote(**answers: Answer) -> tuple[RemoteSlurm, FakeLink]:
    link = FakeLink(answers={command.replace("_", " "): a for command, a in answers.items()})
    return RemoteSlurm(link, timeout=42.0), link


def submitting(answer: Answer) -> tuple[RemoteSlurm, FakeLink]:
    link = FakeLink(answer=lambda command: answer)
    return RemoteSlurm(link), link


# -- what is sent ------------------------------------------------------------------


def test_remote_slurm_is_a_slurm_port() -> None:
    """RemoteSlurm satisfies the Slurm Protocol the controller uses."""
    slurm: Slurm = RemoteSlurm(FakeLink())
    assert isinstance(slurm, RemoteSlurm)


def test_submit_sends_service_port_and_token_but_not_script_or_walltime() -> None:
    """submit sends the verb with service, port and token; the login node picks the script."""
    slurm, link = submitting(ok(b"17\n"))
    assert slurm.submit(REQUEST) == "17"
    assert link.sent == [(f"submit llama 20001 {TOKEN}", b"", 60.0)]


def test_every_command_carries_the_configured_timeout() -> None:
    """jobs and cancel are sent with the adapter's timeout and nothing on stdin."""
    slurm, link = remote(jobs=ok(), cancel_17=ok())
    slurm.jobs()
    slurm.cancel("17")
    assert link.sent == [("jobs", b"", 42.0), ("cancel 17", b"", 42.0)]


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
def test_arguments_the_grammar_would_refuse_are_never_sent(request_: SubmitRequest) -> None:
    """A service, port or token outside the entrypoint's patterns is refused before sending."""
    slurm, link = submitting(ok(b"17\n"))
    with pytest.raises(InvalidSubmission):
        slurm.submit(request_)
    assert link.sent == []


def test_sent_submit_commands_parse_back_to_the_same_request() -> None:
    """What submit_command builds, the entrypoint's grammar reads as the same submit."""
    assert grammar.parse(submit_command(REQUEST)) == grammar.Submit("llama", 20001, TOKEN)


@pytest.mark.parametrize("job_id", ["", "0", "17;id", "17 18", "17_1", "17.batch", "-1"])
def test_cancel_refuses_anything_but_a_job_id(job_id: str) -> None:
    """cancel of something that is not a plain job number raises and sends nothing."""
    slurm, link = remote()
    with pytest.raises(SlurmError):
        slurm.cancel(job_id)
    assert link.sent == []


# -- reading answers ---------------------------------------------------------------


def test_jobs_reads_wire_lines_into_the_same_values() -> None:
    """Each line of the jobs answer becomes the SlurmJob the login node printed."""
    slurm, _ = remote(jobs=ok(job_line(RUNNING) + job_line(PENDING)))
    assert slurm.jobs() == [RUNNING, PENDING]


def test_an_empty_queue_is_no_jobs() -> None:
    """An empty jobs answer is an empty list."""
    slurm, _ = remote(jobs=ok())
    assert slurm.jobs() == []


@pytest.mark.parametrize(
    "stdout",
    [
        b"not json\n",
        job_line(RUNNING) + b"\n",  # a blank line
        job_line(RUNNING)[:-20] + b"\n",
        job_line(RUNNING)[:-1],  # cut short: no final newline
        job_line(RUNNING).replace(b'"RUNNING"', b'"SLEEPING"'),
        job_line(RUNNING).replace(b'"port":20001', b'"port":"20001"'),
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
        (refused(exits.REFUSED, "submit takes 3 arguments, not 2"), SlurmError),
        (refused(exits.BAD_DATA, "command contains control characters"), SlurmError),
        (refused(exits.CONFIG, "/etc/saia.toml: field 'port_min': not an integer"), SlurmError),
    ],
)  # fmt: skip
def test_submit_failures_map_onto_the_ports_errors(answer: Answer, error: type[Exception]) -> None:
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
    """The error names the verb, the exit code and the entrypoint's message, without its prefix."""
    slurm, _ = submitting(refused(exits.NOT_PERMITTED, "port 20001 belongs to saia job 9"))
    with pytest.raises(SlurmError, match=r"^submit exited 77: port 20001 belongs to saia job 9$"):
        slurm.submit(REQUEST)


def test_a_misconfigured_login_node_says_so() -> None:
    """Exit 78 is reported as the login node's misconfiguration, with the file and field."""
    slurm, _ = remote(jobs=refused(exits.CONFIG, "/etc/saia.toml: field 'state_dir': missing"))
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
        (refused(exits.REFUSED, "unknown verb 'jobs'"), SlurmError),
    ],
)
def test_jobs_failures_map_onto_the_ports_errors(answer: Answer, error: type[Exception]) -> None:
    """A failed jobs is unavailable when it may pass, a plain SlurmError when it will not."""
    slurm, _ = remote(jobs=answer)
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
def test_cancel_failures_map_onto_the_ports_errors(answer: Answer, error: type[Exception]) -> None:
    """A cancel whose outcome is unknown is a SlurmTimeout; nothing sent is SlurmUnavailable."""
    slurm, _ = remote(cancel_17=answer)
    with pytest.raises(SlurmError) as raised:
        slurm.cancel("17")
    assert type(raised.value) is error


def test_cancelling_a_job_the_login_node_does_not_list_is_done() -> None:
    """77 on cancel means no such saia job is left: cancelling is idempotent, as locally."""
    slurm, _ = remote(cancel_17=refused(exits.NOT_PERMITTED, "job 17 is not one of saia's jobs"))
    slurm.cancel("17")


def test_timeout_must_be_positive() -> None:
    """A zero or negative timeout is a configuration error."""
    with pytest.raises(ValueError, match="timeout"):
        RemoteSlurm(FakeLink(), timeout=0)
