"""The deterministic OpenAI-compatible test service, in-process and as a real process."""

from __future__ import annotations

import base64
import itertools
import math
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from saia.testservice import Settings, create_app
from saia.testservice.__main__ import build_parser
from saia.testservice.generate import echo_reply, embed
from tests.net import free_port

# Any: tests index freely into decoded JSON and let a wrong shape fail the assertion.
JsonObject = dict[str, Any]


class JsonResponse(Protocol):
    """What the tests need of a response, whichever HTTP client produced it."""

    @property
    def status_code(self) -> int: ...

    def json(self) -> Any: ...


TOKEN_DELAY = 0.1
STARTUP_DELAY = 1.0
PROCESS_START_TIMEOUT = 15.0


# ---- in-process -------------------------------------------------------------------


class ExitRecorder:
    """Stands in for os._exit so that /admin/exit can be tested without dying."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def __call__(self, code: int) -> None:
        self.codes.append(code)


@pytest.fixture
def exit_recorder() -> ExitRecorder:
    return ExitRecorder()


@pytest.fixture
def client(exit_recorder: ExitRecorder) -> Iterator[TestClient]:
    app = create_app(Settings(model="test-model", exit_process=exit_recorder))
    with TestClient(app) as test_client:
        yield test_client


def chat_body(content: str, **extra: object) -> JsonObject:
    return {"model": "test-model", "messages": [{"role": "user", "content": content}], **extra}


def sse_payloads(text: str) -> list[str]:
    """The data fields of a Server-Sent Events body, in order."""
    events = [event for event in text.split("\n\n") if event.strip()]
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


def sse_chunks(text: str) -> list[JsonObject]:
    """The JSON chunks of an OpenAI stream, checking that it ends with [DONE]."""
    payloads = sse_payloads(text)
    assert payloads[-1] == "[DONE]"
    chunks = [orjson.loads(payload) for payload in payloads[:-1]]
    assert all(isinstance(chunk, dict) for chunk in chunks)
    return chunks


def assert_openai_error(response: JsonResponse, status_code: int, param: str | None) -> None:
    assert response.status_code == status_code
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_health_reports_ok(client: TestClient) -> None:
    """GET /health answers 200 with status ok."""
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_models_lists_the_configured_model_name() -> None:
    """GET /v1/models lists exactly the model named in the settings, in OpenAI's list shape."""
    with TestClient(create_app(Settings(model="tiny"))) as named_client:
        body = named_client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(model["id"], model["object"]) for model in body["data"]] == [("tiny", "model")]


def test_chat_echoes_last_user_message_and_counts_words_as_tokens(client: TestClient) -> None:
    """A chat reply echoes the last user message; usage counts words of all messages."""
    body = {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [{"type": "text", "text": "second  question here"}]},
        ],
    }
    completion = client.post("/v1/chat/completions", json=body).json()
    assert completion["object"] == "chat.completion"
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: second question here"}
    assert choice["finish_reason"] == "stop"
    assert completion["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def test_chat_reply_is_cut_to_max_tokens(client: TestClient) -> None:
    """max_tokens bounds the reply in words and makes finish_reason "length"."""
    body = chat_body("one two three four", max_tokens=3)
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["message"]["content"] == "echo: one two"
    assert choice["finish_reason"] == "length"


def test_chat_reply_defaults_to_sixteen_tokens(client: TestClient) -> None:
    """Without max_tokens a reply stops at 16 words."""
    body = chat_body(" ".join(f"w{index}" for index in range(40)))
    content = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert len(content["content"].split()) == 16


def test_chat_stream_sends_one_chunk_per_token_then_stop_usage_and_done(
    client: TestClient,
) -> None:
    """A chat stream has role first, a chunk per word, a stop chunk, a usage chunk, [DONE]."""
    body = chat_body("a b c", stream=True, stream_options={"include_usage": True})
    response = client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(response.text)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks[:4]]
    assert deltas == [
        {"role": "assistant", "content": "echo:"},
        {"content": " a"},
        {"content": " b"},
        {"content": " c"},
    ]
    assert chunks[4]["choices"][0]["finish_reason"] == "stop"
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}


def test_chat_stream_without_include_usage_has_no_usage_chunk(client: TestClient) -> None:
    """Without stream_options.include_usage no chunk carries usage."""
    response = client.post("/v1/chat/completions", json=chat_body("a b", stream=True))
    chunks = sse_chunks(response.text)
    assert all("usage" not in chunk for chunk in chunks)
    assert all(chunk["choices"] for chunk in chunks)


def test_completions_answer_each_prompt_of_a_list(client: TestClient) -> None:
    """POST /v1/completions gives one choice per prompt, indexed in order."""
    body = {"model": "test-model", "prompt": ["x y", "z"], "max_tokens": 2}
    completion = client.post("/v1/completions", json=body).json()
    assert completion["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in completion["choices"]] == [
        (0, "echo: x", "length"),
        (1, "echo: z", "stop"),
    ]
    assert completion["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_completion_stream_ends_with_usage_chunk_and_done(client: TestClient) -> None:
    """A completion stream sends text chunks per word, a stop chunk, usage, then [DONE]."""
    body = {
        "model": "test-model",
        "prompt": "hello world",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = sse_chunks(client.post("/v1/completions", json=body).text)
    texts = [chunk["choices"][0]["text"] for chunk in chunks[:-1]]
    assert "".join(texts) == "echo: hello world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_responses_echo_the_last_user_input_with_input_and_output_tokens(
    client: TestClient,
) -> None:
    """POST /v1/responses answers a Responses API object; streaming it is refused."""
    body = {"model": "test-model", "instructions": "be brief",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi you"}]}]}
    answer = client.post("/v1/responses", json=body).json()
    [message] = answer["output"]
    assert message["content"][0]["text"] == "echo: hi you"
    assert answer["usage"] == {"input_tokens": 4, "output_tokens": 3, "total_tokens": 7}
    assert answer["object"] == "response" and answer["status"] == "completed"
    streamed = client.post("/v1/responses", json={**body, "stream": True})
    assert_openai_error(streamed, 400, "stream")


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_audio_echoes_the_files_name_and_size(client: TestClient, path: str) -> None:
    """A multipart transcription or translation names its model in a form field."""
    files = {"file": ("clip.wav", b"0123456789")}
    answer = client.post(path, data={"model": "test-model"}, files=files)
    assert answer.json() == {"text": "echo: clip.wav 10 bytes"}
    assert_openai_error(client.post(path, data={"model": "other"}, files=files), 404, "model")
    assert_openai_error(client.post(path, files=files), 400, "model")


def test_embeddings_are_deterministic_unit_vectors(client: TestClient) -> None:
    """Equal inputs get equal unit-length vectors of 8 floats; different inputs differ."""
    body = {"model": "test-model", "input": ["same text", "same text", "other"]}
    response = client.post("/v1/embeddings", json=body).json()
    vectors = [item["embedding"] for item in response["data"]]
    assert [item["index"] for item in response["data"]] == [0, 1, 2]
    assert all(len(vector) == 8 for vector in vectors)
    assert all(math.isclose(math.hypot(*vector), 1.0) for vector in vectors)
    assert vectors[0] == vectors[1] != vectors[2]
    assert response["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


def test_embeddings_in_base64_decode_to_the_float_vector(client: TestClient) -> None:
    """encoding_format base64 (the openai client's default) carries little-endian float32s."""
    body: JsonObject = {"model": "test-model", "input": "text", "dimensions": 12}
    floats = client.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    body["encoding_format"] = "base64"
    encoded = client.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    decoded = struct.unpack("<12f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats, rel=1e-6)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b""])
def test_malformed_json_gets_400_openai_error(
    client: TestClient, path: str, content: bytes
) -> None:
    """A body that is not a JSON object is refused with 400 and OpenAI's error body."""
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, None)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/chat/completions", {"model": "test-model"}, "messages"),
        ("/v1/completions", {"model": "test-model"}, "prompt"),
        ("/v1/embeddings", {"model": "test-model"}, "input"),
    ],
)
def test_missing_required_field_gets_400_naming_it(
    client: TestClient, path: str, body: JsonObject, param: str
) -> None:
    """A missing required field is refused with 400 and names the field in param."""
    response = client.post(path, json=body)
    assert_openai_error(response, 400, param)
    assert response.json()["error"]["code"] == "missing_required_parameter"


@pytest.mark.parametrize(
    "body",
    [
        chat_body("x", max_tokens=0),
        chat_body("x", max_tokens=True),
        chat_body("x", stream="yes"),
        {"model": "test-model", "messages": []},
        {"model": "test-model", "messages": ["hello"]},
    ],
)
def test_ill_typed_field_gets_400(client: TestClient, body: JsonObject) -> None:
    """A field of the wrong type or range is refused with 400."""
    assert client.post("/v1/chat/completions", json=body).status_code == 400


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_unknown_model_gets_404_openai_error(client: TestClient, path: str) -> None:
    """Naming a model other than the served one gets 404 with code model_not_found."""
    body = {"model": "gpt-4", "messages": [], "prompt": "x", "input": "x"}
    response = client.post(path, json=body)
    assert_openai_error(response, 404, "model")
    assert response.json()["error"]["code"] == "model_not_found"


def test_unknown_path_gets_404_in_openai_error_shape(client: TestClient) -> None:
    """Paths the server lacks answer 404 in OpenAI's error shape, not plain text."""
    assert_openai_error(client.get("/v1/nothing"), 404, None)


def test_admin_exit_answers_then_exits_with_the_requested_code(
    client: TestClient, exit_recorder: ExitRecorder
) -> None:
    """POST /admin/exit answers 202 and then asks the process to exit with the given code."""
    response = client.post("/admin/exit", json={"code": 3})
    assert response.status_code == 202
    assert exit_recorder.codes == [3]
    client.post("/admin/exit")
    assert exit_recorder.codes == [3, 1]


@given(text=st.text(), dimensions=st.integers(min_value=1, max_value=64))
def test_embedding_is_unit_length_for_any_text(text: str, dimensions: int) -> None:
    """embed() gives a unit vector of the requested dimension for any text."""
    vector = embed(text, dimensions)
    assert len(vector) == dimensions
    assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-9)


@given(prompt=st.text(), max_tokens=st.integers(min_value=1, max_value=40))
def test_echo_reply_respects_max_tokens_and_streams_its_text(prompt: str, max_tokens: int) -> None:
    """A reply never exceeds max_tokens words and its stream pieces join to its text."""
    reply = echo_reply(prompt, max_tokens)
    assert 1 <= len(reply.tokens) <= max_tokens
    assert "".join(reply.stream_pieces()) == reply.text
    assert reply.truncated == (len(prompt.split()) + 1 > max_tokens)


def test_cli_reads_delays_and_model_from_environment_and_flags_win() -> None:
    """SAIA_TEST_* environment variables set defaults; command-line flags override them."""
    environ = {
        "SAIA_TEST_TOKEN_DELAY": "0.25",
        "SAIA_TEST_STARTUP_DELAY": "2",
        "SAIA_TEST_MODEL": "env-model",
    }
    from_env = build_parser(environ).parse_args(["--port", "9000"])
    assert (from_env.token_delay, from_env.startup_delay, from_env.model) == (
        0.25,
        2.0,
        "env-model",
    )
    flags = ["--port", "9000", "--token-delay", "0", "--startup-delay", "0.5", "--model", "m"]
    from_flags = build_parser(environ).parse_args(flags)
    assert (from_flags.token_delay, from_flags.startup_delay, from_flags.model) == (0.0, 0.5, "m")


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "0"],
        ["--port", "80", "--token-delay", "-1"],
        ["--port", "80", "--startup-delay", "x"],
    ],
)
def test_cli_refuses_bad_values(argv: list[str]) -> None:
    """Out-of-range ports and negative or non-numeric delays are usage errors."""
    with pytest.raises(SystemExit) as exit_info:
        build_parser({}).parse_args(argv)
    assert exit_info.value.code == 2


# ---- real process -----------------------------------------------------------------


def port_is_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_service(port: int, log_path: Path, *options: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "saia.testservice", "--port", str(port), *options]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def wait_until_listening(process: subprocess.Popen[bytes], port: int, log_path: Path) -> float:
    """Poll until the port accepts connections; return when that happened (monotonic)."""
    deadline = time.monotonic() + PROCESS_START_TIMEOUT
    while time.monotonic() < deadline:
        if port_is_open(port):
            return time.monotonic()
        if process.poll() is not None:
            pytest.fail(f"test service exited early:\n{log_path.read_text()}")
        time.sleep(0.02)
    pytest.fail(f"test service did not listen within {PROCESS_START_TIMEOUT} s")


def stop_service(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("testservice") / "service.log"
    process = start_service(port, log_path, "--token-delay", str(TOKEN_DELAY))
    try:
        wait_until_listening(process, port, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_service(process)


@pytest.fixture
def openai_client(service_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{service_url}/v1", api_key="unused", max_retries=0, timeout=10
    ) as client:
        yield client


def test_openai_client_lists_models_and_chats(openai_client: openai.OpenAI) -> None:
    """The official client lists the model and gets a chat completion with usage."""
    assert [model.id for model in openai_client.models.list()] == ["test-model"]
    completion = openai_client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hello there"}]
    )
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)


def test_openai_streaming_chunks_arrive_spread_over_time(openai_client: openai.OpenAI) -> None:
    """Streamed chunks reach the client one by one, a token delay apart, with a usage chunk."""
    words = "one two three four five six seven eight nine"
    stream = openai_client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": words}],
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[float] = []
    pieces: list[str] = []
    usage_seen: list[int] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage_seen.append(chunk.usage.total_tokens)
    assert "".join(pieces) == f"echo: {words}"
    assert usage_seen == [19]
    # Ten tokens with a sleep before each: a buffered stream would arrive all at once.
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(arrivals))
    assert arrivals[-1] - arrivals[0] >= 0.6
    assert gaps[len(gaps) // 2] >= TOKEN_DELAY / 2


def test_openai_completions_and_embeddings(openai_client: openai.OpenAI) -> None:
    """The official client gets completions and (base64-encoded by default) unit embeddings."""
    completion = openai_client.completions.create(model="test-model", prompt="a b c", max_tokens=3)
    assert completion.choices[0].text == "echo: a b"
    assert completion.choices[0].finish_reason == "length"
    embeddings = openai_client.embeddings.create(model="test-model", input=["alpha", "beta"])
    vectors = [item.embedding for item in embeddings.data]
    assert [len(vector) for vector in vectors] == [8, 8]
    assert all(math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-6) for vector in vectors)
    assert vectors[0] == pytest.approx(embed("alpha"), rel=1e-6)


def test_openai_client_raises_on_error_responses(
    openai_client: openai.OpenAI, service_url: str
) -> None:
    """Error bodies parse as OpenAI errors: 404 unknown model, 400 bad request or bad JSON."""
    with pytest.raises(openai.NotFoundError) as not_found:
        openai_client.chat.completions.create(
            model="other-model", messages=[{"role": "user", "content": "x"}]
        )
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad_request:
        openai_client.chat.completions.create(model="test-model", messages=[])
    assert bad_request.value.param == "messages"
    response = httpx.post(f"{service_url}/v1/chat/completions", content=b"{oops")
    assert_openai_error(response, 400, None)


def test_startup_delay_keeps_port_closed_and_admin_exit_ends_process(tmp_path: Path) -> None:
    """The port opens only after the startup delay, and /admin/exit kills the process."""
    port = free_port()
    log_path = tmp_path / "service.log"
    started = time.monotonic()
    process = start_service(port, log_path, "--startup-delay", str(STARTUP_DELAY))
    try:
        assert not port_is_open(port)
        listening = wait_until_listening(process, port, log_path)
        assert listening - started >= STARTUP_DELAY
        response = httpx.post(f"http://127.0.0.1:{port}/admin/exit", json={"code": 3})
        assert response.status_code == 202
        assert process.wait(timeout=5) == 3
    finally:
        stop_service(process)


def test_admin_stats_counts_the_requests_that_reached_the_model_routes(
    client: TestClient,
) -> None:
    """Model routes are counted, answered or refused; health and admin routes are not."""
    client.get("/health")
    client.get("/v1/models")
    client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert client.get("/admin/stats").json() == {"requests": 2}


# -- the job's secret ---------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer wrong", "Bearer s3cret-", "bearer s3cret", "s3cret", "Basic s3cret"],
)
def test_with_a_secret_every_request_without_it_is_refused(authorization: str | None) -> None:
    """A job given SAIA_JOB_SECRET answers 401 to anyone not presenting it, on every path."""
    with TestClient(create_app(Settings(api_key="s3cret"))) as client:
        headers = {} if authorization is None else {"authorization": authorization}
        for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/admin/exit")):
            assert client.request(method, path, headers=headers).status_code == 401
        assert client.get("/admin/stats", headers={"authorization": "Bearer s3cret"}).json()[
            "requests"
        ] == 0  # the refused requests never reached the model routes


def test_with_the_secret_the_service_answers() -> None:
    """The Bearer token the entrypoint adds opens every route, the OpenAI client's too."""
    with TestClient(create_app(Settings(model="m", api_key="s3cret"))) as client:
        assert client.get("/health", headers={"authorization": "Bearer s3cret"}).status_code == 200
        api = openai.OpenAI(api_key="s3cret", base_url="http://testserver/v1", http_client=client)
        assert [model.id for model in api.models.list()] == ["m"]
