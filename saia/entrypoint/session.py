"""The ``session`` verb: HTTP/2 over the SSH channel, many requests on one process.

sshd starts one entrypoint per channel; a channel per request would start a
Python process on the login node for each one. ``session`` keeps one channel
and one process open instead, and carries every request of the hub on it as
an HTTP/2 stream (h2, sans-IO, on an asyncio loop over stdin and stdout).
What each path does is saia.entrypoint.session_actions'.

- Streams are independent: a refused request answers 4xx on its stream only;
  a stream reset by the hub (RST_STREAM) cancels its work, its request to a
  job included, and the others go on.
- Backpressure: a response is sent no faster than the hub's flow-control
  windows open, and the job is not read from meanwhile; a request body is
  credited back to the hub only as it is passed on.
- At most MAX_CONCURRENT_STREAMS streams at once (the SETTINGS the hub obeys).
- The session ends, with exit 0, when the hub closes the channel (or sends
  GOAWAY); a hub that breaks the HTTP/2 protocol is refused with exit 65.

Nothing is logged: no header, body or path of a request leaves this process
except towards the job it is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, BinaryIO

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from saia.entrypoint.context import Context
from saia.entrypoint.refusal import Refusal
from saia.entrypoint.session_actions import SessionActions
from saia.entrypoint.session_messages import (
    BodyAborted,
    BodyTooLarge,
    IncomingRequest,
    Reply,
    RequestBody,
    RequestFailed,
)
from saia.entrypoint.session_stdio import open_stdio
from saia.protocol import exits
from saia.protocol.h2_wire import ByteStream, H2Wire, StreamGone

MAX_CONCURRENT_STREAMS = 100
# Request bodies in flight: per stream, and for all streams together (memory bound).
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 8 * 1024 * 1024
DEFAULT_WINDOW = 65535  # HTTP/2's initial window, before any WINDOW_UPDATE

Respond = Callable[[IncomingRequest], Awaitable[Reply]]


def serve_session(context: Context, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Serve the hub's streams on stdin and stdout until it closes the channel."""
    return asyncio.run(_serve(context, stdin, stdout))


async def _serve(context: Context, stdin: BinaryIO, stdout: BinaryIO) -> int:
    asyncio.get_running_loop().set_exception_handler(_report_quietly)
    stream = await open_stdio(stdin, stdout)
    actions = SessionActions(context)
    try:
        return await SessionServer(stream, actions.respond).run()
    finally:
        await actions.aclose()
        stream.close()


def _report_quietly(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # asyncio's own handler logs the exception's message and the task's repr, either of
    # which may quote a request: only the kind of failure reaches stderr (the hub).
    error = context.get("exception")
    kind = type(error).__name__ if error is not None else "error"
    with contextlib.suppress(OSError):
        print(f"saia-entrypoint: session: unexpected {kind}", file=sys.stderr, flush=True)


class SessionServer:
    """The server end of one HTTP/2 connection: one task per stream."""

    def __init__(self, stream: ByteStream, respond: Respond) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.connection = h2.connection.H2Connection(config)
        self.wire = H2Wire(self.connection, stream)
        self.stream = stream
        self.respond = respond
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._bodies: dict[int, RequestBody] = {}

    async def run(self) -> int:
        self._start()
        try:
            while data := await self._read():
                try:
                    events = self.connection.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.wire.flush_now()  # the GOAWAY h2 has prepared
                    with contextlib.suppress(ConnectionError):
                        await self.stream.drain()
                    raise Refusal("the hub broke the HTTP/2 protocol", exits.BAD_DATA) from None
                goaway = self._dispatch(events)
                self.wire.flush()
                if goaway:
                    break
            return exits.OK
        finally:
            await self._stop()

    def _start(self) -> None:
        # Settings before the preface is sent, so the first SETTINGS frame carries them.
        self.connection.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
            },
        )
        self.connection.initiate_connection()
        self.connection.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.wire.flush()

    async def _read(self) -> bytes:
        try:
            return await self.stream.read()
        except ConnectionError:
            return b""  # the hub went away: the same as closing the channel

    def _dispatch(self, events: list[h2.events.Event]) -> bool:
        """Act on the events; True once the hub has said goodbye (GOAWAY)."""
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._open(event.stream_id, event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self._data(event.stream_id, event.data, event.flow_controlled_length)
            elif isinstance(event, h2.events.StreamEnded):
                if body := self._bodies.get(event.stream_id):
                    body.end()
            elif isinstance(event, h2.events.StreamReset):
                self._reset_by_hub(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                self.wire.wake(event.stream_id)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.wire.wake(0)  # the initial window may have changed for every stream
            elif isinstance(event, h2.events.ConnectionTerminated):
                return True
        return False

    def _open(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        # h2 has checked the pseudo-headers: :method and :path are there, once each.
        pseudo = {name: value for name, value in headers if name.startswith(b":")}
        body = RequestBody(partial(self._acknowledge, stream_id))
        request = IncomingRequest(
            stream_id=stream_id,
            method=pseudo.get(b":method", b"").decode("ascii", "replace"),
            path=pseudo.get(b":path", b"").decode("ascii", "replace"),
            headers=[(n, v) for n, v in headers if not n.startswith(b":")],
            body=body,
        )
        self._bodies[stream_id] = body
        task = asyncio.create_task(self._serve_stream(request))
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _: self._forget(stream_id))

    def _data(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        body = self._bodies.get(stream_id)
        if body is None:  # its request is answered already: only give the window back
            self._acknowledge(stream_id, flow_controlled_length)
        else:
            body.feed(data, flow_controlled_length)

    def _reset_by_hub(self, stream_id: int) -> None:
        task = self._tasks.get(stream_id)
        if task is not None:
            task.cancel()  # and with it the request to the job, if one is under way
        if body := self._bodies.get(stream_id):
            body.abort()
        self.wire.wake(stream_id)

    def _acknowledge(self, stream_id: int, size: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.acknowledge_received_data(size, stream_id)
        self.wire.flush()

    def _forget(self, stream_id: int) -> None:
        self._tasks.pop(stream_id, None)
        body = self._bodies.pop(stream_id, None)
        if body is not None:
            body.release()

    async def _serve_stream(self, request: IncomingRequest) -> None:
        try:
            reply = await self._reply(request)
            try:
                await self._send(request.stream_id, reply)
            finally:
                await reply.close()
        except StreamGone:
            pass  # reset by the hub, or the session is ending: nobody to answer

    async def _reply(self, request: IncomingRequest) -> Reply:
        try:
            return await self.respond(request)
        except RequestFailed as failed:
            return failed.reply()
        except BodyTooLarge as error:  # on any path: the body outgrew that path's limit
            return RequestFailed(413, str(error), exits.BAD_DATA).reply()
        except BodyAborted:
            raise StreamGone(request.stream_id) from None
        except Exception as error:  # a bug answers its own stream with 500; the others go on
            # Only the type: a message might quote part of the request.
            message = f"internal error ({type(error).__name__})"
            return RequestFailed(500, message, exits.SOFTWARE).reply()

    async def _send(self, stream_id: int, reply: Reply) -> None:
        head = [(b":status", str(reply.status).encode()), *reply.headers]
        try:
            self.connection.send_headers(stream_id, head)
        except h2.exceptions.StreamClosedError:
            raise StreamGone(stream_id) from None
        except h2.exceptions.ProtocolError:  # a header HTTP/2 cannot carry, from the job
            self.wire.reset(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        self.wire.flush()
        try:
            async for chunk in reply.chunks:
                await self.wire.send_data(stream_id, chunk)
        except StreamGone:
            raise
        except Exception:  # the job broke off mid-answer (or a bug)
            # A reset, not an end: the hub must not take a cut body for a whole one.
            self.wire.reset(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        await self.wire.send_data(stream_id, b"", end_stream=True)

    async def _stop(self) -> None:
        self.wire.end()
        for body in self._bodies.values():
            body.abort()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.wire.flush_now()
