"""Group commit: the events of many producers recorded in few transactions.

Every user request is two events. One transaction per event would make the
disk's sync rate the proxy's limit, so producers (proxy tasks, controller
threads) hand their aggregates to one writer thread, which saves everything
queued so far in a single transaction and then tells each producer how its own
events fared. Nothing handed over is dropped: each producer learns of success
or of the error, which the proxy turns into a 503.

Producers encode their own events, so the single writer only inserts, and it
inserts through ``EventLog.append`` rather than ``EventLog.save``: that is the
same one transaction, but ``save`` first checks every object it is given against
a runtime-checkable Protocol, which on Python 3.11 costs about 8 us an object,
nearly as much as encoding and inserting an event. What ``save`` adds beyond the
insert, the log does not use: snapshots are off, and the aggregate cache is
fast-forwarded from the log rather than filled on save.

When the store cannot write, producers get its error (the proxy answers 503:
no request is served unrecorded). With ``hold_limit`` set, the events are held
in memory instead, up to that many, in order, and their producers are told at
once that they are taken; the writer tries the store again after a pause that
doubles up to a minute, and writes what is held, in order, when it is back.
Held events are lost if the process ends before that: the price of serving on.

The writer overlaps the disk with the producers. It tells a batch's producers
their outcome only when the next batch is about to commit: that commit (the
disk writes and the sync, without the GIL) then runs while those producers make
their next events. And what an idle writer finds queued came in one burst; it
commits that in two halves, so that the pipeline starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from types import TracebackType

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent

from saia.adapters.store import EventLog

# Errors that say the store itself failed, not one producer's events: retrying
# the batch one by one would only repeat them (each with its own lock timeout
# or connection retries) before every producer got the same error anyway.
STORE_FAILURES = (OperationalError, InterfaceError)


# From this many queued submissions, an idle writer takes half (see _take_batch).
SPLIT_FROM = 32
# While events are held, the store is tried again after this pause, doubled each time.
RETRY_FIRST, RETRY_MAX = 1.0, 60.0

log = logging.getLogger(__name__)


class RecorderClosed(Exception):
    def __init__(self) -> None:
        super().__init__("the recorder is closed: no more events are accepted")


class RecorderOverloaded(Exception):
    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(f"{pending} submissions wait to be recorded, the limit is {limit}")
        self.pending = pending
        self.limit = limit


class StoreUnavailable(Exception):
    """The store cannot write, and the events held meanwhile are at their limit."""

    def __init__(self, held: int, limit: int) -> None:
        super().__init__(f"the store cannot write, and {held} events are held for it "
                         f"already (the limit is {limit})")  # fmt: skip
        self.held = held
        self.limit = limit


@dataclass(frozen=True, slots=True)
class CommitStats:
    batches: int = 0  # group transactions attempted
    transactions: int = 0  # all inserts, one-by-one retries included
    submissions: int = 0  # submissions recorded
    events: int = 0  # events recorded
    largest_batch: int = 0  # submissions in the largest group
    split_batches: int = 0  # groups that failed and were retried one by one
    failed_submissions: int = 0


# A thread waits on a concurrent future; an asyncio task on a future of its loop,
# which the writer settles a whole batch at a time (one loop wake-up per batch).
Waiter = Future[None] | asyncio.Future[None]
Outcome = tuple[Waiter, BaseException | None]


@dataclass(slots=True)
class _Submission:
    events: list[StoredEvent]
    waiter: Waiter


class GroupCommitter:
    """One writer thread that records queued submissions a batch per transaction."""

    def __init__(
        self, log: EventLog, max_batch: int = 500, max_pending: int = 10_000, hold_limit: int = 0
    ) -> None:
        """``max_batch`` caps the events per transaction; ``max_pending`` the queue;
        ``hold_limit`` the events held in memory while the store cannot write (0: none,
        producers get the store's error)."""
        self._log = log
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._hold_limit = hold_limit
        self._queue: deque[_Submission] = deque()
        # While the store cannot write: submissions told already, to record in this order.
        self._held: deque[_Submission] = deque()
        self._held_events = 0
        self._retry_pause = RETRY_FIRST
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._closed = False
        self._stats = CommitStats()
        self._writer = threading.Thread(target=self._run, name="saia-group-commit", daemon=True)
        self._writer.start()

    # -- producers -----------------------------------------------------------------

    def submit(self, *aggregates: Aggregate) -> Future[None]:
        """Queue the aggregates' pending events; the future completes once recorded.

        The events are taken from the aggregates and encoded here, so the writer
        never reads an aggregate its producer may go on changing, and an event that
        cannot be encoded fails its own producer at once. Cancelling the future only
        stops the wait: events that were handed over are recorded all the same.
        Raises RecorderClosed or RecorderOverloaded without taking any events.
        Callbacks added to the future run in the writer thread, possibly while the
        next batch's transaction is open: they must not write to the log.
        """
        future: Future[None] = Future()
        self._enqueue(aggregates, future)
        return future

    def record(self, *aggregates: Aggregate) -> None:
        """Submit and wait until recorded; raises what the store raised for these events."""
        self.submit(*aggregates).result()

    def asubmit(self, *aggregates: Aggregate) -> asyncio.Future[None]:
        """``submit`` for a task on an event loop: await the future when it matters.

        The events are queued before this returns, so they are recorded before any
        the task submits later. A request's ``Started`` is submitted this way and
        awaited, with its ``Finished``, before the response completes: recording
        then adds no wait to the request's path, and no answer leaves unrecorded.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(aggregates, future)
        return future

    async def arecord(self, *aggregates: Aggregate) -> None:
        """Submit and await the recording, without blocking the event loop."""
        await self.asubmit(*aggregates)

    @property
    def stats(self) -> CommitStats:
        with self._lock:
            return self._stats

    @property
    def held_events(self) -> int:
        """Events taken while the store cannot write, not recorded yet."""
        with self._lock:
            return self._held_events

    def close(self) -> None:
        """Refuse new submissions, record those already queued, stop the writer."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        if threading.current_thread() is not self._writer:
            self._writer.join()

    def __enter__(self) -> GroupCommitter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _enqueue(self, aggregates: Iterable[Aggregate], waiter: Waiter) -> None:
        self._refuse_if_full()
        to_stored_event = self._log.mapper.to_stored_event
        events = [to_stored_event(e) for a in aggregates for e in a.collect_events()]
        if not events:
            waiter.set_result(None)
            return
        with self._lock:
            # Checked again: close() may have come while the events were encoded.
            self._refuse_if_full()
            if not self._held:
                self._queue.append(_Submission(events, waiter))
                if len(self._queue) == 1:
                    # The writer waits only on an empty queue: one wake-up per batch.
                    self._wakeup.notify()
                return
            # The store cannot write: behind what is held, and told so at once.
            self._hold(_Submission(events, waiter))
        waiter.set_result(None)

    def _refuse_if_full(self) -> None:
        if self._closed:
            raise RecorderClosed
        if len(self._queue) >= self._max_pending:
            raise RecorderOverloaded(len(self._queue), self._max_pending)

    # -- the writer ------------------------------------------------------------------

    def _run(self) -> None:
        batch: list[_Submission] = []
        untold: list[Outcome] = []  # of the batch committed last, told during the next
        try:
            while True:
                self._write_held(final=False)
                batch = self._take_batch(wait=not untold, timeout=self._until_retry())
                if batch:
                    untold = self._commit(batch, untold)
                elif untold:
                    _settle(untold)
                    untold = []
                elif self._finished():
                    self._write_held(final=True)
                    return
        except BaseException as error:
            # A writer that died silently would leave every producer waiting forever.
            with self._lock:
                self._closed = True
                stranded = [*batch, *self._queue]
                self._queue.clear()
            _settle(untold)  # committed; a waiter already told is not told twice
            _settle([(submission.waiter, error) for submission in stranded])
            raise

    def _take_batch(self, wait: bool, timeout: float | None) -> list[_Submission]:
        """Wait for work (up to ``timeout``); take queued submissions up to the batch size."""
        with self._wakeup:
            while not self._queue:
                if self._closed or not wait or not self._wakeup.wait(timeout):
                    return []
            queue = self._queue
            # From idle, what is queued came in one burst: commit it in two halves, so
            # that the first half's producers go on while the second half commits.
            count = (len(queue) + 1) // 2 if wait and len(queue) >= SPLIT_FROM else len(queue)
            batch = [queue.popleft()]
            size = len(batch[0].events)
            while len(batch) < count and size + len(queue[0].events) <= self._max_batch:
                submission = queue.popleft()
                size += len(submission.events)
                batch.append(submission)
        for submission in batch:
            if isinstance(submission.waiter, Future):
                # Running now: a late cancel() can no longer race with the result.
                submission.waiter.set_running_or_notify_cancel()
        return batch

    def _commit(self, batch: list[_Submission], untold: list[Outcome]) -> list[Outcome]:
        """Record the batch in one transaction; what each submission's waiter is to be told.

        The previous batch's waiters are told just before this batch commits:
        while the disk writes and syncs, their producers go on.
        """
        told = False

        def tell_untold() -> None:
            nonlocal told
            if not told:
                told = True
                _settle(untold)

        try:
            self._log.append(
                [event for submission in batch for event in submission.events], tell_untold
            )
        except Exception as error:
            tell_untold()  # committed before, whatever becomes of this batch
            if self._hold_limit and isinstance(error, STORE_FAILURES):
                return self._start_holding(batch, error)
            return self._failed(batch, error)
        self._count(batch, recorded=batch, split=False)
        return [(submission.waiter, None) for submission in batch]

    # -- while the store cannot write ------------------------------------------------

    def _start_holding(self, batch: list[_Submission], error: Exception) -> list[Outcome]:
        """Hold the failed batch and everything queued behind it, in order, as far as
        the limit allows; the rest get StoreUnavailable."""
        log.error("the store cannot write (%s): holding up to %d events in memory",
                  error, self._hold_limit)  # fmt: skip
        outcomes: list[Outcome] = []
        with self._lock:
            waiting = [*batch, *self._queue]
            self._queue.clear()
            for submission in waiting:
                try:
                    self._hold(submission)
                except StoreUnavailable as full:
                    outcomes.append((submission.waiter, full))
                else:
                    outcomes.append((submission.waiter, None))
            self._retry_pause = RETRY_FIRST
            self._retry_at = time.monotonic() + self._retry_pause
        return outcomes

    def _hold(self, submission: _Submission) -> None:
        """Under the lock: held behind the others, or StoreUnavailable beyond the limit."""
        if self._held_events + len(submission.events) > self._hold_limit:
            raise StoreUnavailable(self._held_events, self._hold_limit)
        self._held.append(submission)
        self._held_events += len(submission.events)

    def _until_retry(self) -> float | None:
        """How long the writer may wait for new work before trying the store again."""
        if not self._held:
            return None
        return max(0.0, self._retry_at - time.monotonic())

    def _finished(self) -> bool:
        with self._lock:
            return self._closed and not self._queue

    def _write_held(self, final: bool) -> None:
        """Record what is held, in order and a batch at a time, once the pause is over
        (``final``: now, as the last try). Holding ends when nothing is held."""
        if not self._held or (not final and time.monotonic() < self._retry_at):
            return
        while True:
            with self._lock:
                chunk: list[_Submission] = []
                size = 0
                for submission in self._held:
                    if chunk and size + len(submission.events) > self._max_batch:
                        break
                    chunk.append(submission)
                    size += len(submission.events)
            if not chunk:
                return
            try:
                self._log.append([event for submission in chunk for event in submission.events])
            except STORE_FAILURES as error:
                if final:
                    log.error("the store cannot write (%s): %d held events are lost",
                              error, self.held_events)  # fmt: skip
                    return
                with self._lock:
                    self._retry_pause = min(RETRY_MAX, 2 * self._retry_pause)
                    self._retry_at = time.monotonic() + self._retry_pause
                return
            except Exception:
                # A conflict: the store may have taken part of it before it failed.
                recorded = self._held_one_by_one(chunk)
            else:
                recorded = chunk
            with self._lock:
                for _ in chunk:
                    self._held.popleft()
                self._held_events -= size
                if not self._held:
                    log.warning("the store writes again: the held events are recorded")
            self._count(chunk, recorded=recorded, split=recorded is not chunk)

    def _held_one_by_one(self, chunk: list[_Submission]) -> list[_Submission]:
        recorded = []
        for submission in chunk:
            try:
                self._log.append(submission.events)
            except Exception as error:
                log.error("held events of %s are not recorded: %s",
                          submission.events[0].originator_id, error)  # fmt: skip
            else:
                recorded.append(submission)
        return recorded

    def _failed(self, batch: list[_Submission], error: Exception) -> list[Outcome]:
        if isinstance(error, STORE_FAILURES) or len(batch) == 1:
            self._count(batch, recorded=[], split=False)
            return [(submission.waiter, error) for submission in batch]
        # One submission's events (a stale version, say) spoil the transaction:
        # record the others, and give only the guilty their error.
        return self._one_by_one(batch)

    def _one_by_one(self, batch: list[_Submission]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        recorded = []
        for submission in batch:
            try:
                self._log.append(submission.events)
            except Exception as error:
                outcomes.append((submission.waiter, error))
            else:
                recorded.append(submission)
                outcomes.append((submission.waiter, None))
        self._count(batch, recorded=recorded, split=True)
        return outcomes

    def _count(self, batch: list[_Submission], recorded: list[_Submission], split: bool) -> None:
        with self._lock:
            stats = self._stats
            self._stats = replace(
                stats,
                batches=stats.batches + 1,
                transactions=stats.transactions + 1 + (len(batch) if split else 0),
                submissions=stats.submissions + len(recorded),
                events=stats.events + sum(len(s.events) for s in recorded),
                largest_batch=max(stats.largest_batch, len(batch)),
                split_batches=stats.split_batches + split,
                failed_submissions=stats.failed_submissions + len(batch) - len(recorded),
            )


def _settle(outcomes: list[Outcome]) -> None:
    """Tell each waiter its outcome: threads directly, each event loop in one call."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for waiter, error in outcomes:
        if isinstance(waiter, Future):
            _resolve(waiter, error)
        else:
            by_loop.setdefault(waiter.get_loop(), []).append((waiter, error))
    for loop, loop_outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to tell
            loop.call_soon_threadsafe(_resolve_all, loop_outcomes)


def _resolve_all(outcomes: list[Outcome]) -> None:
    for waiter, error in outcomes:
        _resolve(waiter, error)


def _resolve(waiter: Waiter, error: BaseException | None) -> None:
    # A waiter cancelled before the writer took it is done already; its events
    # are recorded all the same, there is just nobody left to tell.
    if waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)
