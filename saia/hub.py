"""The log and its live projections, kept together: what every entry point works on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog, StoreSettings
from saia.domain.cluster import CLUSTER_ID, Cluster
from saia.domain.errors import JobNotFound
from saia.domain.job import Job
from saia.domain.link import LINK_ID, Link
from saia.domain.request import Request
from saia.projections.accounting import Accounting
from saia.projections.api_keys import ApiKeys
from saia.projections.reader import BatchReader
from saia.projections.runner import ProjectionRunner
from saia.projections.service_state import ServiceState

T = TypeVar("T")
SHARED_BATCHES = 8  # decoded batches kept for the runner that comes second


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class Hub:
    """The log, and the projections kept from it in the store's database.

    Service state and API keys are what serving reads, kept in memory; accounting
    lives in tables and has a runner of its own, so that building it (after an
    upgrade changed it) never holds up serving.
    """

    def __init__(self, store: StoreSettings) -> None:
        self.log = EventLog(store)
        self.db = ProjectionDb.beside(self.log)
        self.state = ServiceState()
        self.keys = ApiKeys()
        # Both runners follow the log; each batch is read and decoded once for both.
        reader = BatchReader(self.log, keep=SHARED_BATCHES)
        self.runner = ProjectionRunner(self.log, self.db, [self.state, self.keys], reader)
        self.accounting = Accounting()
        self.accounts = ProjectionRunner(self.log, self.db, [self.accounting], reader)
        # The projections are written by one thread at a time (the controller's, which
        # reads them without this lock) and read by the proxy's, which holds it.
        self.lock = threading.RLock()
        self._refreshing = threading.Lock()
        self._accounting = threading.Lock()
        self._closers: list[Callable[[], None]] = []

    def on_close(self, closer: Callable[[], None]) -> None:
        """Something to stop before the log closes (the SSH link records into it)."""
        self._closers.append(closer)

    def refresh(self) -> int:
        """Bring service state and keys up to the log; the proxy waits only while events apply."""
        with self._refreshing:
            return self.runner.catch_up(guard=self.lock)

    def account(self) -> int:
        """Bring the accounting tables up to the log."""
        with self._accounting:
            return self.accounts.catch_up()

    def checkpoint(self) -> None:
        """Write every projection as it is now, so that the next start has nothing to apply."""
        with self._refreshing:
            self.runner.checkpoint(guard=self.lock)
        with self._accounting:
            self.accounts.checkpoint()

    def abandon_requests_in_flight(self, now: float) -> int:
        """Records as abandoned the requests the log shows in flight; called as ``saia serve``
        starts, when they are those the last one was serving when it stopped (a hub's
        Finished is recorded after the answer is out, so a crash can lose it). Returns how
        many there were."""
        with self.lock:
            in_flight = list(self.state.request_service)
        requests = []
        for request_id in in_flight:
            request: object = self.log.repository.get(request_id)
            assert isinstance(request, Request)
            request.abandon("the hub stopped before its end was recorded", utc(now))
            requests.append(request)
        if requests:
            self.log.save(*requests)
            self.refresh()
        return len(requests)

    def job(self, job_id: UUID) -> Job:
        try:
            job: object = self.log.repository.get(job_id)
        except AggregateNotFoundError:
            raise JobNotFound(str(job_id)) from None
        assert isinstance(job, Job)
        return job

    def cluster(self, now: float) -> Cluster:
        return self._singleton(CLUSTER_ID, Cluster, lambda: Cluster.open(utc(now)))

    def link(self, target: str, now: float) -> Link:
        return self._singleton(LINK_ID, Link, lambda: Link.open(target, utc(now)))

    def _singleton(self, aggregate_id: UUID, kind: type[T], opened: Callable[[], T]) -> T:
        """The log's one aggregate of a kind, or a new one when the log has none yet."""
        try:
            found: object = self.log.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return opened()
        assert isinstance(found, kind)
        return found

    def link_changed(self, target: str, up: bool, error: str, now: float) -> None:
        """Record the SSH link going up or down (called from the link's own thread)."""
        link = self.link(target, now)
        if up:
            link.went_up(utc(now))
        else:
            link.went_down(error, utc(now))
        if link.pending_events:
            self.log.save(link)

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
        self.db.close()
        self.log.close()
