"""The entrypoint's route cache: a file for the processes that come and go, memory for a session."""

from __future__ import annotations

from pathlib import Path

from saia.entrypoint.routes import RouteCache
from saia.protocol.jobs import JobRecord
from tests.fakes import FakeClock

RUNNING = JobRecord("7", "chat", "0123456789abcdef", 20001, "RUNNING", batch_host="node1")
PENDING = JobRecord("8", "chat", "fedcba9876543210", 20002, "PENDING")


def cache(tmp_path: Path, clock: FakeClock, looks: list[int]) -> RouteCache:
    def look() -> list[JobRecord]:
        looks.append(1)
        return [RUNNING, PENDING]

    return RouteCache(str(tmp_path / "state" / "queue"), 2.0, look, clock)


def test_a_fresh_look_is_shared_through_the_file(tmp_path: Path) -> None:
    """Another process finds a job in the file without asking Slurm; a stale file is asked again."""
    clock, looks = FakeClock(), []
    cache(tmp_path, clock, looks).refresh()
    other = cache(tmp_path, clock, looks)
    assert other.route("7") == RUNNING and len(looks) == 1
    clock.advance(2.0)
    assert other.route("7") == RUNNING and len(looks) == 2


def test_a_session_remembers_its_last_look_without_reading_the_file(tmp_path: Path) -> None:
    """remembered() answers from memory while fresh: running jobs only, nothing once stale."""
    clock, looks = FakeClock(), []
    routes = cache(tmp_path, clock, looks)
    assert routes.remembered("7") is None  # no look yet
    routes.refresh()
    (tmp_path / "state" / "queue").unlink()
    assert routes.remembered("7") == RUNNING
    assert routes.remembered("8") is None  # not running: route() says why
    clock.advance(2.0)
    assert routes.remembered("7") is None
    routes.refresh()
    routes.forget()
    assert routes.remembered("7") is None
