"""The simulated cluster of ``simulate``: every submitted job starts and is ready at once.

It applies the policy's actions to plain ServiceViews, as the controller and the
service-state projection would, and counts jobs started and job-seconds.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from uuid import NAMESPACE_URL, UUID, uuid5

from saia.domain.job import DrainReason, Phase
from saia.domain.policy import Action, Cancel, Drain, Submit
from saia.domain.state import JobView, ServiceView
from saia.projections.service_state import SCALING_REASONS


class InstantCluster:
    def __init__(self, services: Mapping[str, ServiceView]) -> None:
        self.services = services
        self.started: Counter[str] = Counter()
        self.job_seconds: defaultdict[str, float] = defaultdict(float)  # of ended jobs

    def act(self, actions: Iterable[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Submit):
                self._start(action, now)
            elif isinstance(action, Drain):
                self._drain(action, now)
            elif isinstance(action, Cancel):
                self._end(action.job, now)

    def expire(self, now: float) -> None:
        """Slurm ends a job at its walltime."""
        for view in self.services.values():
            for job in [j for j in view.jobs.values() if j.expiry is not None and j.expiry <= now]:
                self._end(job.id, job.expiry or now)

    def running_seconds(self, service: str, now: float) -> float:
        view = self.services[service]
        return sum(now - (job.started_at or now) for job in view.jobs.values())

    def _start(self, submit: Submit, now: float) -> None:
        view = self.services[submit.service]
        job = JobView(
            id=uuid5(NAMESPACE_URL, f"simulated/{submit.token}"),
            service=submit.service,
            token=submit.token,
            port=submit.port,
            phase=Phase.READY,
            requested_at=now,
            walltime=submit.walltime,
            replaces=submit.replaces,
            started_at=now,
            ready_at=now,
        )
        view.jobs[job.id] = job
        self.started[submit.service] += 1
        if submit.reason in SCALING_REASONS:
            view.last_scale_at = now

    def _drain(self, drain: Drain, now: float) -> None:
        for view in self.services.values():
            job = view.jobs.get(drain.job)
            if job is not None:
                view.jobs[job.id] = replace(job, draining=drain.reason.value, draining_at=now)
                if drain.reason is DrainReason.SURPLUS:
                    view.last_scale_at = now

    def _end(self, job_id: UUID, now: float) -> None:
        for view in self.services.values():
            job = view.jobs.pop(job_id, None)
            if job is not None:
                self.job_seconds[view.spec.id] += now - (job.started_at or now)
