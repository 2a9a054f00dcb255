"""How the proxy reaches a job: "send this HTTP request to job J and stream the answer".

The app depends on the Backend Protocol only; the transport is chosen at wiring time:
direct HTTP to node:port (login-node placement, tests) or the SSH session (hub placement).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import h11

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


class _Connection:
    """One keep-alive HTTP/1.1 connection to a job, and h11's view of its state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.CLIENT)
        self.answered = False  # any byte of the current answer came

    @property
    def reusable(self) -> bool:
        # The event loop noticed a close by the job already: no syscall to find out.
        return not (self.reader.at_eof() or self.writer.is_closing())

    async def next_event(self) -> object:
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_SIZE)
            if not data and not self.answered:
                raise BackendClosed("the job closed the connection without answering")
            self.answered = True
            self.http.receive_data(data)

    def close(self) -> None:
        self.writer.close()


class HttpBackend:
    """Plain HTTP/1.1 to the job's node and port, over pooled keep-alive connections.

    A small client of its own (asyncio streams and h11): httpx spent about 1.5 ms
    of CPU a request here, most of it checking every pooled connection with system
    calls; this pool learns of closed connections from the event loop instead.
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
                return await self._exchange(job, connection, request, body)
            except (BackendClosed, OSError):
                # Closed by the job while idle, as we sent: the request was not read.
                connection.close()
        connection = await self._connect(job)
        try:
            return await self._exchange(job, connection, request, body)
        except BaseException:
            connection.close()
            raise

    def _request(
        self, job: JobView, method: str, path: str, headers: Headers, body: bytes
    ) -> h11.Request:
        head = [("host", f"{job.node}:{job.port}"), *headers]
        if body or method in METHODS_WITH_BODY:
            head.append(("content-length", str(len(body))))
        return h11.Request(method=method, target=path, headers=head)

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
        self, job: JobView, connection: _Connection, request: h11.Request, body: bytes
    ) -> UpstreamResponse:
        http = connection.http
        data = http.send(request) or b""
        if body:
            data += http.send(h11.Data(data=body)) or b""
        data += http.send(h11.EndOfMessage()) or b""
        connection.writer.write(data)
        await connection.writer.drain()
        connection.answered = False
        event = await connection.next_event()
        while isinstance(event, h11.InformationalResponse):  # 100 Continue: not the answer
            event = await connection.next_event()
        assert isinstance(event, h11.Response)
        key = (job.node, job.port)
        done = False

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                event = await connection.next_event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return

        async def close() -> None:
            nonlocal done
            if done:
                return
            done = True
            self._slots.release()
            if http.our_state is h11.DONE and http.their_state is h11.DONE:
                http.start_next_cycle()
                self._keep(key, connection)
            else:
                connection.close()  # unfinished: the job sees the client leave

        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        return UpstreamResponse(event.status_code, headers, chunks(), close)

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
