"""A saia deployment on the real dev cluster, for integration tests.

Each test gets its own config folder, store and uniquely named services, runs
the controller loop in a thread, and cancels every job of its services when it
ends, whatever happened.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from saia import bootstrap, catalog, config
from saia.controller import Controller, PassReport, run
from saia.domain.state import JobView, ServiceView
from saia.hub import Hub

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def cluster_env() -> dict[str, str] | None:
    """The dev cluster's variables, or None when it is not up."""
    needed = ("SLURM_CONF", "SAIA_JOB_OUTPUT_DIR")
    if not all(os.environ.get(name) for name in needed):
        return None
    if subprocess.run(["sinfo", "-h"], capture_output=True, check=False).returncode != 0:
        return None
    return {name: os.environ[name] for name in needed}


def unique(name: str) -> str:
    return f"it-{name}-{secrets.token_hex(3)}"


def write_config(folder: Path, services: list[dict[str, Any]], **controller: Any) -> Path:
    settings = {
        "interval": 1,
        "startup_interval": 0.25,
        "probe_interval": 1,
        "sbatch_dir": str(REPO / "sbatch"),
        "job_output_dir": os.environ["SAIA_JOB_OUTPUT_DIR"],
        "job_python": str(REPO / ".venv/bin/python"),
        **controller,
    }
    lines = ['placement = "login-node"', "", "[store]", 'path = "saia.db"', "", "[controller]"]
    lines += [f"{key} = {_toml(value)}" for key, value in settings.items()]
    for service in services:
        lines += ["", "[[services]]"]
        lines += [f"{key} = {_toml(value)}" for key, value in service.items()]
    path = folder / "saia.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def cancel_service_jobs(service: str) -> None:
    subprocess.run(["scancel", f"--name=saia-{service}"], capture_output=True, check=False)


def queued(service: str) -> list[tuple[str, str]]:
    """(job id, state) of the service's jobs that Slurm still remembers."""
    out = subprocess.run(
        ["squeue", "-h", "-a", "--states=all", f"--name=saia-{service}", "-o", "%i|%T"],
        capture_output=True, text=True, check=True,
    ).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]  # type: ignore[misc]


def alive(service: str) -> list[str]:
    return [job for job, state in queued(service) if state in ("PENDING", "RUNNING")]


def routable(hub: Hub, service: str) -> list[JobView]:
    """The service's jobs the proxy may route to, as the hub sees them now."""
    with hub.lock:
        return list(hub.state.services[service].routing_targets())


def recorded_events(hub: Hub, topic: str) -> list[Any]:
    """Every event of the topic in the hub's log, in order."""
    found = hub.log.recorder.select_notifications(start=1, limit=1_000_000, topics=[topic])
    return [hub.log.mapper.to_domain_event(notification) for notification in found]


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class Deployment:
    def __init__(self, path: Path) -> None:
        self.config = config.load(path)
        self.hub = bootstrap.hub_for(self.config)
        catalog.sync(self.hub, self.config.services, time.time())
        self.hub.refresh()
        self.controller: Controller = bootstrap.controller_for(self.config, self.hub)
        self.lock = bootstrap.controller_lock(self.config)
        self.reports: list[PassReport] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=run, args=(self.controller, self.lock, self._stop, self.reports.append),
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.controller.wake()
        if self._thread is not None:
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "controller thread did not stop"

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def view(self, service: str) -> ServiceView:
        with self.hub.lock:
            return self.hub.state.services[service]

    def ready(self, service: str) -> list[JobView]:
        return routable(self.hub, service)

    def events(self, topic: str) -> list[Any]:
        return recorded_events(self.hub, topic)


@contextmanager
def deployment(folder: Path, services: list[dict[str, Any]], **controller: Any) -> Iterator[
    Deployment
]:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(folder, services, **controller)
    running = Deployment(path)
    try:
        yield running
    finally:
        running.stop()
        for service in services:
            cancel_service_jobs(str(service["id"]))
        running.hub.close()


def copy_sbatch_dir(folder: Path) -> Path:
    target = folder / "sbatch"
    shutil.copytree(REPO / "sbatch", target)
    return target
