"""How the proxy reaches a job: "send this HTTP request to job J and stream the answer".

The app depends on the Backend Protocol only; the transport is chosen at wiring time:
direct HTTP to node:port (login-node placement, tests) or the SSH session (hub placement).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from saia.domain.state import JobView

Headers = list[tuple[str, str]]


class BackendUnreachable(Exception):
    """Nothing of the request reached the job: safe to retry on another backend."""

    def __init__(self, job: JobView, reason: str) -> None:
        super().__init__(f"job {job.id} at {job.node}:{job.port} is unreachable: {reason}")
        self.job = job
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


class HttpBackend:
    """Plain HTTP/1.1 to the job's node and port, over pooled keep-alive connections."""

    def __init__(self, connect_timeout: float = 5.0, max_connections: int = 1000) -> None:
        # No read timeout: a generation may think for minutes before its first token.
        timeout = httpx.Timeout(None, connect=connect_timeout)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=200)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits)

    async def send(
        self, job: JobView, method: str, path: str, headers: Headers, body: bytes
    ) -> UpstreamResponse:
        url = f"http://{job.node}:{job.port}{path}"
        request = self._client.build_request(method, url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise BackendUnreachable(job, str(error) or type(error).__name__) from error
        return UpstreamResponse(
            status=response.status_code,
            headers=[(k, v) for k, v in response.headers.multi_items()],
            chunks=response.aiter_raw(),
            close=response.aclose,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
