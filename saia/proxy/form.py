"""The one thing the proxy reads of a multipart/form-data body: where a field's value is.

Audio transcriptions and translations name their model in a form field, next to the
audio. Only the parts' heads are read, up to the field; the parts' contents are found
by searching for the boundary, never copied, and the body goes on as it came.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

MULTIPART = "multipart/form-data"
# RFC 2046: 1-70 characters, quoted where they hold what a token may not.
BOUNDARY = re.compile(r';\s*boundary\s*=\s*(?:"([^"\r\n]{1,70})"|([^";\s]{1,70}))', re.IGNORECASE)
CRLF = b"\r\n"
END_OF_HEAD = b"\r\n\r\n"


def is_multipart(content_type: str) -> bool:
    return content_type[: len(MULTIPART)].lower() == MULTIPART


def boundary(content_type: str) -> bytes | None:
    found = BOUNDARY.search(content_type)
    if found is None:
        return None
    return (found.group(1) or found.group(2)).encode("latin-1")


def field_span(body: bytes, content_type: str, name: str) -> tuple[int, int] | None:
    """Start and end in ``body`` of the first value of the form field ``name``; None
    where there is none, or the body is not multipart as its content type says."""
    separator = boundary(content_type)
    if separator is None:
        return None
    named = re.compile(rb'(?:^|;)\s*name\s*=\s*(?:"' + re.escape(name.encode()) + rb'"|'
                       + re.escape(name.encode()) + rb")\s*(?:;|$)", re.IGNORECASE)  # fmt: skip
    for head, start, end in _parts(body, b"--" + separator):
        if _disposition_names(head, named):
            return start, end
    return None


def _parts(body: bytes, delimiter: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Each part's head, and where its content starts and ends, up to the first that
    does not end as it should."""
    at = body.find(delimiter)  # a preamble may come before the first delimiter
    while at != -1 and not body.startswith(b"--", at + len(delimiter)):  # not the last
        head = body.find(CRLF, at + len(delimiter))  # the rest of that line is padding
        end_of_head = -1 if head == -1 else body.find(END_OF_HEAD, head)
        if end_of_head == -1:
            return
        content = end_of_head + len(END_OF_HEAD)
        end = body.find(CRLF + delimiter, content)
        if end == -1:
            return
        yield body[head + len(CRLF) : end_of_head], content, end
        at = end + len(CRLF)


def _disposition_names(head: bytes, named: re.Pattern[bytes]) -> bool:
    for line in head.split(CRLF):
        field, _, value = line.partition(b":")
        if field.strip().lower() == b"content-disposition":
            return named.search(value.strip()) is not None
    return False
