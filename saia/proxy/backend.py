"""How the proxy reaches a job: "send this HTTP request to job J and stream the answer".

The app depends on the Backend Protocol only; the transport is chosen at wiring time:
direct HTTP to node:port (login-node placement, tests) or the SSH session (hub placement).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

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


class BackendClosed(Exception):
    """The job closed the connection before the status line of its answer."""


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


class BrokenAnswer(Exception):
    """The job's answer is not HTTP/1.1 as it should be, or it stopped short."""


class _Connection:
    """One keep-alive HTTP/1.1 connection to a job."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.keep = True  # whether the answer being read leaves the connection reusable

    @property
    def reusable(self) -> bool:
        # The event loop noticed a close by the job already: no syscall to find out.
        return self.keep and not (self.reader.at_eof() or self.writer.is_closing())

    async def read_head(self) -> tuple[int, str, Headers]:
        """Status, version and headers of the answer; informational answers skipped."""
        while True:
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as error:
                if error.partial:
                    raise BrokenAnswer("the job closed the connection inside its headers") from None
                raise BackendClosed("the job closed the connection without answering") from None
            except asyncio.LimitOverrunError:
                raise BrokenAnswer("the job's answer headers are too long") from None
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            version, _, rest = status_line.partition(" ")
            code = rest[:3]
            if not (version.startswith("HTTP/1.") and code.isdigit() and rest[3:4] in ("", " ")):
                raise BrokenAnswer(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
            status = int(code)
            if 100 <= status < 200:
                continue  # 100 Continue and the like: not the answer
            headers = []
            for line in lines:
                name, colon, value = line.partition(":")
                if not colon or not name or name != name.strip():
                    raise BrokenAnswer(f"not a header line: {line[:80]!r}")
                headers.append((name.lower(), value.strip()))
            return status, version, headers

    async def body(self, length: int | None, chunked: bool) -> AsyncIterator[bytes]:
        """The body as it comes: ``length`` bytes, chunked, or (None) up to the close."""
        if chunked:
            async for piece in self._chunked():
                yield piece
            return
        remaining = -1 if length is None else length
        while remaining:
            piece = await self.reader.read(
                READ_SIZE if remaining < 0 else min(remaining, READ_SIZE)
            )
            if not piece:
                if remaining < 0:
                    return
                raise BrokenAnswer(f"the job closed the connection {remaining} bytes short")
            remaining -= len(piece) if remaining > 0 else 0
            yield piece

    async def _chunked(self) -> AsyncIterator[bytes]:
        reader = self.reader
        try:
            while True:
                line = await reader.readuntil(b"\r\n")
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise BrokenAnswer(f"not a chunk size: {line[:40]!r}") from None
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailer fields: none is used
                    return
                while size:
                    piece = await reader.read(min(size, READ_SIZE))
                    if not piece:
                        raise BrokenAnswer("the job closed the connection inside a chunk")
                    size -= len(piece)
                    yield piece
                if await reader.readexactly(2) != b"\r\n":
                    raise BrokenAnswer("a chunk does not end where its size says")
        except asyncio.IncompleteReadError:
            raise BrokenAnswer("the job closed the connection inside its chunked body") from None
        except asyncio.LimitOverrunError:
            raise BrokenAnswer("a chunk size line is too long") from None

    def close(self) -> None:
        self.writer.close()


class HttpBackend:
    """Plain HTTP/1.1 to the job's node and port, over pooled keep-alive connections.

    A small client of its own on asyncio streams: httpx spent about 1.5 ms of CPU
    a request here, most of it checking every pooled connection with system calls,
    and h11 another 0.2 ms. This pool learns of closed connections from the event
    loop, and answers are framed as RFC 9112 section 6.3 says.
    """

    def __init__(
        self, connect_timeout: float = 5.0, max_connections: int = 1000, max_idle: int = 200
    ) -> None:
        # No read timeout: a generation may think for minutes before its first token.
        self._connect_timeout = connect_timeout
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
                return await self._exchange(job, connection, method, request)
            except (BackendClosed, OSError):
                # Closed by the job while idle, as we sent: the request was not read.
                connection.close()
        connection = await self._connect(job)
        try:
            return await self._exchange(job, connection, method, request)
        except BaseException:
            connection.close()
            raise

    def _request(
        self, job: JobView, method: str, path: str, headers: Headers, body: bytes
    ) -> bytes:
        fields = [("host", f"{job.node}:{job.port}"), *headers]
        if body or method in METHODS_WITH_BODY:
            fields.append(("content-length", str(len(body))))
        lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in fields)]
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a line break inside the request line or a header")
        head = "\r\n".join(lines)
        return head.encode("latin-1") + b"\r\n\r\n" + body

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
        self, job: JobView, connection: _Connection, method: str, request: bytes
    ) -> UpstreamResponse:
        connection.writer.write(request)
        await connection.writer.drain()
        status, version, headers = await connection.read_head()
        length, chunked = framing(method, status, headers)
        connection.keep = (
            version == "HTTP/1.1"
            and (length is not None or chunked)
            and not any(
                name == "connection" and "close" in value.lower() for name, value in headers
            )
        )
        key = (job.node, job.port)
        finished = False
        closed = False

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal finished
            async for piece in connection.body(length, chunked):
                yield piece
            finished = True

        async def close() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            self._slots.release()
            if finished:
                self._keep(key, connection)
            else:
                connection.close()  # unfinished: the job sees the client leave

        return UpstreamResponse(status, headers, chunks(), close)

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


def framing(method: str, status: int, headers: Headers) -> tuple[int | None, bool]:
    """How the answer's body ends: (its length, or None for "at the close"; chunked)."""
    if method == "HEAD" or status in (204, 304):
        return 0, False
    codings = [v.strip().lower() for k, v in headers if k == "transfer-encoding"]
    if codings:
        return None, ",".join(codings).rsplit(",", 1)[-1].strip() == "chunked"
    lengths = {v.strip() for k, v in headers if k == "content-length"}
    if not lengths:
        return None, False
    if len(lengths) > 1 or not all(v.isascii() and v.isdigit() for v in lengths):
        raise BrokenAnswer(f"an unusable Content-Length: {sorted(lengths)!r}")
    return int(lengths.pop()), False
