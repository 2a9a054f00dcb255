"""A paramiko Channel as the session's byte stream, against an in-process paramiko server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import paramiko
import pytest
from paramiko.common import AUTH_SUCCESSFUL, OPEN_SUCCEEDED

from saia.adapters.channel_stream import ChannelByteStream

Command = Callable[[paramiko.Channel], None]  # what the server runs on an exec channel


class ExecOnly(paramiko.ServerInterface):
    """Accepts any client and runs ``command`` on its exec channel, in a thread."""

    def __init__(self, command: Command) -> None:
        self.command = command

    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=self.command, args=(channel,), daemon=True).start()
        return True


@pytest.fixture(scope="module")
def host_key() -> paramiko.RSAKey:
    return paramiko.RSAKey.generate(2048)


@contextmanager
def channel_to(command: Command, host_key: paramiko.PKey) -> Iterator[paramiko.Channel]:
    """A client channel that ran ``session`` on a paramiko server running ``command``."""
    client_socket, server_socket = socket.socketpair()
    server = paramiko.Transport(server_socket)
    server.add_server_key(host_key)
    # With an event the server negotiates on its own thread, while the client connects.
    server.start_server(event=threading.Event(), server=ExecOnly(command))
    client = paramiko.Transport(client_socket)
    client.connect()
    client.auth_none("hub")
    channel = client.open_session()
    channel.exec_command("session")
    try:
        yield channel
    finally:
        client.close()
        server.close()


def echo(channel: paramiko.Channel) -> None:
    while data := channel.recv(65536):
        channel.sendall(data)
    channel.send_exit_status(0)
    channel.close()


def refuse(channel: paramiko.Channel) -> None:
    # paramiko answers the exec request only after the check that started this thread
    # returns: a channel closed before that answer would fail the client's exec instead.
    time.sleep(0.2)
    channel.sendall_stderr(b"saia-entrypoint: session is not implemented in this build\n")
    channel.send_exit_status(69)
    channel.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_bytes_larger_than_the_ssh_window_arrive_whole_and_in_order(
    host_key: paramiko.PKey,
) -> None:
    """16 MiB written without waiting (past paramiko's 2 MiB window) echo back intact."""
    payload = os.urandom(16 * 1024 * 1024)

    async def scenario(channel: paramiko.Channel) -> None:
        stream = ChannelByteStream(channel)

        async def read_back() -> bytes:
            received = bytearray()
            while len(received) < len(payload):
                received += await stream.read()
            return bytes(received)

        reader = asyncio.create_task(read_back())
        for start in range(0, len(payload), 300_000):  # sizes that cut across packets
            stream.write(payload[start : start + 300_000])
        await stream.drain()
        echoed = await reader
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        channel.shutdown_write()
        assert await stream.read() == b""

    with channel_to(echo, host_key) as channel:
        run(lambda: scenario(channel))


def test_the_end_of_a_channel_says_what_the_other_side_said(host_key: paramiko.PKey) -> None:
    """At the end, reads give b"" and why_closed tells the stderr and the exit status."""

    async def scenario(channel: paramiko.Channel) -> None:
        stream = ChannelByteStream(channel)
        assert await stream.read() == b""
        said = await stream.why_closed()
        assert said == (
            "stderr: saia-entrypoint: session is not implemented in this build; exit status 69"
        )

    with channel_to(refuse, host_key) as channel:
        run(lambda: scenario(channel))
