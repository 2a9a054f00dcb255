"""How saia's jobs look in Slurm, and what Slurm's commands print: pure functions, no I/O.

A saia job is named ``saia-<service>`` and carries ``saia:<token>:<port>`` as
its comment, so that both the login node and the hub find it again in the
queue. The parsers follow recorded real output (tests/data/slurm). Whatever
they do not understand raises SlurmParseError carrying the offending line;
nothing is guessed. Only saia's jobs are read in full: a row whose job name
does not start with ``saia-`` belongs to someone else and is skipped after its
job id is checked, so a stranger's odd job never blinds saia.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, tzinfo

from saia.protocol.ids import SERVICE_ID
from saia.protocol.jobs import STATES, JobRecord

# job id | name | comment | state | reason | batch host | time used | time limit | start time
SQUEUE_FORMAT = "%i|%j|%k|%T|%r|%B|%M|%l|%S"
FIELD_COUNT = SQUEUE_FORMAT.count("|") + 1
# The fields after the reason never hold a '|': counted from the end they stay in place
# even when a free-text field (name, comment, reason) brings more separators.
TAIL_FIELDS = 4

JOB_NAME_PREFIX = "saia-"
# [0-9], never \d: \d also matches other scripts' digits, which int() would accept.
_COMMENT = re.compile(r"saia:([0-9a-f]{16}):([1-9][0-9]{0,4})")
_PLAIN_JOB_ID = re.compile(r"[1-9][0-9]*")
# Any id squeue prints: plain, array task (12_3), pending array (12_[0-9%2]), het job (12+0).
_ANY_JOB_ID = re.compile(r"[0-9]+(?:_(?:[0-9]+|\[[0-9,%:-]+\]))?(?:\+[0-9]+)?")
_PARSABLE = re.compile(r"([1-9][0-9]*)(?:;[^\s;]+)?")
_START_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")

# squeue's _print_secs: D-HH:MM:SS from one day on, H:MM:SS from one hour, else M:SS.
# D-HH and D-HH:MM are Slurm's input forms for days; accepted for completeness.
_DURATIONS = (
    re.compile(r"(?P<m>[0-9]+):(?P<s>[0-5][0-9])"),
    re.compile(r"(?P<h>[0-9]+):(?P<m>[0-5][0-9]):(?P<s>[0-5][0-9])"),
    re.compile(r"(?P<d>[0-9]+)-(?P<h>[0-9]{1,2}):(?P<m>[0-5][0-9]):(?P<s>[0-5][0-9])"),
    re.compile(r"(?P<d>[0-9]+)-(?P<h>[0-9]{1,2}):(?P<m>[0-5][0-9])"),
    re.compile(r"(?P<d>[0-9]+)-(?P<h>[0-9]{1,2})"),
)
# squeue prints these instead of a duration; all mean "no duration known":
# UNLIMITED is no limit, NOT_SET a job without one of its own (its partition's applies,
# which squeue does not show), and INVALID a value below zero or above 365 days.
NO_DURATION = frozenset({"UNLIMITED", "NOT_SET", "INVALID"})
_NO_START = frozenset({"N/A", "Unknown", "None"})
_NO_HOST = frozenset({"", "n/a", "None", "(null)"})
_NO_REASON = frozenset({"", "None"})
_MAX_SHOWN = 300


# What Slurm's client commands print when the controller does not answer
# (recorded: "Unable to contact slurm controller (connect failure)", after about 9 s).
UNREACHABLE = (
    "Unable to contact slurm controller",
    "Connection refused",
    "Zero Bytes were transmitted or received",
    "Communication connection failure",
    "backup controller in standby mode",
)
# Slurm's own RPC timed out: the controller may still have acted on the request.
RPC_TIMEOUT = "Socket timed out"
# scancel's answers for a job that is already gone: cancelling is idempotent.
ALREADY_GONE = ("Invalid job id specified", "already completing or completed")
# Variables that change what squeue prints or which jobs it shows (SQUEUE_PARTITION
# would hide jobs, SLURM_TIME_FORMAT change the time format, SLURM_CLUSTERS add
# header lines), and scancel's (SCANCEL_INTERACTIVE would ask on stdin).
SQUEUE_VARIABLES = ("SQUEUE_", "SLURM_TIME_FORMAT", "SLURM_CLUSTERS")
SCANCEL_VARIABLES = ("SCANCEL_", "SLURM_CLUSTERS")
# How saia finds its jobs again, reads sbatch's answer and hands jobs their variables:
# not the operator's to change.
SAIAS_OPTIONS = ("-J", "--job-name", "--comment", "--parsable", "--export")


def squeue_options(user: str | None) -> list[str]:
    """squeue's options for saia's listing (of ``user``'s jobs, or everyone's with None)."""
    return [
        "--noheader",
        "--all",  # hidden partitions too
        # Finished jobs too (for MinJobAge): an ended job then shows its final
        # state (CANCELLED, TIMEOUT, FAILED) instead of vanishing as if lost.
        "--states=all",
        f"--format={SQUEUE_FORMAT}",
        *([] if user is None else [f"--user={user}"]),
    ]


def identity_options(service: str, token: str, port: int, walltime: float) -> list[str]:
    """sbatch's options that make a job saia's: its name, its comment and its time, and
    that it gets sbatch's environment, where saia puts the job's variables (--export=ALL
    is sbatch's default, unless SBATCH_EXPORT or a site's setting says otherwise)."""
    return [
        "--parsable",
        f"--job-name={JOB_NAME_PREFIX}{service}",
        f"--comment=saia:{token}:{port}",
        f"--time={walltime_minutes(walltime)}",
        "--export=ALL",
    ]


def walltime_minutes(seconds: float) -> int:
    """Whole minutes for sbatch --time, rounded up: a job never gets less than asked."""
    return max(1, math.ceil(seconds / 60))


def failure(stderr: str) -> str | None:
    """Why Slurm did not answer, by a failed command's stderr: "timeout", "unreachable", None."""
    if RPC_TIMEOUT in stderr:
        return "timeout"
    if any(marker in stderr for marker in UNREACHABLE):
        return "unreachable"
    return None


class SlurmParseError(ValueError):
    """Slurm printed something saia does not understand; ``line`` is what it printed."""

    def __init__(self, problem: str, line: str) -> None:
        shown = line if len(line) <= _MAX_SHOWN else line[:_MAX_SHOWN] + "..."
        super().__init__(f"{problem}: {shown!r}")
        self.problem = problem
        self.line = line


@dataclass(frozen=True)
class MalformedJob:
    """A row named like a saia job that saia cannot have submitted as it stands."""

    job_id: str
    line: str
    problem: str


@dataclass(frozen=True)
class SqueueListing:
    jobs: list[JobRecord]
    # Named saia-* but with a comment that is not saia:<token>:<port> (or a name that
    # is no service id, or an array or heterogeneous job, which saia never submits):
    # nothing saia submitted, yet someone named it like saia's. An operator should hear.
    malformed: list[MalformedJob]


def read_squeue(text: str, tz: tzinfo) -> SqueueListing:
    """saia's jobs in ``squeue --format=SQUEUE_FORMAT``'s output, start times read in ``tz``.

    Other users' jobs are skipped silently; saia-named rows saia cannot have
    submitted are returned apart, as ``malformed``.
    """
    jobs: list[JobRecord] = []
    malformed: list[MalformedJob] = []
    for line in _lines(text):
        row = _parse_row(line, tz)
        if isinstance(row, JobRecord):
            jobs.append(row)
        elif row is not None:
            malformed.append(row)
    return SqueueListing(jobs, malformed)


def _lines(text: str) -> list[str]:
    # Split on "\n" only: str.splitlines also splits on characters such as U+2028,
    # which a job comment may hold and which squeue does not treat as line ends.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _parse_row(line: str, tz: tzinfo) -> JobRecord | MalformedJob | None:
    fields = line.split("|")
    if len(fields) < FIELD_COUNT:
        raise SlurmParseError(f"expected {FIELD_COUNT} fields, got {len(fields)}", line)
    job_id, name, comment, state = fields[0], fields[1], fields[2], fields[3]
    if not _ANY_JOB_ID.fullmatch(job_id):
        raise SlurmParseError(f"not a job id: {job_id!r}", line)
    if not name.startswith(JOB_NAME_PREFIX):
        return None  # another user's job
    # A saia job's name and comment never hold a '|' (service ids and comments are
    # plain), so in a saia row any extra separator belongs to the free-text reason.
    service = name[len(JOB_NAME_PREFIX) :]
    problem = ""
    identity = _COMMENT.fullmatch(comment)
    if not SERVICE_ID.fullmatch(service):
        problem = f"{service!r} is not a service id"
    elif identity is None:
        problem = f"its comment {comment!r} is not saia:<token>:<port>"
    elif not 1 <= int(identity.group(2)) <= 65535:
        problem = f"its comment {comment!r} holds no valid port"
    elif not _PLAIN_JOB_ID.fullmatch(job_id):
        problem = "it is an array or heterogeneous job, which saia never submits"
    if identity is None or problem:
        return MalformedJob(job_id, line, problem)
    reason = "|".join(fields[4:-TAIL_FIELDS])
    host, used, limit, start = fields[-TAIL_FIELDS:]
    if state not in STATES:
        raise SlurmParseError(f"unknown job state {state!r}", line)
    return JobRecord(
        job_id=job_id,
        service=service,
        token=identity.group(1),
        port=int(identity.group(2)),
        state=state,
        reason="" if reason in _NO_REASON else reason,
        batch_host="" if host in _NO_HOST else host,
        time_used=_time_used(used, line),
        time_limit=_duration(limit, line),
        # For a pending job squeue prints the scheduler's estimate, not a start.
        start_time=None if state == "PENDING" else _start(start, tz, line),
    )


def _time_used(text: str, line: str) -> float:
    if text == "INVALID":
        # squeue computes time used against its own clock: a clock behind the
        # controller's makes a just-started job's time negative, printed INVALID.
        # Nothing in saia decides on time used, so it reads as none yet.
        return 0.0
    used = _duration(text, line)
    if used is None:
        raise SlurmParseError(f"time used cannot be {text!r}", line)
    return used


def _start(text: str, tz: tzinfo, line: str) -> float | None:
    try:
        return parse_start_time(text, tz)
    except SlurmParseError as error:
        raise SlurmParseError(error.problem, line) from None


def _duration(text: str, line: str) -> float | None:
    try:
        return parse_duration(text)
    except SlurmParseError as error:
        raise SlurmParseError(error.problem, line) from None


def parse_duration(text: str) -> float | None:
    """Seconds in a duration as squeue prints it; None for UNLIMITED, NOT_SET, INVALID."""
    if text in NO_DURATION:
        return None
    for pattern in _DURATIONS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        parts = {name: int(value) for name, value in match.groupdict().items()}
        days, hours = parts.get("d", 0), parts.get("h", 0)
        if "d" in parts and hours > 23:
            raise SlurmParseError(f"more than 23 hours after the days: {text!r}", text)
        return float(((days * 24 + hours) * 60 + parts.get("m", 0)) * 60 + parts.get("s", 0))
    raise SlurmParseError(f"not a Slurm duration: {text!r}", text)


def parse_start_time(text: str, tz: tzinfo) -> float | None:
    """Epoch seconds of squeue's ISO time (no zone: it is ``tz``'s); None for N/A or Unknown."""
    if text in _NO_START:
        return None
    if not _START_TIME.fullmatch(text):
        raise SlurmParseError(f"not a Slurm time: {text!r}", text)
    try:
        local = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise SlurmParseError(f"not a calendar time: {text!r}", text) from None
    return local.replace(tzinfo=tz).timestamp()


def parse_sbatch_parsable(text: str) -> str:
    """The job id from ``sbatch --parsable``: ``<id>`` or ``<id>;<cluster>``."""
    answer = text.strip()
    match = _PARSABLE.fullmatch(answer)
    if match is None:
        raise SlurmParseError("sbatch --parsable printed no job id", text)
    return match.group(1)

