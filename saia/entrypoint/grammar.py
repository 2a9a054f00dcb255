"""The strict grammar of ``SSH_ORIGINAL_COMMAND``: a verb and its arguments, or a legacy request.

sshd hands over the client's command as one string with its quoting lost, so
the grammar knows no quoting at all: a verb command is printable ASCII, tokens
are separated by exactly one space, and every argument must fully match its own
pattern. Request bodies never travel here; they come on stdin.

    keep-alive | status | jobs | session
    submit <service> <port> <token>
    cancel <slurm-job-id>
    probe <slurm-job-id> [path]
    forward <slurm-job-id>

A command that contains a newline is a legacy SAIA request (see
saia.entrypoint.legacy); here it is only checked for bytes no request may hold,
and its fields are left to the legacy parser, which answers in HTTP.

Checks run cheapest and most general first: the length before anything else,
then NUL bytes, UTF-8, control characters, and only then the tokens. The only
error raised is CommandRefused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saia.entrypoint import exits

# A legacy request carries a handful of HTTP headers; a verb command is short.
MAX_COMMAND_BYTES = 16 * 1024
MAX_VERB_COMMAND_BYTES = 1024

# The same patterns as saia.domain.spec's (a unit test pins them): copied, because
# importing spec would build its ServiceSpec class on every start-up of the entrypoint.
SERVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SBATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PROBE_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,255}")
SLURM_JOB_ID = re.compile(r"[1-9][0-9]{0,9}")  # digits only: no arrays, steps or het jobs
PORT = re.compile(r"[1-9][0-9]{3,4}")
PORT_MIN, PORT_MAX = 1024, 65535
TOKEN = re.compile(r"[0-9a-f]{16}")
DEFAULT_PROBE_PATH = "/health"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
# Characters a shell would act on; no argument pattern admits them, and naming
# them in the refusal makes a probing attempt obvious in the client's stderr.
_SHELL_METACHARACTERS = frozenset(";&|$`<>(){}[]*?!'\"\\#")


class CommandRefused(Exception):
    def __init__(self, reason: str, exit_code: int = exits.REFUSED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class Status:
    pass


@dataclass(frozen=True, slots=True)
class Jobs:
    pass


@dataclass(frozen=True, slots=True)
class Session:
    pass


@dataclass(frozen=True, slots=True)
class Submit:
    service: str
    port: int
    token: str


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: str


@dataclass(frozen=True, slots=True)
class Probe:
    job_id: str
    path: str = DEFAULT_PROBE_PATH


@dataclass(frozen=True, slots=True)
class Forward:
    job_id: str


@dataclass(frozen=True, slots=True)
class Legacy:
    text: str  # the whole request, UTF-8 without NUL or control characters but newlines


Command = KeepAlive | Status | Jobs | Session | Submit | Cancel | Probe | Forward | Legacy


_NO_ARGUMENTS: dict[str, Command] = {
    "keep-alive": KeepAlive(),
    "status": Status(),
    "jobs": Jobs(),
    "session": Session(),
}


def parse(raw: bytes | str) -> Command:
    """The command in ``raw``, or CommandRefused saying why not.

    ``raw`` is best the bytes sshd put in the environment; a str is taken to
    come from ``os.environ``, which decodes with surrogateescape.
    """
    if len(raw) > MAX_COMMAND_BYTES:
        raise CommandRefused(f"command longer than {MAX_COMMAND_BYTES} bytes", exits.BAD_DATA)
    data = _as_bytes(raw)
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandRefused(f"command longer than {MAX_COMMAND_BYTES} bytes", exits.BAD_DATA)
    if b"\x00" in data:
        raise CommandRefused("command contains a NUL byte", exits.BAD_DATA)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandRefused("command is not valid UTF-8", exits.BAD_DATA) from None
    if "\n" in text:
        if _CONTROL_BUT_NEWLINE.search(text):
            raise CommandRefused("legacy request contains control characters", exits.BAD_DATA)
        return Legacy(text)
    return _verb_command(text)


def _as_bytes(raw: bytes | str) -> bytes:
    if isinstance(raw, bytes):
        return raw
    try:
        return raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise CommandRefused("command is not valid UTF-8", exits.BAD_DATA) from None


def _verb_command(text: str) -> Command:
    if len(text) > MAX_VERB_COMMAND_BYTES:
        raise CommandRefused(f"command longer than {MAX_VERB_COMMAND_BYTES} bytes", exits.BAD_DATA)
    if _CONTROL.search(text):
        raise CommandRefused("command contains control characters", exits.BAD_DATA)
    if not _PRINTABLE_ASCII.fullmatch(text):
        raise CommandRefused("command contains characters outside printable ASCII")
    metacharacters = sorted(_SHELL_METACHARACTERS.intersection(text))
    if metacharacters:
        shown = " ".join(metacharacters)
        raise CommandRefused(f"shell metacharacters are never accepted: {shown}")
    if not text:
        raise CommandRefused("no command given; this key only runs saia-entrypoint verbs")
    tokens = text.split(" ")
    if "" in tokens:
        raise CommandRefused("arguments are separated by exactly one space")
    verb, args = tokens[0], tokens[1:]
    if verb in _NO_ARGUMENTS:
        _arity(verb, args, 0, 0)
        return _NO_ARGUMENTS[verb]
    if verb == "submit":
        _arity(verb, args, 3, 3, "<service> <port> <token>")
        return Submit(_service(args[0]), _port(args[1]), _token(args[2]))
    if verb == "cancel":
        _arity(verb, args, 1, 1, "<slurm-job-id>")
        return Cancel(_job_id(args[0]))
    if verb == "probe":
        _arity(verb, args, 1, 2, "<slurm-job-id> [path]")
        path = _path(args[1]) if len(args) == 2 else DEFAULT_PROBE_PATH
        return Probe(_job_id(args[0]), path)
    if verb == "forward":
        _arity(verb, args, 1, 1, "<slurm-job-id>")
        return Forward(_job_id(args[0]))
    raise CommandRefused(f"unknown verb {_shown(verb)}")


def _arity(verb: str, args: list[str], least: int, most: int, usage: str = "") -> None:
    if not least <= len(args) <= most:
        expected = f"usage: {verb} {usage}".rstrip()
        raise CommandRefused(f"{verb} takes {_count(least, most)}, not {len(args)}; {expected}")


def _count(least: int, most: int) -> str:
    if most == 0:
        return "no arguments"
    if least == most:
        return f"{least} argument{'s' if least > 1 else ''}"
    return f"{least} to {most} arguments"


def _service(value: str) -> str:
    if not SERVICE_ID.fullmatch(value):
        raise CommandRefused(f"service {_shown(value)} is not 1-128 of [A-Za-z0-9._-]")
    return value


def _port(value: str) -> int:
    if not PORT.fullmatch(value) or not PORT_MIN <= int(value) <= PORT_MAX:
        raise CommandRefused(f"port {_shown(value)} is not a number from {PORT_MIN} to {PORT_MAX}")
    return int(value)


def _token(value: str) -> str:
    if not TOKEN.fullmatch(value):
        raise CommandRefused(f"token {_shown(value)} is not 16 lowercase hex digits")
    return value


def _job_id(value: str) -> str:
    if not SLURM_JOB_ID.fullmatch(value):
        raise CommandRefused(f"job id {_shown(value)} is not a plain Slurm job number")
    return value


def _path(value: str) -> str:
    if not PROBE_PATH.fullmatch(value) or ".." in value.split("/"):
        raise CommandRefused(f"path {_shown(value)} is not /[A-Za-z0-9._~/-] without '..'")
    return value


def _shown(value: str, limit: int = 40) -> str:
    """A refused value, quoted and cut short, for an error message."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
