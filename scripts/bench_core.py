#!/usr/bin/env python3
"""Core figures (issue 2): recording, projection rebuild, planning.

    .venv/bin/python scripts/bench_core.py [--quick]

The machine is shared and noisy, so every figure is a ratio against a baseline
measured in the same run, interleaved with it, as the median of a few repeats:

- recording: request events (Request.Started and Request.Finished, two records
  per request) from 64 concurrent producers through the GroupCommitter into
  SQLite, as the proxy records them: Started handed over without waiting, both
  awaited before the response completes. Against raw sqlite3 inserts of the
  same serialised rows, 100 rows per transaction, into a table made with the
  library's own DDL, on the same disk, with the journal mode and synchronous
  setting read from the library's connection. Target: at least half the raw
  rate.
- rebuild: ServiceState and Accounting from a realistic log by the
  ProjectionRunner, against merely reading and decoding the same rows
  (select_notifications and mapper.to_domain_event). Target: at least a third.
- planning: saia.domain.policy.plan for 1,000 services of 10 jobs: under 50 ms,
  and 1,000 services within 12 times 100 services (linear would be 10). Each
  timed call starts with the CPU's L2 cache cleared, as a controller pass finds
  it after its other work: called back to back on one input, 100 services
  (0.6 MB) stay in a 1 MB L2 cache and 1,000 (6 MB) do not, and the ratio then
  measures that cache as much as plan(). That warm ratio is printed too.

Prints a table and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from benchmeasure import median_of, read_and_decode_rate
from benchtable import Row, print_table
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog, SqliteStore
from saia.domain.job import DrainReason, FinalState, Job, Phase
from saia.domain.policy import Observation, plan
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.domain.state import JobView, ServiceView
from saia.projections.accounting import Accounting
from saia.projections.runner import ProjectionRunner
from saia.projections.service_state import ServiceState
from saia.recording import GroupCommitter

REPO = Path(__file__).resolve().parents[1]
# Written before each timed plan() call: larger than any current core's L2 cache.
CACHE_CLEARING_BYTES = 8 << 20
T0 = datetime(2026, 11, 1, tzinfo=UTC)
PRODUCERS = 64
RAW_ROWS_PER_TRANSACTION = 100


@dataclass(frozen=True)
class Size:
    repeats: int
    requests_per_producer: int
    log_events: int
    plan_repeats: int


FULL = Size(repeats=5, requests_per_producer=300, log_events=200_000, plan_repeats=21)
QUICK = Size(repeats=3, requests_per_producer=60, log_events=40_000, plan_repeats=21)




# -- recording -----------------------------------------------------------------------


class Workdir:
    """Fresh database files on the repository's disk (where saia keeps its log)."""

    def __init__(self) -> None:
        (REPO / ".dev").mkdir(exist_ok=True)
        self._dir = tempfile.TemporaryDirectory(dir=REPO / ".dev", prefix="bench-core-")
        self._count = 0

    def new_db(self) -> str:
        self._count += 1
        return str(Path(self._dir.name) / f"run{self._count}.db")

    def cleanup(self) -> None:
        self._dir.cleanup()


def library_pragmas(log: EventLog) -> tuple[str, int]:
    """The journal mode and synchronous setting the library's connections run with."""
    with log.recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode")
        journal_mode = str(cursor.fetchone()[0])
        cursor.execute("PRAGMA synchronous")
        synchronous = int(cursor.fetchone()[0])
    return journal_mode, synchronous


def request_rows(log: EventLog, requests: int) -> list[tuple[str, int, str, bytes]]:
    """The rows the recorder would store for that many requests, two events each."""
    rows = []
    for i in range(requests):
        r = Request.start(uuid4(), f"user{i % 50}", "chat", "job-a", 900, T0)
        r.finish(200, "job-a", 4000, 300, 150, T0 + timedelta(seconds=2))
        for e in r.collect_events():
            s: StoredEvent = log.mapper.to_stored_event(e)
            rows.append((UUID(str(s.originator_id)).hex, s.originator_version, s.topic, s.state))
    return rows


def raw_sqlite_rate(
    path: str, ddl: list[str], rows: list[tuple[str, int, str, bytes]], synchronous: int
) -> float:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={synchronous}")
        for statement in ddl:
            connection.execute(statement)
        insert = "INSERT INTO stored_events VALUES (?,?,?,?)"
        started = time.perf_counter()
        for i in range(0, len(rows), RAW_ROWS_PER_TRANSACTION):
            connection.execute("BEGIN")
            connection.executemany(insert, rows[i : i + RAW_ROWS_PER_TRANSACTION])
            connection.execute("COMMIT")
        return len(rows) / (time.perf_counter() - started)
    finally:
        connection.close()


def request_ids(requests_per_producer: int) -> list[list[UUID]]:
    # Made beforehand: uuid4 reads os.urandom, which is not what is measured here.
    return [[uuid4() for _ in range(requests_per_producer)] for _ in range(PRODUCERS)]


def group_commit_rate_tasks(path: str, requests_per_producer: int) -> float:
    """Events/s from 64 asyncio tasks, as the proxy records them."""
    ids = request_ids(requests_per_producer)
    with EventLog(SqliteStore(path)) as log, GroupCommitter(log) as committer:

        async def produce(mine: list[UUID]) -> None:
            for request_id in mine:
                r = Request.start(request_id, "alice", "chat", "job-a", 900, T0)
                start_recorded = committer.asubmit(r)  # the request goes on at once
                r.finish(200, "job-a", 4000, 300, 150, T0 + timedelta(seconds=2))
                await committer.arecord(r)  # both recorded before the response completes
                await start_recorded

        async def all_producers() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(produce(mine) for mine in ids))
            return time.perf_counter() - started

        seconds = asyncio.run(all_producers())
        events = committer.stats.events
    assert events == PRODUCERS * requests_per_producer * 2, events
    return events / seconds


def group_commit_rate_threads(path: str, requests_per_producer: int) -> float:
    """Events/s from 64 threads, the same pattern, each thread waiting on its own records."""
    ids = request_ids(requests_per_producer)
    with EventLog(SqliteStore(path)) as log, GroupCommitter(log) as committer:

        def produce(mine: list[UUID]) -> None:
            for request_id in mine:
                r = Request.start(request_id, "alice", "chat", "job-a", 900, T0)
                start_recorded = committer.submit(r)
                r.finish(200, "job-a", 4000, 300, 150, T0 + timedelta(seconds=2))
                committer.record(r)
                start_recorded.result()

        threads = [threading.Thread(target=produce, args=(mine,)) for mine in ids]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        events = committer.stats.events
    assert events == PRODUCERS * requests_per_producer * 2, events
    return events / seconds


def recording_rows(size: Size, workdir: Workdir) -> list[Row]:
    with EventLog(SqliteStore(workdir.new_db())) as log:
        journal_mode, synchronous = library_pragmas(log)
        ddl = list(log.recorder.create_table_statements)  # type: ignore[attr-defined]
        rows = request_rows(log, PRODUCERS * size.requests_per_producer)
    print(f"recording: library connection journal_mode={journal_mode} synchronous={synchronous}")
    raw, tasks, threads = median_of(
        size.repeats,
        lambda: raw_sqlite_rate(workdir.new_db(), ddl, rows, synchronous),
        lambda: group_commit_rate_tasks(workdir.new_db(), size.requests_per_producer),
        lambda: group_commit_rate_threads(workdir.new_db(), size.requests_per_producer),
    )
    baseline = f"{raw:,.0f} rows/s raw sqlite3"
    return [
        Row("record, 64 asyncio tasks", f"{tasks:,.0f} events/s", baseline,
            f"{tasks / raw:.2f}", ">= 0.50", tasks / raw >= 0.5),
        Row("record, 64 threads", f"{threads:,.0f} events/s", baseline,
            f"{threads / raw:.2f}", ">= 0.50", threads / raw >= 0.5),
    ]


# -- projection rebuild ----------------------------------------------------------------


def realistic_events(target: int, rng: random.Random) -> list[Any]:
    """Services, jobs through their lives with heartbeats, and many requests, in time order."""
    specs = [
        ServiceSpec.from_dict({
            "id": f"svc{i:02d}", "sbatch": "vllm.sbatch", "maximum_number_instances": 4,
            "port_min": 20000 + 100 * i, "port_max": 20099 + 100 * i,
        })
        for i in range(20)
    ]
    events: list[Any] = []

    def take(*aggregates: Aggregate) -> None:
        for aggregate in aggregates:
            events.extend(aggregate.collect_events())

    now = T0
    take(*(Service.register(spec, now) for spec in specs))
    users = [f"user{i}" for i in range(200)]
    round_number = 0
    while len(events) < target:
        round_number += 1
        for spec in specs:
            job = Job.request(spec.id, spec.port_min + round_number % 100,
                              f"{spec.id}-{round_number}", spec.walltime, now, reason="demand")
            job.submitted(str(10_000 + len(events)), now + timedelta(seconds=2))
            job.started("node1", now + timedelta(seconds=30))
            job.became_ready(now + timedelta(seconds=90))
            take(job)
            now += timedelta(seconds=90)
            for _ in range(30):  # heartbeats every 30 s, requests in between
                now += timedelta(seconds=30)
                job.heartbeat(rng.random() > 0.02, rng.uniform(0.001, 0.05), now)
                take(job)
                for k in range(10):
                    arrival = now + timedelta(seconds=3 * k)
                    r = Request.start(uuid4(), rng.choice(users), spec.id, str(job.id),
                                      rng.randint(100, 5000), arrival)
                    if rng.random() < 0.05:
                        r.reject(429, "rate limit", arrival)
                    else:
                        r.finish(rng.choice((200,) * 30 + (500,)), str(job.id),
                                 rng.randint(100, 50_000), rng.randint(10, 2000),
                                 rng.randint(10, 1000), arrival + timedelta(seconds=2.5))
                    take(r)
            job.drain(DrainReason.SURPLUS, now)
            job.request_cancel("surplus", now + timedelta(seconds=1))
            job.end(FinalState.CANCELLED, now + timedelta(seconds=5))
            take(job)
    return events



def rebuild_rate(log: EventLog) -> float:
    runner = ProjectionRunner(log, ProjectionDb.scratch(), [ServiceState(), Accounting()])
    started = time.perf_counter()
    applied = runner.catch_up()
    return applied / (time.perf_counter() - started)


def rebuild_rows(size: Size, workdir: Workdir) -> list[Row]:
    with EventLog(SqliteStore(workdir.new_db())) as log:
        events = realistic_events(size.log_events, random.Random(2))
        to_stored_event = log.mapper.to_stored_event
        for i in range(0, len(events), 1000):
            log.recorder.insert_events([to_stored_event(e) for e in events[i : i + 1000]])
        requests = sum(isinstance(e, Request.Started) for e in events)
        print(f"rebuild: a log of {len(events):,} events, {requests:,} of them requests")
        read, rebuild = median_of(
            size.repeats, lambda: read_and_decode_rate(log), lambda: rebuild_rate(log)
        )
    return [
        Row("rebuild ServiceState+Accounting", f"{rebuild:,.0f} events/s",
            f"{read:,.0f} events/s read+decode", f"{rebuild / read:.2f}", ">= 0.33",
            rebuild / read >= 1 / 3),
    ]


# -- planning ---------------------------------------------------------------------------


def job_view(
    spec: ServiceSpec, j: int, phase: Phase, now: float, started: float | None, **more: Any
) -> JobView:
    return JobView(
        id=uuid4(), service=spec.id, token=f"{spec.id}-{j:02d}", port=spec.port_min + j,
        phase=phase, requested_at=now - 3000, walltime=spec.walltime, started_at=started,
        slurm_job_id="" if phase is Phase.REQUESTED else f"{spec.id}-{j}", **more,
    )


def plan_inputs(services: int, now: float) -> tuple[dict[str, ServiceView], Observation]:
    """Services of 10 jobs in every phase, some expiring, replaced, unhealthy, draining."""
    views: dict[str, ServiceView] = {}
    demand: dict[str, float] = {}
    waiting: dict[str, int] = {}
    for i in range(services):
        spec = ServiceSpec.from_dict({
            "id": f"svc{i:04d}", "sbatch": "vllm.sbatch", "inferences_per_instance": 4,
            "minimum_number_instances": 1, "maximum_number_instances": 16,
            "port_min": 10_000 + 40 * i, "port_max": 10_039 + 40 * i,
        })
        jobs: dict[UUID, JobView] = {}

        def add(j: int, phase: Phase, started: float | None, **more: Any) -> JobView:
            job = job_view(spec, j, phase, now, started, **more)  # noqa: B023 -- used at once
            jobs[job.id] = job  # noqa: B023 -- used at once
            return job

        add(0, Phase.REQUESTED, None)
        add(1, Phase.SUBMITTED, None)
        add(2, Phase.RUNNING, now - 60)
        walltime = spec.walltime
        expiring = add(3, Phase.READY, now - walltime + 120, ready_at=now - walltime + 200)
        add(4, Phase.READY, now - 100, ready_at=now - 40, replaces=expiring.id)
        add(5, Phase.READY, now - walltime + 200, ready_at=now - walltime + 260)  # expiring
        add(6, Phase.READY, now - 900, ready_at=now - 800, failed_probes=3)  # unhealthy
        add(7, Phase.READY, now - 900, ready_at=now - 800, draining="surplus",
            draining_at=now - 30)
        add(8, Phase.READY, now - 600, ready_at=now - 500)
        add(9, Phase.READY, now - 300, ready_at=now - 200)
        views[spec.id] = ServiceView(spec=spec, registered_at=now - 86_400, jobs=jobs,
                                     last_active_at=now - 10, startup_seconds=(120.0, 150.0))
        demand[spec.id] = float((i % 9) * 6)  # some scale up, some down, some stay
        if i % 13 == 0:
            waiting[spec.id] = 2
    return views, Observation(demand=demand, waiting=waiting)


def clear_caches(scratch: bytearray) -> None:
    """Write one byte in every 64-byte line of a buffer larger than the L2 cache."""
    scratch[::64] = bytes(len(scratch) // 64)


def plan_ms(services: int, repeats: int, cold: bool) -> float:
    now = 1_800_000_000.0
    views, observation = plan_inputs(services, now)
    scratch = bytearray(CACHE_CLEARING_BYTES if cold else 0)
    timings = []
    for _ in range(repeats):
        rng = random.Random(7)
        if cold:
            clear_caches(scratch)
        started = time.perf_counter()
        plan(views, observation, now, rng)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def planning_rows(size: Size) -> list[Row]:
    repeats = size.plan_repeats
    small, large, warm_small, warm_large = median_of(
        3,
        lambda: plan_ms(100, repeats, cold=True), lambda: plan_ms(1000, repeats, cold=True),
        lambda: plan_ms(100, repeats, cold=False), lambda: plan_ms(1000, repeats, cold=False),
    )
    return [
        Row("plan 1,000 services x 10 jobs", f"{large:.1f} ms", "-", "-", "< 50 ms", large < 50),
        Row("plan growth 1,000 vs 100", f"{large:.1f} ms", f"{small:.2f} ms (100)",
            f"{large / small:.2f}x", "<= 12x", large / small <= 12),
        Row("  the same, caches warm", f"{warm_large:.1f} ms", f"{warm_small:.2f} ms (100)",
            f"{warm_large / warm_small:.2f}x", "-", None),
    ]


# -- report -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
          f"{'quick' if args.quick else 'full'} run, median of {size.repeats}")
    workdir = Workdir()
    try:
        rows = [*recording_rows(size, workdir), *rebuild_rows(size, workdir),
                *planning_rows(size)]
    finally:
        workdir.cleanup()
    print()
    print_table(rows)
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
