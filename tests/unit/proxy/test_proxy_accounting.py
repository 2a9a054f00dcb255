"""What the proxy records: every request served, by user, with the tokens the backend reported."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from saia import recording
from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog
from saia.demand import DemandTracker
from saia.domain.request import Request as RequestAggregate
from saia.projections.accounting import Accounting
from saia.projections.runner import ProjectionRunner
from saia.proxy.app import create_app
from saia.proxy.backend import HttpBackend
from saia.proxy.keys import KeyChecker
from saia.proxy.settings import ProxySettings
from saia.recording import GroupCommitter
from saia.replay.reports import Grouping, report
from saia.replay.source import recorded
from tests.unit.proxy.harness import SERVICE, Proxy, serving
from tests.unit.proxy.test_proxy_keys import Keyring
from tests.unit.test_recording import Outage


def settled_usage(proxy: Proxy, requests: int) -> dict[str, tuple[int, int, int, int]]:
    """Per user: requests, errors, prompt and completion tokens, once all ends are recorded."""
    deadline = time.monotonic() + 5
    while True:
        usage = {key[0]: (u.requests, u.errors, u.prompt_tokens, u.completion_tokens)
                 for key, u in proxy.usage().items()}  # fmt: skip
        if sum(row[0] for row in usage.values()) >= requests or time.monotonic() > deadline:
            return usage
        time.sleep(0.02)


def test_accounting_equals_what_was_sent(ready: Proxy) -> None:
    """Requests and tokens per user in the log equal what the clients were answered."""
    alice, bob = ready.client("alice"), ready.client("bob")
    sent = {"alice": [0, 0, 0], "bob": [0, 0, 0]}
    for _ in range(3):
        answer = alice.chat.completions.create(
            model=SERVICE, messages=[{"role": "user", "content": "count these words"}]
        )
        assert answer.usage is not None
        sent["alice"] = [sent["alice"][0] + 1, sent["alice"][1] + answer.usage.prompt_tokens,
                         sent["alice"][2] + answer.usage.completion_tokens]  # fmt: skip
    # Asked for, the usage chunk comes with the stream; not asked for, the proxy asks for
    # it, and takes it out: the test service counts words, so the text gives the tokens.
    asked = bob.chat.completions.create(
        model=SERVICE, messages=[{"role": "user", "content": "a streamed one"}], stream=True,
        stream_options={"include_usage": True},
    )
    [usage] = [chunk.usage for chunk in asked if chunk.usage is not None]
    sent["bob"] = [1, usage.prompt_tokens, usage.completion_tokens]
    unasked = bob.chat.completions.create(
        model=SERVICE, messages=[{"role": "user", "content": "another streamed one"}],
        stream=True,
    )
    chunks = list(unasked)
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    sent["bob"] = [2, sent["bob"][1] + 3, sent["bob"][2] + len(text.split())]
    embedded = bob.embeddings.create(model=SERVICE, input=["x y z"])
    prompt = embedded.usage.prompt_tokens
    sent["bob"] = [sent["bob"][0] + 1, sent["bob"][1] + prompt, sent["bob"][2]]
    usage = settled_usage(ready, requests=6)
    assert usage == {user: (n, 0, prompt, completion)
                     for user, (n, prompt, completion) in sent.items()}  # fmt: skip


def test_refusals_before_routing_are_not_recorded(ready: Proxy) -> None:
    """Bad requests (404, 400, 413) never reach a backend and leave no Request in the log."""
    httpx.post(f"{ready.url}/v1/completions", json={"model": "nope", "prompt": "x"})
    httpx.post(f"{ready.url}/v1/completions", content=b"[]")
    time.sleep(0.1)
    assert ready.usage() == {}


def test_waiting_request_that_times_out_is_recorded_as_an_error(proxy: Proxy) -> None:
    """A request refused after waiting in the queue is a Rejected request of its user."""
    short = ProxySettings(max_wait_seconds=0.1, poll_interval=0.01, trusted_user_header="x-user")
    recorder = GroupCommitter(proxy.log)
    app = create_app(proxy.hub, DemandTracker(), recorder, HttpBackend(), short, lambda: None)
    with recorder, serving(app) as port:
        body = {"model": SERVICE, "prompt": "x"}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body,
                              headers={"x-user": "carol"})  # fmt: skip
    assert response.status_code == 503
    assert settled_usage(proxy, requests=1) == {"carol": (1, 1, 0, 0)}


def test_unrecordable_request_is_refused_with_503(ready: Proxy) -> None:
    """If the log cannot take the request's events, the request is not served at all."""
    recorder = GroupCommitter(ready.log)
    recorder.close()
    app = create_app(ready.hub, DemandTracker(), recorder, HttpBackend(), ProxySettings(),
                     lambda: None)  # fmt: skip
    with serving(app) as port:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                              json={"model": SERVICE, "prompt": "x"})  # fmt: skip
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "recording_failed"


@pytest.mark.parametrize("buffer", [0, 100])
def test_while_the_store_cannot_write_requests_get_503_or_with_a_buffer_are_served(
    ready: Proxy, monkeypatch: pytest.MonkeyPatch, buffer: int
) -> None:
    """Without store_outage_buffer no request is served unrecorded (503). With it, requests
    are served, their events held in memory (shown in /metrics) and recorded once the
    store writes again."""
    monkeypatch.setattr(recording, "RETRY_FIRST", 0.05)
    outage = Outage(ready.log)
    monkeypatch.setattr(ready.log, "append", outage.append)
    recorder = GroupCommitter(ready.log, hold_limit=buffer)
    settings = ProxySettings(store_outage_buffer=buffer, trusted_user_header="x-user")
    app = create_app(ready.hub, DemandTracker(), recorder, HttpBackend(), settings, lambda: None)
    with recorder, serving(app) as port:
        url = f"http://127.0.0.1:{port}"
        body, user = {"model": SERVICE, "prompt": "x"}, {"x-user": "erin"}
        statuses = [httpx.post(f"{url}/v1/completions", json=body, headers=user).status_code
                    for _ in range(3)]  # fmt: skip
        held = httpx.get(f"{url}/metrics").text.splitlines()
        outage.down = False
        if buffer:
            deadline = time.monotonic() + 10
            while recorder.held_events:
                assert time.monotonic() < deadline, "the held events were not recorded"
                time.sleep(0.01)
    if not buffer:
        assert statuses == [503, 503, 503]
        assert ready.usage() == {}
        return
    assert statuses == [200, 200, 200]
    assert "saia_held_events 6" in held
    assert settled_usage(ready, requests=3)["erin"][:2] == (3, 0)  # served, none lost


@pytest.mark.parametrize("user_header", ["", "x-user"])
def test_user_comes_from_the_trusted_header_only_when_configured(
    ready: Proxy, user_header: str
) -> None:
    """Without a trusted header setting every request is the anonymous user's."""
    settings = ProxySettings(trusted_user_header=user_header)
    recorder = GroupCommitter(ready.log)
    app = create_app(ready.hub, DemandTracker(), recorder, HttpBackend(), settings, lambda: None)
    with recorder, serving(app) as port:
        httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                   json={"model": SERVICE, "prompt": "x"}, headers={"x-user": "dave"})  # fmt: skip
    expected = "dave" if user_header else "anonymous"
    assert list(settled_usage(ready, requests=1)) == [expected]


def lingering_backend() -> Starlette:
    """A job that streams a whole answer, [DONE] included, then takes a second to end it."""

    async def chat(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield (b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
                   b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n')
            yield (b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
                   b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,'
                   b'"total_tokens":4}}\n\n')  # fmt: skip
            yield b"data: [DONE]\n\n"
            await asyncio.sleep(1.0)

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_a_stream_closed_by_its_client_after_done_is_recorded_as_answered(proxy: Proxy) -> None:
    """The openai client closes a stream as soon as it reads [DONE]: when the job ends its
    body later, the answer is still recorded with the job's status and tokens, not as 499."""
    with serving(lingering_backend()) as port:
        proxy.hub.add_job(SERVICE, port)
        stream = proxy.client("dora").chat.completions.create(
            model=SERVICE, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert [chunk.usage for chunk in stream if chunk.usage is not None] == []  # unasked
        assert settled_usage(proxy, requests=1) == {"dora": (1, 0, 3, 1)}


# Behind Kong, as SAIA's hub runs: the user's id, consumer groups and portal in headers.
KONG = ProxySettings(trusted_user_header="x-consumer-custom-id",
                     trusted_groups_header="x-consumer-groups",
                     trusted_portal_header="inference-portal")  # fmt: skip


def kong_client(url: str, user: str, groups: str, portal: str) -> openai.OpenAI:
    named = {"x-consumer-custom-id": user, "x-consumer-groups": groups, "inference-portal": portal}
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", default_headers=named,
                         max_retries=0)  # fmt: skip


def groups_started(log: EventLog) -> set[tuple[str, str, str, str]]:
    started = (r.event for r in recorded(log))
    return {(e.user, e.org, e.unit, e.portal)
            for e in started if isinstance(e, RequestAggregate.Started)}  # fmt: skip


def accounting_by(log: EventLog, grouping: Grouping) -> list[tuple[str, str, int]]:
    """(org, key, requests) per row of the report, built from the log apart."""
    db, accounting = ProjectionDb.scratch(), Accounting()
    try:
        ProjectionRunner(log, db, [accounting]).catch_up()
        return [(r.org, r.key, r.requests) for r in report(db, accounting, grouping)]
    finally:
        db.close()


def test_the_gateways_groups_reach_the_recorded_requests_and_the_report(ready: Proxy) -> None:
    """The organisation, unit and portal the trusted gateway names are recorded with each
    request, and saia-replay accounting counts them by org, unit and portal."""
    recorder = GroupCommitter(ready.log)
    app = create_app(ready.hub, DemandTracker(), recorder, HttpBackend(), KONG, lambda: None)
    with recorder, serving(app) as port:
        url = f"http://127.0.0.1:{port}"
        for user, groups, portal in [("u1", "org_GWDG, orgunit_AI", "chat-ai"),
                                     ("u1", "org_GWDG, orgunit_AI", "api"),
                                     ("u2", "users,org_UGOE,orgunit_AI", "chat-ai")]:
            kong_client(url, user, groups, portal).chat.completions.create(
                model=SERVICE, messages=[{"role": "user", "content": "hi"}])
        refused = httpx.post(f"{url}/v1/completions", json={"model": SERVICE, "prompt": "x"},
                             headers={"x-consumer-custom-id": "u3",
                                      "x-consumer-groups": "org_" + "x" * 300})  # fmt: skip
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "invalid_identity")
    assert sum(n for n, *_ in settled_usage(ready, requests=3).values()) == 3
    assert groups_started(ready.log) == {("u1", "GWDG", "AI", "chat-ai"),
                                         ("u1", "GWDG", "AI", "api"),
                                         ("u2", "UGOE", "AI", "chat-ai")}  # fmt: skip
    assert accounting_by(ready.log, Grouping.ORG) == [("", "GWDG", 2), ("", "UGOE", 1)]
    assert accounting_by(ready.log, Grouping.UNIT) == [("GWDG", "AI", 2), ("UGOE", "AI", 1)]
    assert accounting_by(ready.log, Grouping.PORTAL) == [("", "api", 1), ("", "chat-ai", 2)]


def test_untrusted_deployments_ignore_the_group_headers(ready: Proxy) -> None:
    """Where no gateway is trusted (anonymous users) or keys name the user, headers naming
    a user, organisation, unit or portal are not believed: none is recorded."""
    keyring = Keyring()
    keyed = ProxySettings(require_api_key=True, trusted_user_header="x-consumer-custom-id",
                          trusted_groups_header="x-consumer-groups",
                          trusted_portal_header="inference-portal")  # fmt: skip
    anonymous = ProxySettings(trusted_groups_header="x-consumer-groups",
                              trusted_portal_header="inference-portal")  # fmt: skip
    for settings in (anonymous, keyed):
        recorder = GroupCommitter(ready.log)
        checker = KeyChecker(lambda: keyring.projection.keys)
        app = create_app(ready.hub, DemandTracker(), recorder, HttpBackend(), settings,
                         lambda: None, checker)  # fmt: skip
        with recorder, serving(app) as port:
            httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                       json={"model": SERVICE, "prompt": "x"},
                       headers={"authorization": f"Bearer {keyring.issue('alice')}",
                                "x-consumer-custom-id": "mallory",
                                "x-consumer-groups": "org_EVIL,orgunit_X",
                                "inference-portal": "forged"}).raise_for_status()  # fmt: skip
    assert groups_started(ready.log) == {("anonymous", "", "", ""), ("alice", "", "", "")}
