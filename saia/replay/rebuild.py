"""Every projection rebuilt from scratch, compared with the live view the hub keeps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from saia.adapters.store import StoreSettings
from saia.hub import Hub
from saia.projections.accounting import Accounting
from saia.projections.service_state import ServiceState
from saia.replay.digest import digest
from saia.replay.source import recorded


@dataclass(frozen=True, slots=True)
class Mismatch:
    projection: str
    position: int  # the rebuilt view was compared after this position

    def __str__(self) -> str:
        return f"position {self.position}: {self.projection} rebuilt differs from the live view"


def compare_projections(
    store: StoreSettings, on_batch: Callable[[int], None] | None = None
) -> list[Mismatch]:
    """Rebuild through the replay path; the live view is caught up by the hub's own runner.

    Both read the log up to the same position: the live one is caught up first and
    the rebuild stops there, so events recorded meanwhile do not count as a mismatch.
    """
    hub = Hub(store)
    try:
        with hub.lock:
            hub.runner.catch_up()
            position = hub.runner.position
            live = {"service state": digest(hub.state.fingerprint()),
                    "accounting": digest(hub.accounting.fingerprint())}
        state, accounting = ServiceState(), Accounting()
        for r in recorded(hub.log, on_batch=on_batch):
            if r.position > position:
                break
            state.apply(r.event)
            accounting.apply(r.event)
        rebuilt = {"service state": digest(state.fingerprint()),
                   "accounting": digest(accounting.fingerprint())}
    finally:
        hub.close()
    return [Mismatch(name, position) for name in live if live[name] != rebuilt[name]]
