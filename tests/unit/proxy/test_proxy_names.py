"""Model names and routes: a service answers to its id and its aliases (Hugging Face
style, with '/'), every POST under /v1/ is routed by its body's model, JSON or form,
and /v1/models lists and retrieves every name."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from saia.projections.accounting import Usage
from tests.unit.proxy.harness import SERVICE, Proxy, echo_request, serving

ALIASES = ["org/Echo-1.0-Instruct", "echo:latest"]


@pytest.fixture
def aliased(ready: Proxy) -> Proxy:
    ready.hub.reconfigure(SERVICE, aliases=ALIASES)
    return ready


@pytest.fixture
def echoed(aliased: Proxy) -> Iterator[Proxy]:
    """The service's only job answers with the request it got (method, path, body)."""
    with serving(echo_request) as port:
        for job in list(aliased.hub.state.services[SERVICE].jobs):
            del aliased.hub.state.services[SERVICE].jobs[job]
        aliased.hub.add_job(SERVICE, port)
        yield aliased


def test_an_alias_reaches_the_service_which_gets_its_own_id(aliased: Proxy) -> None:
    """Chat, completions and embeddings by an alias with '/' are answered by the service's
    job, which serves its id only: the proxy put the id in the body's model."""
    client = aliased.client()
    for name in [SERVICE, *ALIASES]:
        chat = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hello there"}]
        )
        assert chat.choices[0].message.content == "echo: hello there"
        assert chat.model == SERVICE
        completion = client.completions.create(model=name, prompt="say something")
        assert completion.choices[0].text == "echo: say something"
        embedding = client.embeddings.create(model=name, input=["a", "b"])
        assert len(embedding.data) == 2


def test_a_streamed_chat_by_an_alias(aliased: Proxy) -> None:
    """A stream by an alias reaches the job too (its body is rewritten once, with the
    usage option the proxy adds)."""
    stream = aliased.client().chat.completions.create(
        model=ALIASES[0], messages=[{"role": "user", "content": "one two"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "echo: one two"


def test_models_lists_every_id_and_alias(aliased: Proxy) -> None:
    """Each name is a model object of its own, in OpenAI's list shape, saying its service."""
    models = aliased.client().models.list()
    assert [model.id for model in models] == [SERVICE, *ALIASES]
    created = {model.created for model in models}
    assert len(created) == 1 and created.pop() > 0
    assert {model.owned_by for model in models} == {"saia"}
    listing = httpx.get(f"{aliased.url}/v1/models").json()
    assert listing["object"] == "list"
    assert {entry["service"] for entry in listing["data"]} == {SERVICE}
    assert {entry["object"] for entry in listing["data"]} == {"model"}


def test_one_model_is_retrieved_by_any_of_its_names(aliased: Proxy) -> None:
    """GET /v1/models/{id} answers the one model object, a name with '/' included."""
    client = aliased.client()
    for name in [SERVICE, *ALIASES]:
        model = client.models.retrieve(name)
        assert (model.id, model.object, model.owned_by) == (name, "model", "saia")
    raw = httpx.get(f"{aliased.url}/v1/models/{ALIASES[0]}").json()  # '/' unencoded, too
    assert raw["id"] == ALIASES[0] and raw["service"] == SERVICE


def test_an_unknown_or_retired_model_is_404_in_openai_error_shape(aliased: Proxy) -> None:
    """Retrieving a name no service has, or a retired service's, is 404 model_not_found."""
    client = aliased.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("org/nothing")
    assert caught.value.code == "model_not_found"
    body = httpx.get(f"{aliased.url}/v1/models/org/nothing").json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    aliased.hub.retire_service(SERVICE)
    for name in [SERVICE, ALIASES[0]]:
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(name)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=name, prompt="hi")
    assert client.models.list().data == []


def test_responses_are_routed_by_the_body_without_a_header(aliased: Proxy) -> None:
    """The official client's /v1/responses names its model only in the body; it is routed,
    by id or alias, and its tokens are metered."""
    client = aliased.client("rita")
    answer = client.responses.create(model=ALIASES[0], input="route me")
    assert answer.output_text == "echo: route me"
    assert answer.model == SERVICE
    answer = client.responses.create(
        model=SERVICE, input=[{"role": "user", "content": "and me too"}]
    )
    assert answer.output_text == "echo: and me too"
    usage = settled(aliased, 2)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens) == (2, 5, 7)


def test_an_audio_transcription_is_routed_by_its_form_field(aliased: Proxy) -> None:
    """A multipart transcription or translation goes by the form's model field."""
    client = aliased.client()
    audio = b"RIFF" + bytes(range(256)) * 8
    for name in [SERVICE, ALIASES[0]]:
        text = client.audio.transcriptions.create(model=name, file=("a.wav", audio))
        assert text.text == f"echo: a.wav {len(audio)} bytes"
        translated = httpx.post(f"{aliased.url}/v1/audio/translations", data={"model": name},
                                files={"file": ("b.wav", audio)})  # fmt: skip
        assert translated.json() == {"text": f"echo: b.wav {len(audio)} bytes"}


def test_bodies_go_on_unchanged_unless_they_use_an_alias(echoed: Proxy) -> None:
    """A body that names the service's id reaches the job byte for byte, JSON or form;
    one that uses an alias differs only in its model."""
    raw = b'{"model" : "echo",  "input": "x", "n": 1.50}'
    assert forwarded(echoed, "/v1/anything/new", raw) == raw
    aliased = orjson.loads(forwarded(echoed, "/v1/anything/new", raw.replace(b'"echo"',
                                     b'"org/Echo-1.0-Instruct"')))  # fmt: skip
    assert aliased == {"model": SERVICE, "input": "x", "n": 1.5}
    form = httpx.Request("POST", "http://x", data={"model": SERVICE, "language": "de"},
                         files={"file": ("a.wav", bytes(range(256)) + b"\r\n--x\r\n")})  # fmt: skip
    body = form.read()
    sent = forwarded(echoed, "/v1/audio/transcriptions", body, form.headers["content-type"])
    assert sent == body
    form = httpx.Request("POST", "http://x", data={"model": ALIASES[1]},
                         files={"file": ("a.wav", b"audio")})  # fmt: skip
    body = form.read()
    sent = forwarded(echoed, "/v1/audio/transcriptions", body, form.headers["content-type"])
    assert sent == body.replace(ALIASES[1].encode(), SERVICE.encode())


def test_the_header_still_routes_and_must_agree_with_the_body(aliased: Proxy) -> None:
    """inference-service routes a body without a model; where the body names one as well,
    both must name the same service (by id or alias), else 400."""
    aliased.hub.add_service("other")
    url = f"{aliased.url}/v1/completions"
    body = {"model": SERVICE, "prompt": "hi"}
    agreed = httpx.post(url, json=body, headers={"inference-service": ALIASES[1]})
    assert agreed.status_code == 200
    disagree = httpx.post(url, json=body, headers={"inference-service": "other"})
    assert disagree.status_code == 400
    assert disagree.json()["error"]["code"] == "model_mismatch"
    unknown = httpx.post(url, json=body, headers={"inference-service": "nobody"})
    assert unknown.status_code == 404


def test_a_post_that_names_no_model_is_400(aliased: Proxy) -> None:
    """Without a model in the body and without the header there is nothing to route by."""
    for path, kwargs in [("/v1/responses", {"json": {"input": "x"}}),
                         ("/v1/audio/transcriptions", {"files": {"file": ("a", b"x")}}),
                         ("/v1/audio/speech", {"content": b"not json"})]:  # fmt: skip
        response = httpx.post(f"{aliased.url}{path}", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 400
        assert response.json()["error"]["code"] in ("missing_model", "invalid_json")


def forwarded(proxy: Proxy, path: str, body: bytes, content_type: str = "application/json"
              ) -> bytes:  # fmt: skip
    """The body the job got for a POST of ``body`` to ``path``."""
    answer = httpx.post(f"{proxy.url}{path}", content=body,
                        headers={"content-type": content_type})  # fmt: skip
    assert answer.status_code == 200, answer.text
    sent: str = answer.json()["body"]
    return sent.encode("latin-1")


def settled(proxy: Proxy, requests: int) -> Usage:
    deadline = time.monotonic() + 5
    while True:
        rows = list(proxy.usage().values())
        if sum(row.requests for row in rows) >= requests or time.monotonic() > deadline:
            [row] = rows
            return row
        time.sleep(0.02)
