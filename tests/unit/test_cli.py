"""The saia command line: init, status, and service add/edit/remove, each an event."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from saia.adapters.store import SqliteStore
from saia.cli import main
from saia.config import load
from saia.hub import Hub
from saia.proxy.keys import KeyChecker

SAIA = Path(__file__).parent.parent / "data" / "saia"


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


@pytest.mark.parametrize("shape", ["config.json.example", "config.json"])
def test_init_imports_saias_published_shapes_into_a_config_saia_loads(
    config: Path, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    """Both of SAIA's shapes: saia.toml is written in saia's own format, with the lead
    time, the script's walltime and the scripts' folder as sbatch_dir; saia loads it, the
    service is registered, and what the import left out or needs is said on stderr."""
    assert saia(config, "init", "--from-saia", str(SAIA / shape)) == 0
    out, err = capsys.readouterr()
    assert "registered example-service" in out
    assert "saia: note: in hub placement the login node runs the scripts" in err
    assert '[services.example-service] sbatch = "example-service.sbatch", time_limit = 1590' in err
    assert ("chunk_size, type left out" in err) is (shape == "config.json")
    cfg = load(config)
    (spec,) = cfg.services
    assert (spec.id, spec.sbatch, spec.lead_time, spec.job_expiry_time) == (
        "example-service", "example-service.sbatch", 540.0, 1590)
    assert cfg.sbatch_dir() == (SAIA / "sbatch").resolve()
    assert saia(config, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["service"] == "example-service"


def test_init_points_sbatch_dir_at_the_scripts_beside_the_config(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scripts in the config's own folder tree are written as a path relative to it."""
    shutil.copytree(SAIA, tmp_path, dirs_exist_ok=True)
    assert saia(config, "init", "--from-saia", str(tmp_path / "config.json.example")) == 0
    assert 'sbatch_dir = "sbatch"' in config.read_text()
    assert load(config).sbatch_dir() == tmp_path / "sbatch"


def test_init_notes_scripts_in_several_folders(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scripts in two folders: sbatch_dir keeps its default, and a note says to gather them."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    saia_json = tmp_path / "config.json"
    saia_json.write_text(json.dumps({"services": [{"id": "x", "sbatch": "a/x.sbatch"},
                                                  {"id": "y", "sbatch": "b/y.sbatch"}]}))
    assert saia(config, "init", "--from-saia", str(saia_json)) == 0
    assert "the scripts are in several folders" in capsys.readouterr().err
    assert load(config).sbatch_dir() == tmp_path / "sbatch"


def test_init_in_login_node_placement_refuses_scripts_outside_sbatch_dir(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where saia runs the scripts itself, one it would not find is an error, and nothing
    is registered."""
    config.write_text('placement = "login-node"\n[controller]\nsbatch_dir = "elsewhere"\n')
    assert saia(config, "init") == 0
    before = events(config)
    assert saia(config, "init", "--from-saia", str(SAIA / "config.json.example")) == 2
    err = capsys.readouterr().err
    assert "controller.sbatch_dir" in err and "example-service" in err
    assert "Traceback" not in err
    assert events(config) == before
    config.write_text(f'placement = "login-node"\n[controller]\nsbatch_dir = "{SAIA}/sbatch"\n')
    assert saia(config, "init", "--from-saia", str(SAIA / "config.json.example")) == 0
    assert "registered example-service" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("job_expiry_time", "problem"),
    [("9", "is not"), ("x:00", "is not"), ("1:99", "below 60"), (-1, "below zero"),
     ("2-00:00:00", "must be below the walltime")],
)
def test_init_refuses_a_bad_saia_config_without_writing_anything(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    job_expiry_time: object, problem: str,
) -> None:  # fmt: skip
    """A bad job_expiry_time (or one beyond the walltime) exits 2 with the file, service and
    field named; no saia.toml is written, and there is no traceback."""
    copy = tmp_path / "saia-hpc"
    shutil.copytree(SAIA, copy)
    data = json.loads((copy / "config.json").read_text())
    data["services"][0]["job_expiry_time"] = job_expiry_time
    (copy / "config.json").write_text(json.dumps(data))
    assert saia(config, "init", "--from-saia", str(copy / "config.json")) == 2
    err = capsys.readouterr().err
    assert "service 'example-service': field 'job_expiry_time'" in err and problem in err
    assert str(copy / "config.json") in err and "Traceback" not in err
    assert not config.exists()


def test_init_refuses_a_missing_script_folder(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config.json whose scripts' folder is not beside it: exit 2 naming the folder."""
    shutil.copy(SAIA / "config.json", tmp_path / "config.json")
    assert saia(config, "init", "--from-saia", str(tmp_path / "config.json")) == 2
    err = capsys.readouterr().err
    assert f"no folder {tmp_path / 'sbatch'}" in err and "field 'sbatch'" in err
    assert not config.exists()


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
