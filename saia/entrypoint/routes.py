"""Where saia's jobs listen, from the queue, with a short-lived cache file.

sshd starts one entrypoint per channel, so a burst of ``forward`` calls would
run squeue (and import the Slurm adapter) once each. Instead the last look at
the queue is kept in a file for ``queue_cache_seconds``; a cache hit costs one
small JSON read. A job missing from the cache, or not running in it, causes one
fresh look before the answer, so a job that just started is found at once.

The file lives in the entrypoint's own state folder (mode 0700) and is replaced
atomically, so readers never see half of it. Staleness is bounded by the
cache time; job ids are not reused by Slurm within it, so a cached job is
never confused with another user's.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

RUNNING = "RUNNING"


@dataclass(frozen=True, slots=True)
class Route:
    job_id: str
    service: str
    state: str  # the SlurmState value
    host: str  # the batch host; empty until the job runs
    port: int

    @property
    def running(self) -> bool:
        return self.state == RUNNING and bool(self.host)


class RouteCache:
    def __init__(
        self,
        path: str,
        max_age: float,
        look: Callable[[], list[Route]],
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.max_age = max_age
        self.look = look  # asks Slurm now
        self.clock = clock

    def route(self, job_id: str) -> Route | None:
        """saia's job ``job_id``, running if the queue says so, else as the queue has it."""
        cached = self._read()
        hit = cached.get(job_id) if cached is not None else None
        if hit is not None and hit.running:
            return hit
        return self.refresh().get(job_id)

    def running(self, service: str) -> list[Route]:
        """saia's running jobs of ``service``, looking again if the cache has none."""
        cached = self._read()
        if cached is not None:
            hits = [r for r in cached.values() if r.service == service and r.running]
            if hits:
                return hits
        return [r for r in self.refresh().values() if r.service == service and r.running]

    def refresh(self) -> dict[str, Route]:
        at = self.clock()
        return self.store(self.look(), at)

    def store(self, looked: Iterable[Route], at: float | None = None) -> dict[str, Route]:
        """Keep what a look at the queue (started at ``at``) found, for the next callers."""
        routes = {route.job_id: route for route in looked}
        self._write(self.clock() if at is None else at, routes)
        return routes

    def forget(self) -> None:
        """Drop the cache, after a change saia itself made to the queue."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _read(self) -> dict[str, Route] | None:
        try:
            with open(self.path, "rb") as file:
                data = json.loads(file.read())
            at = float(data["at"])
            if not 0 <= self.clock() - at < self.max_age:
                return None
            return {r[0]: Route(r[0], r[1], r[2], r[3], int(r[4])) for r in data["routes"]}
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None  # missing, stale or damaged: look at the queue again

    def _write(self, at: float, routes: dict[str, Route]) -> None:
        rows = [[r.job_id, r.service, r.state, r.host, r.port] for r in routes.values()]
        payload = json.dumps({"at": at, "routes": rows}, separators=(",", ":")).encode()
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(payload)
            os.replace(temporary, self.path)
        except OSError:
            # The cache only saves time; an answer from a fresh look is still right.
            with contextlib.suppress(OSError):
                os.unlink(temporary)
