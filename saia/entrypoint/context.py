"""What every verb gets: the configuration, stdin and stdout, the clock, and Slurm on demand."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from saia.entrypoint.config import EntrypointConfig
from saia.entrypoint.routes import RouteCache
from saia.entrypoint.slurm import LoginSlurm
from saia.protocol.jobs import JobRecord

Read = Callable[[], bytes]  # a chunk of stdin; b"" at its end
Write = Callable[[bytes], None]  # to stdout, flushed


@dataclass
class Context:
    config: EntrypointConfig
    read: Read
    write: Write
    clock: Callable[[], float]
    environment: Mapping[str, str]  # for the commands this process starts
    make_slurm: Callable[[], LoginSlurm]  # called once, by the first verb that asks Slurm
    _slurm: LoginSlurm | None = field(default=None, init=False, repr=False)
    _routes: RouteCache | None = field(default=None, init=False, repr=False)

    def slurm(self) -> LoginSlurm:
        if self._slurm is None:
            self._slurm = self.make_slurm()
        return self._slurm

    def routes(self) -> RouteCache:
        if self._routes is None:
            cache_path, max_age = self.config.queue_cache, self.config.queue_cache_seconds
            self._routes = RouteCache(cache_path, max_age, self._look, self.clock)
        return self._routes

    def _look(self) -> list[JobRecord]:
        return self.slurm().jobs()
