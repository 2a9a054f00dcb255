"""The entrypoint's one HTTP/1.1 client to saia's jobs: h11 on asyncio streams, kept connections.

Sessions, probes and legacy requests all reach jobs through it. A session
forwards many small requests to the same few jobs, so connections are kept
open and reused (one request at a time each, as HTTP/1.1 has it). httpx's
pooled AsyncClient does the same, but it was measured here at 0.52 ms of CPU
per request against 0.15 ms for h11 on asyncio streams, on a login node that
has 2 ms in all for each request (BENCHMARKS.md, "Session"); h11 is the parser
httpx uses underneath.

Idle connections are dropped after IDLE_SECONDS, before uvicorn's own
keep-alive timeout (5 s, also vLLM's) closes them under a reused request. An
idempotent request that still finds its reused connection closed before any
answer came is sent once more on a new one, when its body can be sent again
(bytes, not a stream). Errors name what failed, never a header, a body or the
target.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import h11

Header = tuple[bytes, bytes]
IDLE_SECONDS = 4.0
MAX_IDLE = 64  # kept connections in all, beyond those in use
READ_CHUNK = 64 * 1024
_TIMEOUT = getattr(asyncio, "timeout", None)  # Python 3.11 and newer
Result = TypeVar("Result")
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 9.2.2


class UpstreamError(Exception):
    """The exchange with the job failed."""


class UpstreamUnreachable(UpstreamError):
    """No connection to the job: nothing was sent."""


class UpstreamTimeout(UpstreamError):
    """The job did not connect, or went silent, within its time."""


class _ClosedBeforeAnswer(UpstreamError):
    """A reused connection was found closed before any answer: the job never saw the request."""


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection
    reused: bool = False  # served a request before: the job may have closed it since
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


class UpstreamResponse:
    """A job's response; its body is read from the job only as ``chunks`` is iterated."""

    def __init__(
        self, pool: UpstreamPool, key: tuple[str, int], connection: _Connection, head: h11.Response
    ) -> None:
        self.status = head.status_code
        self.reason = bytes(head.reason)
        self.http_version = bytes(head.http_version)
        self.headers: list[Header] = [(bytes(n), bytes(v)) for n, v in head.headers.raw_items()]
        self._pool = pool
        self._key = key
        self._connection: _Connection | None = connection

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        while True:
            event = await self._pool.next_event(connection)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._connection = None
                self._pool.release(self._key, connection)
                return
            else:
                raise UpstreamError("the job broke off its answer")

    async def aclose(self) -> None:
        """Done with it: a connection with an unread or cut body cannot be reused."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class UpstreamPool:
    def __init__(
        self,
        connect_timeout: float,
        idle_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout  # the longest silence of a job mid-exchange
        self.clock = clock
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: list[Header],
        body: bytes | AsyncIterator[bytes],
    ) -> UpstreamResponse:
        """Send the request; returns at the job's response head."""
        key = (host, port)
        framed = _framed(headers, body, f"{host}:{port}".encode())
        request = h11.Request(method=method, target=target, headers=framed)
        connection = self._reusable(key)
        if connection is not None:
            try:
                return await self._exchange(key, connection, request, body)
            except _ClosedBeforeAnswer:
                # The job closed it while idle, as we sent. Sent again only if that is
                # harmless, as HTTP clients do: the job may have read it before closing.
                if method not in IDEMPOTENT or not isinstance(body, bytes):
                    raise
        return await self._exchange(key, await self._connect(key), request, body)

    def release(self, key: tuple[str, int], connection: _Connection) -> None:
        """The exchange on ``connection`` is complete: keep it for the next request."""
        protocol = connection.protocol
        if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
            connection.reused = True
            connection.idle_since = self.clock()
            if sum(map(len, self._idle.values())) < MAX_IDLE:
                self._idle.setdefault(key, []).append(connection)
                return
        connection.close()

    async def next_event(self, connection: _Connection) -> object:
        protocol = connection.protocol
        try:
            while True:
                event = protocol.next_event()
                if event is not h11.NEED_DATA:
                    return event
                protocol.receive_data(await self._read(connection))
        except h11.RemoteProtocolError:
            # h11's message may quote what the job sent.
            raise UpstreamError("the job did not answer in HTTP/1.1") from None

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def _exchange(
        self,
        key: tuple[str, int],
        connection: _Connection,
        request: h11.Request,
        body: bytes | AsyncIterator[bytes],
    ) -> UpstreamResponse:
        answered = False
        try:
            await self._send(connection, request, body)
            while True:
                event = await self._first_event(connection, answered)
                answered = True
                if isinstance(event, h11.Response):
                    return UpstreamResponse(self, key, connection, event)
                if not isinstance(event, h11.InformationalResponse):  # 100 Continue and kin
                    raise UpstreamError("the job closed the connection without answering")
        except BaseException:  # failed or cancelled midway: the connection is of no more use
            connection.close()
            raise

    async def _first_event(self, connection: _Connection, answered: bool) -> object:
        try:
            return await self.next_event(connection)
        except UpstreamError:
            if not answered and connection.reused:
                raise _ClosedBeforeAnswer("the kept connection was closed") from None
            raise

    async def _send(
        self, connection: _Connection, request: h11.Request, body: bytes | AsyncIterator[bytes]
    ) -> None:
        protocol = connection.protocol
        if isinstance(body, bytes):
            data = protocol.send(request) or b""
            if body:
                data += protocol.send(h11.Data(data=body)) or b""
            connection.writer.write(data + (protocol.send(h11.EndOfMessage()) or b""))
            await self._drain(connection)
            return
        connection.writer.write(protocol.send(request) or b"")
        async for chunk in body:
            if chunk:
                connection.writer.write(protocol.send(h11.Data(data=chunk)) or b"")
                await self._drain(connection)
        connection.writer.write(protocol.send(h11.EndOfMessage()) or b"")
        await self._drain(connection)

    async def _drain(self, connection: _Connection) -> None:
        try:
            await within(self.idle_timeout, connection.writer.drain())
        except asyncio.TimeoutError:
            raise UpstreamTimeout("the job stopped reading the request") from None
        except OSError:
            raise UpstreamError("the job closed the connection") from None

    async def _read(self, connection: _Connection) -> bytes:
        try:
            return await within(self.idle_timeout, connection.reader.read(READ_CHUNK))
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"the job went silent for {self.idle_timeout:g} s") from None
        except OSError:
            raise UpstreamError("the job broke the connection") from None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        host, port = key
        try:
            opening = asyncio.open_connection(host, port)
            reader, writer = await within(self.connect_timeout, opening)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"no connection within {self.connect_timeout:g} s") from None
        except OSError as error:
            raise UpstreamUnreachable(error.strerror or type(error).__name__) from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Small requests and SSE events must leave at once, not wait for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer, h11.Connection(h11.CLIENT))

    def _reusable(self, key: tuple[str, int]) -> _Connection | None:
        kept = self._idle.get(key, [])
        now = self.clock()
        while kept:
            connection = kept.pop()
            fresh = now - connection.idle_since < IDLE_SECONDS
            if fresh and not connection.reader.at_eof() and not connection.writer.is_closing():
                return connection
            connection.close()
        return None


async def within(seconds: float, awaitable: Awaitable[Result]) -> Result:
    """``await awaitable``, or asyncio.TimeoutError after ``seconds``."""
    if _TIMEOUT is None:  # Python before 3.11: wait_for, at the cost of a task per call
        return await asyncio.wait_for(awaitable, seconds)
    async with _TIMEOUT(seconds):
        return await awaitable


def _framed(headers: list[Header], body: bytes | AsyncIterator[bytes], host: bytes) -> list[Header]:
    """The headers with Host and the body's framing set here, as HTTP/1.1 needs them."""
    framing = {b"host", b"content-length", b"transfer-encoding"}
    kept = [(n, v) for n, v in headers if n not in framing]
    if isinstance(body, bytes):
        size = [(b"content-length", str(len(body)).encode())] if body else []
        return [(b"host", host), *kept, *size]
    declared = [(n, v) for n, v in headers if n == b"content-length"][:1]
    return [(b"host", host), *kept, *(declared or [(b"transfer-encoding", b"chunked")])]
