#!/usr/bin/env python3
"""Proxy figures (issue 5): added latency, throughput and streaming against the backend.

    .venv/bin/python scripts/bench_proxy.py [--quick]

Three processes, so that client, proxy and backend do not share one GIL:

- the backends: two test services (``python -m saia.testservice``), "fast" with
  no token delay and "slow" with 20 ms before each streamed token;
- the proxy: ``create_app`` with ``HttpBackend`` and a ``GroupCommitter`` over a
  SQLite ``EventLog`` in a temporary folder, so every request is really recorded,
  under uvicorn on its own port (this script, started again with ``--serve``);
- the client: this process, plain asyncio streams and HTTP/1.1 over keep-alive
  connections, cheap enough not to be what is measured.

Every figure sends the same requests to the backend directly (the baseline) and
through the proxy, interleaved in the same run:

- added latency: sequential small chat completions (max_tokens 4, not streamed),
  a direct and a proxied one in turn; the proxy's median and p99 minus the
  direct ones. Targets: median under 3 ms, p99 under 15 ms.
- throughput: 8 and 32 concurrent clients, each sending chat completions one
  after the other for a fixed time, direct and proxied runs in turn; the median
  of the runs. Target: at least 40% of the direct rate, and no errors.
- streams: streamed chat completions of 12 tokens from the slow backend, a direct
  and a proxied one in turn. Time to the first event: the proxy's median minus
  the direct one, under 5 ms. The gaps between content events: the medians
  within 2 ms of each other (10% of the token delay).
- recording: the proxy's log, read after it shut down, holds two events (Started
  and Finished) for every proxied request.
- CPU: the proxy's process (all its threads) over the proxied throughput runs
  per request, beside the backend's over the direct runs; shown, no target.

Prints a table and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from uuid import uuid4

import orjson
import uvicorn
from benchtable import Row, print_table

from saia.adapters.store import EventLog, SqliteStore
from saia.demand import DemandTracker
from saia.domain.job import Phase
from saia.domain.spec import ServiceSpec
from saia.domain.state import JobView, ServiceView
from saia.projections.service_state import ServiceState
from saia.proxy.app import create_app
from saia.proxy.backend import HttpBackend
from saia.proxy.settings import ProxySettings
from saia.recording import GroupCommitter

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
FAST, SLOW = "fast", "slow"
TOKEN_DELAY = 0.020
STREAM_TOKENS = 12
SMALL = orjson.dumps(
    {"model": FAST, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}
)
STREAM = orjson.dumps(
    {
        "model": SLOW,
        "messages": [{"role": "user", "content": " ".join(["word"] * STREAM_TOKENS)}],
        "max_tokens": STREAM_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},  # as the proxy would add it
    }
)
CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class Size:
    latency_pairs: int
    throughput_seconds: float
    throughput_repeats: int
    stream_pairs: int


FULL = Size(latency_pairs=1000, throughput_seconds=3.0, throughput_repeats=3, stream_pairs=20)
QUICK = Size(latency_pairs=200, throughput_seconds=1.0, throughput_repeats=1, stream_pairs=6)



# -- the proxy process -------------------------------------------------------------------


def serve_proxy(port: int, db: str, fast_port: int, slow_port: int) -> None:
    """The proxy as it would run on the hub, before a hand-made routing table."""

    @dataclass
    class Table:
        state: ServiceState = field(default_factory=ServiceState)
        lock: threading.RLock = field(default_factory=threading.RLock)

    table = Table()
    now = time.time()
    for service, backend_port in ((FAST, fast_port), (SLOW, slow_port)):
        spec = ServiceSpec(id=service, sbatch="bench.sbatch", name=service.title())
        view = ServiceView(spec=spec, registered_at=now)
        job = JobView(id=uuid4(), service=service, token="t", port=backend_port,
                      phase=Phase.READY, requested_at=now, walltime=3600.0, node=HOST,
                      slurm_job_id="1", started_at=now, ready_at=now)  # fmt: skip
        view.jobs[job.id] = job
        table.state.services[service] = view
    log = EventLog(SqliteStore(db))
    recorder = GroupCommitter(log)
    app = create_app(table, DemandTracker(), recorder, HttpBackend(), ProxySettings(),
                     lambda: None)  # fmt: skip
    try:
        uvicorn.run(app, host=HOST, port=port, http="httptools", loop="uvloop",
                    log_level="warning", access_log=False)  # fmt: skip
    finally:
        recorder.close()
        log.close()


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def start(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def wait_until_up(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            connection = await Connection.open(port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            await asyncio.sleep(0.05)
            continue
        await connection.close()
        return


def commit_ms(folder: str, commits: int = 50) -> tuple[float, float]:
    """Median and worst of one-row commits there, as the log commits (WAL, synchronous=FULL).

    Every proxied request waits for its Started to be on disk before its first byte:
    this sets a floor under the added latency that no proxy code can lower.
    """
    connection = sqlite3.connect(os.path.join(folder, "sync.db"), isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE t (x BLOB)")
        times = []
        for _ in range(commits):
            started = time.perf_counter()
            connection.execute("INSERT INTO t VALUES (?)", (b"x" * 300,))
            times.append(1000 * (time.perf_counter() - started))
    finally:
        connection.close()
    return statistics.median(times), max(times)


def recorded_events(db: str) -> int:
    log = EventLog(SqliteStore(db))
    try:
        return log.last_position()
    finally:
        log.close()


# -- the client --------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    started: float  # perf_counter when the request was written
    ended: float
    chunks: list[tuple[float, bytes]]  # body pieces with the time each was read


class Connection:
    """One keep-alive HTTP/1.1 connection; answers by Content-Length or chunked."""

    def __init__(self, port: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:  # fmt: skip
        self.port = port
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(port, reader, writer)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()

    async def post(self, path: str, body: bytes) -> Answer:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {HOST}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        started = time.perf_counter()
        self._writer.write(head.encode() + body)
        reader = self._reader
        status_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        status = int(status_line.split()[1])
        headers = dict(line.lower().split(": ", 1) for line in header_lines if line)
        chunks: list[tuple[float, bytes]] = []
        if "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
            chunks.append((time.perf_counter(), data))
        else:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = (await reader.readexactly(size + 2))[:-2]
                chunks.append((time.perf_counter(), data))
        return Answer(status, started, time.perf_counter(), chunks)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Counter:
    proxied: int = 0  # requests sent through the proxy, for the recording check
    errors: int = 0


async def sequential(direct: Connection, proxy: Connection, body: bytes, pairs: int,
                     counter: Counter) -> tuple[list[Answer], list[Answer]]:  # fmt: skip
    """``pairs`` requests each way, in turn, on one connection each."""
    answers: tuple[list[Answer], list[Answer]] = ([], [])
    for _ in range(pairs):
        for connection, got in ((direct, answers[0]), (proxy, answers[1])):
            answer = await connection.post(CHAT, body)
            counter.proxied += connection is proxy
            counter.errors += answer.status != 200
            got.append(answer)
    return answers


@dataclass
class Spent:
    """CPU a server process used over throughput runs, and the requests it answered."""

    pid: int
    seconds: float = 0.0
    requests: int = 0

    def micros_a_request(self) -> float:
        return 1e6 * self.seconds / max(1, self.requests)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rate(port: int, clients: int, seconds: float, counter: Counter,
               proxied: bool, spent: Spent) -> float:  # fmt: skip
    """Requests per second from ``clients`` concurrent clients, each one after another."""
    connections = [await Connection.open(port) for _ in range(clients)]
    cpu_before = cpu_seconds(spent.pid)
    done = 0
    stop_at = 0.0

    async def client(connection: Connection) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            answer = await connection.post(CHAT, SMALL)
            counter.proxied += proxied
            if answer.status == 200:
                done += 1
            else:
                counter.errors += 1

    try:
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(client(c) for c in connections))
        elapsed = time.perf_counter() - started
        spent.seconds += cpu_seconds(spent.pid) - cpu_before
        spent.requests += done
        return done / elapsed
    finally:
        for connection in connections:
            await connection.close()


def first_event_ms(answer: Answer) -> float:
    return 1000 * (answer.chunks[0][0] - answer.started)


def content_gaps_ms(answer: Answer) -> list[float]:
    """Gaps between the arrivals of events that carry a token."""
    arrivals: list[float] = []
    pending = b""
    for at, data in answer.chunks:
        pending += data
        *events, pending = pending.split(b"\n\n")
        arrivals += [at for event in events if b'"content":' in event]
    return [1000 * (b - a) for a, b in pairwise(arrivals)]


# -- the figures -------------------------------------------------------------------------


async def measure(size: Size, direct_port: int, slow_port: int, proxy_port: int,
                  counter: Counter, pids: tuple[int, int]) -> list[Row]:  # fmt: skip
    """``pids``: the fast backend's and the proxy's processes, whose CPU is read."""
    direct, proxy = await Connection.open(direct_port), await Connection.open(proxy_port)
    slow_direct = await Connection.open(slow_port)
    try:
        await sequential(direct, proxy, SMALL, 50, counter)  # warm up both paths
        plain = await sequential(direct, proxy, SMALL, size.latency_pairs, counter)
        streams = await sequential(slow_direct, proxy, STREAM, size.stream_pairs, counter)
    finally:
        for connection in (direct, proxy, slow_direct):
            await connection.close()
    rows = latency_rows(*plain)
    backend, proxied = Spent(pids[0]), Spent(pids[1])
    for clients in (8, 32):
        rows.append(await throughput_row(size, clients, direct_port, proxy_port, counter,
                                         backend, proxied))  # fmt: skip
    proxy_us, backend_us = proxied.micros_a_request(), backend.micros_a_request()
    rows.append(Row("  CPU a request, both rates", f"{proxy_us:.0f} us proxy",
                    f"{backend_us:.0f} us backend direct", f"{proxy_us / backend_us:.1f}x",
                    "-", None))  # fmt: skip
    return rows + stream_rows(*streams)


def latency_rows(direct: list[Answer], proxied: list[Answer]) -> list[Row]:
    rows = []
    for name, q, target in (("median", 0.5, 3.0), ("p99", 0.99, 15.0)):
        base = quantile([1000 * (a.ended - a.started) for a in direct], q)
        through = quantile([1000 * (a.ended - a.started) for a in proxied], q)
        added = through - base
        rows.append(Row(f"added latency, {name}", f"+{added:.2f} ms ({through:.2f} ms)",
                        f"{base:.2f} ms direct", f"{through / base:.1f}x", f"< +{target:g} ms",
                        added < target))  # fmt: skip
    return rows


async def throughput_row(size: Size, clients: int, direct_port: int, proxy_port: int,
                         counter: Counter, backend: Spent, proxy: Spent) -> Row:  # fmt: skip
    errors_before = counter.errors
    direct: list[float] = []
    proxied: list[float] = []
    seconds = size.throughput_seconds
    for _ in range(size.throughput_repeats):
        direct.append(await rate(direct_port, clients, seconds, counter, False, backend))
        proxied.append(await rate(proxy_port, clients, seconds, counter, True, proxy))
    base, through = statistics.median(direct), statistics.median(proxied)
    errors = counter.errors - errors_before
    return Row(f"throughput, {clients} clients", f"{through:,.0f} req/s, {errors} errors",
               f"{base:,.0f} req/s direct", f"{through / base:.2f}", ">= 0.40, 0 errors",
               through / base >= 0.40 and errors == 0)  # fmt: skip


def stream_rows(direct: list[Answer], proxied: list[Answer]) -> list[Row]:
    base = statistics.median(first_event_ms(a) for a in direct)
    through = statistics.median(first_event_ms(a) for a in proxied)
    base_gap = statistics.median(g for a in direct for g in content_gaps_ms(a))
    gap = statistics.median(g for a in proxied for g in content_gaps_ms(a))
    return [
        Row("stream, first event", f"+{through - base:.2f} ms ({through:.2f} ms)",
            f"{base:.2f} ms direct", f"{through / base:.2f}", "< +5 ms", through - base < 5),
        Row("stream, gap between tokens", f"{gap:.2f} ms", f"{base_gap:.2f} ms direct",
            f"{gap / base_gap:.2f}", "within 2 ms", abs(gap - base_gap) <= 2.0),
    ]  # fmt: skip


# -- report -----------------------------------------------------------------------------


def run(size: Size) -> list[Row]:
    fast_port, slow_port, proxy_port = free_port(), free_port(), free_port()
    service = [sys.executable, "-m", "saia.testservice", "--host", HOST]
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as folder:
        db = os.path.join(folder, "log.db")
        processes = [
            start([*service, "--port", str(fast_port), "--model", FAST]),
            start([*service, "--port", str(slow_port), "--model", SLOW,
                   "--token-delay", str(TOKEN_DELAY)]),
            start([sys.executable, __file__, "--serve", str(proxy_port), db, str(fast_port),
                   str(slow_port)]),
        ]  # fmt: skip
        median, worst = commit_ms(folder)
        print(f"disk: a one-row SQLite commit (WAL, synchronous=FULL) in the log's folder "
              f"takes {median:.2f} ms (median of 50), {worst:.2f} ms at worst")  # fmt: skip
        counter = Counter()
        try:
            for port, process in zip((fast_port, slow_port, proxy_port), processes, strict=True):
                asyncio.run(wait_until_up(port, process))
            pids = (processes[0].pid, processes[2].pid)
            rows = asyncio.run(measure(size, fast_port, slow_port, proxy_port, counter, pids))
        finally:
            for process in reversed(processes):
                stop(process)
        events = recorded_events(db)
    expected = 2 * counter.proxied
    rows.append(Row("recorded events", f"{events:,}", f"{counter.proxied:,} proxied requests",
                    f"{events / expected:.2f}", "2 a request", events == expected))  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter runs")
    parser.add_argument("--serve", nargs=4, metavar=("PORT", "DB", "FAST", "SLOW"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.serve:
        port, db, fast, slow = args.serve
        serve_proxy(int(port), db, int(fast), int(slow))
        return 0
    size = QUICK if args.quick else FULL
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, "
          f"{'quick' if args.quick else 'full'} run: {size.latency_pairs} sequential pairs, "
          f"throughput {size.throughput_repeats} x {size.throughput_seconds:g} s each way, "
          f"{size.stream_pairs} stream pairs")  # fmt: skip
    rows = run(size)
    print()
    print_table(rows)
    return 0 if all(row.met for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
