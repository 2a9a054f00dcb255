"""Property: state --at T equals replaying the history's prefix up to T."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from hypothesis import given, settings
from hypothesis import strategies as st

from saia.adapters.store import EventLog, MemoryStore
from saia.domain.job import DrainReason, FinalState, Job
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.projections.service_state import ServiceState
from saia.replay.at_time import state_at
from saia.replay.digest import digest

T0 = datetime(2026, 11, 1, tzinfo=UTC)
STEPS = ("submitted", "started", "ready", "drain", "end")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# A job's life: how many of its steps happen, and the gaps between them.
jobs = st.lists(st.tuples(st.integers(0, len(STEPS)), st.lists(st.integers(1, 50), min_size=6,
                                                              max_size=6)), max_size=5)
requests = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20), st.booleans()),
                    max_size=10)


def history(job_lives: list[tuple[int, list[int]]],
            request_times: list[tuple[int, int, bool]]) -> list[tuple[datetime, Any]]:
    """Aggregates with their pending events, ordered as a controller would save them."""
    service = Service.register(ServiceSpec.from_dict({"id": "chat", "sbatch": "s.sbatch"}), at(0))
    saved: list[tuple[datetime, Any]] = [(at(0), service)]
    for n, (steps, gaps) in enumerate(job_lives):
        t = float(gaps[0])
        job = Job.request("chat", 20000 + n, f"t{n}", 3600.0, at(t), reason="demand")
        actions = [lambda j, when: j.submitted("1", when), lambda j, when: j.started("n", when),
                   lambda j, when: j.became_ready(when),
                   lambda j, when: j.drain(DrainReason.SURPLUS, when),
                   lambda j, when: j.end(FinalState.CANCELLED, when)]
        for action, gap in zip(actions[:steps], gaps[1:], strict=False):
            t += gap
            action(job, at(t))
        saved.append((at(gaps[0]), job))
    for n, (start, length, rejected) in enumerate(request_times):
        request = Request.start(uuid5(NAMESPACE_URL, f"r{n}"), "u", "chat", "", 1, at(start))
        if rejected:
            request.reject(429, "busy", at(start + length))
        else:
            request.finish(200, "t0", 1, 1, 1, at(start + length))
        saved.append((at(start), request))
    return saved


@settings(max_examples=40, deadline=None)
@given(jobs, requests, st.integers(0, 400))
def test_state_at_equals_replaying_the_prefix(job_lives: list[tuple[int, list[int]]],
                                              request_times: list[tuple[int, int, bool]],
                                              moment: int) -> None:
    """For random histories, state --at T from the store equals the events up to T replayed."""
    log = EventLog(MemoryStore())
    expected = ServiceState()
    events: list[Any] = []
    for _, aggregate in sorted(history(job_lives, request_times), key=lambda item: item[0]):
        pending = aggregate.collect_events()
        if pending:  # stored as recorded, through the same mapper as the hub's
            log.recorder.insert_events([log.mapper.to_stored_event(e) for e in pending])
        events.extend(pending)
    for event in events:
        if event.timestamp <= at(moment):
            expected.apply(event)
    assert digest(state_at(log, at(moment)).fingerprint()) == digest(expected.fingerprint())
