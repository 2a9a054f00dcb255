"""Where saia's jobs listen, from the queue, with a short-lived cache file.

sshd starts one entrypoint per legacy request, so a burst of them would run
squeue once each. Instead the last look at the queue is kept in a file for
``queue_cache_seconds``; a cache hit costs one small read. A job missing from
the cache, or not running in it, causes one fresh look before the answer, so a
job that just started is found at once. A session shares the file.

A session also keeps the last look in memory, so that its requests find their
job without reading the file or leaving the event loop while the look is fresh.

The file lives in the entrypoint's own state folder (mode 0700) and is replaced
atomically, so readers never see half of it. Staleness is bounded by the
cache time; job ids are not reused by Slurm within it, so a cached job is
never confused with another user's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from saia.protocol.jobs import JobRecord, WireError, job_from_line, job_line


class RouteCache:
    def __init__(
        self,
        path: str,
        max_age: float,
        look: Callable[[], list[JobRecord]],
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.max_age = max_age
        self.look = look  # asks Slurm now
        self.clock = clock
        self._memory: tuple[float, dict[str, JobRecord]] | None = None  # the last look

    def remembered(self, job_id: str) -> JobRecord | None:
        """saia's job ``job_id`` if the last look this process had, still fresh, has it running;
        no I/O, so callable on an event loop (None: ask ``route``)."""
        if self._memory is None or not 0 <= self.clock() - self._memory[0] < self.max_age:
            return None
        job = self._memory[1].get(job_id)
        return job if job is not None and job.running else None

    def route(self, job_id: str) -> JobRecord | None:
        """saia's job ``job_id``, running if the queue says so, else as the queue has it."""
        cached = self._read()
        hit = cached.get(job_id) if cached is not None else None
        if hit is not None and hit.running:
            return hit
        return self.refresh().get(job_id)

    def running(self, service: str) -> list[JobRecord]:
        """saia's running jobs of ``service``, looking again if the cache has none."""
        cached = self._read()
        if cached is not None:
            hits = [job for job in cached.values() if job.service == service and job.running]
            if hits:
                return hits
        return [job for job in self.refresh().values() if job.service == service and job.running]

    def refresh(self) -> dict[str, JobRecord]:
        at = self.clock()
        return self.store(self.look(), at)

    def store(self, looked: list[JobRecord], at: float | None = None) -> dict[str, JobRecord]:
        """Keep what a look at the queue (started at ``at``) found, for the next callers."""
        jobs = {job.job_id: job for job in looked}
        self._write(self.clock() if at is None else at, jobs)
        return jobs

    def forget(self) -> None:
        """Drop the cache, after a change saia itself made to the queue."""
        self._memory = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _read(self) -> dict[str, JobRecord] | None:
        try:
            with open(self.path, "rb") as file:
                at, *lines = file.read().split(b"\n")
            if not 0 <= self.clock() - float(at) < self.max_age:
                return None
            jobs = [job_from_line(line) for line in lines if line]
            self._memory = (float(at), {job.job_id: job for job in jobs})
            return self._memory[1]
        except (OSError, ValueError, WireError):
            return None  # missing, stale or damaged: look at the queue again

    def _write(self, at: float, jobs: dict[str, JobRecord]) -> None:
        self._memory = (at, jobs)
        payload = repr(at).encode() + b"\n" + b"".join(job_line(job) for job in jobs.values())
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
