"""saia keys issue, revoke and list, on an in-memory log."""

from __future__ import annotations

from uuid import uuid4

import pytest

from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog, MemoryStore
from saia.domain.errors import InvalidTransition
from saia.projections.api_keys import ApiKeys
from saia.projections.runner import ProjectionRunner
from saia.proxy.key_commands import KeyNotFound, issue, listing, revoke
from saia.proxy.keys import KeyChecker, split_key

NOW = 1_800_000_000.0


def test_issue_revoke_and_list_go_through_the_log() -> None:
    """An issued key opens the door until revoked; the list shows both states, no secrets."""
    log = EventLog(MemoryStore())
    alice_id, alice_key = issue(log, "alice", "laptop", NOW)
    bob_id, bob_key = issue(log, "bob", "", NOW)
    revoke(log, bob_id, "left the project", NOW + 1)
    keys = ApiKeys()
    ProjectionRunner(log, ProjectionDb.scratch(), [keys]).catch_up()
    checker = KeyChecker(lambda: keys.keys)
    assert checker.user_of(alice_key) == "alice" and checker.user_of(bob_key) is None
    views = listing(log)
    assert [(v.id, v.user, v.revoked) for v in views] == [(alice_id, "alice", False),
                                                         (bob_id, "bob", True)]  # fmt: skip
    parts = split_key(alice_key)
    assert parts is not None and parts[1] not in repr(views)
    with pytest.raises(InvalidTransition):
        revoke(log, bob_id, "again", NOW + 2)
    with pytest.raises(KeyNotFound):
        revoke(log, uuid4(), "never issued", NOW)
    log.close()
