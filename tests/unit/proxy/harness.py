"""For proxy tests: servers on free ports in threads, and a hand-fed routing table."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from uuid import UUID, uuid4

import httpx
import openai
import orjson
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog
from saia.domain.job import Phase
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.domain.state import JobView
from saia.projections.accounting import Accounting, Usage, daily_usage
from saia.projections.runner import ProjectionRunner
from saia.projections.service_state import ServiceState
from saia.proxy.settings import ProxySettings
from tests.net import free_socket


class FakeHub:
    """The two things the proxy reads of a Hub; tests play the catalogue with a Service's
    events, and the controller by editing jobs."""

    def __init__(self) -> None:
        self.state = ServiceState()
        self.lock = threading.RLock()
        self._services: dict[str, Service] = {}

    def add_service(self, service: str, aliases: tuple[str, ...] = ()) -> None:
        spec = ServiceSpec(id=service, sbatch="test.sbatch", name=service.title(),
                           aliases=aliases)  # fmt: skip
        self._services[service] = Service.register(spec, datetime.now(UTC))
        self._apply(service)

    def reconfigure(self, service: str, **changes: object) -> None:
        self._services[service].reconfigure(changes, datetime.now(UTC))
        self._apply(service)

    def retire_service(self, service: str) -> None:
        self._services[service].retire(datetime.now(UTC))
        self._apply(service)

    def _apply(self, service: str) -> None:
        with self.lock:
            for event in self._services[service].collect_events():
                self.state.apply(event)

    def add_job(self, service: str, port: int, phase: Phase = Phase.READY) -> UUID:
        job = JobView(id=uuid4(), service=service, token="t", port=port, phase=phase,
                      requested_at=time.time(), walltime=3600.0, node="127.0.0.1",
                      slurm_job_id="1", started_at=time.time())  # fmt: skip
        with self.lock:
            self.state.services[service].jobs[job.id] = job
        return job.id

    def make_ready(self, service: str, job_id: UUID) -> None:
        with self.lock:
            jobs = self.state.services[service].jobs
            jobs[job_id] = replace(jobs[job_id], phase=Phase.READY, ready_at=time.time())


@contextmanager
def serving(app: ASGIApp) -> Iterator[int]:
    """Run the app under uvicorn in a thread; yields its port."""
    sock = free_socket()
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


async def echo_request(scope: Scope, receive: Receive, send: Send) -> None:
    """A job that answers with what it was asked: method, path, query and body (its
    bytes as latin-1, so that any body comes back exactly)."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    answer = orjson.dumps({"method": scope["method"], "path": scope["path"],
                           "raw_path": scope["raw_path"].decode(),
                           "query": scope["query_string"].decode(),
                           "body": body.decode("latin-1")})  # fmt: skip
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": answer})


SERVICE = "echo"
TOKEN_DELAY = 0.05
SETTINGS = ProxySettings(max_body_bytes=4096, max_wait_seconds=5.0, keepalive_interval=0.1,
                         poll_interval=0.01, trusted_user_header="x-user")  # fmt: skip


@dataclass
class Proxy:
    url: str
    hub: FakeHub
    log: EventLog
    backend_port: int
    wakes: list[float] = field(default_factory=list)

    def client(self, user: str = "alice") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused",
                             default_headers={"x-user": user}, max_retries=0)  # fmt: skip

    def usage(self) -> dict[tuple[str, str, str], Usage]:
        """The accounting's daily rows, built from the log in a database apart."""
        db = ProjectionDb.scratch()
        ProjectionRunner(self.log, db, [Accounting()]).catch_up()
        try:
            return daily_usage(db)
        finally:
            db.close()


def waiting_stream_lines(proxy: Proxy, keepalives: int, then: Callable[[], None]) -> list[str]:
    """A streamed chat that waits for a job: after ``keepalives`` SSE comments ``then``
    runs, once (a job becomes ready, say). The answer's non-empty lines."""
    body = {"model": SERVICE, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    lines: list[str] = []
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                lines.append(line)
            if line == ": waiting" and lines.count(line) == keepalives:
                then()
    return lines
