"""Routing: least outstanding requests, retries on dead backends and setting them aside,
the bounded wait queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from saia.adapters.store import EventLog
from saia.demand import DemandTracker
from saia.domain.job import Phase
from saia.domain.state import JobView
from saia.proxy.app import create_app
from saia.proxy.backend import (
    AnswerBroken,
    Headers,
    HttpBackend,
    LinkDown,
    RequestRefused,
    UpstreamResponse,
)
from saia.proxy.errors import ProxyError
from saia.proxy.routing import Router
from saia.proxy.settings import ProxySettings
from saia.recording import GroupCommitter
from tests.net import free_port
from tests.unit.proxy.harness import SERVICE, FakeHub, Proxy, serving, waiting_stream_lines


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


def test_a_job_that_refused_a_connection_is_set_aside_for_a_while() -> None:
    """A set-aside job is picked by no request until its pause ends; the controller is woken."""
    hub = FakeHub()
    hub.add_service(SERVICE)
    refused, other = hub.add_job(SERVICE, 1), hub.add_job(SERVICE, 2)
    wakes: list[float] = []
    settings = ProxySettings(unreachable_pause=0.3)
    router = Router(hub, DemandTracker(), settings, lambda: wakes.append(time.monotonic()))
    job = router.pick(SERVICE, {other})
    assert job is not None and job.id == refused
    router.set_aside(job)
    assert len(wakes) == 1
    picked = router.pick(SERVICE, set())
    assert picked is not None and picked.id == other
    assert router.pick(SERVICE, {other}) is None
    time.sleep(0.35)
    back = router.pick(SERVICE, {other})
    assert back is not None and back.id == refused


def chat_in_thread(proxy: Proxy, answers: list[str]) -> threading.Thread:
    def ask() -> None:
        answer = proxy.client().chat.completions.create(
            model=SERVICE, messages=[{"role": "user", "content": "anyone?"}]
        )
        answers.append(answer.choices[0].message.content or "")

    thread = threading.Thread(target=ask)
    thread.start()
    return thread


def recorded(log: EventLog, topic: str) -> list[Any]:
    found = log.recorder.select_notifications(start=1, limit=1000, topics=[topic])
    return [log.mapper.to_domain_event(notification) for notification in found]


def wait_for_wake(proxy: Proxy) -> None:
    deadline = time.monotonic() + 5
    while not proxy.wakes:
        assert time.monotonic() < deadline, "the controller was never woken"
        time.sleep(0.01)


def test_a_request_whose_only_job_refuses_waits_for_one_that_answers(proxy: Proxy) -> None:
    """When every job refuses, the request waits (not 502) and is answered by the next job."""
    dead = proxy.hub.add_job(SERVICE, free_port())
    answers: list[str] = []
    waiter = chat_in_thread(proxy, answers)
    wait_for_wake(proxy)  # the refusal woke the controller to replace the job
    time.sleep(0.2)
    assert not answers, "answered without a job that answers"
    good = proxy.hub.add_job(SERVICE, proxy.backend_port)
    waiter.join(timeout=5)
    assert answers and answers[0].startswith("echo:")
    deadline = time.monotonic() + 5
    while not (finished := recorded(proxy.log, "saia.Request.Finished")):
        assert time.monotonic() < deadline, "the request's end was not recorded"
        time.sleep(0.01)
    assert [(e.status, e.job) for e in finished] == [(200, str(good))]
    assert dead in proxy.hub.state.services[SERVICE].jobs  # the controller's job to end
    metrics = httpx.get(f"{proxy.url}/metrics").text.splitlines()
    assert f'saia_unreachable_backends_total{{service="{SERVICE}"}} 1' in metrics


def test_a_waiting_stream_hears_keepalives_while_its_only_job_refuses(proxy: Proxy) -> None:
    """A stream whose only job refused waits with SSE comments, then streams from the next."""
    proxy.hub.add_job(SERVICE, free_port())
    lines = waiting_stream_lines(proxy, 2, lambda: proxy.hub.add_job(SERVICE, proxy.backend_port))
    assert lines.count(": waiting") >= 2
    assert lines[-1] == "data: [DONE]"


def test_a_job_refusing_again_after_its_pause_ends_in_502(proxy: Proxy) -> None:
    """A request tries at most connect_attempts times, then gets 502 rather than wait on."""
    proxy.hub.add_job(SERVICE, free_port())
    settings = ProxySettings(unreachable_pause=0.05, connect_attempts=3, poll_interval=0.01)
    recorder = GroupCommitter(proxy.log)
    app = create_app(proxy.hub, DemandTracker(), recorder, HttpBackend(), settings, lambda: None)
    with recorder, serving(app) as port:
        started = time.monotonic()
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                            json={"model": SERVICE, "prompt": "anyone?"})  # fmt: skip
        took = time.monotonic() - started
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "backend_unreachable"
    assert 0.1 <= took < 3  # two pauses between three attempts, not max_wait_seconds


class Failing:
    """A backend that raises the same error for every request it is given."""

    def __init__(self, error: Callable[[JobView], Exception]) -> None:
        self.error = error
        self.sent = 0

    async def send(self, job: JobView, method: str, path: str, headers: Headers,
                   body: bytes) -> UpstreamResponse:  # fmt: skip
        self.sent += 1
        raise self.error(job)


def completions_through(proxy: Proxy, backend: Failing, requests: int) -> tuple[
        list[httpx.Response], list[float]]:  # fmt: skip
    """``requests`` completions through a proxy on ``backend``; the answers, and the times
    the controller was woken."""
    wakes: list[float] = []
    recorder = GroupCommitter(proxy.log)
    app = create_app(proxy.hub, DemandTracker(), recorder, backend, ProxySettings(),
                     lambda: wakes.append(time.monotonic()))  # fmt: skip
    with recorder, serving(app) as port:
        url = f"http://127.0.0.1:{port}/v1/completions"
        answers = [httpx.post(url, json={"model": SERVICE, "prompt": "x"})
                   for _ in range(requests)]  # fmt: skip
    return answers, wakes


def test_a_link_down_fails_at_once_and_sets_no_job_aside(proxy: Proxy) -> None:
    """Without the link no job is to blame: 502 at once, no wait, and no job set aside."""
    proxy.hub.add_job(SERVICE, free_port())
    proxy.hub.add_job(SERVICE, free_port())
    backend = Failing(lambda job: LinkDown(job, "the session channel is closed"))
    answers, wakes = completions_through(proxy, backend, 2)
    assert [answer.status_code for answer in answers] == [502, 502]
    assert not any("session channel" in answer.text for answer in answers)  # the link's words
    assert backend.sent == 2  # one try each, and the second still found a job to try
    assert not wakes


def test_a_refused_request_is_the_clients_4xx_and_takes_no_job_offline(proxy: Proxy) -> None:
    """A request refused for itself (a %2F in its path, say) is answered 400 without the
    entrypoint's words; the job is not set aside, the controller not woken, and the next
    request is tried on the same job."""
    proxy.hub.add_job(SERVICE, free_port())
    backend = Failing(lambda job: RequestRefused(
        400, "the path must be a plain /path?query without '..'"))  # fmt: skip
    answers, wakes = completions_through(proxy, backend, 3)
    assert [answer.status_code for answer in answers] == [400, 400, 400]
    assert [answer.json()["error"]["code"] for answer in answers] == ["invalid_request"] * 3
    assert not any("plain /path" in answer.text for answer in answers)
    assert backend.sent == 3  # each tried once, on the job still in service
    assert not wakes


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
    while not ready.usage():
        assert time.monotonic() < deadline, "the abandoned request was never recorded"
        time.sleep(0.02)
    [usage] = ready.usage().values()
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
    while not proxy.usage():
        assert time.monotonic() < deadline, "the broken request was never recorded"
        time.sleep(0.02)
    [usage] = proxy.usage().values()
    assert usage.requests == 1 and usage.errors == 1


class Garbled:
    """A backend whose job answers with something that is not HTTP."""

    async def send(self, job: JobView, method: str, path: str, headers: Headers,
                   body: bytes) -> UpstreamResponse:  # fmt: skip
        raise AnswerBroken("the job's answer is not valid HTTP/1.1")


def test_an_answer_that_is_not_http_is_502_with_an_error_body(proxy: Proxy) -> None:
    """A job that answers garbage gets the client a 502 in OpenAI's shape, not a 500."""
    proxy.hub.add_job(SERVICE, free_port())
    recorder = GroupCommitter(proxy.log)
    app = create_app(proxy.hub, DemandTracker(), recorder, Garbled(), ProxySettings(),
                     lambda: None)  # fmt: skip
    with recorder, serving(app) as port:
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                            json={"model": SERVICE, "prompt": "x"})  # fmt: skip
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "bad_backend_answer"
