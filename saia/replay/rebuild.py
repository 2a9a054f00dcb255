"""Every projection rebuilt from scratch, compared with the live view the hub keeps.

The live view is built by a fresh hub's own runner, the rebuild by the replay path.
When the two differ at the end, further passes find the first event after which
they differ: each pass digests both views after the same numbers of events, at
most ``FANOUT`` times, and narrows the stretch holding the first difference by
that factor, down to one event (one pass up to a thousand events, two up to a
million).
"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any, Protocol

from saia.adapters.store import EventLog, StoreSettings
from saia.hub import Hub
from saia.projections.accounting import Accounting
from saia.projections.api_keys import ApiKeys
from saia.projections.service_state import ServiceState
from saia.replay.digest import digest
from saia.replay.source import recorded

FANOUT = 1000
PROJECTIONS = ("service state", "accounting", "API keys")


class Fingerprinted(Protocol):
    def apply(self, event: object) -> None: ...
    def fingerprint(self) -> Any: ...


def views(state: ServiceState, accounting: Accounting, keys: ApiKeys) -> dict[str, Fingerprinted]:
    """The projections by the names a mismatch is reported under."""
    return dict(zip(PROJECTIONS, (state, accounting, keys), strict=True))


def _hub_views(hub: Hub) -> dict[str, Fingerprinted]:
    return views(hub.state, hub.accounting, hub.keys)


@dataclass(frozen=True, slots=True)
class Mismatch:
    projection: str
    position: int  # the first event after which the rebuilt view differs from the live one
    end: int  # the position both views were read up to

    def __str__(self) -> str:
        return (
            f"position {self.position}: {self.projection} rebuilt differs from the live "
            f"view from this event on (compared up to position {self.end})"
        )


def compare_projections(
    store: StoreSettings, on_batch: Callable[[int], None] | None = None
) -> list[Mismatch]:
    """Both views read the log up to the same position: the live one is caught up first and
    the rebuild stops there, so events recorded meanwhile do not count as a mismatch."""
    hub = Hub(store)
    try:
        with hub.lock:
            count = hub.runner.catch_up()
            end = hub.runner.position
            live = {name: digest(view.fingerprint()) for name, view in _hub_views(hub).items()}
        if count == 0:
            return []
        rebuilt, _ = _rebuilt(hub.log, PROJECTIONS, {count}, on_batch)
        return [
            Mismatch(name, _first_difference(store, hub.log, name, count, end), end)
            for name in PROJECTIONS
            if live[name] != rebuilt[count][name]
        ]
    finally:
        hub.close()


def _first_difference(
    store: StoreSettings, log: EventLog, name: str, count: int, position: int
) -> int:
    """The position of the first event after which the views differ, given that they differ
    after ``count`` events, the last of them at ``position``."""
    agree, differ = 0, count  # numbers of events after which the views agree, and differ
    while differ - agree > 1:
        step = -(-(differ - agree) // FANOUT)
        counts = [*range(agree + step, differ, step), differ]
        live = _live(store, name, set(counts))
        rebuilt, positions = _rebuilt(log, (name,), set(counts))
        first = next(n for n in counts if live[n] != rebuilt[n][name])
        index = counts.index(first)
        agree, differ = (counts[index - 1] if index else agree), first
        position = positions[first]
    return position


class _Sampler:
    """Applied after the hub's own projections: digests its live view after chosen events."""

    def __init__(self, hub: Hub, name: str, counts: Set[int]) -> None:
        self._hub, self._name, self._counts = hub, name, counts
        self._count = 0
        self.digests: dict[int, str] = {}

    def apply(self, event: object) -> None:
        self._count += 1
        if self._count in self._counts:
            self.digests[self._count] = digest(_hub_views(self._hub)[self._name].fingerprint())


def _live(store: StoreSettings, name: str, counts: Set[int]) -> dict[int, str]:
    """Digests of a fresh hub's live view after the given numbers of events."""
    hub = Hub(store)
    try:
        sampler = _Sampler(hub, name, counts)
        hub.runner.projections.append(sampler)
        hub.runner.catch_up()
    finally:
        hub.close()
    return sampler.digests


def _rebuilt(
    log: EventLog,
    names: tuple[str, ...],
    counts: Set[int],
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[int, dict[str, str]], dict[int, int]]:
    """Digests of the rebuilt views after the given numbers of events, and those events'
    positions."""
    fresh = views(ServiceState(), Accounting(), ApiKeys())
    digests: dict[int, dict[str, str]] = {}
    positions: dict[int, int] = {}
    last = max(counts)
    for count, r in enumerate(recorded(log, on_batch=on_batch), start=1):
        for view in fresh.values():
            view.apply(r.event)
        if count in counts:
            digests[count] = {name: digest(fresh[name].fingerprint()) for name in names}
            positions[count] = r.position
        if count == last:
            break
    return digests, positions
