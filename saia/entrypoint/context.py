"""What every verb gets: the configuration, stdin and stdout, the clock, and Slurm on demand.

Slurm and the route cache are imported when a verb first asks for them:
``keep-alive`` runs in a process of its own and pays for neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from saia.entrypoint.config import EntrypointConfig

if TYPE_CHECKING:
    from saia.entrypoint.routes import RouteCache
    from saia.entrypoint.slurm import LoginSlurm
    from saia.protocol.jobs import JobRecord

Read = Callable[[], bytes]  # a chunk of stdin; b"" at its end
Write = Callable[[bytes], None]  # to stdout, flushed


class Context:
    def __init__(
        self,
        config: EntrypointConfig,
        read: Read,
        write: Write,
        clock: Callable[[], float],
        environment: Mapping[str, str],  # for the commands this process starts
        make_slurm: Callable[[], LoginSlurm],  # called once, by the first verb that asks Slurm
    ) -> None:
        self.config = config
        self.read = read
        self.write = write
        self.clock = clock
        self.environment = environment
        self.make_slurm = make_slurm
        self._slurm: LoginSlurm | None = None
        self._routes: RouteCache | None = None

    def slurm(self) -> LoginSlurm:
        if self._slurm is None:
            self._slurm = self.make_slurm()
        return self._slurm

    def routes(self) -> RouteCache:
        if self._routes is None:
            from saia.entrypoint.routes import RouteCache  # noqa: PLC0415 (start-up cost)

            cache_path, max_age = self.config.queue_cache, self.config.queue_cache_seconds
            self._routes = RouteCache(cache_path, max_age, self._look, self.clock)
        return self._routes

    def _look(self) -> list[JobRecord]:
        return self.slurm().jobs()
