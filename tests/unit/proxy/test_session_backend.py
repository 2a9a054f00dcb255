"""The proxy's backend over an in-process entrypoint session (HTTP/2 on a socket pair)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from uuid import uuid4

import pytest

from saia.adapters.session_client import SessionClient, SessionClosed
from saia.domain.job import Phase
from saia.domain.state import JobView
from saia.proxy.backend import AnswerBroken, BackendUnreachable, LinkDown, RequestRefused
from saia.proxy.session_backend import SessionBackend
from tests.net import free_port
from tests.unit.test_session import run, session


class NoSession:
    async def session(self) -> SessionClient:
        raise AssertionError("the session was asked for")


class LostSession:
    async def session(self) -> SessionClient:
        raise SessionClosed("no session channel: the link is down")


class GivenSession:
    def __init__(self, client: SessionClient) -> None:
        self.client = client

    async def session(self) -> SessionClient:
        return self.client


def job_view(slurm_job_id: str) -> JobView:
    # Node and port are the entrypoint's business: it reads them from Slurm.
    return JobView(id=uuid4(), service="testsvc", token="t", port=1, phase=Phase.READY,
                   requested_at=time.time(), walltime=600.0, slurm_job_id=slurm_job_id)  # fmt: skip


def test_a_request_reaches_the_job_through_the_session(tmp_path: Path) -> None:
    """The request goes to /jobs/<id>/http/<path> and the job's own answer comes back."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            backend = SessionBackend(GivenSession(s.client))
            headers = [("content-type", "application/json")]
            upstream = await backend.send(job_view(s.job_id), "POST", "/echo", headers, b"{}")
            body = b"".join([chunk async for chunk in upstream.chunks])
            await upstream.close()
            assert upstream.status == 200
            assert json.loads(body)["method"] == "POST" and json.loads(body)["size"] == 2

    run(scenario)


@pytest.mark.parametrize("case", ["not saia's running job", "port refuses connections"])
def test_an_unreachable_job_is_retryable(tmp_path: Path, case: str) -> None:
    """When the entrypoint cannot reach the job, the proxy may try another backend."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            job_id = s.job_id
            if case == "not saia's running job":
                job_id = "424242"
            else:
                s.slurm.queue[job_id].port = free_port()
            backend = SessionBackend(GivenSession(s.client))
            with pytest.raises(BackendUnreachable):
                await backend.send(job_view(job_id), "POST", "/echo", [], b"{}")

    run(scenario)


def test_a_job_without_slurm_id_is_unreachable() -> None:
    """A job not yet known to Slurm cannot be addressed through the session."""

    async def scenario() -> None:
        backend = SessionBackend(NoSession())
        with pytest.raises(BackendUnreachable):
            await backend.send(job_view(""), "GET", "/health", [], b"")

    run(scenario)


def test_no_session_is_a_link_down_that_blames_no_job() -> None:
    """Without a session no job can be reached, and none is at fault: LinkDown."""

    async def scenario() -> None:
        backend = SessionBackend(LostSession())
        with pytest.raises(LinkDown):
            await backend.send(job_view("4242"), "GET", "/health", [], b"")

    run(scenario)


@pytest.mark.parametrize("path", ["/v1/chat%2Fcompletions", "/v1/../admin", "/v1/a b"])
def test_a_request_the_entrypoint_refuses_is_the_clients_error(tmp_path: Path, path: str) -> None:
    """A path the entrypoint does not accept is a refusal of the request (4xx), not a job
    that cannot be reached: no job is blamed for it."""

    async def scenario() -> None:
        async with session(tmp_path) as s:
            backend = SessionBackend(GivenSession(s.client))
            with pytest.raises(RequestRefused) as refused:
                await backend.send(job_view(s.job_id), "POST", path, [], b"{}")
            assert 400 <= refused.value.status < 500

    run(scenario)


def test_the_entrypoints_reasons_never_reach_the_client(tmp_path: Path) -> None:
    """A job gone silent is the entrypoint's 504 naming the job, its node and port: the
    proxy answers from its own words (AnswerBroken), and only its log has the reason."""

    async def scenario() -> None:
        async with session(tmp_path, {"idle_timeout": 0.3}) as s:
            backend = SessionBackend(GivenSession(s.client))
            with pytest.raises(AnswerBroken) as broken:
                await backend.send(job_view(s.job_id), "GET", "/silent", [], b"")
            assert "127.0.0.1" in str(broken.value)  # for the log
            s.backend.gate.set()

    run(scenario)
