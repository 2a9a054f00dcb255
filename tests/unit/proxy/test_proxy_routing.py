"""Routing: least outstanding requests, retries on dead backends, the bounded wait queue."""

from __future__ import annotations

import threading
import time
from uuid import UUID

import httpx
import openai
import pytest
from starlette.types import Receive, Scope, Send

from saia.demand import DemandTracker
from saia.domain.job import Phase
from saia.proxy.app import create_app
from saia.proxy.backend import HttpBackend
from saia.proxy.errors import ProxyError
from saia.proxy.routing import Router
from saia.proxy.settings import ProxySettings
from saia.recording import GroupCommitter
from tests.net import free_port
from tests.unit.proxy.harness import SERVICE, FakeHub, Proxy, serving


def test_router_picks_the_job_with_fewest_outstanding_requests() -> None:
    """Among ready jobs the one with the fewest requests in flight gets the next one."""
    hub = FakeHub()
    hub.add_service(SERVICE)
    first, second = hub.add_job(SERVICE, 1), hub.add_job(SERVICE, 2)
    hub.add_job(SERVICE, 3, phase=Phase.RUNNING)  # not ready: never a target
    router = Router(hub, DemandTracker(), ProxySettings(), lambda: None)
    picked: list[UUID] = []
    for _ in range(4):
        job = router.pick(SERVICE, set())
        assert job is not None
        router.acquire(SERVICE, job, was_waiting=False)
        picked.append(job.id)
    assert sorted(picked) == sorted([first, first, second, second])
    finished = router.pick(SERVICE, set())
    assert finished is not None
    router.release(SERVICE, finished)
    assert router.pick(SERVICE, set()) == finished


def test_full_queue_is_429() -> None:
    """A request beyond the service's wait queue is refused with 429 at once."""
    hub = FakeHub()
    hub.add_service(SERVICE)
    router = Router(hub, DemandTracker(), ProxySettings(max_waiting_per_service=1), lambda: None)
    router.enter_queue(SERVICE)
    with pytest.raises(ProxyError) as refused:
        router.enter_queue(SERVICE)
    assert refused.value.status == 429


def test_dead_backend_is_skipped_before_any_byte_was_sent(ready: Proxy) -> None:
    """A backend that refuses connections is retried on another; every request succeeds."""
    dead = ready.hub.add_job(SERVICE, free_port())
    client = ready.client()
    for _ in range(4):
        answer = client.completions.create(model=SERVICE, prompt="still there?")
        assert answer.choices[0].text
    assert dead in ready.hub.state.services[SERVICE].jobs  # the controller's job to replace


def test_only_dead_backends_is_502(proxy: Proxy) -> None:
    """When every ready backend refuses connections the request fails with 502."""
    proxy.hub.add_job(SERVICE, free_port())
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().completions.create(model=SERVICE, prompt="anyone?")
    assert caught.value.status_code == 502


def test_queue_full_over_http_is_429(proxy: Proxy) -> None:
    """With one waiting slot, a second request for a cold service gets 429 while one waits."""
    settings = ProxySettings(max_waiting_per_service=1, max_wait_seconds=2.0, poll_interval=0.01)
    recorder = GroupCommitter(proxy.log)
    app = create_app(proxy.hub, DemandTracker(), recorder, HttpBackend(), settings, lambda: None)
    with recorder, serving(app) as port:
        url = f"http://127.0.0.1:{port}/v1/completions"
        body = {"model": SERVICE, "prompt": "x"}
        first: list[int] = []

        def wait_first() -> None:
            first.append(httpx.post(url, json=body).status_code)

        waiter = threading.Thread(target=wait_first)
        waiter.start()
        time.sleep(0.3)  # the first request is in the queue by now
        second = httpx.post(url, json=body)
        waiter.join(timeout=5)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "queue_full"
    assert first == [503]


def test_client_leaving_a_stream_ends_its_upstream_request(ready: Proxy) -> None:
    """A client that disconnects mid-stream frees its backend slot and is recorded as 499."""
    body = {"model": SERVICE, "stream": True, "max_tokens": 200,
            "messages": [{"role": "user", "content": " ".join(["word"] * 200)}]}  # fmt: skip
    with httpx.stream("POST", f"{ready.url}/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # leave after the first chunk
    deadline = time.monotonic() + 5
    while not ready.accounting().usage:
        assert time.monotonic() < deadline, "the abandoned request was never recorded"
        time.sleep(0.02)
    [usage] = ready.accounting().usage.values()
    assert usage.requests == 1 and usage.errors == 1


async def breaks_off(scope: Scope, receive: Receive, send: Send) -> None:
    """A job that dies after the first event of its answer."""
    head = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
    raise RuntimeError("the service died mid-answer")


def test_a_stream_the_backend_breaks_off_ends_with_an_error_event(proxy: Proxy) -> None:
    """A stream cut by the job ends with an SSE error event and is recorded as a 502."""
    with serving(breaks_off) as port:
        proxy.hub.add_job(SERVICE, port)
        body = {"model": SERVICE, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line]
    assert lines[0] == "data: {}"
    assert "backend_broke_off" in lines[-1]
    deadline = time.monotonic() + 5
    while not proxy.accounting().usage:
        assert time.monotonic() < deadline, "the broken request was never recorded"
        time.sleep(0.02)
    [usage] = proxy.accounting().usage.values()
    assert usage.requests == 1 and usage.errors == 1
