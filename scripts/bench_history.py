#!/usr/bin/env python3
"""History figures: what a start costs does not grow with the log (persisted projections).

    .venv/bin/python scripts/bench_history.py [--quick] [--workdir DIR] [--parts PART ...]

On SQLite, the embedded default store. The machine is shared and noisy, so a
figure is a ratio against a baseline measured in the same run wherever one can be:

- restart: a log of 20,000 and one of 400,000 recorded requests (each a
  Request.Started and a Request.Finished or Rejected; 300 users with an API key
  each, 4 services, a job per service and day with heartbeats), its projections
  brought up to date once; then the wall clock of ``saia status`` followed by
  ``saia keys list``, each a process of its own, as an operator runs them.
  Median of a few runs, the two sizes interleaved. Target: the larger within 1.5
  times the smaller. For contrast, the same pair of commands once on the log
  without projections (the first ``saia status`` builds them from the log).
- catch-up: a fresh ProjectionRunner over all three projections (service state,
  API keys, accounting) catching up a log of over 1,000,000 events from zero into
  a scratch SQLite file, checkpoint included, against reading and decoding the
  same rows (select_notifications and mapper.to_domain_event). Target: at least
  50,000 events/s; the ratio to read+decode is shown.
- serve: ``saia serve`` on the real dev cluster (scripts/dev-cluster; brought up
  if it is down, and down again at the end only then), login-node placement, one
  test service at minimum_number_instances = 1. The first ``saia serve`` starts
  its job and is stopped (SIGTERM; the job goes on in Slurm); requests from
  1,000 users over 365 days are then appended to its log, and the projections
  brought up to date as the stopped hub's checkpoint would have left them. Then
  the time from starting ``saia serve`` to the first 200 answer of a chat
  completion sent in a tight loop, with 1M and with 10M requests in the log
  (median of a few starts), against the same start with the small log before
  them; and the peak resident memory (VmHWM) of the serving process. Targets:
  under 2 s with both, and under 300 MB with 10M. The job is cancelled at the
  end.

``--quick`` uses smaller sizes (serve: 100,000 and 1,000,000 requests) and fewer
repeats. Prints a table and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import orjson
from benchmeasure import median_of, read_and_decode_rate
from benchtable import Row, print_table
from eventsourcing.domain import Aggregate

from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog, MemoryStore, SqliteStore
from saia.domain.job import DrainReason, FinalState, Job
from saia.domain.key import ApiKey
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.hub import Hub
from saia.projections.runner import ProjectionRunner
from saia.replay.rebuild import projections

REPO = Path(__file__).resolve().parents[1]
SAIA = REPO / ".venv" / "bin" / "saia"
DEV_CLUSTER = REPO / "scripts" / "dev-cluster"
TRANSACTION = 200_000  # rows per transaction when a log is written directly
MB = 1_000_000

RESTART_TARGET = 1.5  # the larger history's restart within this many times the smaller's
CATCH_UP_TARGET = 50_000  # events/s
SERVE_START_TARGET = 2.0  # seconds from process start to the first answer
SERVE_MEMORY_TARGET = 300 * MB  # bytes, peak resident

# The realistic mix of the restart and catch-up logs.
MIX_USERS = 300
MIX_SERVICES = 4
MIX_REQUESTS_PER_DAY = 2_000
MIX_HEARTBEATS_PER_DAY = 24
# The serve log: "10M recorded requests from 1,000 users over 365 days".
SERVE_USERS = 1_000
SERVE_DAYS = 365
SERVE_PORTS = (21300, 21399)
SERVE_JOB_MINUTES = 240  # the job must outlive the whole run; it is cancelled at the end
COLD_START_TIMEOUT = 300.0
START_TIMEOUT = 120.0
PARTS = ("restart", "catch-up", "serve")


@dataclass(frozen=True)
class Size:
    restart: tuple[int, int]  # requests in the smaller and the larger log
    restart_repeats: int
    catch_up_requests: int
    catch_up_repeats: int
    serve: tuple[int, int]  # requests in the log for the two timed serve starts
    serve_repeats: int


FULL = Size(restart=(20_000, 400_000), restart_repeats=5, catch_up_requests=500_000,
            catch_up_repeats=3, serve=(1_000_000, 10_000_000), serve_repeats=5)
QUICK = Size(restart=(20_000, 100_000), restart_repeats=3, catch_up_requests=100_000,
             catch_up_repeats=2, serve=(100_000, 1_000_000), serve_repeats=3)


def say(message: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Phases:
    """How long each phase of the run took, for the report."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - began
            say(f"{name}: {self.seconds[name]:.1f} s")



def db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
               if p.exists())  # fmt: skip


# -- writing logs ------------------------------------------------------------------------


Stored = tuple[str, int, str, bytes]  # a stored_events row: originator id (hex), version,
# topic, state


class RequestRows:
    """Requests as rows of the log, spread evenly over ``days`` from ``first_day``: request
    ``i`` of ``total`` arrives at ``first_day + i * days / total``.

    Encoding ten million requests through the domain and the mapper would take longer
    than what is measured, so each day has templates, one per user, service and
    outcome (answered, answered with 500, refused with 429), encoded by the log's own
    mapper the first time that day needs them and reused under fresh request ids
    (random, as the proxy's uuid4 ids are, so that the log's index grows as it does
    in service).
    """

    def __init__(
        self, log: EventLog, *, total: int, users: int, services: Sequence[str],
        first_day: datetime, days: int, job_of: Callable[[str], str],
    ) -> None:  # fmt: skip
        self._to_stored = log.mapper.to_stored_event
        self.total = total
        self.users = [f"user{n:04d}" for n in range(users)]
        self.services = list(services)
        self.first_day = first_day
        self.days = days
        self._job_of = job_of
        self._day = -1
        self._templates: dict[tuple[int, str, int], tuple[str, bytes, str, bytes]] = {}

    def day_of(self, i: int) -> int:
        return i * self.days // self.total

    def at(self, i: int) -> datetime:
        return self.first_day + timedelta(seconds=i * self.days * 86_400 / self.total)

    def rows(self, start: int, stop: int) -> Iterator[Stored]:
        ids = os.urandom(16 * (stop - start)).hex()
        users, services = self.users, self.services
        per_round = len(users) * len(services)
        for n, i in enumerate(range(start, stop)):
            day = self.day_of(i)
            if day != self._day:
                self._day, self._templates = day, {}
            user = i % len(users)
            service = services[(i // len(users)) % len(services)]
            outcome = (i // per_round) % 40  # 0: refused, 1: answered with 500, else 200
            outcome = min(outcome, 2)
            key = (user, service, outcome)
            template = self._templates.get(key)
            if template is None:
                template = self._templates[key] = self._template(i, users[user], service,
                                                                 user, outcome)  # fmt: skip
            started_topic, started, ended_topic, ended = template
            request_id = ids[32 * n : 32 * n + 32]
            yield request_id, 1, started_topic, started
            yield request_id, 2, ended_topic, ended

    def _template(
        self, i: int, user: str, service: str, number: int, outcome: int
    ) -> tuple[str, bytes, str, bytes]:
        at = self.at(i)
        job = self._job_of(service)
        request = Request.start(uuid4(), user, service, job, 200 + 37 * number % 4000, at)
        done = at + timedelta(seconds=0.5 + number % 20)
        if outcome == 0:
            request.reject(429, "rate limit", done)
        else:
            request.finish(500 if outcome == 1 else 200, job, 400 + 53 * number % 20_000,
                           10 + number % 900, 20 + 7 * number % 700, done)  # fmt: skip
        started, ended = (self._to_stored(e) for e in request.collect_events())
        return started.topic, started.state, ended.topic, ended.state


class RawLog:
    """The log's own table, written directly in large transactions: the fast way to a long
    history (nothing else may have the file open meanwhile)."""

    def __init__(self, path: Path) -> None:
        EventLog(SqliteStore(str(path))).close()  # the library's table, in WAL mode
        self._connection = sqlite3.connect(path, isolation_level=None)
        self._connection.execute("PRAGMA synchronous=OFF")  # this connection's, not the file's
        self._connection.execute("PRAGMA cache_size=-1000000")  # 1 GB: the index grows randomly

    def insert(self, rows: Iterable[Stored]) -> int:
        written = 0
        batch: list[Stored] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= TRANSACTION:
                written += self._commit(batch)
                batch = []
        return written + self._commit(batch)

    def _commit(self, batch: list[Stored]) -> int:
        if batch:
            self._connection.execute("BEGIN")
            self._connection.executemany("INSERT INTO stored_events VALUES (?,?,?,?)", batch)
            self._connection.execute("COMMIT")
        return len(batch)

    def close(self) -> None:
        self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._connection.close()


def stored_rows(log: EventLog, *aggregates: Aggregate) -> list[Stored]:
    to_stored = log.mapper.to_stored_event
    rows = []
    for aggregate in aggregates:
        for event in aggregate.collect_events():
            s = to_stored(event)
            rows.append((s.originator_id.hex, s.originator_version, s.topic, s.state))
    return rows


def write_mix(path: Path, requests: int) -> int:
    """A realistic log of ``requests`` requests: services, users with keys, jobs with
    heartbeats, requests, in time order; returns how many events it holds."""
    days = max(1, -(-requests // MIX_REQUESTS_PER_DAY))
    first_day = datetime(2026, 1, 1, tzinfo=UTC)
    raw = RawLog(path)
    log = EventLog(SqliteStore(str(path)))  # for its mapper; nothing is written through it
    try:
        return raw.insert(_mix(log, requests, days, first_day))
    finally:
        log.close()
        raw.close()


def _mix(log: EventLog, requests: int, days: int, first_day: datetime) -> Iterator[Stored]:
    specs = [ServiceSpec.from_dict({
        "id": f"svc{n}", "sbatch": "testservice.sbatch", "minimum_number_instances": 1,
        "maximum_number_instances": 4, "job_expiry_time": 1440,
        "port_min": 20000 + 100 * n, "port_max": 20099 + 100 * n,
    }) for n in range(MIX_SERVICES)]  # fmt: skip
    yield from stored_rows(log, *(Service.register(spec, first_day) for spec in specs))
    yield from stored_rows(log, *(
        ApiKey.issue(uuid4(), f"user{n:04d}", secrets.token_hex(32), "bench",
                     first_day + timedelta(seconds=n))
        for n in range(MIX_USERS)
    ))  # fmt: skip
    jobs: dict[str, Job] = {}
    stream = RequestRows(log, total=requests, users=MIX_USERS, services=[s.id for s in specs],
                         first_day=first_day, days=days,
                         job_of=lambda service: str(jobs[service].id))  # fmt: skip
    for day in range(days):
        start = first_day + timedelta(days=day)
        for n, spec in enumerate(specs):
            old = jobs.get(spec.id)
            job = Job.request(spec.id, spec.port_min + day % 100, f"{spec.id}-{day}",
                              spec.walltime, start, replaces=old.id if old else None,
                              reason="minimum")  # fmt: skip
            job.submitted(str(1000 + day * MIX_SERVICES + n), start + timedelta(seconds=1))
            job.started(f"node{n % 4 + 1}", start + timedelta(seconds=5))
            job.became_ready(start + timedelta(seconds=60))
            jobs[spec.id] = job
            yield from stored_rows(log, job)
            if old is not None:
                old.drain(DrainReason.EXPIRING, start + timedelta(seconds=61))
                old.request_cancel("replaced", start + timedelta(seconds=62))
                old.end(FinalState.CANCELLED, start + timedelta(seconds=70))
                yield from stored_rows(log, old)
        first, last = day * requests // days, (day + 1) * requests // days
        for hour in range(MIX_HEARTBEATS_PER_DAY):
            lo = first + (last - first) * hour // MIX_HEARTBEATS_PER_DAY
            hi = first + (last - first) * (hour + 1) // MIX_HEARTBEATS_PER_DAY
            yield from stream.rows(lo, hi)
            beat = start + timedelta(hours=24 * (hour + 1) / MIX_HEARTBEATS_PER_DAY,
                                     seconds=-1)  # fmt: skip
            for job in jobs.values():
                job.heartbeat(True, 0.002, beat)
            yield from stored_rows(log, *jobs.values())


def bring_up_to_date(path: Path) -> tuple[float, float, int]:
    """What a hub's checkpoint leaves: service state, keys and accounting at the end of the
    log. Returns the seconds of refresh (state and keys) and of account, and the events."""
    hub = Hub(SqliteStore(str(path)))
    try:
        began = time.perf_counter()
        read = hub.refresh()
        refreshed = time.perf_counter()
        hub.account()
        hub.checkpoint()
        return refreshed - began, time.perf_counter() - refreshed, read
    finally:
        hub.close()


# -- restart cost ------------------------------------------------------------------------


def write_config(folder: Path, extra: str = "") -> Path:
    path = folder / "saia.toml"
    path.write_text(f'placement = "login-node"\n\n[store]\nbackend = "sqlite"\n'
                    f'path = "saia.db"\n{extra}', encoding="utf-8")  # fmt: skip
    return path


def cli_env(more: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "SAIA_LOG_LEVEL": "WARNING", **(more or {})}
    env.pop("SAIA_CONFIG", None)
    return env


def saia(config: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(SAIA), "--config", str(config), *args], capture_output=True,
                          text=True, env=env or cli_env(), check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"saia {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def status_and_keys(config: Path) -> float:
    """Seconds of ``saia status`` then ``saia keys list``, each its own process."""
    began = time.perf_counter()
    saia(config, "status")
    saia(config, "keys", "list")
    return time.perf_counter() - began


def restart_rows(size: Size, workdir: Path, phases: Phases) -> list[Row]:
    configs = []
    cold: list[float] = []
    for requests in size.restart:
        folder = workdir / f"restart-{requests}"
        folder.mkdir()
        with phases.timed(f"restart: write a log of {requests:,} requests"):
            events = write_mix(folder / "saia.db", requests)
        config = write_config(folder)
        say(f"restart: {events:,} events, {db_bytes(folder / 'saia.db') / MB:,.0f} MB")
        with phases.timed(f"restart: first status + keys list, {requests:,} (builds them)"):
            cold.append(status_and_keys(config))
        with phases.timed(f"restart: accounting brought up to date, {requests:,}"):
            bring_up_to_date(folder / "saia.db")
        services = len(orjson.loads(saia(config, "status", "--json")))
        keys = len(orjson.loads(saia(config, "keys", "list", "--json")))
        assert (services, keys) == (MIX_SERVICES, MIX_USERS), (services, keys)
        configs.append(config)
    with phases.timed("restart: timed runs"):
        small, large = median_of(size.restart_repeats,
                                 *(lambda c=c: status_and_keys(c) for c in configs))  # fmt: skip
    a, b = size.restart
    ratio = large / small
    return [
        Row(f"status + keys list, {b:,} requests", f"{large:.2f} s",
            f"{small:.2f} s ({a:,} requests)", f"{ratio:.2f}x", f"< {RESTART_TARGET}x",
            ratio < RESTART_TARGET),
        Row("  the same, projections absent (1 run)", f"{cold[1]:.2f} s",
            f"{cold[0]:.2f} s ({a:,} requests)", f"{cold[1] / cold[0]:.2f}x", "-", None),
    ]


# -- catch-up rate -----------------------------------------------------------------------



def catch_up_rate(log: EventLog, scratch: Path) -> float:
    """All three projections from zero into a fresh file, checkpointed at the end."""
    for leftover in (scratch, Path(f"{scratch}-journal")):
        leftover.unlink(missing_ok=True)
    db = ProjectionDb.scratch(str(scratch))
    try:
        runner = ProjectionRunner(log, db, projections())
        started = time.perf_counter()
        read = runner.catch_up()
        runner.checkpoint()
        elapsed = time.perf_counter() - started
    finally:
        db.close()
        scratch.unlink(missing_ok=True)
    assert read == log.last_position(), (read, log.last_position())
    return read / elapsed


@dataclass
class CatchUp:
    events: int
    read: float  # events/s read+decode


def catch_up_rows(size: Size, workdir: Path, phases: Phases) -> tuple[list[Row], CatchUp]:
    folder = workdir / "catch-up"
    folder.mkdir()
    path = folder / "saia.db"
    with phases.timed(f"catch-up: write a log of {size.catch_up_requests:,} requests"):
        events = write_mix(path, size.catch_up_requests)
    say(f"catch-up: {events:,} events")
    with phases.timed("catch-up: timed runs"), EventLog(SqliteStore(str(path))) as log:
        read, rate = median_of(size.catch_up_repeats, lambda: read_and_decode_rate(log),
                               lambda: catch_up_rate(log, folder / "scratch.db"))  # fmt: skip
    shutil.rmtree(folder)
    row = Row(f"catch-up 3 projections, {events:,} ev", f"{rate:,.0f} events/s",
              f"{read:,.0f} events/s read+decode", f"{rate / read:.2f}",
              f">= {CATCH_UP_TARGET:,} ev/s", rate >= CATCH_UP_TARGET)  # fmt: skip
    return [row], CatchUp(events, read)


# -- saia serve on the dev cluster -------------------------------------------------------


class DevCluster:
    """scripts/dev-cluster, left as found: brought up if down, and then down at the end."""

    def __init__(self) -> None:
        self.started_here = False
        self.env: dict[str, str] = {}

    def up(self) -> None:
        status = subprocess.run([str(DEV_CLUSTER), "status"], capture_output=True, check=False)
        if status.returncode != 0:
            say("serve: the dev cluster is down; bringing it up (and down at the end)")
            self.started_here = True
            subprocess.run([str(DEV_CLUSTER), "up"], check=True, capture_output=True)
        else:
            say("serve: the dev cluster is up (it stays up)")
        env_file = subprocess.run([str(DEV_CLUSTER), "env"], capture_output=True, text=True,
                                  check=True).stdout.strip()  # fmt: skip
        for line in Path(env_file).read_text(encoding="utf-8").splitlines():
            words = shlex.split(line, comments=True)
            if len(words) == 2 and words[0] == "export":
                name, _, value = words[1].partition("=")
                self.env[name] = value

    def restore(self) -> None:
        if self.started_here:
            subprocess.run([str(DEV_CLUSTER), "down"], check=False, capture_output=True)
            say("serve: the dev cluster is down again, as it was")

    def run(self, *argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True,
                              env={**os.environ, **self.env}).stdout  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


@dataclass
class Start:
    seconds: float  # from Popen to the first 200
    peak: int  # bytes
    refused: int  # attempts before: connection refused or not 200


class ServeBench:
    def __init__(self, workdir: Path, cluster: DevCluster) -> None:
        self.folder = workdir / "serve"
        self.folder.mkdir()
        self.db = self.folder / "saia.db"
        self.cluster = cluster
        self.service = f"bench-history-{secrets.token_hex(3)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        self.body = {"model": self.service, "max_tokens": 8,
                     "messages": [{"role": "user", "content": "How long is the log?"}]}
        self.starts = 0
        self.config = write_config(self.folder, f"""
[controller]
startup_interval = 0.25
sbatch_dir = "{REPO / 'sbatch'}"
job_output_dir = "{cluster.env['SAIA_JOB_OUTPUT_DIR']}"
job_python = "{REPO / '.venv' / 'bin' / 'python'}"

[proxy]
host = "127.0.0.1"
port = {self.port}
require_api_key = false
trusted_user_header = "x-user"

[[services]]
id = "{self.service}"
sbatch = "testservice.sbatch"
minimum_number_instances = 1
maximum_number_instances = 1
job_expiry_time = {SERVE_JOB_MINUTES}
port_min = {SERVE_PORTS[0]}
port_max = {SERVE_PORTS[1]}
""")

    def env(self) -> dict[str, str]:
        return cli_env({**self.cluster.env, "SAIA_LOG_LEVEL": "INFO"})

    def init(self) -> None:
        saia(self.config, "init", env=self.env())

    def alive_jobs(self) -> list[str]:
        """The service's jobs Slurm runs or queues ("id|state"); other tests on the shared
        cluster stop slurmctld now and then, so squeue is tried for up to a minute."""
        deadline = time.monotonic() + 60
        while True:
            try:
                out = self.cluster.run("squeue", "-h", "-a", f"--name=saia-{self.service}",
                                       "-o", "%i|%T")  # fmt: skip
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
                continue
            return [line for line in out.splitlines()
                    if line.endswith(("|RUNNING", "|PENDING", "|CONFIGURING"))]  # fmt: skip

    def cancel_jobs(self) -> None:
        """scancel every job of the service, until none is left (or two minutes passed)."""
        deadline = time.monotonic() + 120
        while True:
            subprocess.run(["scancel", f"--name=saia-{self.service}"], capture_output=True,
                           check=False, env={**os.environ, **self.cluster.env})  # fmt: skip
            try:
                left = self.alive_jobs()
            except subprocess.CalledProcessError as error:
                left = [f"unknown: {error.stderr.strip()}"]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(1)
        say(f"serve: jobs of {self.service} cancelled; left in the queue: {left or 'none'}")

    def start(self, timeout: float, linger: float = 2.0) -> Start:
        """``saia serve`` from Popen to the first 200 of a request sent in a tight loop; it
        then serves a few more requests for ``linger`` seconds and is stopped with SIGTERM."""
        self.starts += 1
        out = self.folder / f"serve-{self.starts}.log"
        with out.open("wb") as log_file:
            began = time.perf_counter()
            process = subprocess.Popen([str(SAIA), "--config", str(self.config), "serve"],
                                       env=self.env(), stdout=log_file,
                                       stderr=subprocess.STDOUT)  # fmt: skip
            try:
                refused, seconds = self._first_answer(process, began, timeout, out)
                peak = peak_rss(process.pid)
                with httpx.Client(timeout=30) as client:
                    end = time.monotonic() + linger
                    while time.monotonic() < end:
                        client.post(self.url, json=self.body, headers={"x-user": "bench"})
                        peak = max(peak, peak_rss(process.pid))
                        time.sleep(0.1)
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    raise RuntimeError(f"saia serve did not stop on SIGTERM; see {out}") from None
        if process.returncode != 0:
            raise RuntimeError(f"saia serve exited {process.returncode}; see {out}")
        return Start(seconds, peak, refused)

    def _first_answer(
        self, process: subprocess.Popen[bytes], began: float, timeout: float, out: Path
    ) -> tuple[int, float]:
        refused = 0
        with httpx.Client(timeout=timeout) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"saia serve exited {process.returncode}: "
                                       f"{out.read_text(errors='replace')[-3000:]}")  # fmt: skip
                try:
                    answer = client.post(self.url, json=self.body, headers={"x-user": "bench"})
                except httpx.TransportError:
                    answer = None
                if answer is not None and answer.status_code == 200:
                    return refused, time.perf_counter() - began
                refused += 1
                if time.perf_counter() - began > timeout:
                    status = "no answer" if answer is None else answer.status_code
                    raise RuntimeError(f"no 200 within {timeout:g} s ({status}); see {out}")
                time.sleep(0.01)

    def job_id(self) -> str:
        """The service's one live job, as the log has it (the Request's ``job`` field)."""
        hub = Hub(SqliteStore(str(self.db)))
        try:
            hub.refresh()
            jobs = list(hub.state.services[self.service].jobs)
        finally:
            hub.close()
        assert len(jobs) == 1, jobs
        return str(jobs[0])


@dataclass
class Scale:
    requests: int
    events: int
    write_seconds: float
    read: int  # events the catch-up read
    refresh_seconds: float
    account_seconds: float
    db_bytes: int
    start: Start


def serve_rows(
    size: Size, workdir: Path, phases: Phases, catch_up: CatchUp | None
) -> list[Row]:
    cluster = DevCluster()
    with phases.timed("serve: dev cluster up"):
        cluster.up()
    bench = ServeBench(workdir, cluster)
    try:
        return _serve_rows(size, bench, phases, catch_up)
    finally:
        with phases.timed("serve: clean-up (scancel, cluster)"):
            bench.cancel_jobs()
            cluster.restore()


def _serve_rows(
    size: Size, bench: ServeBench, phases: Phases, catch_up: CatchUp | None
) -> list[Row]:
    bench.init()
    with phases.timed("serve: first start, its job started from zero"):
        cold = bench.start(COLD_START_TIMEOUT)
    say(f"serve: first answer {cold.seconds:.1f} s after the start (job started from zero)")
    jobs = bench.alive_jobs()
    if len(jobs) != 1:
        raise RuntimeError(f"after SIGTERM, the service's jobs in Slurm: {jobs} (expected one)")
    say(f"serve: stopped; its job is still in Slurm: {jobs[0]}")
    with phases.timed("serve: timed starts, small log"):
        small = best_start(bench, size.serve_repeats)
    small_events = EventLog(SqliteStore(str(bench.db)))
    with small_events:
        base_events = small_events.last_position()
    say(f"serve: small log ({base_events} events): {small.seconds:.2f} s, "
        f"peak {small.peak / MB:.1f} MB")
    job = bench.job_id()
    now = datetime.now(UTC)
    stream = RequestRows(EventLog(MemoryStore()), total=size.serve[-1], users=SERVE_USERS,
                         services=[bench.service], days=SERVE_DAYS,
                         first_day=now - timedelta(days=SERVE_DAYS),
                         job_of=lambda _service: job)  # fmt: skip
    scales: list[Scale] = []
    written = 0
    for requests in size.serve:
        with phases.timed(f"serve: append requests up to {requests:,}"):
            began = time.perf_counter()
            raw = RawLog(bench.db)
            try:
                events = raw.insert(_chunks(stream, written, requests))
            finally:
                raw.close()
            write_seconds = time.perf_counter() - began
        say(f"serve: wrote {events:,} events ({events / write_seconds:,.0f} events/s)")
        written = requests
        with phases.timed(f"serve: projections brought up to date, {requests:,}"):
            refresh, account, read = bring_up_to_date(bench.db)
        say(f"serve: refresh {refresh:.1f} s ({read:,} events, {read / refresh:,.0f}/s), "
            f"account {account:.1f} s ({read / account:,.0f}/s)")
        size_now = db_bytes(bench.db)
        say(f"serve: db {size_now / MB:,.0f} MB (of which WAL "
            f"{db_bytes(Path(f'{bench.db}-wal')) / MB:,.0f} MB)")
        with phases.timed(f"serve: timed starts, {requests:,} requests"):
            start = best_start(bench, size.serve_repeats)
        say(f"serve: {requests:,} requests: {start.seconds:.2f} s, peak {start.peak / MB:.1f} MB")
        scales.append(Scale(requests, events, write_seconds, read, refresh, account, size_now,
                            start))
    return serve_table(small, scales, catch_up)


def _chunks(stream: RequestRows, start: int, stop: int) -> Iterator[Stored]:
    step = TRANSACTION // 2
    for lo in range(start, stop, step):
        yield from stream.rows(lo, min(stop, lo + step))


def best_start(bench: ServeBench, repeats: int) -> Start:
    """The median start time of a few starts, and the highest peak memory among them."""
    starts = [bench.start(START_TIMEOUT) for _ in range(repeats)]
    seconds = statistics.median(s.seconds for s in starts)
    say("serve: starts " + ", ".join(f"{s.seconds:.2f} s ({s.refused} tries before, "
                                     f"{s.peak / MB:.0f} MB)" for s in starts))  # fmt: skip
    return Start(seconds, max(s.peak for s in starts), max(s.refused for s in starts))


def serve_table(small: Start, scales: list[Scale], catch_up: CatchUp | None) -> list[Row]:
    rows = []
    baseline = f"{small.seconds:.2f} s (small log)"
    for scale in scales:
        seconds = scale.start.seconds
        rows.append(Row(f"serve start to first 200, {scale.requests:,} req", f"{seconds:.2f} s",
                        baseline, f"{seconds / small.seconds:.2f}x", f"< {SERVE_START_TARGET:g} s",
                        seconds < SERVE_START_TARGET))  # fmt: skip
    for scale in scales:
        peak = scale.start.peak
        last = scale is scales[-1]
        rows.append(Row(f"serve peak RSS, {scale.requests:,} req", f"{peak / MB:.1f} MB",
                        f"{small.peak / MB:.1f} MB (small log)", f"{peak / small.peak:.2f}x",
                        f"< {SERVE_MEMORY_TARGET // MB} MB" if last else "-",
                        peak < SERVE_MEMORY_TARGET if last else None))  # fmt: skip
    previous = 0
    for scale in scales:
        events = scale.read
        for what, seconds in (("refresh", scale.refresh_seconds),
                              ("account", scale.account_seconds)):
            rate = events / seconds
            rows.append(Row(f"hub {what} after +{scale.requests - previous:,} req",
                            f"{rate:,.0f} events/s",
                            "-" if catch_up is None else f"{catch_up.read:,.0f} read+decode",
                            "-" if catch_up is None else f"{rate / catch_up.read:.2f}",
                            "-", None))  # fmt: skip
        previous = scale.requests
    last = scales[-1]
    rows.append(Row(f"db size, {last.requests:,} requests", f"{last.db_bytes / MB:,.0f} MB",
                    "-", f"{last.db_bytes / last.requests:.0f} B/req", "-", None))
    return rows


# -- report ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--workdir", type=Path, help="where the logs go (default: under /tmp)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which figures (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (its logs)")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("saia").setLevel(logging.ERROR)  # progress of long catch-ups
    parent = args.workdir or Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-history-", dir=parent))
    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
          f"{'quick' if args.quick else 'full'} run, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{n:.2f}' for n in os.getloadavg())}, workdir {workdir}", flush=True)
    phases = Phases()
    rows: list[Row] = []
    began = time.perf_counter()
    try:
        if "restart" in args.parts:
            rows += restart_rows(size, workdir, phases)
        catch_up = None
        if "catch-up" in args.parts:
            catch_up_table, catch_up = catch_up_rows(size, workdir, phases)
            rows += catch_up_table
        if "serve" in args.parts:
            rows += serve_rows(size, workdir, phases, catch_up)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("phase                                                          seconds")
    for name, seconds in phases.seconds.items():
        print(f"  {name:<60} {seconds:8.1f}")
    print(f"  {'total':<60} {time.perf_counter() - began:8.1f}")
    print()
    print_table(rows)
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
