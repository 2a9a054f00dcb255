"""HttpBackend against tiny asyncio servers: pooling, framing, and jobs that close or vanish."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from uuid import uuid4

import pytest

from saia.domain.job import Phase
from saia.domain.state import JobView
from saia.proxy.backend import (
    AnswerBroken,
    BackendUnreachable,
    HttpBackend,
    UpstreamResponse,
    request_head,
)
from tests.net import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def job_at(port: int) -> JobView:
    return JobView(id=uuid4(), service="echo", token="t", port=port, phase=Phase.READY,
                   requested_at=time.time(), walltime=3600.0, node="127.0.0.1")  # fmt: skip


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
    return head + await reader.readexactly(length)


class Server:
    """Counts connections; ``answer`` writes the reply to each request."""

    def __init__(self, answer: Callable[[int], bytes], close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.gone = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                self.requests.append(await read_request(reader))
                writer.write(self.answer(len(self.requests)))
                await writer.drain()
                if self.close_after:
                    break
            writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.gone.set()


async def body_of(upstream: UpstreamResponse) -> bytes:
    body = b"".join([chunk async for chunk in upstream.chunks])
    await upstream.close()
    return body


def run_with(
    server: Server, test: Callable[[HttpBackend, JobView], Awaitable[None]],
    backend_factory: Callable[[], HttpBackend] = HttpBackend,
) -> None:  # fmt: skip
    async def main() -> None:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        backend = backend_factory()
        try:
            await test(backend, job_at(listening.sockets[0].getsockname()[1]))
        finally:
            await backend.aclose()
            listening.close()

    asyncio.run(main())


def test_connections_are_kept_and_reused() -> None:
    """Requests one after another go over one connection, each answer read whole."""
    server = Server(lambda n: OK)

    async def test(backend: HttpBackend, job: JobView) -> None:
        for _ in range(3):
            upstream = await backend.send(job, "POST", "/v1/x", [], b'{"a": 1}')
            assert upstream.status == 200 and await body_of(upstream) == b"{}"

    run_with(server, test)
    assert server.connections == 1 and len(server.requests) == 3
    assert server.requests[0].endswith(b'\r\n\r\n{"a": 1}')
    assert b"content-length: 8\r\n" in server.requests[0].lower()


def test_a_connection_the_job_closed_while_idle_is_replaced() -> None:
    """A job that closes each connection after answering costs a new connection, no error."""
    server = Server(lambda n: OK, close_after=True)

    async def test(backend: HttpBackend, job: JobView) -> None:
        for _ in range(3):
            upstream = await backend.send(job, "POST", "/", [], b"{}")
            assert await body_of(upstream) == b"{}"
            await asyncio.sleep(0.01)  # the close reaches the pool's event loop

    run_with(server, test)
    assert server.connections == 3


def test_a_race_with_the_jobs_idle_close_is_retried_on_a_new_connection() -> None:
    """A kept connection that turns out closed when the request is sent: sent again, once."""
    server = Server(lambda n: OK, close_after=True)

    async def test(backend: HttpBackend, job: JobView) -> None:
        assert await body_of(await backend.send(job, "POST", "/", [], b"{}")) == b"{}"
        # No pause: the pool may still hold the connection the job is closing.
        assert await body_of(await backend.send(job, "POST", "/", [], b"{}")) == b"{}"

    run_with(server, test)
    assert len(server.requests) == 2


def test_chunked_answers_come_chunk_by_chunk() -> None:
    """Each chunk the job sends is its own piece of the body, as it comes."""
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    chunked += b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
    server = Server(lambda n: chunked)

    async def test(backend: HttpBackend, job: JobView) -> None:
        upstream = await backend.send(job, "POST", "/", [], b"{}")
        assert ("transfer-encoding", "chunked") in upstream.headers
        assert [chunk async for chunk in upstream.chunks] == [b"one", b"two"]
        await upstream.close()
        assert await body_of(await backend.send(job, "POST", "/", [], b"{}")) == b"onetwo"

    run_with(server, test)
    assert server.connections == 1


def test_closing_an_unfinished_answer_closes_its_connection() -> None:
    """The job sees the client leave: the connection is not put back half read."""
    endless = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n"
    server = Server(lambda n: endless)

    async def test(backend: HttpBackend, job: JobView) -> None:
        upstream = await backend.send(job, "POST", "/", [], b"{}")
        assert await anext(aiter(upstream.chunks)) == b"one"
        await upstream.close()
        await asyncio.wait_for(server.gone.wait(), 5)

    run_with(server, test)


def test_an_answer_cut_short_raises_while_reading() -> None:
    """A body shorter than its Content-Length is an error, not a short answer."""
    short = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}"
    server = Server(lambda n: short, close_after=True)

    async def test(backend: HttpBackend, job: JobView) -> None:
        upstream = await backend.send(job, "POST", "/", [], b"{}")
        with pytest.raises(AnswerBroken):
            await body_of(upstream)
        await upstream.close()

    run_with(server, test)


def test_nobody_listening_is_unreachable() -> None:
    """A refused connection is BackendUnreachable: nothing of the request reached the job."""

    async def main() -> None:
        backend = HttpBackend()
        with pytest.raises(BackendUnreachable):
            await backend.send(job_at(free_port()), "POST", "/", [], b"{}")

    asyncio.run(main())


def test_at_most_max_connections_at_once() -> None:
    """Beyond max_connections, a request waits until an answer is closed."""
    server = Server(lambda n: OK)

    async def main() -> None:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        backend = HttpBackend(max_connections=1)
        job = job_at(listening.sockets[0].getsockname()[1])
        first = await backend.send(job, "POST", "/", [], b"{}")
        second = asyncio.ensure_future(backend.send(job, "POST", "/", [], b"{}"))
        await asyncio.sleep(0.05)
        assert not second.done()
        assert await body_of(first) == b"{}"
        assert await body_of(await asyncio.wait_for(second, 5)) == b"{}"
        await backend.aclose()
        listening.close()

    asyncio.run(main())


def test_an_answer_without_length_ends_at_the_close_and_its_connection_with_it() -> None:
    """Neither Content-Length nor chunked: the body is all that comes until the job closes."""
    server = Server(lambda n: b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it",
                    close_after=True)  # fmt: skip

    async def test(backend: HttpBackend, job: JobView) -> None:
        assert await body_of(await backend.send(job, "POST", "/", [], b"{}")) == b"all of it"
        assert await body_of(await backend.send(job, "POST", "/", [], b"{}")) == b"all of it"

    run_with(server, test)
    assert server.connections == 2


def test_an_answer_that_is_not_http_is_an_error() -> None:
    """Bytes that are not an HTTP/1.1 answer raise; they are never passed on as one."""
    server = Server(lambda n: b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    async def test(backend: HttpBackend, job: JobView) -> None:
        with pytest.raises(AnswerBroken):
            await backend.send(job, "POST", "/", [], b"{}")

    run_with(server, test)


def test_bytes_after_an_answer_keep_its_connection_from_reuse() -> None:
    """What a job sends beyond its answer must not be read as the next request's answer."""
    server = Server(lambda n: OK + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")

    async def test(backend: HttpBackend, job: JobView) -> None:
        for _ in range(2):
            assert await body_of(await backend.send(job, "POST", "/", [], b"{}")) == b"{}"

    run_with(server, test)
    assert server.connections == 2


def test_an_interim_answer_is_not_the_answer() -> None:
    """A 103 Early Hints before the answer is skipped; the 200 after it is the answer."""
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n"
    server = Server(lambda n: early + OK)

    async def test(backend: HttpBackend, job: JobView) -> None:
        upstream = await backend.send(job, "POST", "/", [], b"{}")
        assert upstream.status == 200
        assert ("content-type", "application/json") in upstream.headers
        assert not any(name == "link" for name, _ in upstream.headers)
        assert await body_of(upstream) == b"{}"
        assert await body_of(await backend.send(job, "POST", "/", [], b"{}")) == b"{}"

    run_with(server, test)
    assert server.connections == 1


def test_the_answer_to_head_is_its_head() -> None:
    """HEAD: the Content-Length tells the size of a body that does not come."""
    server = Server(lambda n: b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")

    async def test(backend: HttpBackend, job: JobView) -> None:
        upstream = await backend.send(job, "HEAD", "/", [], b"")
        assert await asyncio.wait_for(body_of(upstream), 5) == b""

    run_with(server, test)


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("POST", "/v1/x HTTP/1.1\r\nx-evil: 1", []),
        ("POST", "/v1/x", [("accept", "text/plain\r\nx-evil: 1")]),
        ("POST", "/v1/x", [("x evil", "1")]),
        ("GET /admin", "/v1/x", []),
    ],
)
def test_a_request_head_refuses_what_would_break_its_lines(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    """No method, target or header from a client can add a line to the request to a job."""
    with pytest.raises(ValueError):
        request_head(method, target, headers)


def test_a_request_head_is_http_1_1() -> None:
    """The head a job gets: request line, then the fields, then an empty line."""
    head = request_head("POST", "/v1/chat?x=1", [("host", "node1:20001"), ("accept", "*/*")])
    assert head == b"POST /v1/chat?x=1 HTTP/1.1\r\nhost: node1:20001\r\naccept: */*\r\n\r\n"


def test_a_pooled_connection_that_answers_garbage_is_closed() -> None:
    """A broken answer on a reused connection closes it: no socket is left behind."""
    server = Server(lambda n: OK if n == 1 else b"garbage\r\n\r\n")

    async def test(backend: HttpBackend, job: JobView) -> None:
        assert await body_of(await backend.send(job, "POST", "/", [], b"{}")) == b"{}"
        with pytest.raises(AnswerBroken):
            await backend.send(job, "POST", "/", [], b"{}")
        await asyncio.wait_for(server.gone.wait(), 5)  # the job sees the connection closed

    run_with(server, test)


def test_with_job_secrets_each_request_presents_its_jobs() -> None:
    """Login-node placement: the job's secret goes with every request as a Bearer token."""
    server = Server(lambda n: OK)

    async def test(backend: HttpBackend, job: JobView) -> None:
        for _ in range(2):
            await body_of(await backend.send(job, "GET", "/v1/models", [], b""))

    run_with(server, test, lambda: HttpBackend(job_secret=lambda token: f"s3cret-{token}"))
    assert all(b"authorization: Bearer s3cret-t\r\n" in request for request in server.requests)


def test_without_job_secrets_no_authorization_is_sent() -> None:
    """Without secrets (hub placement's entrypoint adds them), the backend adds none."""
    server = Server(lambda n: OK)

    async def test(backend: HttpBackend, job: JobView) -> None:
        await body_of(await backend.send(job, "GET", "/v1/models", [], b""))

    run_with(server, test)
    assert b"authorization" not in server.requests[0].lower()
