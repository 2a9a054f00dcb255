"""API keys: issued and revoked as events, stored as hashes, checked by the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import openai
import pytest

from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog, MemoryStore
from saia.demand import DemandTracker
from saia.domain.errors import InvalidTransition
from saia.domain.key import ApiKey
from saia.projections.api_keys import ApiKeys
from saia.projections.runner import ProjectionRunner
from saia.proxy.app import create_app
from saia.proxy.backend import HttpBackend
from saia.proxy.keys import KeyChecker, issue_key, split_key
from saia.proxy.settings import ProxySettings
from saia.recording import GroupCommitter
from tests.unit.proxy.harness import SERVICE, FakeHub, serving

AT = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)


def test_only_the_hash_of_a_key_is_recorded() -> None:
    """The Issued event carries the secret's hash, never the key itself."""
    issued = issue_key("alice", "laptop", AT)
    [event] = issued.aggregate.collect_events()
    assert isinstance(event, ApiKey.Issued)
    _, secret = split_key(issued.key) or (None, "")
    assert secret and secret not in repr(event.__dict__) and issued.key not in repr(event.__dict__)


def test_a_revoked_key_cannot_be_revoked_again() -> None:
    """Revoking twice is refused: the log says once when a key stopped working."""
    key = issue_key("alice", "", AT).aggregate
    key.revoke("lost", AT)
    with pytest.raises(InvalidTransition):
        key.revoke("lost again", AT)


def test_the_projection_replays_issue_and_revoke() -> None:
    """Keys and their revocations are rebuilt from the log alone."""
    log = EventLog(MemoryStore())
    kept, lost = issue_key("alice", "a", AT), issue_key("bob", "b", AT)
    lost.aggregate.revoke("lost", AT)
    log.save(kept.aggregate, lost.aggregate)
    keys = ApiKeys()
    ProjectionRunner(log, ProjectionDb.scratch(), [keys]).catch_up()
    log.close()
    checker = KeyChecker(lambda: keys.keys)
    assert checker.user_of(kept.key) == "alice"
    assert checker.user_of(lost.key) is None
    assert checker.user_of(kept.key[:-1] + "x") is None
    assert checker.user_of("sk-other") is None


class Keyring:
    """Keys issued straight into a projection, as the controller's catch-up would."""

    def __init__(self) -> None:
        self.projection = ApiKeys()

    def issue(self, user: str) -> str:
        issued = issue_key(user, "", AT)
        self._apply(issued.aggregate)
        return issued.key

    def revoke(self, key: str) -> None:
        parts = split_key(key)
        assert parts is not None
        view = self.projection.keys[parts[0]]
        # The aggregate as the log would rebuild it, without its Issued event again.
        aggregate = ApiKey.issue(view.id, view.user, view.secret_sha256, view.label, AT)
        aggregate.collect_events()
        aggregate.revoke("test", AT)
        self._apply(aggregate)

    def _apply(self, aggregate: ApiKey) -> None:
        for event in aggregate.collect_events():
            self.projection.apply(event)


@pytest.fixture
def keyed(backend_port: int) -> Iterator[tuple[str, Keyring]]:
    hub = FakeHub()
    hub.add_service(SERVICE)
    hub.add_job(SERVICE, backend_port)
    keyring = Keyring()
    log = EventLog(MemoryStore())
    with GroupCommitter(log) as recorder:
        app = create_app(hub, DemandTracker(), recorder, HttpBackend(),
                         ProxySettings(require_api_key=True), lambda: None,
                         KeyChecker(lambda: keyring.projection.keys))  # fmt: skip
        with serving(app) as port:
            yield f"http://127.0.0.1:{port}", keyring
    log.close()


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_a_valid_key_is_served(keyed: tuple[str, Keyring]) -> None:
    """A request with an issued key gets its answer."""
    url, keyring = keyed
    answer = client(url, keyring.issue("alice")).completions.create(model=SERVICE, prompt="hi")
    assert answer.choices[0].text


def test_wrong_missing_and_revoked_keys_are_401(keyed: tuple[str, Keyring]) -> None:
    """Unknown, malformed, absent and revoked keys all get 401 in the OpenAI shape."""
    url, keyring = keyed
    key = keyring.issue("alice")
    keyring.revoke(key)
    for presented in (key, keyring.issue("bob")[:-2] + "zz", "sk-nonsense"):
        with pytest.raises(openai.AuthenticationError):
            client(url, presented).completions.create(model=SERVICE, prompt="hi")
    response = httpx.post(f"{url}/v1/completions", json={"model": SERVICE, "prompt": "hi"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models").status_code == 401


def test_keys_are_required_to_have_a_checker() -> None:
    """Asking for API keys without a way to check them fails at start-up, not per request."""
    log = EventLog(MemoryStore())
    with GroupCommitter(log) as recorder, pytest.raises(ValueError):
        create_app(FakeHub(), DemandTracker(), recorder, HttpBackend(),
                   ProxySettings(require_api_key=True), lambda: None)  # fmt: skip
    log.close()
