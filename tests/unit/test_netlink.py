"""The delaying relay of tests/netlink.py, between an asyncio client and server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests import netlink
from tests.net import free_port
from tests.netlink import Address, DelayingRelay

DELAY = 0.020
SLACK = 0.010  # what a loaded machine may add to a round trip beyond the delays

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[Address]:
    listening = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        host, port = listening.sockets[0].getsockname()[:2]
        yield host, port
    finally:
        listening.close()


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    relay: DelayingRelay


@asynccontextmanager
async def through_relay(
    handler: Handler, delay: float = DELAY, max_held: int = netlink.MAX_HELD
) -> AsyncIterator[Connection]:
    """A connection through a relay to a server running ``handler``."""
    async with (
        server(handler) as target,
        DelayingRelay(("127.0.0.1", 0), target, delay, max_held) as relay,
    ):
        reader, writer = await asyncio.open_connection(*relay.address)
        try:
            yield Connection(reader, writer, relay)
        finally:
            writer.close()


def test_a_round_trip_takes_twice_the_delay() -> None:
    """An echo through the relay comes back after the delay each way, and little more."""

    async def pings() -> list[float]:
        async with through_relay(echo) as connection:
            reader, writer = connection.reader, connection.writer
            times = []
            for n in range(20):
                started = time.monotonic()
                writer.write(b"ping %d\n" % n)
                assert await reader.readline() == b"ping %d\n" % n
                times.append(time.monotonic() - started)
            return times

    times = netlink.run(pings())
    assert min(times) >= 2 * DELAY
    assert statistics.median(times) < 2 * DELAY + SLACK, times


def test_chunks_sent_close_together_each_take_the_delay_only() -> None:
    """Ten pings sent 2 ms apart come back 2 ms apart, each after one round trip: a chunk
    does not wait for the one before it to be delayed first."""

    async def burst() -> list[float]:
        async with through_relay(echo) as connection:
            reader, writer = connection.reader, connection.writer
            sent = []
            for n in range(10):
                sent.append(time.monotonic())
                writer.write(b"%d\n" % n)
                await asyncio.sleep(0.002)
            back = []
            for n in range(10):
                assert await reader.readline() == b"%d\n" % n
                back.append(time.monotonic())
            return [b - s for s, b in zip(sent, back, strict=True)]

    times = netlink.run(burst())
    assert min(times) >= 2 * DELAY
    assert statistics.median(times) < 2 * DELAY + SLACK, times
    assert max(times) < 2 * DELAY + 2 * SLACK, times


def test_a_large_transfer_arrives_whole_and_in_order_both_ways() -> None:
    """8 MiB each way, through a relay that may hold 256 KiB a direction: every byte, in order."""
    payload = os.urandom(8 * 1024 * 1024)

    async def transfer() -> bytes:
        async with through_relay(echo, delay=0.001, max_held=256 * 1024) as connection:
            reader, writer = connection.reader, connection.writer

            async def send() -> None:
                for start in range(0, len(payload), 100_000):
                    writer.write(payload[start:start + 100_000])
                    await writer.drain()
                writer.write_eof()

            sending = asyncio.create_task(send())
            back = await reader.read()  # up to the end, which the echo passes on
            await sending
            return back

    back = netlink.run(asyncio.wait_for(transfer(), 60))
    assert len(back) == len(payload)
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()


def test_a_half_close_passes_through_after_the_delay_and_the_other_way_goes_on() -> None:
    """The client's end of sending reaches the server a delay later; the server's answer
    and then its own end still come back."""

    async def answer_at_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heard = await reader.read()  # until the client's half-close
        writer.write(b"heard " + heard)
        await writer.drain()
        writer.close()

    async def half_close() -> tuple[bytes, float]:
        async with through_relay(answer_at_end) as connection:
            reader, writer = connection.reader, connection.writer
            started = time.monotonic()
            writer.write(b"all of it")
            writer.write_eof()
            answer = await reader.read()
            return answer, time.monotonic() - started

    answer, took = netlink.run(asyncio.wait_for(half_close(), 10))
    assert answer == b"heard all of it"
    assert 2 * DELAY <= took < 2 * DELAY + SLACK


def test_a_reset_on_one_side_cuts_the_other() -> None:
    """A server that aborts its connection: the client's connection ends too."""

    async def abort(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.transport.abort()

    async def cut() -> bytes:
        async with through_relay(abort) as connection:
            reader, writer = connection.reader, connection.writer
            writer.write(b"hello\n")
            try:
                return await reader.read()
            except ConnectionResetError:
                return b""

    assert netlink.run(asyncio.wait_for(cut(), 10)) == b""


def test_a_refused_target_closes_the_accepted_connection() -> None:
    """Nobody listens at the target: the client's connection is closed, nothing hangs."""

    async def refused() -> bytes:
        nobody = ("127.0.0.1", free_port())
        async with DelayingRelay(("127.0.0.1", 0), nobody, DELAY) as relay:
            reader, writer = await asyncio.open_connection(*relay.address)
            try:
                return await reader.read()
            except ConnectionResetError:
                return b""
            finally:
                writer.close()

    assert netlink.run(asyncio.wait_for(refused(), 10)) == b""


def test_closing_the_relay_ends_its_connections_and_stops_listening() -> None:
    """Open connections end at close, and the port refuses new ones."""

    async def close_under_a_connection() -> tuple[bytes, Address]:
        async with server(echo) as target:
            relay = DelayingRelay(("127.0.0.1", 0), target, DELAY)
            address = await relay.start()
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
            await relay.close()
            rest = await reader.read()
            writer.close()
            return rest, address

    rest, address = netlink.run(asyncio.wait_for(close_under_a_connection(), 10))
    assert rest == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2).close()


def test_both_sides_of_a_connection_have_nagle_off() -> None:
    """TCP_NODELAY on the accepted socket and on the one to the target: small writes
    leave at once, not after the peer's delayed ACK."""

    async def nodelay() -> list[int]:
        async with through_relay(echo, delay=0.0) as connection:
            reader, writer = connection.reader, connection.writer
            writer.write(b"x\n")
            await reader.readline()
            return [end.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    for end in connection.relay.sockets()]  # fmt: skip

    assert netlink.run(nodelay()) == [1, 1]


def test_a_new_delay_applies_to_the_chunks_that_come_after_it() -> None:
    """On an open connection, a shorter delay shortens the next round trips."""

    async def before_and_after() -> tuple[float, float]:
        async with through_relay(echo) as connection:
            times = []
            for delay in (DELAY, DELAY / 4):
                connection.relay.delay = delay
                started = time.monotonic()
                connection.writer.write(b"ping\n")
                await connection.reader.readline()
                times.append(time.monotonic() - started)
            return times[0], times[1]

    before, after = netlink.run(before_and_after())
    assert before >= 2 * DELAY
    assert DELAY / 2 <= after < DELAY / 2 + SLACK


def test_a_negative_delay_is_refused() -> None:
    """A relay cannot hand bytes over before they came."""
    with pytest.raises(ValueError, match="0 or more seconds"):
        DelayingRelay(("127.0.0.1", 0), ("127.0.0.1", 1), -0.001)


def test_the_command_line_relay_listens_says_where_takes_new_delays_and_stops() -> None:
    """``python -m tests.netlink``: its first line names its port, it relays, a line on its
    stdin sets a new delay, and SIGTERM ends it."""
    with socket.create_server(("127.0.0.1", 0)) as target:
        to = ("127.0.0.1", target.getsockname()[1])
        with netlink.relay_process(("127.0.0.1", 0), to, 5.0) as relay:
            relay.set_delay(0.005)
            with socket.create_connection(relay.address, timeout=5) as client:
                accepted, _ = target.accept()
                with accepted:
                    accepted.settimeout(2)  # far below the first delay of 5 s
                    client.sendall(b"through")
                    assert accepted.recv(100) == b"through"
        assert relay.process.returncode == 0


def test_the_command_line_refuses_an_address_without_a_port() -> None:
    """A listen address without its port is a usage error, not a guess."""
    argv = [sys.executable, "-m", "tests.netlink", "--listen", "127.0.0.1",
            "--to", "127.0.0.1:22", "--delay", "0.01"]  # fmt: skip
    done = subprocess.run(argv, cwd=netlink.REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "not HOST:PORT" in done.stderr
