"""How the proxy reaches a job: "send this HTTP request to job J and stream the answer".

The app depends on the Backend Protocol only; the transport is chosen at wiring time:
direct HTTP to node:port (login-node placement, tests) or the SSH session (hub placement).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import httptools

from saia.domain.state import JobView

Headers = list[tuple[str, str]]
READ_SIZE = 65536
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class BackendUnreachable(Exception):
    """Nothing of the request reached the job: safe to retry on another backend."""

    def __init__(self, job: JobView, reason: str) -> None:
        super().__init__(f"job {job.id} at {job.node}:{job.port} is unreachable: {reason}")
        self.job = job
        self.reason = reason


class LinkDown(BackendUnreachable):
    """The way to every job is down (the SSH link, say), not this job: no job is to blame."""


class RequestRefused(Exception):
    """The way to the job refused the request for what it is (its path, headers or body):
    the client's error, answered with ``status``; no job is to blame and none is tried."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the request was refused ({status}): {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: Headers
    chunks: AsyncIterator[bytes]  # the body, each chunk as the job sent it
    close: Callable[[], Awaitable[None]]  # cancels the upstream request if unfinished


class Backend(Protocol):
    async def send(
        self, job: JobView, method: str, path: str, headers: Headers, body: bytes
    ) -> UpstreamResponse:
        """Start the request; BackendUnreachable if the job could not be reached."""
        ...


class AnswerBroken(Exception):
    """The job's answer is not valid HTTP/1.1, or it ended before its body did."""


class BackendClosed(AnswerBroken):
    """The job closed the connection before the status line of its answer."""


class _Answer:
    """One answer as httptools (llhttp, uvicorn's parser) reads it, through its callbacks."""

    __slots__ = ("after_end", "chunks", "complete", "head_done", "headers", "keep_alive", "parser")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.chunks: list[bytes] = []
        self.complete = False
        self.after_end = False  # bytes came after the answer: the connection is not reused
        self.keep_alive = False  # read at the end: llhttp forgets it once the next answer begins

    def on_message_begin(self) -> None:
        if self.complete:
            self.after_end = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        if 100 <= self.parser.get_status_code() < 200:
            self.headers = []  # an interim answer (103 Early Hints, say): not the answer
        else:
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.head_done and not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()

    def ends_at_close(self) -> bool:
        """Neither Content-Length nor chunked: the body is whatever comes until the close."""
        names = {name.lower() for name, _ in self.headers}
        status = self.parser.get_status_code()
        return (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and status not in (204, 304)
        )


class _Connection:
    """One keep-alive HTTP/1.1 connection to a job."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.answer = _Answer()

    @property
    def reusable(self) -> bool:
        # The event loop noticed a close by the job already: no syscall to find out.
        return not (self.reader.at_eof() or self.writer.is_closing())

    def start(self) -> None:
        self.answer = _Answer()

    async def head(self) -> None:
        """Read until the answer's status and headers are in."""
        answered = False
        while not self.answer.head_done:
            if not await self._read():
                if not answered:
                    raise BackendClosed("the job closed the connection without answering")
                raise AnswerBroken("the job closed the connection within the answer's head")
            answered = True

    async def body(self) -> AsyncIterator[bytes]:
        """The body's pieces as they come."""
        answer = self.answer
        while True:
            if answer.chunks:
                chunks, answer.chunks = answer.chunks, []
                for chunk in chunks:
                    yield chunk
            if answer.complete:
                return
            if not await self._read():
                if answer.ends_at_close():
                    answer.complete = True
                    answer.after_end = True  # and the connection is gone with it
                    continue
                raise AnswerBroken("the job closed the connection before the answer's end")

    async def _read(self) -> bool:
        """Feed what came to the parser; False at the end of the connection."""
        data = await self.reader.read(READ_SIZE)
        if not data:
            return False
        try:
            self.answer.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            # An upgrade (101) too: nobody asked for one, and it is no HTTP answer.
            raise AnswerBroken(f"the job's answer is not valid HTTP/1.1: {error!r}") from None
        return True

    @property
    def done(self) -> bool:
        """The whole answer was read, and nothing after it: the next request may follow."""
        answer = self.answer
        return answer.complete and answer.keep_alive and not answer.after_end

    def close(self) -> None:
        self.writer.close()


class HttpBackend:
    """Plain HTTP/1.1 to the job's node and port, over pooled keep-alive connections.

    A small client of its own (asyncio streams, and httptools to read answers):
    httpx spent about 1.5 ms of CPU a request here, most of it checking every
    pooled connection with system calls; this pool learns of closed connections
    from the event loop instead. httptools is llhttp, Node's parser, as uvicorn uses
    it: the framing of answers (lengths, chunks) is never our own code.
    """

    def __init__(
        self, connect_timeout: float = 5.0, max_connections: int = 1000, max_idle: int = 200,
        job_secret: Callable[[str], str] | None = None,
    ) -> None:  # fmt: skip
        # No read timeout: a generation may think for minutes before its first token.
        self._connect_timeout = connect_timeout
        self._job_secret = job_secret  # jobs given a secret answer only requests with it
        self._max_idle = max_idle
        self._slots = asyncio.Semaphore(max_connections)  # more requests wait for a slot
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def send(
        self, job: JobView, method: str, path: str, headers: Headers, body: bytes
    ) -> UpstreamResponse:
        await self._slots.acquire()
        try:
            return await self._send(job, method, path, headers, body)
        except BaseException:
            self._slots.release()
            raise

    async def _send(
        self, job: JobView, method: str, path: str, headers: Headers, body: bytes
    ) -> UpstreamResponse:
        request = self._request(job, method, path, headers, body)
        connection = self._reuse((job.node, job.port))
        if connection is not None:
            try:
                return await self._exchange(job, connection, request, method)
            except (BackendClosed, OSError):
                # Closed by the job while idle, as we sent: the request was not read.
                connection.close()
            except BaseException:
                connection.close()
                raise
        connection = await self._connect(job)
        try:
            return await self._exchange(job, connection, request, method)
        except BaseException:
            connection.close()
            raise

    def _request(
        self, job: JobView, method: str, path: str, headers: Headers, body: bytes
    ) -> bytes:
        head = [("host", f"{job.node}:{job.port}"), *headers]
        if self._job_secret is not None:
            head.append(("authorization", f"Bearer {self._job_secret(job.token)}"))
        if body or method in METHODS_WITH_BODY:
            head.append(("content-length", str(len(body))))
        return request_head(method, path, head) + body

    def _reuse(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                return connection
            connection.close()
        return None

    async def _connect(self, job: JobView) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(job.node, job.port)
        except OSError as error:  # refused, no route, timed out (TimeoutError)
            raise BackendUnreachable(job, str(error) or type(error).__name__) from error
        return _Connection(reader, writer)

    async def _exchange(
        self, job: JobView, connection: _Connection, request: bytes, method: str
    ) -> UpstreamResponse:
        connection.start()
        connection.writer.write(request)
        await connection.writer.drain()
        await connection.head()
        answer = connection.answer
        if method == "HEAD":  # the head is the whole answer, whatever its Content-Length says
            answer.complete = answer.after_end = True  # and the parser expects a body: closed
        key = (job.node, job.port)
        done = False

        async def close() -> None:
            nonlocal done
            if done:
                return
            done = True
            self._slots.release()
            if connection.done:
                self._keep(key, connection)
            else:
                connection.close()  # unfinished: the job sees the client leave

        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers]
        return UpstreamResponse(answer.parser.get_status_code(), headers, connection.body(),
                                close)  # fmt: skip

    def _keep(self, key: tuple[str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if connection.reusable and len(idle) < self._max_idle:
            idle.append(connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


# RFC 9110: a method is a token; RFC 9112: a target has no spaces or controls; a field
# value no CR, LF or NUL. What goes to a job is checked, so that no value read from a
# client can end a line of the request early.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
TARGET = re.compile(r"[!-~]+")
FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def request_head(method: str, target: str, headers: Headers) -> bytes:
    if not TOKEN.fullmatch(method):
        raise ValueError(f"not an HTTP method: {method!r}")
    if not TARGET.fullmatch(target):
        raise ValueError(f"not a request target: {target!r}")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        if not TOKEN.fullmatch(name) or not FIELD_VALUE.fullmatch(value):
            raise ValueError(f"not a header field: {name!r}")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")
