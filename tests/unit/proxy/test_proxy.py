"""The proxy with the official openai client, the test service as the backend, a hand-fed hub."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from saia.demand import DemandTracker
from saia.domain.job import Phase
from saia.domain.state import JobView
from saia.proxy.app import create_app
from saia.proxy.backend import Headers, HttpBackend, UpstreamResponse
from saia.proxy.settings import ProxySettings
from saia.recording import GroupCommitter
from tests.unit.proxy.harness import (
    SERVICE,
    TOKEN_DELAY,
    Proxy,
    echo_request,
    serving,
    waiting_stream_lines,
)


def chat(client: openai.OpenAI, text: str = "hello there") -> str:
    answer = client.chat.completions.create(
        model=SERVICE, messages=[{"role": "user", "content": text}]
    )
    return answer.choices[0].message.content or ""


def test_models_lists_services_with_status_and_demand(ready: Proxy) -> None:
    """/v1/models shows each service with SAIA's fields and whether it can answer now."""
    listing = httpx.get(f"{ready.url}/v1/models").json()
    [entry] = listing["data"]
    assert entry["id"] == SERVICE and entry["object"] == "model"
    assert entry["name"] == "Echo" and entry["owned_by"] == "saia"
    assert entry["input"] == ["text"] and entry["output"] == ["text"]
    assert entry["status"] == "ready" and entry["demand"] == 0
    assert [m.id for m in ready.client().models.list()] == [SERVICE]


def test_models_status_loading_then_offline(proxy: Proxy) -> None:
    """A service with a job on its way is loading; one without jobs is offline."""
    assert httpx.get(f"{proxy.url}/v1/models").json()["data"][0]["status"] == "offline"
    proxy.hub.add_job(SERVICE, proxy.backend_port, phase=Phase.RUNNING)
    assert httpx.get(f"{proxy.url}/v1/models").json()["data"][0]["status"] == "loading"


def test_health(proxy: Proxy) -> None:
    """/health answers without touching any backend."""
    assert httpx.get(f"{proxy.url}/health").json() == {"status": "ok"}


def test_chat_completion(ready: Proxy) -> None:
    """A chat completion goes to the service's job and comes back whole."""
    assert chat(ready.client()) != ""


def test_streaming_chat_arrives_chunk_by_chunk(ready: Proxy) -> None:
    """Streamed chunks reach the client as the backend sends them, not all at the end."""
    stream = ready.client().chat.completions.create(
        model=SERVICE, messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
    )
    arrivals = [time.monotonic() for chunk in stream if chunk.choices]
    assert len(arrivals) >= 4
    spread = arrivals[-1] - arrivals[0]
    assert spread >= (len(arrivals) - 2) * TOKEN_DELAY * 0.8


def test_completion_and_embedding(ready: Proxy) -> None:
    """Completions and embeddings are routed by the body's model like chat."""
    client = ready.client()
    completion = client.completions.create(model=SERVICE, prompt="say something")
    assert completion.choices[0].text
    embedding = client.embeddings.create(model=SERVICE, input=["a", "b"])
    assert len(embedding.data) == 2 and embedding.data[0].embedding


def test_unknown_model_is_404(ready: Proxy) -> None:
    """A model no service serves is a 404 in the OpenAI error shape."""
    with pytest.raises(openai.NotFoundError) as caught:
        ready.client().chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"


def test_malformed_json_is_400(ready: Proxy) -> None:
    """A body that is not JSON is refused with 400 and an OpenAI error body."""
    response = httpx.post(f"{ready.url}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_oversized_body_is_413(ready: Proxy) -> None:
    """A body beyond the limit is refused with 413, declared or chunked."""
    big = b'{"model": "echo", "prompt": "' + b"x" * 5000 + b'"}'
    response = httpx.post(f"{ready.url}/v1/completions", content=big)
    assert response.status_code == 413
    chunked = httpx.post(f"{ready.url}/v1/completions", content=iter([big[:3000], big[3000:]]))
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "body_too_large"


def test_request_waits_for_a_cold_service(proxy: Proxy) -> None:
    """With no ready job the request waits, wakes the controller, and succeeds once one is ready."""
    job = proxy.hub.add_job(SERVICE, proxy.backend_port, phase=Phase.SUBMITTED)
    answers: list[str] = []
    waiter = threading.Thread(target=lambda: answers.append(chat(proxy.client())))
    waiter.start()
    deadline = time.monotonic() + 5
    while not proxy.wakes:
        assert time.monotonic() < deadline, "the controller was never woken"
        time.sleep(0.01)
    listing = httpx.get(f"{proxy.url}/v1/models").json()
    assert listing["data"][0]["demand"] == 1 and not answers
    proxy.hub.make_ready(SERVICE, job)
    waiter.join(timeout=5)
    assert answers and answers[0]


def test_waiting_stream_gets_keepalive_comments(proxy: Proxy) -> None:
    """A stream that waits for a cold service receives SSE comments, then the answer,
    without the usage chunk that the proxy asked for and its client did not."""
    job = proxy.hub.add_job(SERVICE, proxy.backend_port, phase=Phase.SUBMITTED)
    lines = waiting_stream_lines(proxy, 3, lambda: proxy.hub.make_ready(SERVICE, job))
    assert lines.count(": waiting") >= 3
    assert lines[-1] == "data: [DONE]"
    assert lines[-2].startswith("data: {") and '"usage"' not in "".join(lines)


def test_no_ready_backend_after_max_wait_is_503(proxy: Proxy) -> None:
    """When no job becomes ready in time the request ends with 503 and Retry-After."""
    short = ProxySettings(max_wait_seconds=0.2, poll_interval=0.01)
    recorder = GroupCommitter(proxy.log)
    app = create_app(proxy.hub, DemandTracker(), recorder, HttpBackend(), short, lambda: None)
    with recorder, serving(app) as port:
        body = {"model": SERVICE, "prompt": "hi"}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"]["code"] == "no_backend"



def test_other_paths_are_routed_by_the_inference_service_header(proxy: Proxy) -> None:
    """A /v1 path without a model in the body goes, as it is, to the service its header names.

    As it is: percent-encoded as the client sent it, query included."""
    with serving(echo_request) as port:
        proxy.hub.add_job(SERVICE, port)
        headers = {"inference-service": SERVICE}
        got = httpx.post(f"{proxy.url}/v1/audio/x?lang=de", headers=headers, content=b"raw")
        assert got.json() == {"method": "POST", "path": "/v1/audio/x", "raw_path": "/v1/audio/x",
                              "query": "lang=de", "body": "raw"}  # fmt: skip
        assert httpx.get(f"{proxy.url}/v1/files", headers=headers).json()["method"] == "GET"
        encoded = httpx.get(f"{proxy.url}/v1/files/a%20b%2Fc?q=%C3%A4", headers=headers).json()
        assert (encoded["raw_path"], encoded["query"]) == ("/v1/files/a%20b%2Fc", "q=%C3%A4")
    missing = httpx.get(f"{proxy.url}/v1/files")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_service"


class Broken:
    """A backend that fails in a way the proxy does not expect."""

    async def send(self, job: JobView, method: str, path: str, headers: Headers,
                   body: bytes) -> UpstreamResponse:  # fmt: skip
        raise RuntimeError("a bug in the backend client")


def test_an_unexpected_error_on_a_routed_path_is_500(ready: Proxy) -> None:
    """Routed POSTs skip Starlette's error middleware; an unexpected error is still a 500."""
    with GroupCommitter(ready.log) as recorder:
        app = create_app(ready.hub, DemandTracker(), recorder, Broken(), ProxySettings(),
                         lambda: None)  # fmt: skip
        with serving(app) as port:
            url = f"http://127.0.0.1:{port}/v1/completions"
            answer = httpx.post(url, json={"model": SERVICE, "prompt": "hi"})
            health = httpx.get(f"http://127.0.0.1:{port}/health")
    assert answer.status_code == 500
    assert health.status_code == 200
