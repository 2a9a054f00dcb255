"""HttpProber against a job that answers only requests carrying its secret."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from uuid import uuid4

import pytest

from saia.adapters.prober import HttpProber
from saia.ports import ProbeTarget


class NeedsSecret(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.headers.get("authorization") == "Bearer s3cret-tok"
        self.send_response(200 if ok else 401)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NeedsSecret)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_a_probe_presents_the_jobs_secret(port: int) -> None:
    """With job_secret, a probe carries the job's Bearer token and the job answers it."""
    target = ProbeTarget(uuid4(), "127.0.0.1", port, "/health", "7", token="tok")
    with_secret = HttpProber(job_secret=lambda token: f"s3cret-{token}").probe([target], 2.0)
    without = HttpProber().probe([target], 2.0)
    assert with_secret[target.job].ok
    assert (without[target.job].ok, without[target.job].error) == (False, "HTTP 401")
