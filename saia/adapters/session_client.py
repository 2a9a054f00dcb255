"""The hub's end of a ``session``: many concurrent HTTP requests on one SSH channel.

The login node's ``saia-entrypoint session`` speaks HTTP/2 on the channel
(saia.entrypoint.session); this is its client, on h2 and asyncio::

    channel = open_session_channel(transport)  # a kept paramiko Transport
    async with SessionClient(ChannelByteStream(channel)) as session:
        response = await session.request("GET", "/jobs/42/http/v1/models")
        async for chunk in response:  # as the job sends it
            ...

- Requests run concurrently, up to the entrypoint's MAX_CONCURRENT_STREAMS;
  more wait for a stream to finish.
- Cancelling a task that awaits ``request`` or a chunk resets its stream, which
  cancels the entrypoint's request to the job; ``aclose()`` on an unfinished
  response does the same. Other requests go on.
- A response's body is credited back to the entrypoint only as it is read, so a
  slow reader slows the job down instead of filling the hub's memory.
- When the channel dies, every request and every later call raises
  SessionClosed, with what the entrypoint said (its stderr, its exit status).

The client does not depend on how the channel was made: any ByteStream works
(saia.adapters.channel_stream for paramiko, AsyncioByteStream for a socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterable, Callable, Iterable
from types import TracebackType
from typing import Protocol, Self

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import paramiko

from saia.adapters.channel_stream import ChannelByteStream
from saia.adapters.session_response import Exchange, SessionResponse
from saia.protocol.h2_wire import ByteStream, H2Wire, StreamGone

DEFAULT_WINDOW = 65535  # HTTP/2's initial window, before any WINDOW_UPDATE
# Headers that describe one hop (HTTP/2 forbids them), and Host, which :authority replaces.
HOP_BY_HOP = frozenset(
    {"connection", "host", "keep-alive", "proxy-connection", "te", "transfer-encoding",
     "upgrade"}
)  # fmt: skip

Body = bytes | AsyncIterable[bytes]


class SessionClosed(Exception):
    """The session's channel is gone, or never came up: no request can be sent or finish."""


class StreamReset(Exception):
    """The entrypoint reset this request's stream: its answer, if any, is incomplete."""

    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(f"stream {stream_id} was reset by the entrypoint (HTTP/2 error {code})")
        self.stream_id = stream_id
        self.code = code


def open_session_channel(transport: paramiko.Transport, timeout: float = 10.0) -> paramiko.Channel:
    """A new channel on a kept connection, running the ``session`` verb. Blocks; use a thread."""
    sock = transport.sock
    if isinstance(sock, socket.socket):
        # paramiko leaves Nagle on: small frames would wait up to 40 ms for an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    channel = transport.open_session(timeout=timeout)
    channel.exec_command("session")
    return channel


class SessionClient:
    def __init__(
        self,
        stream: ByteStream,
        *,
        stream_window: int = 1024 * 1024,
        connection_window: int = 16 * 1024 * 1024,
    ) -> None:
        if connection_window < DEFAULT_WINDOW:
            # HTTP/2 can only open the connection's window wider, never start it smaller.
            raise ValueError(f"connection_window must be at least {DEFAULT_WINDOW}")
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.connection = h2.connection.H2Connection(config)
        self.wire = H2Wire(self.connection, stream)
        self.stream = stream
        self.stream_window = stream_window
        self.connection_window = connection_window
        self._exchanges: dict[int, Exchange] = {}
        self._settled = asyncio.Event()  # the entrypoint's SETTINGS came (or the end did)
        self._stream_freed = asyncio.Event()
        self._closed: SessionClosed | None = None
        self._receiver: asyncio.Task[None] | None = None

    # -- the session's life ---------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Send the preface and wait for the entrypoint's; SessionClosed if it refuses."""
        self.connection.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.stream_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
            },
        )
        self.connection.initiate_connection()
        if self.connection_window > DEFAULT_WINDOW:
            self.connection.increment_flow_control_window(self.connection_window - DEFAULT_WINDOW)
        self.wire.flush_now()
        self._receiver = asyncio.create_task(self._receive())
        try:
            async with asyncio.timeout(timeout):
                await self._settled.wait()
        except TimeoutError:
            self._fail(SessionClosed(f"the entrypoint did not answer within {timeout:g} s"))
        if self._closed is not None:
            await self.aclose()  # async with never reaches __aexit__ when this raises
            raise self._closed

    async def aclose(self) -> None:
        """Say goodbye (GOAWAY) and close the channel; unfinished requests get SessionClosed."""
        if self._closed is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.connection.close_connection()
            self.wire.flush_now()
            with contextlib.suppress(ConnectionError):
                await self.stream.drain()
            self._fail(SessionClosed("the session was closed by the hub"))
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver
        self.stream.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # -- requests -------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: Body = b"",
    ) -> SessionResponse:
        """Send a request; returns once the response's status and headers are in."""
        await self._free_stream()
        stream_id = self.connection.get_next_available_stream_id()
        exchange = Exchange(stream_id, asyncio.get_running_loop().create_future())
        self._exchanges[stream_id] = exchange
        no_body = isinstance(body, bytes) and not body
        try:
            head = _head(method, path, headers)
            self.connection.send_headers(stream_id, head, end_stream=no_body)
            self.wire.flush()
            if isinstance(body, bytes):
                if body:
                    with contextlib.suppress(StreamGone):  # answered early: see the head
                        await self.wire.send_data(stream_id, body, end_stream=True)
            else:
                exchange.body_sender = asyncio.create_task(self._send_body(stream_id, body))
            status, response_headers = await exchange.head
        except BaseException:  # cancelled (or failed): the entrypoint stops working on it
            self.abandon(exchange)
            raise
        return SessionResponse(self, exchange, status, response_headers)

    async def _send_body(self, stream_id: int, body: AsyncIterable[bytes]) -> None:
        try:
            async for chunk in body:
                await self.wire.send_data(stream_id, chunk)
            await self.wire.send_data(stream_id, b"", end_stream=True)
        except StreamGone:
            pass  # answered or reset meanwhile: the head or the reset tells the caller

    async def _free_stream(self) -> None:
        while True:
            if self._closed is not None:
                raise self._closed
            limit = self.connection.remote_settings.max_concurrent_streams
            if self.connection.open_outbound_streams < limit:
                return
            self._stream_freed.clear()
            await self._stream_freed.wait()

    # -- used by SessionResponse ----------------------------------------------------

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The caller has taken ``size`` bytes: the entrypoint may send that much more."""
        if size and self._closed is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.connection.acknowledge_received_data(size, stream_id)
            self.wire.flush()

    def forget(self, exchange: Exchange) -> None:
        self._exchanges.pop(exchange.stream_id, None)
        while exchange.chunks:
            self.acknowledge(exchange.stream_id, exchange.chunks.popleft()[1])

    def abandon(self, exchange: Exchange) -> None:
        """Stop the stream if it still runs (RST_STREAM CANCEL) and forget it."""
        if exchange.body_sender is not None:
            exchange.body_sender.cancel()
        if self._closed is None and not exchange.ended and exchange.failure is None:
            self.wire.reset(exchange.stream_id, h2.errors.ErrorCodes.CANCEL)
        self.forget(exchange)
        self._stream_freed.set()

    # -- receiving ------------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            while data := await self.stream.read():
                events = self.connection.receive_data(data)
                self._dispatch(events)
                self.wire.flush()
                if self._closed is not None:
                    return
        except h2.exceptions.ProtocolError:
            self.wire.flush_now()  # h2's GOAWAY
            self._fail(SessionClosed("the entrypoint broke the HTTP/2 protocol"))
            return
        except OSError as error:
            self._fail(SessionClosed(f"the channel failed: {error}"))
            return
        except Exception as error:  # a bug here must not leave every request waiting
            self._fail(SessionClosed(f"the session's reader failed ({type(error).__name__})"))
            return
        said = await self.stream.why_closed()
        self._fail(SessionClosed("the session's channel closed" + (f" ({said})" if said else "")))

    def _dispatch(self, events: list[h2.events.Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                self._headed(event.stream_id, event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self._data(event.stream_id, event.data, event.flow_controlled_length)
            elif isinstance(event, h2.events.StreamEnded):
                if exchange := self._exchanges.get(event.stream_id):
                    exchange.ended = True
                    exchange.arrived.set()
                self._stream_freed.set()
            elif isinstance(event, h2.events.StreamReset):
                self._reset(event.stream_id, int(event.error_code or 0))
            elif isinstance(event, h2.events.WindowUpdated):
                self.wire.wake(event.stream_id)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._settled.set()
                self.wire.wake(0)  # the initial window may have changed for every stream
                self._stream_freed.set()  # and the stream limit
            elif isinstance(event, h2.events.ConnectionTerminated):
                code = int(event.error_code or 0)
                self._fail(SessionClosed(f"the entrypoint ended the session (GOAWAY {code})"))

    def _headed(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        exchange = self._exchanges.get(stream_id)
        if exchange is None or exchange.head.done():
            return
        status = next((int(v) for n, v in headers if n == b":status"), 0)
        regular = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers if n[:1] != b":"]
        exchange.head.set_result((status, regular))

    def _data(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        exchange = self._exchanges.get(stream_id)
        if exchange is None:  # abandoned: only give the window back
            self.acknowledge(stream_id, flow_controlled_length)
            return
        exchange.chunks.append((data, flow_controlled_length))
        exchange.arrived.set()

    def _reset(self, stream_id: int, code: int) -> None:
        self.wire.wake(stream_id)
        self._stream_freed.set()
        exchange = self._exchanges.get(stream_id)
        if exchange is None:
            return
        exchange.failure = StreamReset(stream_id, code)
        if not exchange.head.done():
            exchange.head.set_exception(exchange.failure)
        exchange.arrived.set()

    def _fail(self, closed: SessionClosed) -> None:
        """The session is over: every waiting request and reader learns why."""
        if self._closed is not None:
            return
        self._closed = closed
        self.wire.end()
        for exchange in self._exchanges.values():
            if exchange.failure is None and not exchange.ended:
                exchange.failure = closed
            if not exchange.head.done():
                exchange.head.set_exception(closed)
            exchange.arrived.set()
        self._settled.set()
        self._stream_freed.set()


def _head(method: str, path: str, headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    head = [
        (b":method", method.encode("ascii")),
        (b":scheme", b"http"),
        (b":authority", b"saia-entrypoint"),
        (b":path", path.encode("ascii")),
    ]
    for name, value in headers:
        lowered = name.lower()
        if lowered not in HOP_BY_HOP:
            head.append((lowered.encode("ascii"), value.encode("latin-1")))
    return head


class SessionSource(Protocol):
    async def session(self) -> SessionClient:
        """A started session; raises SessionClosed when none can be had."""
        ...


class ReconnectingSession:
    """One session at a time, opened on first use and again after it died."""

    def __init__(self, open_channel: Callable[[], paramiko.Channel]) -> None:
        self._open_channel = open_channel  # blocking (SSH): runs on a worker thread
        self._client: SessionClient | None = None
        self._lock = asyncio.Lock()

    async def session(self) -> SessionClient:
        client = self._client
        if client is not None and not client.closed:
            return client
        async with self._lock:  # one reconnect for all the requests that found it dead
            if self._client is None or self._client.closed:
                try:
                    channel = await asyncio.to_thread(self._open_channel)
                except Exception as error:
                    raise SessionClosed(f"no session channel: {error}") from error
                client = SessionClient(ChannelByteStream(channel))
                await client.start()
                self._client = client
            return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
