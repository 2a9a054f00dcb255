"""The proxy's HTTP server bounds the request head: one byte over the limit is a 431."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from saia.proxy.bounded_head import bounded
from tests.net import free_socket

LIMIT = 1024


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % len(body)})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    listener = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, http=bounded(LIMIT), lifespan="off",
                                           log_level="critical"))  # fmt: skip
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield listener.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)


def head(size: int) -> bytes:
    """A GET whose head, request line to blank line, is exactly ``size`` bytes."""
    start, end = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def exchange(port: int, *pieces: bytes) -> list[bytes]:
    """The status lines of what the server answers to ``pieces``, sent one by one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        for piece in pieces:
            try:
                client.sendall(piece)
            except OSError:
                break  # the server closed on a refusal: its answer is still to be read
            time.sleep(0.01)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)
        received = b""
        with contextlib.suppress(ConnectionResetError):  # unread pieces make the close a reset
            while chunk := client.recv(65536):
                received += chunk
    return [line for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.1")]


def test_a_head_of_exactly_the_limit_is_served_and_one_byte_more_is_refused(port: int) -> None:
    """The bound is exact: LIMIT bytes pass, LIMIT + 1 get 431."""
    assert exchange(port, head(LIMIT)) == [b"HTTP/1.1 200 OK"]
    assert exchange(port, head(LIMIT + 1)) == [b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_a_huge_head_is_refused_at_once_whatever_its_size(port: int) -> None:
    """Two megabytes of head in many pieces are refused after the first over the limit."""
    pieces = [b"GET / HTTP/1.1\r\nX-Pad: "] + [b"a" * 65536] * 32
    assert exchange(port, *pieces) == [b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_the_head_is_counted_across_pieces_and_the_body_is_not_part_of_it(port: int) -> None:
    """A head split byte by byte at its end, with a body larger than the limit, is served."""
    body = b"b" * (4 * LIMIT)
    request = head(LIMIT - len(b"Content-Length: 4096\r\n")).replace(
        b"\r\n\r\n", b"\r\nContent-Length: 4096\r\n\r\n"
    )
    assert len(request) == LIMIT
    pieces = [request[:-3], request[-3:-2], request[-2:-1], request[-1:], body]
    assert exchange(port, *pieces) == [b"HTTP/1.1 200 OK"]


def test_each_request_on_a_kept_connection_has_its_own_bound(port: int) -> None:
    """Two heads at the limit on one connection are both served; a third one over is not."""
    answers = exchange(port, head(LIMIT), head(LIMIT), head(LIMIT + 1))
    assert answers == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK",
                       b"HTTP/1.1 431 Request Header Fields Too Large"]  # fmt: skip
