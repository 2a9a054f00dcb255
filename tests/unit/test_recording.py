"""Group commit: every producer's events recorded once, in few transactions, errors isolated."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Mapper, OperationalError, StoredEvent
from hypothesis import given
from hypothesis import strategies as st

from saia import recording
from saia.adapters.store import EventLog, MemoryStore, SqliteStore
from saia.domain.job import DrainReason, FinalState, Job
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.recording import GroupCommitter, RecorderClosed, RecorderOverloaded, StoreUnavailable

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
PRODUCERS = 64


class Gate:
    """Holds the writer inside its first insert until opened, so that the test
    decides what is queued behind it."""

    def __init__(self, log: EventLog) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self._append = log.append

    def append(self, stored_events: Sequence[StoredEvent], *more: Callable[[], None]) -> None:
        self.entered.set()
        assert self.opened.wait(timeout=30), "the test never opened the gate"
        self._append(stored_events, *more)


@pytest.fixture(params=["memory", "sqlite"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    store = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "e.db"))
    log = EventLog(store)
    yield log
    log.close()


@pytest.fixture
def gate(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> Gate:
    gate = Gate(log)
    monkeypatch.setattr(log, "append", gate.append)
    return gate


def started(at: float = 0.0, request_id: UUID | None = None) -> Request:
    at_time = T0 + timedelta(seconds=at)
    return Request.start(request_id or uuid4(), "alice", "chat", "job", 100, at_time)


def recorded(log: EventLog) -> list[tuple[UUID, int, str]]:
    notifications = log.recorder.select_notifications(start=None, limit=1_000_000)
    return [(UUID(str(n.originator_id)), n.originator_version, n.topic) for n in notifications]


class Outage:
    """The log's append fails with the store's error while ``down``."""

    def __init__(self, log: EventLog) -> None:
        self.down = True
        self.attempts = 0
        self._append = log.append

    def append(self, stored_events: Sequence[StoredEvent], *more: Callable[[], None]) -> None:
        self.attempts += 1
        if self.down:
            raise OperationalError("disk I/O error")
        self._append(stored_events, *more)


@pytest.fixture
def outage(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> Outage:
    outage = Outage(log)
    monkeypatch.setattr(log, "append", outage.append)
    monkeypatch.setattr(recording, "RETRY_FIRST", 0.05)
    return outage


def test_concurrent_producers_share_transactions(log: EventLog, gate: Gate) -> None:
    """64 threads submitting at once are recorded once each, in fewer transactions than that."""
    requests = [started(i) for i in range(PRODUCERS)]
    handed_over = threading.Semaphore(0)
    errors: list[BaseException] = []

    with GroupCommitter(log) as committer:

        def produce(request: Request) -> None:
            future = committer.submit(request)
            handed_over.release()
            error = future.exception(timeout=30)
            if error is not None:
                errors.append(error)

        threads = [threading.Thread(target=produce, args=(r,)) for r in requests]
        for thread in threads:
            thread.start()
        for _ in threads:
            assert handed_over.acquire(timeout=30)
        gate.opened.set()
        for thread in threads:
            thread.join()

        assert errors == []
        assert sorted(recorded(log)) == sorted((r.id, 1, "saia.Request.Started") for r in requests)
        assert committer.stats.batches < PRODUCERS
        assert committer.stats.submissions == committer.stats.events == PRODUCERS


def test_many_rounds_from_many_threads_keep_each_requests_order(log: EventLog) -> None:
    """Started and Finished of every request are recorded exactly once, in order, batched."""
    rounds = 10
    failures: list[BaseException] = []

    with GroupCommitter(log) as committer:

        def produce() -> None:
            try:
                for i in range(rounds):
                    request = started(i)
                    committer.record(request)
                    request.finish(200, "job", 50, 1, 2, T0 + timedelta(seconds=i + 1))
                    committer.record(request)
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=produce) for _ in range(PRODUCERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = committer.stats

    rows = recorded(log)
    assert failures == []
    assert len(rows) == len(set(rows)) == PRODUCERS * rounds * 2
    position = {(request_id, version): index for index, (request_id, version, _) in enumerate(rows)}
    assert all(position[(r, 1)] < position[(r, 2)] for r, version, _ in rows if version == 2)
    assert stats.events == PRODUCERS * rounds * 2
    assert stats.batches < stats.submissions


def test_a_conflict_fails_only_the_guilty_producer(log: EventLog, gate: Gate) -> None:
    """A stale aggregate in a batch gets IntegrityError; the others in its batch are recorded."""
    first = started()
    gate.opened.set()
    with GroupCommitter(log) as committer:
        committer.record(first)
        gate.opened.clear()
        gate.entered.clear()
        blocker = committer.submit(started())
        assert gate.entered.wait(timeout=30)
        innocent_before, stale, innocent_after = started(), started(request_id=first.id), started()
        futures = [committer.submit(r) for r in (innocent_before, stale, innocent_after)]
        gate.opened.set()
        blocker.result(timeout=30)

        assert futures[0].result(timeout=30) is None
        assert isinstance(futures[1].exception(timeout=30), IntegrityError)
        assert futures[2].result(timeout=30) is None
        assert committer.stats.split_batches == 1
    ids = [request_id for request_id, _, _ in recorded(log)]
    assert ids.count(first.id) == 1
    assert innocent_before.id in ids and innocent_after.id in ids


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_with_a_hold_limit_a_store_that_is_down_holds_events_and_records_them_in_order(
    log: EventLog, outage: Outage
) -> None:
    """Producers are told at once while the store is down; once it is back, every held
    event is recorded in the order it was handed over, each request's Started first."""
    with GroupCommitter(log, hold_limit=100) as committer:
        requests = [started(i) for i in range(10)]
        for future in [committer.submit(r) for r in requests]:
            assert future.exception(timeout=10) is None
        for r in requests[:5]:
            r.finish(200, "job", 10, 1, 1, T0)
            committer.record(r)  # told at once too, behind the Started
        assert committer.held_events == 15 and recorded(log) == []
        tries = outage.attempts
        wait_until(lambda: outage.attempts > tries, "the store was not tried again")
        outage.down = False
        wait_until(lambda: committer.held_events == 0, "the held events were not recorded")
        after = started(99)
        committer.record(after)  # and new ones are recorded directly again
    order = [(UUID(str(r.id)), 1) for r in requests] + [(UUID(str(r.id)), 2) for r in requests[:5]]
    assert [(key, version) for key, version, _ in recorded(log)] == [*order, (after.id, 1)]


def test_beyond_the_hold_limit_a_producer_gets_store_unavailable(
    log: EventLog, outage: Outage
) -> None:
    """Held events are bounded: past the limit the producer is refused, as without one."""
    with GroupCommitter(log, hold_limit=3) as committer:
        committer.record(started(0))
        committer.record(started(1))
        committer.record(started(2))
        with pytest.raises(StoreUnavailable):
            committer.submit(started(3))
        assert committer.held_events == 3
        outage.down = False
    assert len(recorded(log)) == 3  # close records what was held


def test_held_events_the_store_never_takes_are_lost_at_close_and_said_so(
    log: EventLog, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    """Holding trades durability for service: a store still down at close loses them, loudly."""
    with GroupCommitter(log, hold_limit=10) as committer:
        committer.record(started(0))
    assert recorded(log) == []
    assert "1 held events are lost" in caplog.text


def test_a_store_that_is_down_fails_every_producer_without_retrying(
    log: EventLog, outage: Outage
) -> None:
    """When the store itself fails, each producer of the batch gets that error, once tried."""
    with GroupCommitter(log) as committer:
        futures = [committer.submit(started(i)) for i in range(10)]
        errors = [f.exception(timeout=30) for f in futures]
        assert all(isinstance(e, OperationalError) for e in errors)
        assert outage.attempts == committer.stats.batches  # no one-by-one retries
        assert committer.stats.split_batches == 0
        outage.down = False
        committer.record(started(11))  # and it recovers with the store
    assert len(recorded(log)) == 1


def test_an_event_that_cannot_be_encoded_fails_its_own_producer_at_once(log: EventLog) -> None:
    """Encoding happens in submit, so the error reaches the producer that caused it."""
    unencodable = Request.start(uuid4(), object(), "chat", "job", 1, T0)  # type: ignore[arg-type]
    with GroupCommitter(log) as committer:
        with pytest.raises(TypeError):
            committer.submit(unencodable)
        committer.record(started())
    assert len(recorded(log)) == 1


def test_close_records_what_was_queued_then_refuses(log: EventLog, gate: Gate) -> None:
    """close() drains the queue, is idempotent, and later submissions raise RecorderClosed."""
    committer = GroupCommitter(log)
    futures = [committer.submit(started(i)) for i in range(5)]
    assert gate.entered.wait(timeout=30)
    closing = threading.Thread(target=committer.close)
    closing.start()
    gate.opened.set()
    closing.join(timeout=30)
    assert all(f.result(timeout=0) is None for f in futures)
    assert len(recorded(log)) == 5

    refused = started()
    with pytest.raises(RecorderClosed):
        committer.submit(refused)
    assert len(refused.pending_events) == 1  # not taken: the caller still holds its events
    committer.close()


def test_a_full_queue_refuses_with_a_clear_error(log: EventLog, gate: Gate) -> None:
    """Beyond max_pending waiting submissions, submit raises RecorderOverloaded."""
    with GroupCommitter(log, max_pending=2) as committer:
        in_flight = committer.submit(started())
        assert gate.entered.wait(timeout=30)
        queued = [committer.submit(started(1)), committer.submit(started(2))]
        refused = started(3)
        with pytest.raises(RecorderOverloaded, match="limit is 2") as raised:
            committer.submit(refused)
        assert (raised.value.pending, raised.value.limit) == (2, 2)
        assert len(refused.pending_events) == 1
        gate.opened.set()
        for future in (in_flight, *queued):
            future.result(timeout=30)
    assert len(recorded(log)) == 3


def test_asyncio_producers_are_recorded_and_told_of_conflicts(log: EventLog) -> None:
    """Tasks await arecord without blocking the loop; a conflict is raised in its own task."""
    rounds = 5

    async def produce(committer: GroupCommitter) -> None:
        for i in range(rounds):
            request = started(i)
            await committer.arecord(request)
            request.finish(200, "job", 50, 1, 2, T0 + timedelta(seconds=i + 1))
            await committer.arecord(request)

    async def main(committer: GroupCommitter) -> None:
        await asyncio.gather(*(produce(committer) for _ in range(PRODUCERS)))
        first = started()
        await committer.arecord(first)
        with pytest.raises(IntegrityError):
            await committer.arecord(started(request_id=first.id))

    with GroupCommitter(log) as committer:
        asyncio.run(main(committer))
        stats = committer.stats
    assert len(recorded(log)) == PRODUCERS * rounds * 2 + 1
    assert stats.batches < stats.submissions



def test_a_task_need_not_wait_for_started_to_have_it_recorded_first(log: EventLog) -> None:
    """Started handed over with asubmit is recorded before the Finished awaited after it."""

    async def serve(committer: GroupCommitter, i: int) -> None:
        request = started(i)
        recording = committer.asubmit(request)
        request.finish(200, "job", 50, 1, 2, T0 + timedelta(seconds=i + 1))
        await committer.arecord(request)
        await recording

    async def main(committer: GroupCommitter) -> None:
        await asyncio.gather(*(serve(committer, i) for i in range(PRODUCERS)))

    with GroupCommitter(log) as committer:
        asyncio.run(main(committer))
    rows = recorded(log)
    assert len(rows) == PRODUCERS * 2
    position = {(request_id, version): index for index, (request_id, version, _) in enumerate(rows)}
    assert all(position[(r, 1)] < position[(r, 2)] for r, version, _ in rows if version == 2)

def test_a_batch_is_told_before_the_next_one_commits(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Producers of one batch go on while the next batch commits; each is told once."""
    append = log.append
    committing = threading.Semaphore(0)
    commit = threading.Semaphore(0)

    def slow_commit(events: Sequence[StoredEvent], before_commit: Callable[[], None]) -> None:
        def hold() -> None:
            before_commit()
            committing.release()
            assert commit.acquire(timeout=30), "the test never let the commit go on"

        append(events, hold)

    monkeypatch.setattr(log, "append", slow_commit)
    with GroupCommitter(log) as committer:
        first = committer.submit(started())
        assert committing.acquire(timeout=30)
        second = committer.submit(started(1))
        commit.release()  # the first batch commits; the second is taken and inserted
        assert committing.acquire(timeout=30)
        assert first.result(timeout=0) is None  # told while the second is held
        assert not second.done()
        commit.release()
        assert second.result(timeout=30) is None
        assert committer.stats.batches == 2
    assert len(recorded(log)) == 2


def test_an_idle_writer_commits_a_burst_in_two_halves(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst that finds the writer idle goes in two transactions, in order, all recorded."""
    writers: list[threading.Thread] = []

    def hold_back(thread: threading.Thread) -> None:
        writers.append(thread)

    monkeypatch.setattr(threading.Thread, "start", hold_back)
    committer = GroupCommitter(log)
    requests = [started(i) for i in range(40)]
    futures = [committer.submit(r) for r in requests]
    monkeypatch.undo()
    writers[0].start()  # the writer wakes to find the whole burst queued
    committer.close()
    assert all(f.result(timeout=0) is None for f in futures)
    assert (committer.stats.batches, committer.stats.largest_batch) == (2, 20)
    assert recorded(log) == [(r.id, 1, "saia.Request.Started") for r in requests]

def test_nothing_pending_completes_at_once(log: EventLog) -> None:
    """Aggregates without new events need no transaction."""
    with GroupCommitter(log) as committer:
        assert committer.submit().result(timeout=0) is None
        assert committer.stats.transactions == 0


# Recorded before the Request aggregate moved from ``@event`` methods to explicit
# event classes: the log already holds rows like these, and replay reads them.
STORED_REQUEST = [
    (1, "saia.Request.Started",
     b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-01T12:00:00+00:00"},'
     b'"originator_topic":"saia.Request","user":"alice","service":"chat","job":"",'
     b'"bytes_in":900}'),
    (2, "saia.Request.Finished",
     b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-01T12:00:02+00:00"},'
     b'"status":200,"job":"job-a","bytes_out":4000,"prompt_tokens":300,'
     b'"completion_tokens":150}'),
]
STORED_REJECTED = (
    2, "saia.Request.Rejected",
    b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-01T12:00:01+00:00"},'
    b'"status":429,"reason":"rate limit"}',
)


def test_request_events_are_stored_as_they_always_were() -> None:
    """Finished and Rejected keep their topics and state bytes; Started, now of version 3,
    adds the key, the groups and its class version; the rows written before replay as
    they did."""
    log = EventLog(MemoryStore())
    answered = Request.start(uuid4(), "alice", "chat", "", 900, T0)
    answered.finish(200, "job-a", 4000, 300, 150, T0 + timedelta(seconds=2))
    refused = Request.start(uuid4(), "alice", "chat", "", 900, T0)
    refused.reject(429, "rate limit", T0 + timedelta(seconds=1))
    stored = [log.mapper.to_stored_event(e) for e in answered.collect_events()]
    stored_refused = [log.mapper.to_stored_event(e) for e in refused.collect_events()]

    version, topic, state = STORED_REQUEST[0]
    assert (stored[0].originator_version, stored[0].topic, stored[0].state) == (
        version, topic,
        state[:-1] + b',"key":"","org":"","unit":"","portal":"","class_version":3}')
    assert [(s.originator_version, s.topic, s.state) for s in stored[1:]] == STORED_REQUEST[1:]
    assert (stored_refused[1].originator_version, stored_refused[1].topic,
            stored_refused[1].state) == STORED_REJECTED
    written_before = [StoredEvent(answered.id, v, t, s) for v, t, s in STORED_REQUEST]
    log.recorder.insert_events(written_before + stored_refused)
    replayed = log.repository.get(answered.id)
    assert (replayed.user, replayed.job, replayed.finished, replayed.version) == (
        "alice", "job-a", True, 2)
    assert log.repository.get(refused.id).finished


def test_a_started_event_of_version_2_reads_back_with_no_groups() -> None:
    """A Started recorded before groups were named (version 2, with its key) reads back in
    the current shape: the key kept, no organisation, unit or portal."""
    log = EventLog(MemoryStore())
    version, topic, state = STORED_REQUEST[0]
    v2 = state[:-1] + b',"key":"k1","class_version":2}'
    log.recorder.insert_events([StoredEvent(uuid4(), version, topic, v2)])
    [notification] = log.recorder.select_notifications(start=None, limit=1)
    event = log.mapper.to_domain_event(notification)
    assert isinstance(event, Request.Started)
    assert (event.user, event.key, event.org, event.unit, event.portal) == ("alice", "k1", "",
                                                                            "", "")  # fmt: skip


def test_append_records_a_batch_in_order_as_the_recorder_would(log: EventLog) -> None:
    """The log's batch insert stores the rows the library's recorder stores, in order."""
    first, second = started(), started(1)
    second.finish(200, "job", 50, 1, 2, T0 + timedelta(seconds=3))
    stored = [log.mapper.to_stored_event(e) for r in (first, second) for e in r.collect_events()]
    log.append(stored)
    notifications = log.recorder.select_notifications(start=None, limit=10)
    assert [(n.originator_id, n.originator_version, n.topic, n.state) for n in notifications] == [
        (s.originator_id, s.originator_version, s.topic, s.state) for s in stored
    ]
    assert [n.id for n in notifications] == [1, 2, 3]


@pytest.mark.parametrize("innocents", [1, 300])  # one statement; the library's transaction
def test_append_of_a_stale_event_records_none_of_its_batch(log: EventLog, innocents: int) -> None:
    """A duplicate version fails the whole transaction with the library's IntegrityError."""
    first = started()
    log.append([log.mapper.to_stored_event(e) for e in first.collect_events()])
    innocent = [started(i) for i in range(innocents)]
    stale = started(request_id=first.id)
    batch = [log.mapper.to_stored_event(e) for r in (*innocent, stale) for e in r.collect_events()]
    with pytest.raises(IntegrityError):
        log.append(batch)
    assert recorded(log) == [(first.id, 1, "saia.Request.Started")]


def test_append_to_a_locked_sqlite_file_raises_the_librarys_operational_error(
    tmp_path: Path,
) -> None:
    """Another writer holding the file past the lock timeout is a store failure, typed so."""
    path = str(tmp_path / "locked.db")
    with EventLog(SqliteStore(path), {"SQLITE_LOCK_TIMEOUT": "1"}) as log:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(OperationalError):
                log.append([log.mapper.to_stored_event(e) for e in started().collect_events()])
        finally:
            other.close()
        log.append([log.mapper.to_stored_event(e) for e in started().collect_events()])
        assert len(recorded(log)) == 1


def every_kind_of_event() -> list[Any]:
    spec = ServiceSpec.from_dict({"id": "llama", "sbatch": "vllm.sbatch"})
    service = Service.register(spec, T0)
    service.reconfigure({"maximum_number_instances": 3}, T0)
    service.retire(T0 + timedelta(seconds=1))
    service.reinstate(spec.changed({"maximum_number_instances": 2}), T0 + timedelta(seconds=2))
    job = Job.request("llama", 20001, "abcdef0123456789", 3600.0, T0, reason="demand")
    job.submitted("42", T0)
    job.started("node1", T0)
    job.became_ready(T0 + timedelta(microseconds=1))
    job.heartbeat(True, 0.01, T0)
    job.drain(DrainReason.SURPLUS, T0)
    job.request_cancel("surplus", T0)
    job.end(FinalState.CANCELLED, T0)
    failed = Job.request("llama", 20002, "0123456789abcdef", 3600.0, T0, reason="demand")
    failed.submission_failed("sbatch: error", T0)
    answered = Request.start(uuid4(), "alice", "chat", "", 900, T0)
    answered.finish(500, "job-a", 4000, 300, 150, T0)
    refused = Request.start(uuid4(), "bob", "chat", "", 1, T0)
    refused.reject(429, "rate limit", T0)
    aggregates: list[Aggregate] = [service, job, failed, answered, refused]
    return [e for a in aggregates for e in a.collect_events()]


def test_the_logs_mapper_stores_every_event_as_the_librarys_does() -> None:
    """Same topic and state bytes as eventsourcing's own Mapper, and the same event back."""
    log = EventLog(MemoryStore())
    library = Mapper(transcoder=log.mapper.transcoder)
    events = every_kind_of_event()
    assert len({type(e) for e in events}) == 16
    for event in events:
        stored = log.mapper.to_stored_event(event)
        assert stored == library.to_stored_event(event)
        assert log.mapper.to_domain_event(stored) == event


def test_with_compression_the_log_encodes_the_librarys_way() -> None:
    """A compressed log still round-trips: the short path steps aside."""
    log = EventLog(MemoryStore(), {"COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"})
    for event in every_kind_of_event():
        assert log.mapper.to_domain_event(log.mapper.to_stored_event(event)) == event


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])))
def test_datetimes_are_stored_in_isoformat_and_come_back(moment: datetime) -> None:
    """orjson's shortcut for UTC writes what isoformat() writes; other zones are unchanged."""
    transcoder = EventLog(MemoryStore()).mapper.transcoder
    data = transcoder.encode({"at": moment})
    assert data == b'{"at":{"_type_":"datetime_iso","_data_":"%s"}}' % moment.isoformat().encode()
    assert transcoder.decode(data) == {"at": moment}
