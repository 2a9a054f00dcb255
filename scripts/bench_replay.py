#!/usr/bin/env python3
"""Replay figures (issue 6): projection replay rate and memory over long logs.

    .venv/bin/python scripts/bench_replay.py [--sizes 100000 1000000]

For each size, a SQLite log of that many events (a service, a job's life, then
requests as Started/Finished pairs from rotating users over days) is written with
``recorder.insert_events`` in large transactions. Then, each in a fresh process so
that peak RSS belongs to one measurement:

- decode: read every row in batches of 1000 and decode it to a domain event;
- replay: the same, applying each event to ServiceState and Accounting.

Targets: replay at least a third of the decode rate; peak RSS of replay flat
from the smallest to the largest size (within 10%). Exits 1 if either is missed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from eventsourcing.persistence import StoredEvent

from saia.adapters.store import EventLog, SqliteStore
from saia.domain.job import Job
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.projections.accounting import Accounting
from saia.projections.service_state import ServiceState
from saia.replay.source import recorded

TRANSACTION = 50_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def build(path: Path, size: int) -> None:
    log = EventLog(SqliteStore(str(path)))
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


def measure(path: Path, mode: str) -> dict[str, float]:
    log = EventLog(SqliteStore(str(path)))
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
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"events": count, "seconds": elapsed, "rate": count / elapsed, "rss_mib": rss_mib}


def child(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                         text=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--measure", nargs=2, metavar=("DB", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            db = Path(folder) / f"log-{size}.db"
            began = time.perf_counter()
            build(db, size)
            built = time.perf_counter() - began
            decode, replay = child("--measure", str(db), "decode"), child("--measure", str(db),
                                                                            "replay")
            rows.append((size, built, decode, replay))
            db.unlink()
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print("| events | build s | decode events/s | replay events/s | replay/decode "
          "| decode peak RSS MiB | replay peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    fast = True
    for size, built, decode, replay in rows:
        ratio = replay["rate"] / decode["rate"]
        fast &= ratio >= 1 / 3
        print(f"| {decode['events']:,.0f} | {built:.1f} | {decode['rate']:,.0f} | {replay['rate']:,.0f} "
              f"| {ratio:.2f} | {decode['rss_mib']:.1f} | {replay['rss_mib']:.1f} |")
    smallest, largest = rows[0][3]["rss_mib"], rows[-1][3]["rss_mib"]
    flat = largest <= smallest * 1.10
    print(f"replay >= 1/3 of decode: {'met' if fast else 'missed'}; "
          f"memory flat ({smallest:.1f} -> {largest:.1f} MiB): {'met' if flat else 'missed'}")
    return 0 if fast and flat else 1


if __name__ == "__main__":
    sys.exit(main())
