"""The golden log replays to the recorded projection digests (topic stability, determinism)."""

from __future__ import annotations

from pathlib import Path

from saia import config
from saia.adapters.store import EventLog
from saia.projections.accounting import Accounting
from saia.projections.service_state import ServiceState
from saia.replay.digest import digest
from saia.replay.source import recorded
from tests.unit.replay_support import golden_store

# Recorded from tests/data/golden/golden.jsonl; a change here needs a reason in the commit.
SERVICE_STATE = "4099fe74a74dfe985f701f3bb9b6f813b40ab2a2f76bc63e02a483321570c75f"
ACCOUNTING = "abad7aec2c3b354e7b7c755304af5cbb61ebfc0ba35c7ed8171e9c999fba3149"


def test_golden_log_replays_to_known_digests(tmp_path: Path) -> None:
    """Replaying the golden log gives exactly the recorded service-state and accounting."""
    log = EventLog(config.load(golden_store(tmp_path)).store)
    state, accounting = ServiceState(), Accounting()
    for r in recorded(log):
        state.apply(r.event)
        accounting.apply(r.event)
    assert digest(state.fingerprint()) == SERVICE_STATE
    assert digest(accounting.fingerprint()) == ACCOUNTING
