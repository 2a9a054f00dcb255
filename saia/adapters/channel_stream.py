"""A paramiko Channel as a ByteStream for asyncio (saia.adapters.h2_wire).

paramiko is threaded: its Transport thread decrypts packets into the
channel's buffers, and ``fileno()`` is a pipe it keeps readable while stdout
data, stderr data or the end of the channel waits there. Reading waits on that
pipe in the event loop, so no thread of ours sits in ``recv``.

Writing sends at once whatever the SSH window takes. Only when the window is
full (a large body that the login node reads slowly) does the rest go to a
helper thread that may block in ``sendall``; later writes queue behind it so
the bytes keep their order.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

import paramiko

from saia.protocol.h2_wire import READ_CHUNK

STDERR_KEPT = 2000  # characters of the entrypoint's stderr kept to explain an end
EXIT_STATUS_WAIT = 1.0  # seconds to wait for the exit status after the channel's end


class ChannelByteStream:
    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self._readable_fd = channel.fileno()
        self._stderr = bytearray()
        self._backlog: deque[bytes] = deque()
        self._backlog_lock = threading.Lock()
        self._helper: asyncio.Future[None] | None = None  # set while the helper sends
        self._broken: OSError | None = None

    async def read(self) -> bytes:
        while True:
            # The end first: data that came before it is in the buffer by then.
            ended = bool(self.channel.eof_received) or self.channel.closed
            if self.channel.recv_ready():
                return bytes(self.channel.recv(READ_CHUNK))
            self._collect_stderr()
            if ended:
                return b""
            await self._readable()

    def write(self, data: bytes) -> None:
        if self._broken is not None:
            return  # the channel is gone; the reader sees its end and says so
        with self._backlog_lock:
            if self._helper is not None:
                self._backlog.append(data)
                return
        sent = self._send_without_waiting(data)
        if sent < len(data):
            with self._backlog_lock:
                self._backlog.append(data[sent:])
                loop = asyncio.get_running_loop()
                self._helper = loop.run_in_executor(None, self._send_backlog)

    async def drain(self) -> None:
        helper = self._helper
        if helper is not None:
            await asyncio.shield(helper)
        if self._broken is not None:
            raise ConnectionResetError(f"the SSH channel is closed: {self._broken}")

    def close(self) -> None:
        self.channel.close()

    async def why_closed(self) -> str:
        deadline = asyncio.get_running_loop().time() + EXIT_STATUS_WAIT
        while not self.channel.exit_status_ready():
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        self._collect_stderr()
        said = self._stderr.decode("utf-8", "replace").strip()[-STDERR_KEPT:]
        parts = [f"stderr: {said}"] if said else []
        if self.channel.exit_status_ready():
            parts.append(f"exit status {self.channel.recv_exit_status()}")
        return "; ".join(parts)

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        # Level-triggered: watched only while waiting, or buffered data would spin the loop.
        loop.add_reader(self._readable_fd, _resolve, ready)
        try:
            await ready
        finally:
            loop.remove_reader(self._readable_fd)

    def _collect_stderr(self) -> None:
        while self.channel.recv_stderr_ready():
            self._stderr += self.channel.recv_stderr(READ_CHUNK)
            del self._stderr[: -4 * STDERR_KEPT]

    def _send_without_waiting(self, data: bytes) -> int:
        sent = 0
        try:
            while sent < len(data) and self.channel.send_ready():
                sent += self.channel.send(data[sent:])
        except OSError as error:
            self._broken = error
            return len(data)
        return sent

    def _send_backlog(self) -> None:
        """On the helper thread: send the queue in order, waiting for the window as needed."""
        while True:
            with self._backlog_lock:
                if not self._backlog or self._broken is not None:
                    self._backlog.clear()
                    self._helper = None
                    return
                data = self._backlog.popleft()
            try:
                self.channel.sendall(data)
            except OSError as error:
                self._broken = error


def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
