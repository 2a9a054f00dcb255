"""The strict grammar of ``SSH_ORIGINAL_COMMAND``: a verb, or a legacy request.

sshd hands over the client's command as one string with its quoting lost, so
the grammar knows no quoting at all: a verb is printable ASCII and takes no
arguments. Request bodies never travel here; they come on stdin or in a
session's streams.

    keep-alive | status | session

``session`` is how the hub does everything else (saia.protocol.session);
``keep-alive`` and ``status`` are also what an unmodified SAIA hub sends. A
command that contains a newline is a legacy SAIA request (see
saia.entrypoint.legacy); here it is only checked for bytes no request may hold,
and its fields are left to the legacy parser, which answers in HTTP.

Checks run cheapest and most general first: the length before anything else,
then NUL bytes, UTF-8, control characters, and only then the tokens. The only
error raised is CommandRefused.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple, Union

from saia.protocol import exits

# A legacy request carries a handful of HTTP headers; a verb command is short.
MAX_COMMAND_BYTES = 16 * 1024
MAX_VERB_COMMAND_BYTES = 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
# Characters a shell would act on; no verb holds them, and naming
# them in the refusal makes a probing attempt obvious in the client's stderr.
_SHELL_METACHARACTERS = frozenset(";&|$`<>(){}[]*?!'\"\\#")


class CommandRefused(Exception):
    def __init__(self, reason: str, exit_code: int = exits.REFUSED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


# Plain classes, not dataclasses: every keep-alive is a process start, and importing
# dataclasses costs more than all of this module.
class Verb(Enum):
    KEEP_ALIVE = "keep-alive"
    STATUS = "status"
    SESSION = "session"


class Legacy(NamedTuple):
    text: str  # the whole request, UTF-8 without NUL or control characters but newlines


Command = Union[Verb, Legacy]
_VERBS = {verb.value: verb for verb in Verb}


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
    if verb not in _VERBS:
        raise CommandRefused(f"unknown verb {_shown(verb)}")
    if args:
        raise CommandRefused(f"{verb} takes no arguments, not {len(args)}")
    return _VERBS[verb]


def _shown(value: str, limit: int = 40) -> str:
    """A refused value, quoted and cut short, for an error message."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
