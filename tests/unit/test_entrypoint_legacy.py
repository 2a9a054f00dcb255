"""The legacy SAIA request: read as cloud_interface.sh reads it, answered as it answered."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from saia.entrypoint import legacy
from saia.entrypoint.config import EntrypointConfig, ServiceRule
from saia.entrypoint.context import Context
from saia.entrypoint.legacy import LegacyRefused, LegacyRequest, parse_request, render
from saia.entrypoint.legacy_relay import answer
from saia.ports import SubmitRequest
from saia.protocol import exits, job_secret
from tests.fakes import FakeClock, FakeLoginSlurm, FakeSlurm

NOW = 1_795_925_770.0  # Sun, 29 Nov 2026 04:16:10 UTC
HUB_REQUEST = (
    "0b6c1d3e-inference\n"
    "alice@example.org\n"
    "testsvc\n"
    "/v1/chat/completions\n"
    ' -X POST -H "host: hub.example.org" -H "content-type: application/json"'
    ' -H "authorization: Bearer sk-secret" -H "user-agent: OpenAI/Python 1.30.1"'
)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_hubs_request_is_read_into_its_fields() -> None:
    """The five lines the SAIA hub sends give ids, path, method and headers; Host is not kept."""
    request = parse_request(HUB_REQUEST)
    assert request == LegacyRequest(
        inference_id="0b6c1d3e-inference",
        user_id="alice@example.org",
        service="testsvc",
        path="/v1/chat/completions",
        method="POST",
        headers=(
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-secret"),
            ("user-agent", "OpenAI/Python 1.30.1"),
        ),
        inline_body=None,
    )
    assert request.body_on_stdin


def test_inline_data_after_d_is_the_body_with_whitespace_collapsed() -> None:
    """Words after -d are the body, joined by single spaces as the original's bash did."""
    request = parse_request('i\nu\ns\n/p\n -X POST -H "a: b" -d {"x":  1,\n "y": 2}')
    assert request.inline_body == b'{"x": 1, "y": 2}'
    assert request.headers == (("a", "b"),)
    assert not request.body_on_stdin


def test_a_get_reads_no_body_from_stdin() -> None:
    """GET has no body, so stdin, which the hub leaves open then, is not waited on."""
    request = parse_request("i\nu\ns\n/v1/models?x=1&y=2\n -X GET")
    assert request.method == "GET"
    assert request.path == "/v1/models?x=1&y=2"
    assert not request.body_on_stdin


def test_headers_in_single_quotes_are_accepted() -> None:
    """-H 'Name: value', as a person types it, reads like the hub's double quotes."""
    request = parse_request("i\nu\ns\n/p\n -X POST -H 'accept: */*'")
    assert request.headers == (("accept", "*/*"),)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("i d\nu\ns\n/p\n -X GET", legacy.BAD_IDS),
        ("i;d\nu\ns\n/p\n -X GET", legacy.BAD_IDS),
        ("i\nu\ns$(id)\n/p\n -X GET", legacy.BAD_IDS),
        ("x" * 257 + "\nu\ns\n/p\n -X GET", legacy.BAD_IDS),
        ("\nu\ns\n/p\n -X GET", legacy.BAD_IDS),
        ("i\nu`id`\ns\n/p\n -X GET", legacy.BAD_USER_ID),
        ("i\n\ns\n/p\n -X GET", legacy.BAD_USER_ID),
        ("i\nu\ns\n/p q\n -X GET", legacy.BAD_PATH),
        ("i\nu\ns\n/../etc/passwd\n -X GET", legacy.BAD_PATH),
        ("i\nu\ns\n0/v1/models\n -X GET", legacy.BAD_PATH),
        ("i\nu\ns\n/" + "p" * 256 + "\n -X GET", legacy.BAD_PATH),
        ("i\nu\ns", legacy.BAD_PATH),
        ("i\nu\ns\n/p\n -X BREW", legacy.BAD_ARGUMENTS),
        ("i\nu\ns\n/p\n -X GET -H nocolon", legacy.BAD_ARGUMENTS),
        ('i\nu\ns\n/p\n -X GET -H "bad name: v"', legacy.BAD_ARGUMENTS),
    ],
)
def test_invalid_fields_are_refused_with_the_originals_answer(
    text: str, answer: legacy.Answer
) -> None:
    """Each field is checked in the original's order and refused with its 400 text."""
    with pytest.raises(LegacyRefused) as caught:
        parse_request(text)
    assert caught.value.answer == answer


ERROR_HEAD = b"Content-Type: text/html; charset=UTF-8\r\nDate: Sun, 29 Nov 2026 04:16:10 +0000\r\n"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            legacy.BAD_IDS,
            b"HTTP/1.1 400 Bad Request\r\n" + ERROR_HEAD + b"Server: KISSKI\r\n\r\n"
            b"Error: Only alphanumeric characters are allowed for INFERENCE_ID and APP, "
            b"and they should not exceed 256 characters.",
        ),
        (
            legacy.BAD_USER_ID,
            b"HTTP/1.1 400 Bad Request\r\n" + ERROR_HEAD + b"Server: KISSKI\r\n\r\n"
            b"Error: Only alphanumeric characters and '._@-' are allowed for USER_ID, "
            b"and it should not exceed 256 characters.",
        ),
        (
            legacy.BAD_PATH,
            b"HTTP/1.1 400 Bad Request\r\n" + ERROR_HEAD + b"Server: KISSKI\r\n\r\n"
            b"Error: the REQUEST_PATH provided contains illegal characters "
            b"or exceeds the 256 character limit.",
        ),
        (
            legacy.UNKNOWN_SERVICE,
            b"HTTP/1.1 404 Not Found\r\n" + ERROR_HEAD + b"Server: KISSKI\r\n\r\n"
            b"Model Not Found\r\n",
        ),
        (
            legacy.NO_BACKEND,
            b"HTTP/1.1 503 Service Unavailable\r\n" + ERROR_HEAD + b"Server: KISSKI\r\n\r\n"
            b"Model Not Loaded. Please try again in a few minutes.\r\n",
        ),
        (
            legacy.BACKEND_BROKE,
            b"HTTP/1.1 503 Service Unavailable\r\n" + ERROR_HEAD + b"Server: KISSKI\r\n\r\n"
            b"Connection to model broke\r\n",
        ),
    ],
)
def test_error_answers_are_the_originals_bytes(
    utc: None, answer: legacy.Answer, expected: bytes
) -> None:
    """Status line, headers and body of 400, 404 and 503 match the original byte for byte."""
    assert render(answer, NOW) == expected


@pytest.mark.skipif(shutil.which("date") is None, reason="needs date(1)")
@pytest.mark.parametrize("zone", ["UTC", "America/St_Johns", "Asia/Kolkata", "Europe/Berlin"])
def test_the_date_header_is_what_date_minus_r_prints(
    monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    """The Date header equals `date -R` for the same instant, in any time zone and locale."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        for instant in (NOW, 1_700_000_000.0, 1_719_792_000.0):
            environment = {**os.environ, "TZ": zone, "LC_ALL": "C"}
            printed = subprocess.run(
                ["date", "-R", "-d", f"@{int(instant)}"],
                capture_output=True,
                text=True,
                check=True,
                env=environment,
            ).stdout.strip()
            assert legacy.rfc5322_date(instant) == printed
    finally:
        monkeypatch.undo()
        time.tzset()


# -- the success answer: a backend's response as curl -i printed it ------------------

EVENTS = (b'data: {"choices": [1]}\n\n', b"data: [DONE]\n\n")
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"date: Sun, 29 Nov 2026 04:16:10 GMT\r\n"
    b"server: uvicorn\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"X-Odd-Case: Kept\r\n"
    b"\r\n"
)
SSE_RESPONSE = (
    SSE_HEAD + b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in EVENTS) + b"0\r\n\r\n"
)


class CannedBackend:
    """A one-connection-at-a-time HTTP server that records requests and sends a fixed answer."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                self.requests.append(_read_request(connection))
                connection.sendall(self.response)

    def close(self) -> None:
        self.server.close()


def _read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        while not body.endswith(b"0\r\n\r\n"):
            body += connection.recv(65536)
    elif b"content-length:" in lowered:
        length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.fixture
def backend() -> Iterator[CannedBackend]:
    server = CannedBackend(SSE_RESPONSE)
    yield server
    server.close()


def relayed(tmp_path: Path, port: int, body: bytes) -> bytes:
    """What the legacy request HUB_REQUEST answers, with one job running on ``port``."""
    slurm = FakeSlurm(FakeClock())
    run_job(slurm, "127.0.0.1", port)
    out = io.BytesIO()
    assert answer(HUB_REQUEST, context_for(tmp_path, slurm, body, out)) == exits.OK
    return out.getvalue()


def test_a_backends_answer_is_passed_on_as_curl_minus_i_printed_it(
    backend: CannedBackend, tmp_path: Path
) -> None:
    """Status line and headers as received, then the body without its chunk framing."""
    assert relayed(tmp_path, backend.port, b'{"model": "m"}') == SSE_HEAD + b"".join(EVENTS)
    sent = backend.requests[0]
    assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"host: 127.0.0.1:" in sent and b"hub.example.org" not in sent
    # The job's secret, in place of the key the hub sent, which never reaches the job.
    secret = job_secret.for_job(job_secret.load_key(str(tmp_path / "state")), TOKEN)
    assert f"authorization: Bearer {secret}\r\n".encode() in sent
    assert b"sk-secret" not in sent
    assert sent.endswith(b'\r\n\r\n{"model": "m"}')


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl(1)")
def test_the_success_answer_is_byte_identical_to_curl_minus_i(
    backend: CannedBackend, tmp_path: Path
) -> None:
    """The relayed answer equals what `curl -i -s -N` (the original's relay) prints for it."""
    url = f"http://127.0.0.1:{backend.port}/v1/chat/completions"
    curl = ["curl", "-i", "-s", "-N", "-g", "-X", "POST"]
    printed = subprocess.run(
        [*curl, "-H", "content-type: application/json", url, "-T", "-"],
        input=b'{"model": "m"}',
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout
    assert relayed(tmp_path, backend.port, b'{"model": "m"}') == printed


# -- the whole legacy request: service lookup, backends, stdin ---------------------------


def context_for(
    tmp_path: Path, slurm: FakeSlurm, stdin: bytes, out: io.BytesIO, max_body: int = 1 << 20
) -> Context:
    config = EntrypointConfig(
        path=str(tmp_path / "entrypoint.toml"),
        sbatch_dir=str(tmp_path),
        state_dir=str(tmp_path / "state"),
        services={"testsvc": ServiceRule("testsvc", "testservice.sbatch")},
        port_min=1024,  # the backends listen on ports the system picks
        port_max=65535,
        connect_timeout=2.0,
        idle_timeout=5.0,
        max_body_bytes=max_body,
    )
    source = io.BytesIO(stdin)
    return Context(
        config=config,
        read=lambda: source.read1(65536),
        write=out.write,
        clock=lambda: NOW,
        environment={},
        make_slurm=lambda: FakeLoginSlurm(slurm),  # type: ignore[arg-type, return-value]
    )


TOKEN = "0123456789abcdef"


def run_job(slurm: FakeSlurm, host: str, port: int) -> None:
    slurm.submit(SubmitRequest("testsvc", "testservice.sbatch", port, TOKEN, 600.0))
    slurm.start_pending()
    for job in slurm.queue.values():
        job.host = host


def test_an_unknown_service_is_answered_404(utc: None, tmp_path: Path) -> None:
    """A service this login node does not configure gets the original's 404, exit 77."""
    out = io.BytesIO()
    context = context_for(tmp_path, FakeSlurm(FakeClock()), b"", out)
    code = answer("i\nu\nllama\n/v1/models\n -X GET", context)
    assert code == exits.NOT_PERMITTED
    assert out.getvalue() == render(legacy.UNKNOWN_SERVICE, NOW)


def test_a_service_without_a_running_job_is_answered_503(utc: None, tmp_path: Path) -> None:
    """Configured but with no running job (pending only): the 503, exit 69."""
    slurm = FakeSlurm(FakeClock())
    slurm.submit(SubmitRequest("testsvc", "testservice.sbatch", 20001, "0123456789abcdef", 60.0))
    out = io.BytesIO()
    code = answer(HUB_REQUEST, context_for(tmp_path, slurm, b"{}", out))
    assert code == exits.UNAVAILABLE
    assert out.getvalue() == render(legacy.NO_BACKEND, NOW)


def test_a_running_job_that_refuses_connections_is_answered_503(utc: None, tmp_path: Path) -> None:
    """A job that runs but does not listen yet is not ready: the 503 of no backend."""
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    slurm = FakeSlurm(FakeClock())
    run_job(slurm, "127.0.0.1", port)
    out = io.BytesIO()
    code = answer(HUB_REQUEST, context_for(tmp_path, slurm, b"{}", out))
    assert code == exits.UNAVAILABLE
    assert out.getvalue() == render(legacy.NO_BACKEND, NOW)


def test_invalid_fields_are_answered_400_with_exit_65(utc: None, tmp_path: Path) -> None:
    """A refused field is answered on stdout in HTTP and reported by exit code 65."""
    out = io.BytesIO()
    context = context_for(tmp_path, FakeSlurm(FakeClock()), b"", out)
    code = answer("i\nu\ns\n/../x\n -X GET", context)
    assert code == exits.BAD_DATA
    assert out.getvalue() == render(legacy.BAD_PATH, NOW)


def test_a_request_reaches_a_running_job_with_its_body_from_stdin(
    tmp_path: Path, backend: CannedBackend
) -> None:
    """The body on stdin goes to the job's batch host and port; its answer comes back."""
    slurm = FakeSlurm(FakeClock())
    run_job(slurm, "127.0.0.1", backend.port)
    out = io.BytesIO()
    context = context_for(tmp_path, slurm, b'{"stream": true}', out)
    assert answer(HUB_REQUEST, context) == exits.OK
    assert out.getvalue().startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.getvalue().endswith(b"data: [DONE]\n\n")
    assert backend.requests[0].endswith(b'\r\n\r\n{"stream": true}')


def test_a_body_over_the_limit_is_answered_413(utc: None, tmp_path: Path) -> None:
    """stdin larger than max_body_bytes is refused before any backend is contacted."""
    slurm = FakeSlurm(FakeClock())
    run_job(slurm, "127.0.0.1", 1025)  # nothing listens there: it is never asked
    out = io.BytesIO()
    context = context_for(tmp_path, slurm, b"x" * 100, out, max_body=10)
    assert answer(HUB_REQUEST, context) == exits.BAD_DATA
    assert out.getvalue() == render(legacy.BODY_TOO_LARGE, NOW)


def test_header_values_with_non_ascii_characters_pass_through_as_utf8(
    tmp_path: Path, backend: CannedBackend
) -> None:
    """As curl sends them for the original: non-ASCII values reach the job as UTF-8 bytes."""
    slurm = FakeSlurm(FakeClock())
    run_job(slurm, "127.0.0.1", backend.port)
    request = 'i\nu\ntestsvc\n/v1/models\n -X GET -H "x-user-name: Jürgen Müller ✓"'
    assert answer(request, context_for(tmp_path, slurm, b"", io.BytesIO())) == exits.OK
    assert "x-user-name: Jürgen Müller ✓\r\n".encode() in backend.requests[0]
