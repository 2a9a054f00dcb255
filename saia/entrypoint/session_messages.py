"""One stream of a session, as the actions see it: a request in, a reply out.

The connection (saia.entrypoint.session) builds an IncomingRequest from the
stream's HEADERS and feeds its body as DATA frames arrive; an action returns a
Reply whose chunks the connection sends as the peer's windows allow.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from saia.protocol import exits
from saia.protocol.session import EXIT_CODE_HEADER, STATUS_OF_EXIT

Header = tuple[bytes, bytes]



class RequestFailed(Exception):
    """The stream's answer is an error; the session goes on."""

    def __init__(self, status: int, message: str, exit_code: int = exits.REFUSED) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.exit_code = exit_code

    @classmethod
    def from_exit(cls, exit_code: int, message: str) -> RequestFailed:
        return cls(STATUS_OF_EXIT.get(exit_code, 500), message, exit_code)

    def reply(self) -> Reply:
        body = json.dumps({"error": self.message, "exit_code": self.exit_code}).encode() + b"\n"
        headers = [
            (b"content-type", b"application/json"),
            (EXIT_CODE_HEADER.encode(), str(self.exit_code).encode()),
        ]
        if self.exit_code == exits.TEMPORARY:
            headers.append((b"retry-after", b"1"))
        return Reply.whole(self.status, headers, body)


class BodyTooLarge(Exception):
    """The request body outgrew its limit."""


class BodyAborted(Exception):
    """The stream was reset, or the session ended, before the body was whole."""


class RequestBody:
    """The DATA of one stream, handed on as it arrives; flow control credited as it is taken."""

    def __init__(self, acknowledge: Callable[[int], None]) -> None:
        self._acknowledge = acknowledge  # gives the peer window back for bytes taken
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._ended = False
        self._aborted = False
        self._arrived = asyncio.Event()

    # -- fed by the connection ----------------------------------------------------

    def feed(self, data: bytes, flow_controlled_length: int) -> None:
        self._chunks.append((data, flow_controlled_length))
        self._arrived.set()

    def end(self) -> None:
        self._ended = True
        self._arrived.set()

    def abort(self) -> None:
        """The stream was reset or the session ended: no more body will come."""
        self._aborted = True
        self._arrived.set()

    def release(self) -> None:
        """Credit back what was never taken, so the connection's window is not lost."""
        while self._chunks:
            self._acknowledge(self._chunks.popleft()[1])

    # -- taken by an action -------------------------------------------------------

    @property
    def complete(self) -> bool:
        """All of the body has arrived (often already with the headers)."""
        return self._ended

    async def chunks(self, limit: int) -> AsyncIterator[bytes]:
        size = 0
        while True:
            while self._chunks:
                data, length = self._chunks.popleft()
                self._acknowledge(length)
                size += len(data)
                if size > limit:
                    raise BodyTooLarge(f"the request body is larger than {limit} bytes")
                yield data
            if self._ended:
                return
            if self._aborted:
                raise BodyAborted
            self._arrived.clear()
            await self._arrived.wait()

    async def read(self, limit: int) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(limit)])


@dataclass(frozen=True)
class IncomingRequest:
    stream_id: int
    method: str
    path: str  # the :path, query included
    headers: list[Header]  # without the pseudo-headers
    body: RequestBody


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[Header]
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]] = field(default=_nothing)  # frees upstream resources

    @classmethod
    def whole(cls, status: int, headers: list[Header], body: bytes) -> Reply:
        return cls(status, [*headers, (b"content-length", str(len(body)).encode())], _once(body))


async def _once(body: bytes) -> AsyncIterator[bytes]:
    if body:
        yield body
