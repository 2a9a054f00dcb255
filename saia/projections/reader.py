"""The log read a batch at a time and decoded, for projection runners.

Runners of one process can share a reader that keeps the last few batches it
decoded: the hub's runner of service state and keys (on the controller's thread)
and its runner of accounting (on a thread of its own) follow the same events,
and whichever reads a batch first decodes it for both. Reading and decoding is
most of what catching up costs (about 14 us an event), so the hub pays it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from eventsourcing.persistence import Notification

from saia.adapters.store import EventLog

BATCH = 1000

Batch = tuple[Sequence[Notification], Sequence[object]]


class BatchReader:
    def __init__(self, log: EventLog, keep: int = 0) -> None:
        """``keep``: how many decoded batches to keep for other runners (0: none)."""
        self._log = log
        self._keep = keep
        self._kept: OrderedDict[int, Batch] = OrderedDict()  # by the position read after
        self._lock = threading.Lock()

    def read(self, after: int, stop: int | None = None) -> Batch:
        """The events after position ``after`` (up to ``stop``), at most a batch of them,
        oldest first; empty when there are none."""
        if self._keep and stop is None:
            with self._lock:
                kept = self._kept.get(after)
            if kept is not None:
                return kept
        notifications = self._log.recorder.select_notifications(
            start=after, limit=BATCH, stop=stop, inclusive_of_start=False
        )
        to_domain_event = self._log.mapper.to_domain_event
        batch = (notifications, [to_domain_event(n) for n in notifications])
        # A short batch (the log's end, then) is kept too: a runner that takes it reads on
        # from its last event, as after any batch.
        if self._keep and stop is None and notifications:
            with self._lock:
                self._kept[after] = batch
                while len(self._kept) > self._keep:
                    self._kept.popitem(last=False)
        return batch
