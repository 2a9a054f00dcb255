"""``saia serve`` as a process: it listens, answers with keys from the log, stops on
SIGTERM with status 0; a taken port or a crashed controller ends it with an error.

Slurm is not needed here (its commands point nowhere, and the controller records
Slurm as unavailable); the whole chain with Slurm is tests/integration/test_serve.py.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from saia.adapters.lock import FileLock
from saia.adapters.store import SqliteStore
from saia.domain.job import Job
from saia.hub import Hub
from saia.serve import ControllerThread
from tests.net import free_port

SAIA = str(Path(sys.executable).parent / "saia")  # the installed command


def write_config(folder: Path, port: int, slurm_bin: Path | None = None) -> Path:
    path = folder / "saia.toml"
    path.write_text(
        'placement = "login-node"\n'
        f'[controller]\nslurm_bin = "{slurm_bin or folder / "no-slurm"}"\n'
        f'[proxy]\nport = {port}\nrequire_api_key = {"false" if slurm_bin else "true"}\n'
        '[[services]]\nid = "chat"\nsbatch = "testservice.sbatch"\n'
    )  # fmt: skip
    return path


def saia(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [SAIA, "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = free_port()
    config = write_config(tmp_path, port)
    assert saia(config, "init").returncode == 0
    with serve(config, port) as process:
        yield process, f"http://127.0.0.1:{port}", config


@contextmanager
def serve(config: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    """``saia serve`` started, once it answers /health."""
    command = [SAIA, "--config", str(config), "serve"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "saia serve did not listen"
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_answers_with_keys_from_the_log_and_stops_cleanly_on_sigterm(
    serving: tuple[subprocess.Popen[str], str, Path],
) -> None:
    process, base, config = serving
    assert httpx.get(f"{base}/v1/models", timeout=5).status_code == 401
    issued = saia(config, "keys", "issue", "alice")
    assert issued.returncode == 0, issued.stderr
    key = issued.stdout.strip()
    headers = {"authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 20  # the key counts from the controller's next pass
    while (answer := httpx.get(f"{base}/v1/models", headers=headers, timeout=5)).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    (model,) = answer.json()["data"]
    assert (model["id"], model["status"]) == ("chat", "offline")
    metrics = httpx.get(f"{base}/metrics", timeout=5).text
    assert 'saia_ready_backends{service="chat"} 0' in metrics

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert key not in output  # keys are never logged


def test_requests_are_let_in_only_after_the_log_is_checked_against_slurm(
    tmp_path: Path,
) -> None:
    """After a restart the log may still call ready a job that ended meanwhile. The
    first controller pass ends it before any request is let in, so none is routed there.
    Here squeue takes a second and shows an empty queue."""
    slurm_bin = tmp_path / "slurm"
    slurm_bin.mkdir()
    for name, script in (("squeue", "sleep 1"), ("sbatch", "exit 1"), ("scancel", "exit 0")):
        (slurm_bin / name).write_text(f"#!/bin/sh\n{script}\n")
        (slurm_bin / name).chmod(0o755)
    port = free_port()
    config = write_config(tmp_path, port, slurm_bin)
    assert saia(config, "init").returncode == 0
    hub = Hub(SqliteStore(str(tmp_path / "saia.db")))
    at = datetime.now(UTC)
    job = Job.request("chat", free_port(), "abcdef0123456789", 3600.0, at)
    job.submitted("99", at)
    job.started("127.0.0.1", at)
    job.became_ready(at)
    hub.log.save(job)
    hub.close()

    with serve(config, port):
        (model,) = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"]
    assert model["status"] == "offline"


def test_a_taken_port_ends_serve_with_an_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, taken.getsockname()[1])
        result = saia(config, "serve")
    assert result.returncode != 0 and "address already in use" in result.stderr, result.stderr


def test_a_second_serve_on_the_same_sqlite_store_is_refused_and_changes_nothing(
    serving: tuple[subprocess.Popen[str], str, Path],
) -> None:
    """The embedded store holds one hub: a second saia serve on it says so and exits 2,
    before it records anything (the first one's requests in flight stay as they are)."""
    first, base, config = serving
    first.send_signal(signal.SIGSTOP)  # frozen: whatever the log gains is the second's
    try:
        events = recorded(config)
        second = saia(config, "serve")
        assert recorded(config) == events
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    assert "another saia serve uses the SQLite store" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.poll() is None and httpx.get(f"{base}/health", timeout=5).status_code == 200


def recorded(config: Path) -> int:
    """How many events the store next to the config holds."""
    hub = Hub(SqliteStore(str(config.parent / "saia.db")))
    try:
        return int(hub.log.recorder.max_notification_id() or 0)
    finally:
        hub.close()


def test_a_crashed_controller_stops_the_server(tmp_path: Path) -> None:
    """A supervisor should restart the hub rather than have it serve on, never scaling."""

    def tick() -> None:
        raise RuntimeError("a bug")

    controller = SimpleNamespace(
        tick=tick, settings=SimpleNamespace(interval=1.0, startup_interval=1.0),
        starting=lambda: False, sleep=lambda seconds: None, wake=lambda: None,
    )  # fmt: skip
    stopped = threading.Event()
    passes = ControllerThread(controller, FileLock(tmp_path / "saia.lock"), stopped.set)  # type: ignore[arg-type]
    passes.start()
    assert stopped.wait(10)
    passes.stop()
    assert passes.crashed
