#!/usr/bin/env python3
"""Replay figures (issue 6): projection replay rate and memory over long logs.

    .venv/bin/python scripts/bench_replay.py [--sizes 100000 1000000] [--postgres]

For each size, a log of that many events (a service, a job's life, then requests
as Started/Finished pairs from rotating users over days) is written with
``recorder.insert_events`` in large transactions: to a SQLite file, or with
--postgres to a schema of its own (dropped afterwards) in the test database that
``source "$(scripts/postgres env)"`` names. Then, each in a fresh process so that
peak RSS belongs to one measurement:

- decode: read every row in batches of 1000 and decode it to a domain event;
- replay: the same, applying each event to ServiceState and Accounting.

Targets: replay at least a third of the decode rate; peak RSS of replay flat
from the smallest to the largest size (within 10%). Exits 1 if either is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import sql

from saia.adapters.store import EventLog, PostgresStore, SqliteStore, StoreSettings
from saia.domain.job import Job
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.projections.accounting import Accounting
from saia.projections.service_state import ServiceState
from saia.replay.source import recorded

TRANSACTION = 50_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PG_VARIABLES = ("SAIA_PG_HOST", "SAIA_PG_PORT", "SAIA_PG_USER", "SAIA_PG_PASSWORD",
                "SAIA_PG_TEST_DBNAME")
POSTGRES = "postgres:"  # a target naming a schema in the PostgreSQL test database


def store_for(target: str) -> StoreSettings:
    """A SQLite file path, or ``postgres:SCHEMA``."""
    if not target.startswith(POSTGRES):
        return SqliteStore(target)
    missing = [name for name in PG_VARIABLES if not os.environ.get(name)]
    if missing:
        sys.exit(f"bench_replay: {', '.join(missing)} unset: run scripts/postgres up and "
                 'source "$(scripts/postgres env)"')
    return PostgresStore(dbname=os.environ["SAIA_PG_TEST_DBNAME"],
                         host=os.environ["SAIA_PG_HOST"], port=int(os.environ["SAIA_PG_PORT"]),
                         user=os.environ["SAIA_PG_USER"],
                         password=os.environ["SAIA_PG_PASSWORD"],
                         schema=target.removeprefix(POSTGRES))


def postgres_admin(store: PostgresStore, statement: str) -> None:
    with psycopg.connect(host=store.host, port=store.port, user=store.user,
                         password=store.password, dbname=store.dbname, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(sql.Identifier(store.schema)))


def build(target: str, size: int) -> None:
    store = store_for(target)
    if isinstance(store, PostgresStore):
        postgres_admin(store, "CREATE SCHEMA {}")
    log = EventLog(store)
    service = Service.register(ServiceSpec.from_dict({"id": "chat", "sbatch": "s.sbatch"}), T0)
    job = Job.request("chat", 20000, "tok", 3600.0, T0, reason="demand")
    job.submitted("1", T0)
    job.started("node", T0)
    job.became_ready(T0)
    log.save(service, job)
    # Encoded once per user and day, then reused under fresh request ids: building a
    # million events through the mapper would take longer than the measurement.
    templates = []
    for day in range(30):
        for user in ("alice", "bob", "carol", "dave"):
            request = Request.start(uuid4(), user, "chat", "tok", 100,
                                    T0 + timedelta(days=day, seconds=10))
            request.finish(200, "tok", 1000, 20, 40, T0 + timedelta(days=day, seconds=12))
            started, finished = (log.mapper.to_stored_event(e) for e in request.collect_events())
            templates.append((started, finished))
    batch: list[StoredEvent] = []
    written = 5  # the service's Registered and the job's four events
    while written < size:
        started, finished = templates[(written // 2) % len(templates)]
        request_id = uuid4()
        batch.append(StoredEvent(request_id, 1, started.topic, started.state))
        batch.append(StoredEvent(request_id, 2, finished.topic, finished.state))
        written += 2
        if len(batch) >= TRANSACTION:
            log.recorder.insert_events(batch)
            batch = []
    if batch:
        log.recorder.insert_events(batch)
    log.close()


def drop(target: str) -> None:
    store = store_for(target)
    if isinstance(store, PostgresStore):
        postgres_admin(store, "DROP SCHEMA {} CASCADE")
    else:
        Path(target).unlink()


def measure(target: str, mode: str) -> dict[str, float]:
    log = EventLog(store_for(target))
    state, accounting = ServiceState(), Accounting()
    count = 0
    started = time.perf_counter()
    if mode == "decode":
        for _ in recorded(log):
            count += 1
    else:
        for r in recorded(log):
            state.apply(r.event)
            accounting.apply(r.event)
            count += 1
    elapsed = time.perf_counter() - started
    log.close()
    return {"events": count, "seconds": elapsed, "rate": count / elapsed,
            "rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM, not ru_maxrss, which Linux carries over
    from the parent that spawned it (here the one that built the log)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                         text=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--postgres", action="store_true",
                        help="PostgreSQL test database (SAIA_PG_* variables) instead of SQLite")
    parser.add_argument("--measure", nargs=2, metavar=("TARGET", "MODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1])))
        return 0
    rows: list[tuple[int, float, dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            target = (f"{POSTGRES}bench_replay_{os.getpid()}_{size}" if args.postgres
                      else str(Path(folder) / f"log-{size}.db"))
            began = time.perf_counter()
            try:
                build(target, size)
                built = time.perf_counter() - began
                decode = child("--measure", target, "decode")
                replay = child("--measure", target, "replay")
            finally:
                drop(target)
            rows.append((size, built, decode, replay))
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}; "
          f"store: {'PostgreSQL' if args.postgres else 'SQLite'}")
    print("| events | build s | decode events/s | replay events/s | replay/decode "
          "| decode peak RSS MiB | replay peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    fast = True
    for _, built, decode, replay in rows:
        ratio = replay["rate"] / decode["rate"]
        fast &= ratio >= 1 / 3
        print(f"| {decode['events']:,.0f} | {built:.1f} | {decode['rate']:,.0f} "
              f"| {replay['rate']:,.0f} | {ratio:.2f} | {decode['rss_mib']:.1f} "
              f"| {replay['rss_mib']:.1f} |")
    smallest, largest = rows[0][3]["rss_mib"], rows[-1][3]["rss_mib"]
    flat = largest <= smallest * 1.10
    print(f"replay >= 1/3 of decode: {'met' if fast else 'missed'}; "
          f"memory flat ({smallest:.1f} -> {largest:.1f} MiB): {'met' if flat else 'missed'}")
    return 0 if fast and flat else 1


if __name__ == "__main__":
    sys.exit(main())
