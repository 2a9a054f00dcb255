"""A TCP relay that holds each direction's bytes for a fixed time: a link with latency.

Where the kernel has no ``netem`` queueing discipline, a link's latency has to be
made in user space. The relay listens on one address, connects each connection it
accepts to a target, and writes every chunk it reads from one side to the other
``delay`` seconds after the chunk arrived. A chunk never waits for an earlier one's
delay to pass again, so the relay adds the delay and no queueing, until it holds
``max_held`` bytes in one direction: then it stops reading, as a full link would.
The end of a direction (a half-close) is passed on after the same delay; a reset
or a broken pipe on either side ends the whole connection at once. The delay may
change while connections are open: chunks that arrive from then on get the new
one, and still leave after the chunks before them.

    python -m tests.netlink --listen 198.18.0.1:0 --to 127.0.0.1:2222 --delay 0.010

prints ``listening on HOST:PORT`` once it listens; each line of seconds on its
stdin sets a new delay, which it confirms with ``delay SECONDS``; it stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import selectors
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

Address = tuple[str, int]
T = TypeVar("T")

CHUNK = 64 * 1024
MAX_HELD = 4 * 1024 * 1024  # bytes in flight in one direction: 400 MB/s at 10 ms
SPIN = 0.0005  # seconds before a chunk's time when the relay stops sleeping
READY = "listening on "
REPO = Path(__file__).resolve().parents[1]


def precise_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers fire within microseconds of their time.

    The default selector, epoll, sleeps in whole milliseconds rounded up: a chunk
    would leave up to 1 ms late, half a millisecond on average. select() sleeps in
    microseconds, and costs nothing more for a relay's few sockets.
    """
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a precise loop."""
    with asyncio.Runner(loop_factory=precise_loop) as runner:
        return runner.run(main)


class DelayingRelay:
    """Carries each accepted connection to ``target``, each direction ``delay`` seconds late."""

    def __init__(
        self, listen: Address, target: Address, delay: float, max_held: int = MAX_HELD
    ) -> None:
        if max_held < 1:
            raise ValueError(f"max_held must be positive, not {max_held!r}")
        self.listen = listen
        self.target = target
        self.delay = delay
        self.max_held = max_held
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}

    @property
    def delay(self) -> float:
        """Seconds each direction holds a chunk; a new value applies to chunks yet to come."""
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"the delay must be 0 or more seconds, not {seconds!r}")
        self._delay = seconds

    @property
    def address(self) -> Address:
        """Where the relay listens (the port the system chose for port 0)."""
        if self._server is None:
            raise RuntimeError("the relay is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def sockets(self) -> list[socket.socket]:
        """The sockets of the open connections: the accepted one, and the one to the target."""
        return [end.get_extra_info("socket") for ends in self._connections.values() for end in ends]

    async def start(self) -> Address:
        self._server = await asyncio.start_server(self._accepted, *self.listen)
        return self.address

    async def close(self) -> None:
        """Stop listening and close every connection; bytes still held are dropped."""
        if self._server is not None:
            self._server.close()
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> DelayingRelay:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.close()

    async def _accepted(self, near: asyncio.StreamReader, near_out: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        assert this is not None  # a server's callback runs in a task of its own
        ends = self._connections[this] = [near_out]
        try:
            far, far_out = await asyncio.open_connection(*self.target)
            ends.append(far_out)
            for end in ends:
                end.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.TaskGroup() as directions:
                for source, sink in ((near, far_out), (far, near_out)):
                    line = _Line(self)
                    directions.create_task(line.receive(source))
                    directions.create_task(line.deliver(sink))
        except* OSError:  # the target refused, or a side reset: the other side is cut too
            for end in ends:
                end.transport.abort()
        finally:
            for end in ends:
                end.close()
            del self._connections[this]


class _Line:
    """One direction of a connection: the chunks in flight, each with the time it is due."""

    def __init__(self, relay: DelayingRelay) -> None:
        self.relay = relay
        self._chunks: deque[tuple[float, bytes]] = deque()  # (due, chunk); b"" is the end
        self._held = 0
        self._changed = asyncio.Event()

    async def receive(self, source: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._held >= self.relay.max_held:
                await self._change()
            chunk = await source.read(CHUNK)
            self._chunks.append((loop.time() + self.relay.delay, chunk))
            self._held += len(chunk)
            self._changed.set()
            if not chunk:
                return

    async def deliver(self, sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._chunks:
                await self._change()
            due, chunk = self._chunks[0]
            await _until(loop, due)
            self._chunks.popleft()
            self._held -= len(chunk)
            self._changed.set()
            if not chunk:
                if sink.can_write_eof():
                    sink.write_eof()
                return
            sink.write(chunk)
            await sink.drain()

    async def _change(self) -> None:
        # Event.set() wakes the waiters of the moment; clearing it later wakes nobody less.
        self._changed.clear()
        await self._changed.wait()


async def _until(loop: asyncio.AbstractEventLoop, due: float) -> None:
    """Wait until ``due`` on the loop's clock, within microseconds.

    A process that sleeps until a time wakes up late, by 0.2 ms on a virtual machine
    whose idle CPUs halt. So the relay sleeps until SPIN before the time and then
    yields to the loop, which goes on reading and writing, until the time has come.
    """
    early = due - loop.time()
    if early > SPIN:
        await asyncio.sleep(early - SPIN)
    while loop.time() < due:
        await asyncio.sleep(0)


class RelayProcess:
    """The relay in a process of its own, where no test's thread delays its timers."""

    def __init__(self, process: subprocess.Popen[str], address: Address) -> None:
        self.process = process
        self.address = address

    def set_delay(self, seconds: float) -> None:
        """A new delay, in force when this returns."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{seconds!r}\n")
        self.process.stdin.flush()
        confirmed = self.process.stdout.readline()
        if confirmed != f"delay {seconds!r}\n":
            raise RuntimeError(f"the relay answered {confirmed!r} to a delay of {seconds!r}")


@contextmanager
def relay_process(listen: Address, target: Address, delay: float) -> Iterator[RelayProcess]:
    """``python -m tests.netlink``, listening; terminated at the end."""
    argv = [sys.executable, "-m", "tests.netlink", "--listen", _text(listen),
            "--to", _text(target), "--delay", repr(delay)]  # fmt: skip
    with subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as process:  # fmt: skip
        assert process.stdout is not None
        try:
            line = process.stdout.readline()
            if not line.startswith(READY):
                raise RuntimeError(f"the relay did not start (exit {process.wait(timeout=10)})")
            yield RelayProcess(process, _address(line.removeprefix(READY).strip()))
        finally:
            process.terminate()


def _text(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


async def _serve(relay: DelayingRelay) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with relay:
        _say(f"{READY}{_text(relay.address)}")
        following = asyncio.create_task(_follow(relay))
        await stop.wait()
        following.cancel()


async def _follow(relay: DelayingRelay) -> None:
    """Each line of stdin sets a new delay, until stdin ends."""
    lines = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)
    while line := await lines.readline():
        try:
            relay.delay = float(line)
        except ValueError as error:
            sys.stderr.write(f"{error}\n")
            continue
        _say(f"delay {relay.delay!r}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    described = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m tests.netlink", description=__doc__,
                                     formatter_class=described)  # fmt: skip
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT",
                        help="where to listen (port 0: any free port)")  # fmt: skip
    parser.add_argument("--to", type=_address, required=True, metavar="HOST:PORT",
                        help="where each connection goes")  # fmt: skip
    parser.add_argument("--delay", type=float, required=True, metavar="SECONDS",
                        help="how long each direction holds its bytes")  # fmt: skip
    args = parser.parse_args(argv)
    run(_serve(DelayingRelay(args.listen, args.to, args.delay)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
