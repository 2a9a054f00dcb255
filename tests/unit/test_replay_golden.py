"""The golden log replays to the recorded projection digests (topic stability, determinism)."""

from __future__ import annotations

from pathlib import Path

from saia import config
from saia.adapters.store import EventLog
from saia.projections.accounting import Accounting
from saia.projections.service_state import ServiceState
from saia.replay.chain import GENESIS, link
from saia.replay.digest import digest
from saia.replay.source import notifications, recorded
from tests.unit.replay_support import golden_store

# Recorded from tests/data/golden/golden.jsonl; a change here needs a reason in the commit.
SERVICE_STATE = "4099fe74a74dfe985f701f3bb9b6f813b40ab2a2f76bc63e02a483321570c75f"
CHAIN_HEAD = "338cbed0879f45c49342d4d85bcc3ff1eceed76e4a7bfa43d12085705f12a309"
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


def test_golden_log_chain_head_is_stable(tmp_path: Path) -> None:
    """The hash chain over the golden log ends in the recorded link: old seals stay checkable."""
    log = EventLog(config.load(golden_store(tmp_path)).store)
    chain = GENESIS
    for notification in notifications(log):
        chain = link(chain, notification)
    assert chain.hex() == CHAIN_HEAD
