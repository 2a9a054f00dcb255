"""``saia serve`` killed with SIGKILL under load on the real dev cluster, then started
again: the projections it left behind catch up from their checkpoints to what a
rebuild from the log gives, and every request that ended is counted exactly once.

The hub runs in login-node placement with the test service; ``saia serve`` is the
installed command, run as a process of its own so that it can be killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from saia.adapters.projection_db import TRACKING, ProjectionDb
from saia.adapters.store import EventLog, SqliteStore
from saia.domain.request import Request
from saia.replay.source import recorded
from tests.integration.cluster import REPO, cancel_service_jobs, unique, wait_for, write_config
from tests.net import free_port

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

SAIA = str(REPO / ".venv/bin/saia")
REPLAY = str(REPO / ".venv/bin/saia-replay")
PORT_MIN, PORT_MAX = 20700, 20799  # the job's port: apart from the other tests' jobs
USER_HEADER = "x-test-user"
WORKERS = 8
PROMPT = [{"role": "user", "content": "one two three four"}]


def hub_config(folder: Path, service: str, port: int) -> Path:
    spec = {"id": service, "sbatch": "testservice.sbatch", "minimum_number_instances": 1,
            "maximum_number_instances": 1, "inferences_per_instance": 64,
            "job_expiry_time": 10, "lead_time": 30, "port_min": PORT_MIN,
            "port_max": PORT_MAX}  # fmt: skip
    path = write_config(folder, [spec])
    with path.open("a") as toml:
        toml.write(
            f'\n[proxy]\nhost = "127.0.0.1"\nport = {port}\nrequire_api_key = false\n'
            f'trusted_user_header = "{USER_HEADER}"\nmax_wait_seconds = 20\nshutdown_grace = 10\n'
        )  # fmt: skip
    return path


def run(*command: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def serving(config: Path, port: int, output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``saia serve`` once it answers /health; killed at the end if still running."""
    with output.open("ab") as sink:
        process = subprocess.Popen([SAIA, "--config", str(config), "serve"], stdout=sink,
                                   stderr=subprocess.STDOUT)  # fmt: skip

    def healthy() -> bool:
        assert process.poll() is None, f"saia serve exited {process.returncode}: " + tail(output)
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, 90, "saia serve to answer /health")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def tail(output: Path, lines: int = 40) -> str:
    return "\n".join(output.read_text(errors="replace").splitlines()[-lines:])


def content(answer: httpx.Response) -> str:
    text: str = answer.json()["choices"][0]["message"]["content"]
    return text


class Clients:
    """Small chat completions through the proxy; every outcome counted, by status or error."""

    def __init__(self, port: int, service: str) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.body = {"model": service, "messages": PROMPT, "max_tokens": 2}
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def chat(self, client: httpx.Client, user: str) -> str:
        try:
            answer = client.post(self.url, json=self.body, headers={USER_HEADER: user})
            outcome = str(answer.status_code)
            if outcome == "200" and content(answer) != "echo: one":
                outcome = "200 with a wrong answer"
        except httpx.HTTPError as error:
            outcome = type(error).__name__
        with self._lock:
            self.outcomes[outcome] += 1
        return outcome

    def answered(self, user: str, serve: subprocess.Popen[bytes]) -> bool:
        assert serve.poll() is None, f"saia serve exited {serve.returncode}"
        with httpx.Client(timeout=30) as client:
            return self.chat(client, user) == "200"

    @contextmanager
    def load(self, workers: int) -> Iterator[list[Counter[str]]]:
        """Each worker sends one request after another, as its own user, while in the block;
        yields each worker's outcomes so far."""
        stop = threading.Event()
        seen: list[Counter[str]] = [Counter() for _ in range(workers)]

        def work(n: int) -> None:
            with httpx.Client(timeout=httpx.Timeout(5, connect=2)) as client:
                while not stop.is_set():
                    seen[n][self.chat(client, f"load-{n}")] += 1

        threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(workers)]
        for thread in threads:
            thread.start()
        try:
            yield seen
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            assert not any(thread.is_alive() for thread in threads), "a load worker hung"


def checkpoints(store: Path) -> tuple[dict[str, int], int]:
    """Each projection's checkpointed position, and the log's last position."""
    log = EventLog(SqliteStore(str(store)))
    try:
        db = ProjectionDb.beside(log)
        with db.reading() as cursor:
            cursor.execute(f"SELECT name, position FROM {db.table(TRACKING)}")
            positions = {str(name): int(position) for name, position in cursor.fetchall()}
        return positions, log.last_position()
    finally:
        log.close()


def request_ends(store: Path) -> Counter[str]:
    """How many requests the log has started, finished (by status), rejected and abandoned."""
    counts: Counter[str] = Counter()
    log = EventLog(SqliteStore(str(store)))
    try:
        for item in recorded(log):
            event: Any = item.event
            if isinstance(event, Request.Started):
                counts["started"] += 1
            elif isinstance(event, Request.Finished):
                counts["ended"] += 1
                counts[f"finished {event.status}"] += 1
            elif isinstance(event, Request.Rejected):
                counts["ended"] += 1
                counts[f"rejected {event.status}"] += 1
            elif isinstance(event, Request.Abandoned):
                counts["ended"] += 1
                counts["abandoned"] += 1
    finally:
        log.close()
    return counts


def test_serve_killed_under_load_restarts_with_projections_equal_to_a_rebuild(
    tmp_path: Path,
) -> None:
    """kill -9 of saia serve under load, then a restart: projections equal a rebuild from
    the log, and every request is counted once, none lost or counted twice."""
    service = unique("restart")
    port = free_port()
    config = hub_config(tmp_path, service, port)
    store = tmp_path / "saia.db"
    output = tmp_path / "serve.log"
    clients = Clients(port, service)
    initialized = run(SAIA, "--config", str(config), "init", timeout=60)
    assert initialized.returncode == 0, initialized.stderr
    try:
        with serving(config, port, output) as first:
            wait_for(lambda: clients.answered("probe", first), 90,
                     "a chat answered by a ready job", every=0.5)  # fmt: skip
            with clients.load(WORKERS) as seen:
                wait_for(lambda: sum(c["200"] for c in seen) >= 100, 30, "load to be served")
                time.sleep(2)  # under load for a while: accounting catches up meanwhile
                os.kill(first.pid, signal.SIGKILL)
                first.wait(timeout=30)
                # Load goes on against the dead port until every worker has met it.
                wait_for(lambda: all(c["ConnectError"] for c in seen), 15,
                         "every load worker to find the proxy gone")  # fmt: skip

        behind, last = checkpoints(store)
        assert behind and min(behind.values()) < last, (
            f"the kill left every checkpoint at the log's end {last}: {behind}; nothing to prove"
        )

        with serving(config, port, output) as second:
            wait_for(lambda: clients.answered("after", second), 60,
                     "a chat answered after the restart", every=0.5)  # fmt: skip
            with httpx.Client(timeout=10) as client:
                again = [clients.chat(client, f"after-{n % 3}") for n in range(30)]
            assert again == ["200"] * 30, again
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=60) == 0, tail(output)
    finally:
        cancel_service_jobs(service)

    verified = run(REPLAY, "--config", str(config), "verify")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert "projections ok" in verified.stdout, verified.stdout

    accounted = run(REPLAY, "--config", str(config), "accounting", "--format", "json")
    assert accounted.returncode == 0, accounted.stderr
    rows = [json.loads(line) for line in accounted.stdout.splitlines() if line.strip()]
    counted = sum(int(row["requests"]) for row in rows)
    logged = request_ends(store)
    answered = clients.outcomes["200"]
    by_user = {row["user"]: row["requests"] for row in rows}
    summary = (f"clients saw {dict(clients.outcomes)}; the log has {dict(logged)}; "
               f"accounted {counted}: {by_user}")  # fmt: skip
    # Beside answers, only the kill's broken connections (and 503 from a slow first start).
    assert set(clients.outcomes) <= {"200", "503", "ConnectError", "ReadError",
                                     "RemoteProtocolError"}, summary  # fmt: skip
    # Every request ended: those in flight at the kill were abandoned at the restart.
    assert logged["started"] == logged["ended"], summary
    # Each request that ended is counted once: none counted twice, none left out.
    assert counted == logged["ended"], summary
    # Each answer a client got is in the log: finished with its status, or, if the kill
    # came before its end was recorded (that is written after the answer), abandoned.
    assert answered <= logged["finished 200"] + logged["abandoned"], summary
