"""The saia command line: init, status, and service add/edit/remove, each an event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saia.adapters.store import SqliteStore
from saia.cli import main
from saia.config import load
from saia.hub import Hub
from saia.proxy.keys import KeyChecker


def saia(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "saia.toml"


def events(config: Path) -> int:
    hub = Hub(SqliteStore(str(config.parent / "saia.db")))
    try:
        return hub.log.last_position()
    finally:
        hub.close()


def test_init_writes_a_starter_config_and_imports_saia_services(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """init --from-saia writes saia.toml with the imported services and registers them."""
    saia_json = tmp_path / "config.json"
    saia_json.write_text(json.dumps({"services": [
        {"id": "chat", "name": "Chat", "sbatch": "testservice.sbatch", "job_expiry_time": 30}
    ]}))
    assert saia(config, "init", "--from-saia", str(saia_json)) == 0
    assert "registered chat" in capsys.readouterr().out
    assert [s.id for s in load(config).services] == ["chat"]
    assert saia(config, "init") == 0  # idempotent: nothing new to record
    assert "registered" not in capsys.readouterr().out


def test_service_add_edit_remove_are_events(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each service command records one event; status shows the result."""
    assert saia(config, "init") == 0
    before = events(config)
    assert saia(config, "service", "add", "embed", "sbatch=testservice.sbatch",
                "maximum_number_instances=2", 'output=["embeddings"]') == 0
    assert saia(config, "service", "edit", "embed", "maximum_number_instances=3") == 0
    assert saia(config, "service", "edit", "embed", "maximum_number_instances=3") == 0
    assert events(config) == before + 2
    capsys.readouterr()
    assert saia(config, "status", "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["service"], row["maximum"], row["status"]) == ("embed", 3, "offline")
    assert saia(config, "service", "remove", "embed") == 0
    capsys.readouterr()
    assert saia(config, "status", "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "retired"


def test_bad_edit_is_refused_and_records_nothing(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid value exits 2 naming the field; the log is unchanged."""
    saia(config, "init")
    saia(config, "service", "add", "chat", "sbatch=testservice.sbatch")
    before = events(config)
    assert saia(config, "service", "edit", "chat", "maximum_number_instances=0") == 2
    assert "maximum_number_instances" in capsys.readouterr().err
    assert saia(config, "service", "edit", "nobody", "maximum_number_instances=2") == 2
    assert events(config) == before


def test_a_bad_config_file_is_not_half_applied(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One bad service in the file: exit 2, and the good one is not registered either."""
    saia(config, "init")
    before = events(config)
    with config.open("a") as f:
        f.write('\n[[services]]\nid = "good"\nsbatch = "s.sbatch"\n'
                '\n[[services]]\nid = "bad"\nsbatch = "s.sbatch"\njob_expiry_time = 0\n')
    assert saia(config, "init") == 2
    err = capsys.readouterr().err
    assert "'bad'" in err and "job_expiry_time" in err and str(config) in err
    assert events(config) == before


def test_status_table_renders(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default status output is a table naming each service and its aliases."""
    saia(config, "init")
    saia(config, "service", "add", "chat", "sbatch=testservice.sbatch", 'aliases=["org/chat"]')
    capsys.readouterr()
    assert saia(config, "status") == 0
    out = capsys.readouterr().out
    assert "chat" in out and "org/chat" in out


def test_aliases_are_unique_across_services_however_services_change(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An alias another service has (as alias or id) is refused on add, edit and init,
    naming the field, and nothing is recorded; status --json lists each one's aliases."""
    saia(config, "init")
    assert saia(config, "service", "add", "chat", "sbatch=testservice.sbatch",
                'aliases=["org/Chat-1.0", "chat:latest"]') == 0  # fmt: skip
    assert saia(config, "service", "add", "code", "sbatch=testservice.sbatch") == 0
    before = events(config)
    capsys.readouterr()
    assert saia(config, "service", "add", "embed", "sbatch=testservice.sbatch",
                'aliases=["org/Chat-1.0"]') == 2  # fmt: skip
    assert saia(config, "service", "edit", "code", 'aliases=["chat"]') == 2
    with config.open("a") as f:
        f.write('\n[[services]]\nid = "other"\nsbatch = "s.sbatch"\naliases = ["chat:latest"]\n')
    assert saia(config, "init") == 2
    err = capsys.readouterr().err
    assert err.count("aliases") == 3 and "'chat:latest'" in err
    assert events(config) == before
    assert saia(config, "service", "edit", "code", 'aliases=["org/code"]') == 0
    capsys.readouterr()
    assert saia(config, "status", "--json") == 0
    rows = {row["service"]: row["aliases"] for row in json.loads(capsys.readouterr().out)}
    assert rows == {"chat": ["org/Chat-1.0", "chat:latest"], "code": ["org/code"]}


def test_keys_issue_list_and_revoke(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key is printed once and opens the door until revoked; the listing shows no secret."""
    config.write_text('placement = "login-node"\n')
    assert saia(config, "keys", "issue", "alice", "--label", "laptop") == 0
    key = capsys.readouterr().out.strip()
    hub = Hub(SqliteStore(str(config.parent / "saia.db")))
    try:
        hub.refresh()
        assert KeyChecker(lambda: hub.keys.keys).user_of(key) == "alice"
    finally:
        hub.close()

    assert saia(config, "keys", "list", "--json") == 0
    listed = capsys.readouterr().out
    (row,) = json.loads(listed)
    assert (row["user"], row["label"], row["revoked"]) == ("alice", "laptop", False)
    assert key.rsplit("-", 1)[-1] not in listed  # the secret is never shown again

    assert saia(config, "keys", "revoke", row["id"]) == 0
    assert f"revoked key {row['id']}" in capsys.readouterr().out
    assert saia(config, "keys", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["revoked"] is True
    assert saia(config, "keys", "list") == 0  # the table renders
    assert "alice" in capsys.readouterr().out

    assert saia(config, "keys", "revoke", "00000000-0000-0000-0000-000000000000") == 1
    assert "no API key" in capsys.readouterr().err
    assert saia(config, "keys", "revoke", "not-an-id") == 2
