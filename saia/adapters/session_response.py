"""A response on a session (saia.adapters.session_client): its body read as it arrives."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self


@dataclass(eq=False)
class Exchange:
    """The client's view of one stream."""

    stream_id: int
    head: asyncio.Future[tuple[int, list[tuple[str, str]]]]
    chunks: deque[tuple[bytes, int]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    failure: Exception | None = None
    body_sender: asyncio.Task[None] | None = None


class ExchangeOwner(Protocol):
    """What a response needs of its client: window credit, and letting go of the stream."""

    def acknowledge(self, stream_id: int, size: int) -> None: ...

    def forget(self, exchange: Exchange) -> None: ...

    def abandon(self, exchange: Exchange) -> None: ...


class SessionResponse:
    """A response whose body arrives as it is read: ``async for chunk in response``."""

    def __init__(
        self,
        client: ExchangeOwner,
        exchange: Exchange,
        status: int,
        headers: list[tuple[str, str]],
    ) -> None:
        self.client = client
        self.status = status
        self.headers = headers
        self._exchange = exchange
        self._done = False

    @property
    def stream_id(self) -> int:
        return self._exchange.stream_id

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def __aiter__(self) -> SessionResponse:
        return self

    async def __anext__(self) -> bytes:
        exchange = self._exchange
        while True:
            while exchange.chunks:
                data, length = exchange.chunks.popleft()
                self.client.acknowledge(exchange.stream_id, length)
                if data:
                    return data
            if exchange.ended:
                self._finish()
                raise StopAsyncIteration
            if exchange.failure is not None:
                self._finish()
                raise exchange.failure
            exchange.arrived.clear()
            try:
                await exchange.arrived.wait()
            except asyncio.CancelledError:
                await self.aclose()
                raise

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Done with the response: an unfinished stream is reset, the rest discarded."""
        if not self._done:
            self._done = True
            self.client.abandon(self._exchange)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _finish(self) -> None:
        self._done = True
        self.client.forget(self._exchange)
