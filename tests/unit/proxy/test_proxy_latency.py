"""The proxy adds no fixed wait to an answer: each write leaves the socket at once."""

from __future__ import annotations

import socket
import statistics
import time

import httpx

from tests.net import free_socket
from tests.unit.proxy.harness import SERVICE, Proxy

BODY = {"model": SERVICE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_served_sockets_disable_nagle() -> None:
    """Accepted connections inherit a TCP protocol number, so asyncio sets TCP_NODELAY."""
    with free_socket() as sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_a_small_answer_does_not_wait_for_a_delayed_ack(ready: Proxy) -> None:
    """Headers and body are two writes; the second must not wait ~40 ms for the client's ACK."""
    with httpx.Client(base_url=ready.url) as client:
        client.post("/v1/chat/completions", json=BODY).raise_for_status()  # connect, warm up
        seconds = []
        for _ in range(9):
            started = time.perf_counter()
            client.post("/v1/chat/completions", json=BODY).raise_for_status()
            seconds.append(time.perf_counter() - started)
    assert statistics.median(seconds) < 0.030


def test_a_whole_answer_keeps_its_length(ready: Proxy) -> None:
    """A non-streamed answer goes on with the job's Content-Length, not re-chunked."""
    answer = httpx.post(f"{ready.url}/v1/chat/completions", json=BODY)
    assert answer.headers["content-length"] == str(len(answer.content))
    assert "transfer-encoding" not in answer.headers
