"""saia-replay as its own process, as an operator runs it: it reads every kind of event a hub
writes, including those of aggregates it has no other reason to import."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

from saia.adapters.store import SqliteStore
from saia.domain.request import Request
from saia.hub import Hub, utc

REPLAY = str(Path(sys.executable).parent / "saia-replay")  # the installed command


def test_a_hubs_log_with_link_and_cluster_events_is_read_by_a_fresh_process(
    tmp_path: Path,
) -> None:
    """verify, log and accounting in a new process decode Link and Cluster events too."""
    db = tmp_path / "saia.db"
    hub = Hub(SqliteStore(str(db)))
    now = time.time()
    hub.link_changed("saia@login:22", True, "", now)
    cluster = hub.cluster(now)
    cluster.unavailable("slurmctld down", utc(now + 1))
    hub.log.save(cluster)
    request = Request.start(uuid4(), "alice", "chat", "", 10, utc(now + 2))
    request.reject(503, "no capacity", utc(now + 3))
    hub.log.save(request)
    hub.close()
    config = tmp_path / "saia.toml"
    config.write_text(f'placement = "login-node"\n[store]\nbackend = "sqlite"\npath = "{db}"\n')
    for command in (["verify"], ["log", "--json"], ["accounting", "--format", "json"]):
        done = subprocess.run([REPLAY, "--config", str(config), *command], capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
    shown = subprocess.run([REPLAY, "--config", str(config), "log", "--json"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert '"kind":"Link.Up"' in shown and '"kind":"Cluster.SlurmUnavailable"' in shown
