"""The session verb in-process: its HTTP/2 server and the hub's client over a socket pair.

Slurm is the in-memory FakeSlurm; the job behind the session is a small ASGI
app served by uvicorn on the test's own event loop, so every test runs in one
loop and needs no cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import uvicorn

from saia.adapters.session_client import SessionClient, SessionClosed, StreamReset
from saia.domain.slurm import SlurmState
from saia.entrypoint.config import EntrypointConfig, ServiceRule
from saia.entrypoint.context import Context
from saia.entrypoint.session import SessionServer, serve_session
from saia.entrypoint.session_actions import SessionActions
from saia.ports import SubmitRequest
from saia.protocol import exits, job_secret
from saia.protocol.h2_wire import AsyncioByteStream
from tests.fakes import FakeClock, FakeLoginSlurm, FakeSlurm

TOKEN = "0123456789abcdef"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Backend:
    """A job's service: echo, a gated event stream, an endless stream, a large body."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    produced: int = 0  # bytes of /large handed to the server so far

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/echo":
            await self._echo(scope, receive, send)
        elif path == "/gated":
            await self._stream(send, self._gated())
        elif path == "/silent":
            await self.gate.wait()  # no answer at all until the test opens the gate
        elif path == "/endless":
            await self._stream(send, self._endless(receive))
        elif path == "/large":
            await self._stream(send, self._large(int(scope["query_string"] or b"0")))
        elif path == "/broken":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"half", "more_body": True})
            raise RuntimeError("the service died mid-answer")
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"nothing here"})

    async def _echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        echoed = {
            "method": scope["method"],
            "query": scope["query_string"].decode(),
            "headers": headers,
            "size": size,
            "sha256": digest.hexdigest(),
        }
        body = json.dumps(echoed).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, send: Send, chunks: AsyncIterator[bytes]) -> None:
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _gated(self) -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await self.gate.wait()  # opened by the test once the first event has reached it
        yield b"data: second\n\n"

    async def _endless(self, receive: Receive) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(0.02):
                    if (await receive())["type"] == "http.disconnect":
                        self.disconnected.set()
                        return
            except TimeoutError:
                yield b"data: tick\n\n"

    async def _large(self, size: int) -> AsyncIterator[bytes]:
        piece = bytes(range(256)) * 256  # 64 KiB
        while self.produced < size:
            self.produced += len(piece)
            yield piece


@dataclass
class Session:
    client: SessionClient
    slurm: FakeSlurm
    backend: Backend
    job_id: str  # saia's running job, whose batch host and port are the backend's


def entrypoint_context(tmp_path: Path, slurm: FakeSlurm, **changes: Any) -> Context:
    config = EntrypointConfig(
        path=str(tmp_path / "entrypoint.toml"),
        sbatch_dir=str(tmp_path),
        state_dir=str(tmp_path / "state"),
        services={"testsvc": ServiceRule("testsvc", "testservice.sbatch")},
        # The backend listens on a port the system picks.
        port_min=1024,
        port_max=65535,
        connect_timeout=2.0,
        idle_timeout=10.0,
        probe_timeout=2.0,
        max_body_bytes=64 * 1024 * 1024,
    )
    return Context(
        config=config._replace(**changes),
        read=lambda: b"",
        write=lambda data: None,
        clock=time.time,
        environment={},
        make_slurm=lambda: FakeLoginSlurm(slurm),  # type: ignore[arg-type, return-value]
    )


@asynccontextmanager
async def backend_on_loop(backend: Backend) -> AsyncIterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(backend, log_level="critical", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        await serving


@asynccontextmanager
async def session(
    tmp_path: Path, config: dict[str, Any] | None = None, **client_options: int
) -> AsyncIterator[Session]:
    """A session server and client on a socket pair, and one running job of saia's."""
    backend = Backend()
    async with backend_on_loop(backend) as port:
        slurm = FakeSlurm(FakeClock())
        job_id = slurm.submit(SubmitRequest("testsvc", "testservice.sbatch", 20001, TOKEN, 600.0))
        slurm.start_pending()
        slurm.queue[job_id].host = "127.0.0.1"
        slurm.queue[job_id].port = port  # the job listens where the backend does
        hub_end, login_end = socket.socketpair()
        actions = SessionActions(entrypoint_context(tmp_path, slurm, **(config or {})))
        server = SessionServer(
            AsyncioByteStream(*await asyncio.open_connection(sock=login_end)), actions.respond
        )
        serving = asyncio.create_task(server.run())
        client = SessionClient(
            AsyncioByteStream(*await asyncio.open_connection(sock=hub_end)), **client_options
        )
        await client.start()
        try:
            yield Session(client, slurm, backend, job_id)
        finally:
            await client.aclose()
            assert await asyncio.wait_for(serving, 5) == exits.OK
            await actions.aclose()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


# -- many requests on one session ----------------------------------------------------


def test_many_concurrent_requests_each_get_their_own_answer(tmp_path: Path) -> None:
    """Fifty concurrent forwarded requests on one session each get the answer to their own."""

    async def scenario() -> None:
        async with session(tmp_path) as s:

            async def one(i: int) -> dict[str, Any]:
                path = f"/jobs/{s.job_id}/http/echo?i={i}"
                response = await s.client.request("POST", path, [("x-n", str(i))], b"x" * i)
                assert response.status == 200
                echoed: dict[str, Any] = json.loads(await response.read())
                return echoed

            echoes = await asyncio.gather(*(one(i) for i in range(50)))
            assert [e["query"] for e in echoes] == [f"i={i}" for i in range(50)]
            assert [e["headers"]["x-n"] for e in echoes] == [str(i) for i in range(50)]
            assert [e["size"] for e in echoes] == list(range(50))

    run(scenario)


def test_the_jobs_path_answers_one_json_line_per_job(tmp_path: Path) -> None:
    """GET /slurm/jobs answers one JSON line per saia job."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            response = await s.client.request("GET", "/slurm/jobs")
            lines = (await response.read()).splitlines()
            assert response.status == 200
            assert [json.loads(line)["job_id"] for line in lines] == [s.job_id]
            assert json.loads(lines[0])["state"] == "RUNNING"

    run(scenario)


def test_submit_and_cancel_change_the_queue(tmp_path: Path) -> None:
    """POST /slurm/submit starts a job (a retry finds the same one); cancel ends it."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            fields = {"service": "testsvc", "port": 20002, "token": "fedcba9876543210"}
            order = json.dumps(fields).encode()
            submitted = await s.client.request("POST", "/slurm/submit", body=order)
            job_id = (await submitted.read()).decode().strip()
            assert submitted.status == 200 and s.slurm.queue[job_id].port == 20002
            again = await s.client.request("POST", "/slurm/submit", body=order)
            assert (await again.read()).decode().strip() == job_id
            cancelled = await s.client.request("POST", f"/slurm/cancel/{job_id}")
            await cancelled.read()
            assert cancelled.status == 200
            assert s.slurm.queue[job_id].state is SlurmState.CANCELLED

    run(scenario)


def test_probe_reports_the_jobs_health(tmp_path: Path) -> None:
    """GET /jobs/<id>/probe?path=... answers whether the job gives that path a 2xx."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            found = await s.client.request("GET", f"/jobs/{s.job_id}/probe?path=/echo")
            missing = await s.client.request("GET", f"/jobs/{s.job_id}/probe?path=/nothing")
            assert json.loads(await found.read())["ok"] is True
            assert json.loads(await missing.read())["error"] == "HTTP 404"

    run(scenario)


@pytest.mark.parametrize(
    ("path", "size"),
    [("/slurm/submit", 4097), ("/jobs/{job}/http/echo", 1001), ("/jobs/{job}/http/echo", 10**6)],
)
def test_an_oversized_body_is_a_413_on_every_path(tmp_path: Path, path: str, size: int) -> None:
    """Over a path's limit (4 KiB for a submit, max_body_bytes for a job), 413, never 500."""

    async def scenario() -> None:
        async with session(tmp_path, {"max_body_bytes": 1000}) as s:
            refused = await s.client.request("POST", path.format(job=s.job_id), body=b"x" * size)
            assert (refused.status, refused.header("saia-exit-code")) == (413, "65")
            assert "larger than" in json.loads(await refused.read())["error"]
            ok = await s.client.request("POST", f"/jobs/{s.job_id}/http/echo", body=b"x" * 1000)
            assert ok.status == 200  # the session goes on

    run(scenario)


def test_a_port_outside_the_login_nodes_range_is_not_submitted(tmp_path: Path) -> None:
    """A submit for a port outside the configured range is refused, and nothing runs."""

    async def scenario() -> None:
        async with session(tmp_path, {"port_min": 20000, "port_max": 20999}) as s:
            fields = {"service": "testsvc", "port": 21000, "token": "fedcba9876543210"}
            order = json.dumps(fields).encode()
            refused = await s.client.request("POST", "/slurm/submit", body=order)
            assert refused.status == 403
            assert "outside 20000-20999" in json.loads(await refused.read())["error"]
            assert len(s.slurm.queue) == 1

    run(scenario)


def test_the_job_gets_its_secret_and_never_the_clients_authorization(tmp_path: Path) -> None:
    """A forwarded request carries the job's Bearer secret in place of the hub's own."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            path = f"/jobs/{s.job_id}/http/echo"
            response = await s.client.request("GET", path, [("authorization", "Bearer user-key")])
            echoed = json.loads(await response.read())
            key = job_secret.load_key(str(tmp_path / "state"))
            assert echoed["headers"]["authorization"] == f"Bearer {job_secret.for_job(key, TOKEN)}"
            assert "user-key" not in json.dumps(echoed)

    run(scenario)


@pytest.mark.parametrize(
    ("config", "refused"),
    [
        ({"port_min": 1024, "port_max": 1025}, "outside the allowed ports"),
        ({"services": {}}, "of a service not allowed here"),
    ],
)
def test_only_jobs_this_login_node_would_start_are_reached(
    tmp_path: Path, config: dict[str, Any], refused: str
) -> None:
    """A job on a port outside the range, or of a service not configured, is not forwarded to."""

    async def scenario() -> None:
        async with session(tmp_path, config) as s:
            for path in (f"/jobs/{s.job_id}/http/echo", f"/jobs/{s.job_id}/probe?path=/echo"):
                response = await s.client.request("GET", path)
                assert response.status == 403
                assert refused in json.loads(await response.read())["error"]

    run(scenario)


# -- streaming, cancellation, backpressure --------------------------------------------


def test_a_streamed_response_arrives_chunk_by_chunk(tmp_path: Path) -> None:
    """The first event reaches the hub while the job has not yet produced the second."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            response = await s.client.request("GET", f"/jobs/{s.job_id}/http/gated")
            assert response.header("content-type") == "text/event-stream"
            events = aiter(response)
            assert await anext(events) == b"data: first\n\n"
            assert not s.backend.gate.is_set()
            s.backend.gate.set()
            assert await anext(events) == b"data: second\n\n"
            assert [chunk async for chunk in events] == []

    run(scenario)


def test_a_cancelled_request_ends_its_upstream_and_no_other(tmp_path: Path) -> None:
    """Cancelling a task reading a stream resets it: the job sees the disconnect, others go on."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            endless = await s.client.request("GET", f"/jobs/{s.job_id}/http/endless")
            gated = await s.client.request("GET", f"/jobs/{s.job_id}/http/gated")
            first = await anext(aiter(gated))

            async def read_forever() -> None:
                async for _ in endless:
                    pass

            reader = asyncio.create_task(read_forever())
            await asyncio.sleep(0.1)
            reader.cancel()
            await asyncio.wait_for(s.backend.disconnected.wait(), 5)
            s.backend.gate.set()
            assert first + await gated.read() == b"data: first\n\ndata: second\n\n"
            after = await s.client.request("GET", f"/jobs/{s.job_id}/http/echo")
            assert after.status == 200

    run(scenario)


def test_a_slow_reader_holds_the_job_back_instead_of_buffering(tmp_path: Path) -> None:
    """With the hub not reading, the job's output stalls near the windows; then all arrives."""
    size = 64 * 1024 * 1024

    async def scenario() -> None:
        async with session(tmp_path, stream_window=65535, connection_window=65535) as s:
            response = await s.client.request("GET", f"/jobs/{s.job_id}/http/large?{size}")
            await asyncio.sleep(0.5)
            stalled = s.backend.produced
            await asyncio.sleep(0.3)
            assert s.backend.produced == stalled  # waiting, not producing
            assert stalled < 16 * 1024 * 1024  # windows and socket buffers, not the body
            received = 0
            async for chunk in response:
                received += len(chunk)
            assert received == size

    run(scenario)


def test_a_large_request_body_streams_through_intact(tmp_path: Path) -> None:
    """A 20 MiB upload, larger than every window, reaches the job whole and in order."""
    body = os.urandom(20 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    async def scenario() -> None:
        async with session(tmp_path) as s:
            headers = [("content-length", str(len(body)))]
            path = f"/jobs/{s.job_id}/http/echo"
            streamed = await s.client.request("POST", path, headers, chunks())
            whole = await s.client.request("POST", path, body=body)
            for response in (streamed, whole):
                echoed = json.loads(await response.read())
                assert (echoed["size"], echoed["sha256"]) == (
                    len(body),
                    hashlib.sha256(body).hexdigest(),
                )

    run(scenario)


def test_a_job_that_breaks_off_resets_its_stream(tmp_path: Path) -> None:
    """A response cut short by the job is a StreamReset for the hub, never a short body."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            response = await s.client.request("GET", f"/jobs/{s.job_id}/http/broken")
            with pytest.raises(StreamReset):
                await response.read()
            assert (await s.client.request("GET", "/slurm/jobs")).status == 200

    run(scenario)


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "exit_code"),
    [
        ("GET", "/no/such/path", b"", 404, exits.REFUSED),
        ("GET", "/slurm/submit", b"", 405, exits.REFUSED),
        ("GET", "/jobs/abc/http/echo", b"", 400, exits.REFUSED),
        ("GET", "/jobs/4000000000/http/echo", b"", 403, exits.NOT_PERMITTED),
        ("GET", "/jobs/{job}/http/../../etc/passwd", b"", 400, exits.REFUSED),
        ("GET", "/jobs/{job}/http/a;b", b"", 400, exits.REFUSED),
        ("TRACE", "/jobs/{job}/http/echo", b"", 405, exits.REFUSED),
        ("POST", "/slurm/cancel/1;reboot", b"", 400, exits.REFUSED),
        ("POST", "/slurm/cancel/4000000000", b"", 403, exits.NOT_PERMITTED),
        ("GET", "/jobs/{job}/probe?path=/../x", b"", 400, exits.REFUSED),
        ("POST", "/slurm/submit", b"not json", 400, exits.BAD_DATA),
        ("POST", "/slurm/submit", b'{"service": "llama", "port": 20003, "token": "%s"}',
         403, exits.NOT_PERMITTED),
        ("POST", "/slurm/submit", b'{"service": "testsvc", "port": 1000, "token": "%s"}',
         400, exits.REFUSED),
        ("POST", "/slurm/submit", b'{"service": "testsvc x", "port": 20003, "token": "%s"}',
         400, exits.REFUSED),
        ("POST", "/slurm/submit", b'{"service": "testsvc", "port": "20003", "token": "%s"}',
         400, exits.REFUSED),
    ],
)  # fmt: skip
def test_refused_requests_get_4xx_on_their_stream_only(
    tmp_path: Path, method: str, path: str, body: bytes, status: int, exit_code: int
) -> None:
    """A refusal answers its stream with a status and its exit code; the session goes on."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            payload = body.replace(b"%s", b"fedcba9876543210")  # a token of no job yet
            refused = await s.client.request(method, path.format(job=s.job_id), body=payload)
            answer = json.loads(await refused.read())
            assert (refused.status, answer["exit_code"]) == (status, exit_code)
            assert refused.header("saia-exit-code") == str(exit_code)
            assert len(s.slurm.queue) == 1  # nothing was submitted
            ok = await s.client.request("GET", f"/jobs/{s.job_id}/http/echo")
            assert ok.status == 200

    run(scenario)


def test_a_job_that_is_not_running_is_not_reached(tmp_path: Path) -> None:
    """A pending job of saia's is refused 403, as forward refuses it."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            pending = s.slurm.submit(
                SubmitRequest("testsvc", "testservice.sbatch", 20005, "aaaaaaaaaaaaaaaa", 60.0)
            )
            response = await s.client.request("GET", f"/jobs/{pending}/http/echo")
            assert response.status == 403
            assert b"not running" in await response.read()

    run(scenario)


# -- the session's ends ------------------------------------------------------------------


def test_the_client_raises_session_closed_when_the_channel_dies(tmp_path: Path) -> None:
    """A dead channel fails the waiting request and every later one with SessionClosed."""

    async def scenario() -> None:
        async with backend_on_loop(Backend()):
            hub_end, login_end = socket.socketpair()
            client = SessionClient(AsyncioByteStream(*await asyncio.open_connection(sock=hub_end)))
            starting = asyncio.create_task(client.start())
            await asyncio.sleep(0.05)
            login_end.close()  # the entrypoint died before it even answered
            with pytest.raises(SessionClosed):
                await starting
            with pytest.raises(SessionClosed):
                await client.request("GET", "/slurm/jobs")
            await client.aclose()

    run(scenario)


async def hub_end_of_pipes(hub_reads: int, hub_writes: int) -> AsyncioByteStream:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    reading = os.fdopen(hub_reads, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), reading)
    writing = os.fdopen(hub_writes, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, writing)
    return AsyncioByteStream(reader, asyncio.StreamWriter(transport, protocol, None, loop))


@pytest.mark.parametrize("channel", ["two pipes", "one socket"])
def test_serve_session_on_stdin_and_stdout_exits_0_when_the_hub_closes(
    tmp_path: Path, channel: str
) -> None:
    """serve_session on sshd's two pipes, or one socket both ways, answers and ends with 0."""
    stdin: BinaryIO
    stdout: BinaryIO
    if channel == "two pipes":
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        stdin, stdout = os.fdopen(stdin_read, "rb", 0), os.fdopen(stdout_write, "wb", 0)
    else:
        hub_socket, login_socket = socket.socketpair()
        # Two descriptors of one socket, as a starter that dup2()s it onto 0 and 1 gives.
        stdin = os.fdopen(os.dup(login_socket.fileno()), "rb", 0)
        stdout = os.fdopen(login_socket.detach(), "wb", 0)
    context = entrypoint_context(tmp_path, FakeSlurm(FakeClock()))
    exit_codes: list[int] = []
    entrypoint = threading.Thread(
        target=lambda: exit_codes.append(serve_session(context, stdin, stdout))
    )
    entrypoint.start()

    async def scenario() -> None:
        if channel == "two pipes":
            hub = await hub_end_of_pipes(stdout_read, stdin_write)
        else:
            hub = AsyncioByteStream(*await asyncio.open_connection(sock=hub_socket))
        async with SessionClient(hub) as client:
            response = await client.request("GET", "/keep-alive")
            assert (response.status, await response.read()) == (200, b"ok\n")

    run(scenario)
    entrypoint.join(timeout=5)
    assert exit_codes == [exits.OK]
