"""HTTP/2 over any byte stream: what both ends of a ``session`` share.

h2 is sans-IO: it turns received bytes into events and calls into bytes to
send, and leaves all waiting to its user. This module does the waiting that
both ends need in the same way: sending a body no faster than the peer's
flow-control windows allow, and handing the connection's bytes to the stream.

A ByteStream is the one thing the two ends differ in: the login node speaks
over its stdin and stdout (asyncio streams), the hub over a paramiko Channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Protocol

import h2.connection
import h2.errors
import h2.exceptions

READ_CHUNK = 64 * 1024


class ByteStream(Protocol):
    """A bidirectional byte stream, as the HTTP/2 connection needs it."""

    async def read(self) -> bytes:
        """Whatever has arrived, waiting for at least one byte; b"" once the stream ended."""
        ...

    def write(self, data: bytes) -> None:
        """Send ``data`` in order; never waits (what cannot go now is queued)."""
        ...

    async def drain(self) -> None:
        """Wait until the queue of unsent bytes is small again."""
        ...

    def close(self) -> None: ...

    async def why_closed(self) -> str:
        """What the other end said when it went away (its stderr, an exit status), or ""."""
        ...


class AsyncioByteStream:
    """A ByteStream over an asyncio reader and writer (pipes or a socket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        return await self.reader.read(READ_CHUNK)

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    async def why_closed(self) -> str:
        return ""


class StreamGone(Exception):
    """The stream was reset or closed, or the connection ended: nothing more goes on it."""

    def __init__(self, stream_id: int) -> None:
        super().__init__(f"stream {stream_id} is closed")
        self.stream_id = stream_id


class H2Wire:
    """One h2 connection on one ByteStream, with sends that wait for flow-control windows."""

    def __init__(self, connection: h2.connection.H2Connection, stream: ByteStream) -> None:
        self.connection = connection
        self.stream = stream
        self.ended = False  # the connection is over: every wait for a window gives up
        self._window_waiters: dict[int, asyncio.Event] = {}
        self._flush_due = False

    def flush(self) -> None:
        """Hand what h2 has to send to the stream, once this turn of the event loop is done.

        The frames one turn makes (HEADERS, DATA, END_STREAM, WINDOW_UPDATEs) then
        leave in one write, and over SSH in one packet instead of several: that is
        the CPU the login node spends per request.
        """
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_due = False
        data = self.connection.data_to_send()
        if data:
            self.stream.write(data)

    async def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send ``data`` on the stream, pausing while the peer's window is closed.

        Waiting here is the backpressure: a caller that copies from an upstream
        reads its next chunk only after this returns.
        """
        view = memoryview(data)
        while view:
            window = self._window(stream_id)
            if window <= 0:
                await self._window_opened(stream_id)
                continue
            size = min(window, len(view), self.connection.max_outbound_frame_size)
            with _stream_errors(stream_id):
                self.connection.send_data(stream_id, bytes(view[:size]))
            view = view[size:]
            self.flush()
        if end_stream:
            with _stream_errors(stream_id):
                self.connection.end_stream(stream_id)
            self.flush()
        try:
            await self.stream.drain()
        except ConnectionError:
            raise StreamGone(stream_id) from None

    def reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        """Reset the stream if it is still open; a stream already gone needs nothing."""
        # Closed meanwhile (both ends done, or the peer reset it first): nothing to do.
        with suppress(h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, code)
        self.flush()
        self.wake(stream_id)

    def wake(self, stream_id: int) -> None:
        """A window changed, or the stream ended: let its sender look again."""
        if stream_id == 0:
            waiters = list(self._window_waiters.values())
            self._window_waiters.clear()
        else:
            waiter = self._window_waiters.pop(stream_id, None)
            waiters = [] if waiter is None else [waiter]
        for waiter in waiters:
            waiter.set()

    def end(self) -> None:
        """The connection is over: wake every sender so that it gives up."""
        self.ended = True
        self.wake(0)

    def _window(self, stream_id: int) -> int:
        if self.ended:
            raise StreamGone(stream_id)
        with _stream_errors(stream_id):
            return self.connection.local_flow_control_window(stream_id)

    async def _window_opened(self, stream_id: int) -> None:
        waiter = self._window_waiters.setdefault(stream_id, asyncio.Event())
        await waiter.wait()


@contextmanager
def _stream_errors(stream_id: int) -> Iterator[None]:
    """h2's refusals to act on a closed stream (StreamClosedError and kin) as StreamGone."""
    try:
        yield
    except h2.exceptions.ProtocolError:
        raise StreamGone(stream_id) from None
