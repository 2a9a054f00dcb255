"""HTTP/1.1 to a saia job's port: one exchange per connection, streamed both ways.

``forward`` framing: stdin carries one HTTP/1.1 request message (request line,
headers, and a body framed by Content-Length or chunked encoding, as HTTP/1.1
frames it); stdout receives the backend's response message exactly as the
backend sent it, streamed as it arrives, until the backend closes. The
request's target must be a plain path (and query); Host and Connection are set
here (Connection: close, so the end of the response is the end of the stream),
other hop-by-hop headers are dropped. Nothing of the request is logged.

``relay_legacy`` answers a legacy request the way ``curl -i`` printed it for
the original: status line and headers as received, body without chunk framing.

h11 does the parsing (it is what httpx itself uses, and cheap to import); the
response of ``forward`` is not parsed at all, only copied.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

import h11

from saia.entrypoint.legacy import METHODS, LegacyRequest, render_head

Read = Callable[[], bytes]  # returns b"" at end of input
Write = Callable[[bytes], None]  # writes and flushes

HEAD_LIMIT = 64 * 1024
FORWARD_TARGET = re.compile(rb"/[A-Za-z0-9._~/-]{0,255}(\?[A-Za-z0-9._~=&%+,:-]{0,2048})?")
# Framing headers are passed on (h11 re-frames the body the same way); these are not.
DROPPED = frozenset(
    {
        b"connection",
        b"expect",
        b"host",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


class BadRequest(Exception):
    """The request on stdin is not one this relay passes on."""


class BackendError(Exception):
    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered  # whether any response bytes were written already


class BackendUnreachable(BackendError):
    """No connection to the backend: nothing was sent, so another backend may be tried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, answered=False)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    idle: float  # the longest silence accepted from the backend


def forward(
    read: Read, write: Write, host: str, port: int, timeouts: Timeouts, max_body: int
) -> None:
    incoming = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    request = _next(incoming, read)
    if not isinstance(request, h11.Request):
        raise BadRequest("stdin must start with an HTTP/1.1 request")
    target = bytes(request.target)
    if not FORWARD_TARGET.fullmatch(target) or b".." in target.split(b"?")[0].split(b"/"):
        raise BadRequest("the request target must be a plain /path?query without '..'")
    if request.method.decode("ascii", "replace") not in METHODS:
        raise BadRequest("the request method is not one of " + " ".join(sorted(METHODS)))
    headers = [(b"Host", f"{host}:{port}".encode()), (b"Connection", b"close")]
    headers += [(n, v) for n, v in request.headers.raw_items() if n.lower() not in DROPPED]
    with _connect(host, port, timeouts) as backend:
        outgoing = h11.Connection(h11.CLIENT)
        sent = 0
        _send(backend, outgoing, h11.Request(method=request.method, target=target, headers=headers))
        while True:
            event = _next(incoming, read)
            if isinstance(event, h11.Data):
                sent += len(event.data)
                if sent > max_body:
                    raise BadRequest(f"the request body is larger than {max_body} bytes")
                _send(backend, outgoing, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                _send(backend, outgoing, h11.EndOfMessage())
                break
            else:
                raise BadRequest("stdin ended inside the request")
        _copy(backend, write)


def relay_legacy(
    request: LegacyRequest,
    body: bytes | None,
    write: Write,
    host: str,
    port: int,
    timeouts: Timeouts,
) -> None:
    headers = [("Host", f"{host}:{port}"), ("Connection", "close")]
    if body is not None:
        headers.append(("Content-Length", str(len(body))))
    headers += request.headers
    with _connect(host, port, timeouts) as backend:
        client = h11.Connection(h11.CLIENT)
        _send(
            backend,
            client,
            h11.Request(method=request.method, target=request.path, headers=headers),
        )
        if body:
            _send(backend, client, h11.Data(data=body))
        _send(backend, client, h11.EndOfMessage())
        answered = False
        try:
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(_receive(backend, answered))
                elif isinstance(event, h11.Response):
                    raw = list(event.headers.raw_items())
                    write(render_head(event.http_version, event.status_code, event.reason, raw))
                    answered = True
                elif isinstance(event, h11.Data):
                    write(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return
                # InformationalResponse (100 Continue and the like): not part of the answer.
        except h11.RemoteProtocolError:
            raise BackendError("the backend did not answer in HTTP/1.1", answered) from None


def _connect(host: str, port: int, timeouts: Timeouts) -> socket.socket:
    try:
        backend = socket.create_connection((host, port), timeout=timeouts.connect)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise BackendUnreachable(f"cannot connect to {host}:{port}: {reason}") from None
    backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    backend.settimeout(timeouts.idle)
    return backend


def _next(connection: h11.Connection, read: Read) -> object:
    """The next event of the request on stdin, reading more of it as needed."""
    try:
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            connection.receive_data(read())
    except h11.RemoteProtocolError:
        # h11's message may quote the offending line, an Authorization header perhaps.
        raise BadRequest("malformed HTTP/1.1 request on stdin") from None


def _send(backend: socket.socket, connection: h11.Connection, event: h11.Event) -> None:
    data = connection.send(event)
    try:
        if data:
            backend.sendall(data)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise BackendError(f"the backend broke the connection: {reason}", answered=False) from None


def _receive(backend: socket.socket, answered: bool) -> bytes:
    try:
        return backend.recv(65536)
    except TimeoutError:
        raise BackendError("the backend went silent", answered) from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise BackendError(f"the backend broke the connection: {reason}", answered) from None


def _copy(backend: socket.socket, write: Write) -> None:
    answered = False
    while chunk := _receive(backend, answered):
        write(chunk)
        answered = True
    if not answered:
        raise BackendError("the backend closed the connection without answering", answered=False)
