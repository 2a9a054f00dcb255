"""The legacy SAIA request, answered as the original cloud_interface.sh answers it.

How the request arrives (from gwdg/saia-hub proxy-hpc/proxy.py and
gwdg/saia-hpc cloud_interface.sh): the whole request is the SSH command, so it
reaches us in ``SSH_ORIGINAL_COMMAND``, fields separated by newlines::

    <inference id>\\n<user id>\\n<service>\\n/<request path>\\n -X <METHOD> -H "<Name>: <value>" ...

Line five onwards holds curl-style arguments; the original joins those lines
without a separator and splits them on whitespace. ``-X`` takes the method,
``-H`` starts a header whose words follow (one leading and one trailing double
quote are stripped), and ``-d`` ends the arguments: the words after it, joined
by single spaces, are the body. Without ``-d`` the body is stdin until EOF, as
the hub writes it there and closes the channel's input; for GET, HEAD, DELETE
and OPTIONS stdin is not read at all (the hub leaves it open when the body is
empty, and the original would then wait for ever).

The answer is a raw HTTP/1.1 response on stdout. Errors are the original's
bytes exactly: status line, ``Content-Type: text/html; charset=UTF-8``, a
``date -R`` Date, ``Server: KISSKI``, a blank line and the fixed body. A
backend's response is passed on as ``curl -i`` prints it: its status line and
headers as received, then the body with any chunked framing removed.

Where saia differs on purpose: the original's validation regexes for the ids
never ran (bash refused them as invalid patterns, so the test passed
everything); saia applies what they meant. Request paths must start with "/"
and hold no ".." segment (the original glued the path to "host:port", so
"0/x" changed the port). Method and headers are validated too, answered with
a 400 in the original's format. No backend ready is a 503 with the text of
the original's later version (its first version said 404 "Model Not Loaded").
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from saia.protocol.session import METHODS

MAX_FIELD = 256
INFERENCE_ID = re.compile(r"[A-Za-z0-9._+-]{1,256}")
SERVICE = re.compile(r"[A-Za-z0-9._+-]{1,256}")
USER_ID = re.compile(r"[A-Za-z0-9._@+-]{1,256}")
REQUEST_PATH = re.compile(r"/[A-Za-z0-9_/.+?=&-]{0,255}")
METHODS_WITHOUT_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
# Values as curl sends them: any character but controls (the grammar refused those),
# non-ASCII ones as their UTF-8 bytes.
HEADER = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}):[ \t]*([^\x00-\x1f\x7f]{0,4096}?)[ \t]*")
# Hop-by-hop headers and those the relay sets itself are not passed on.
DROPPED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "expect",
        "host",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
MAX_HEADERS = 64


@dataclass(frozen=True)
class Answer:
    """One of the original's fixed responses."""

    status: int
    reason: str
    body: str


BAD_IDS = Answer(
    400,
    "Bad Request",
    "Error: Only alphanumeric characters are allowed for INFERENCE_ID and APP, "
    "and they should not exceed 256 characters.",
)
BAD_USER_ID = Answer(
    400,
    "Bad Request",
    "Error: Only alphanumeric characters and '._@-' are allowed for USER_ID, "
    "and it should not exceed 256 characters.",
)
BAD_PATH = Answer(
    400,
    "Bad Request",
    "Error: the REQUEST_PATH provided contains illegal characters "
    "or exceeds the 256 character limit.",
)
BAD_ARGUMENTS = Answer(  # saia's own: the original passed anything on to curl
    400,
    "Bad Request",
    'Error: the request arguments must be -X METHOD and -H "Name: value" '
    "without control characters.",
)
BODY_TOO_LARGE = Answer(413, "Payload Too Large", "Error: the request body is too large.")
UNKNOWN_SERVICE = Answer(404, "Not Found", "Model Not Found\r\n")
NO_BACKEND = Answer(
    503, "Service Unavailable", "Model Not Loaded. Please try again in a few minutes.\r\n"
)
BACKEND_BROKE = Answer(503, "Service Unavailable", "Connection to model broke\r\n")


class LegacyRefused(Exception):
    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.body)
        self.answer = answer


@dataclass(frozen=True)
class LegacyRequest:
    inference_id: str
    user_id: str
    service: str
    path: str
    method: str
    headers: tuple[tuple[str, str], ...]
    inline_body: bytes | None  # from -d; None: the body, if any, is on stdin

    @property
    def body_on_stdin(self) -> bool:
        return self.inline_body is None and self.method not in METHODS_WITHOUT_BODY


def parse_request(text: str) -> LegacyRequest:
    """The request in ``text``, or LegacyRefused with the original's answer, in its order."""
    lines = text.split("\n")
    lines += [""] * (4 - len(lines))
    inference_id, user_id, service, path = lines[:4]
    arguments = "".join(lines[4:])
    if not INFERENCE_ID.fullmatch(inference_id) or not SERVICE.fullmatch(service):
        raise LegacyRefused(BAD_IDS)
    if not USER_ID.fullmatch(user_id):
        raise LegacyRefused(BAD_USER_ID)
    if not REQUEST_PATH.fullmatch(path) or ".." in path.split("?")[0].split("/"):
        raise LegacyRefused(BAD_PATH)
    method, headers, inline_body = _curl_arguments(arguments)
    return LegacyRequest(inference_id, user_id, service, path, method, headers, inline_body)


def _curl_arguments(arguments: str) -> tuple[str, tuple[tuple[str, str], ...], bytes | None]:
    """Method, headers and inline body, tokenised as the original's bash loop does."""
    words = arguments.split()
    method = ""
    raw_headers: list[str] = []
    current: list[str] = []
    inline_body: bytes | None = None
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-X":
            method = words[index + 1] if index + 1 < len(words) else ""
            index += 2
            continue
        if word in ("-H", "-d"):
            if current:
                raw_headers.append(" ".join(current))
                current = []
            if word == "-d":
                inline_body = " ".join(words[index + 1 :]).encode("utf-8")
                break
        else:
            current.append(word)
        index += 1
    if current:
        raw_headers.append(" ".join(current))
    if not method:
        method = "GET" if inline_body is None else "POST"  # curl's defaults
    if method not in METHODS or len(raw_headers) > MAX_HEADERS:
        raise LegacyRefused(BAD_ARGUMENTS)
    headers: list[tuple[str, str]] = []
    for raw in raw_headers:
        match = HEADER.fullmatch(_unquoted(raw))
        if match is None:
            raise LegacyRefused(BAD_ARGUMENTS)
        name, value = match.groups()
        if name.lower() not in DROPPED_HEADERS:
            headers.append((name, value))
    return method, tuple(headers), inline_body


def _unquoted(header: str) -> str:
    # The original strips one trailing and one leading double quote, independently;
    # a header in single quotes, as a person would type it, is accepted as well.
    if len(header) >= 2 and header[0] == header[-1] == "'":
        return header[1:-1]
    header = header.removesuffix('"')
    return header.removeprefix('"')


def render(answer: Answer, now: float) -> bytes:
    """The original's response bytes for a fixed answer at time ``now``."""
    head = (
        f"HTTP/1.1 {answer.status} {answer.reason}\r\n"
        "Content-Type: text/html; charset=UTF-8\r\n"
        f"Date: {rfc5322_date(now)}\r\n"
        "Server: KISSKI\r\n"
        "\r\n"
    )
    return (head + answer.body).encode("utf-8")


def render_head(
    http_version: bytes, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A backend's status line and headers as ``curl -i`` prints them: as received."""
    lines = [b"HTTP/" + http_version + b" " + str(status).encode() + b" " + reason]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322_date(now: float) -> str:
    """``date -R``: local time, English names whatever the locale, numeric zone."""
    local = time.localtime(now)
    offset = local.tm_gmtoff // 60
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{_DAYS[local.tm_wday]}, {local.tm_mday:02d} {_MONTHS[local.tm_mon - 1]} "
        f"{local.tm_year} {local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} "
        f"{sign}{hours:02d}{minutes:02d}"
    )
