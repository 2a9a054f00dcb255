"""The session's kept HTTP/1.1 connections to jobs, against a job scripted byte by byte."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import pytest

from saia.entrypoint.upstream import (
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# What the job does with each request it reads, by its number on the connection:
# send bytes (and keep the connection), close without answering, or stay silent.
Script = Callable[[int, int], Awaitable[bytes | None]]


@dataclass
class Job:
    connections: int = 0
    requests: list[h11.Request] = field(default_factory=list)


@asynccontextmanager
async def job(script: Script) -> AsyncIterator[tuple[Job, int]]:
    seen = Job()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        connection_number = seen.connections
        parser = h11.Connection(h11.SERVER)
        for number in range(1, 100):
            event = parser.next_event()
            while event is h11.NEED_DATA:
                parser.receive_data(await reader.read(65536))
                event = parser.next_event()
            if not isinstance(event, h11.Request):
                break
            seen.requests.append(event)
            while not isinstance(event, h11.EndOfMessage):
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    parser.receive_data(await reader.read(65536))
            answer = await script(connection_number, number)
            if answer is None:
                break
            writer.write(answer)
            await writer.drain()
            parser = h11.Connection(h11.SERVER)  # one reply per request, parsed afresh
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield seen, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def get(pool: UpstreamPool, port: int, method: str = "GET", body: bytes = b"") -> bytes:
    response = await pool.request("127.0.0.1", port, method, "/x", [], body)
    return b"".join([chunk async for chunk in response.chunks()])


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_one_connection_serves_request_after_request() -> None:
    """Sequential requests to a job reuse one kept connection."""

    async def always_ok(connection: int, number: int) -> bytes:
        return OK

    async def scenario() -> None:
        async with job(always_ok) as (seen, port):
            pool = UpstreamPool(connect_timeout=1, idle_timeout=1)
            assert [await get(pool, port) for _ in range(5)] == [b"ok"] * 5
            assert seen.connections == 1
            await pool.aclose()

    run(scenario)


def test_a_connection_the_job_closed_while_idle_is_not_reused() -> None:
    """A job that closes after each answer gets a new connection per request, unnoticed."""

    async def close_after_answering(connection: int, number: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def scenario() -> None:
        async with job(close_after_answering) as (seen, port):
            pool = UpstreamPool(connect_timeout=1, idle_timeout=1)
            assert [await get(pool, port) for _ in range(3)] == [b"ok"] * 3
            assert seen.connections == 3

    run(scenario)


async def drop_second_request(connection: int, number: int) -> bytes | None:
    """Answer the first request; close on the second, as a job whose keep-alive ran out."""
    return OK if number == 1 else None


def test_an_idempotent_request_on_a_stale_connection_is_sent_again() -> None:
    """A GET whose kept connection closes before any answer is retried once, on a new one."""

    async def scenario() -> None:
        async with job(drop_second_request) as (seen, port):
            pool = UpstreamPool(connect_timeout=1, idle_timeout=1)
            assert await get(pool, port) == b"ok"
            assert await get(pool, port) == b"ok"
            assert seen.connections == 2

    run(scenario)


def test_a_post_on_a_stale_connection_is_not_sent_twice() -> None:
    """A POST whose kept connection closes before any answer fails rather than repeat."""

    async def scenario() -> None:
        async with job(drop_second_request) as (seen, port):
            pool = UpstreamPool(connect_timeout=1, idle_timeout=1)
            assert await get(pool, port, "POST", b"{}") == b"ok"
            with pytest.raises(UpstreamError):
                await get(pool, port, "POST", b"{}")
            assert len(seen.requests) == 2

    run(scenario)


def test_a_silent_job_times_out_and_a_closed_port_is_unreachable() -> None:
    """No answer within idle_timeout is UpstreamTimeout; a refused connect is Unreachable."""

    async def silent(connection: int, number: int) -> bytes:
        await asyncio.sleep(5)
        return OK

    async def scenario() -> None:
        async with job(silent) as (_, port):
            pool = UpstreamPool(connect_timeout=1, idle_timeout=0.2)
            with pytest.raises(UpstreamTimeout):
                await get(pool, port)
        closed = socket.create_server(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()
        with pytest.raises(UpstreamUnreachable):
            await get(UpstreamPool(connect_timeout=1, idle_timeout=1), closed_port)

    run(scenario)


def test_requests_carry_the_jobs_host_and_their_body_framing() -> None:
    """Host is the job's address; a bytes body goes with its Content-Length."""

    async def always_ok(connection: int, number: int) -> bytes:
        return OK

    async def scenario() -> None:
        async with job(always_ok) as (seen, port):
            pool = UpstreamPool(connect_timeout=1, idle_timeout=1)
            response = await pool.request(
                "127.0.0.1", port, "POST", "/x", [(b"host", b"hub"), (b"x-a", b"1")], b"abc"
            )
            assert response.status == 200
            await response.aclose()
            headers = dict(seen.requests[0].headers)
            assert headers[b"host"] == f"127.0.0.1:{port}".encode()
            assert (headers[b"content-length"], headers[b"x-a"]) == (b"3", b"1")

    run(scenario)
