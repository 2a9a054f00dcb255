"""Service state: per service its spec and live jobs; what the controller plans from
and the proxy routes by. A deterministic function of the log."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, ClassVar
from uuid import UUID

import orjson

from saia.domain.job import DrainReason, Job, Phase
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.domain.state import STARTUP_SAMPLES, JobView, ServiceView
from saia.projections.runner import InMemory

# Requests that changed the number of slots, for the scale-down cooldown.
SCALING_REASONS = frozenset({"demand", "minimum"})


class ServiceState(InMemory):
    NAME: ClassVar[str] = "service state"
    VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.services: dict[str, ServiceView] = {}
        self.service_names: dict[UUID, str] = {}  # Service aggregate id -> service id
        self.job_service: dict[UUID, str] = {}  # every job ever, for lookups by id
        self.tokens: set[str] = set()  # every token ever, to tell saia's jobs from strangers
        self.request_service: dict[UUID, str] = {}  # requests in flight
        self.ended: Counter[tuple[str, str]] = Counter()  # (service, final state) -> jobs
        # Every id and alias of a service that is not retired -> its id; derived from
        # the specs (so neither fingerprinted nor in snapshots), for the proxy's lookups.
        self.model_names: dict[str, str] = {}

    # -- queries -----------------------------------------------------------------

    def job(self, job_id: UUID) -> JobView | None:
        service = self.job_service.get(job_id)
        if service is None:
            return None
        return self.services[service].jobs.get(job_id)

    def service_named(self, model: str) -> str | None:
        """The id of the service a client's model names (its id or an alias), unless retired."""
        return self.model_names.get(model)

    def active_services(self) -> dict[str, ServiceView]:
        """Services the controller still acts on: configured, or retired with live jobs."""
        return {k: v for k, v in self.services.items() if not v.retired or v.jobs}

    def fingerprint(self) -> Any:
        """A comparable value of everything this projection holds."""
        return (
            {name: (view.spec, view.registered_at, view.retired, dict(view.jobs),
                    view.last_active_at, view.last_scale_at, view.submit_failures,
                    view.last_failure_at, view.startup_seconds, view.inflight)
             for name, view in self.services.items()},
            dict(self.job_service),
            set(self.tokens),
            dict(self.request_service),
            dict(self.ended),
        )

    # -- checkpoints -------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything, as JSON; services and jobs keep their order, which planning follows."""
        return orjson.dumps({
            "services": [[name, _service_data(view)] for name, view in self.services.items()],
            "service_names": {k.hex: v for k, v in self.service_names.items()},
            "job_service": {k.hex: v for k, v in self.job_service.items()},
            "tokens": sorted(self.tokens),
            "request_service": {k.hex: v for k, v in self.request_service.items()},
            "ended": [[service, state, n] for (service, state), n in self.ended.items()],
        })

    def restore(self, snapshot: bytes | None) -> None:
        self._clear()
        if snapshot is None:
            return
        data = orjson.loads(snapshot)
        self.services = {name: _service_view(view) for name, view in data["services"]}
        self.service_names = {UUID(k): v for k, v in data["service_names"].items()}
        self.job_service = {UUID(k): v for k, v in data["job_service"].items()}
        self.tokens = set(data["tokens"])
        self.request_service = {UUID(k): v for k, v in data["request_service"].items()}
        self.ended = Counter({(service, state): n for service, state, n in data["ended"]})
        self._index_names()

    # -- events ------------------------------------------------------------------

    def apply(self, event: object) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _registered(self, e: Service.Registered) -> None:
        spec = ServiceSpec.from_dict(e.spec)
        at = e.timestamp.timestamp()
        self.services[spec.id] = ServiceView(spec=spec, registered_at=at, last_active_at=at)
        self.service_names[e.originator_id] = spec.id
        self._index_names()

    def _reconfigured(self, e: Service.Reconfigured) -> None:
        view = self._service_of(e.originator_id)
        view.spec = view.spec.changed(e.changes)
        self._index_names()

    def _retired(self, e: Service.Retired) -> None:
        self._service_of(e.originator_id).retired = True
        self._index_names()

    def _reinstated(self, e: Service.Reinstated) -> None:
        view = self._service_of(e.originator_id)
        view.spec = ServiceSpec.from_dict(e.spec)
        view.retired = False
        self._index_names()

    def _index_names(self) -> None:
        """Rebuilt whole: services change seldom. The catalogue keeps names unique; should
        two services still share one (added at once from two places), an id wins over an
        alias and the service registered first keeps an alias, the same on every replay."""
        live = [view.spec for view in self.services.values() if not view.retired]
        names: dict[str, str] = {}
        for spec in live:
            for alias in spec.aliases:
                names.setdefault(alias, spec.id)
        names.update((spec.id, spec.id) for spec in live)
        self.model_names = names

    def _service_of(self, aggregate_id: UUID) -> ServiceView:
        return self.services[self.service_names[aggregate_id]]

    def _requested(self, e: Job.Requested) -> None:
        at = e.timestamp.timestamp()
        job = JobView(
            id=e.originator_id,
            service=e.service,
            token=e.token,
            port=e.port,
            phase=Phase.REQUESTED,
            requested_at=at,
            walltime=e.walltime,
            replaces=UUID(e.replaces) if e.replaces else None,
        )
        view = self.services[e.service]
        view.jobs[job.id] = job
        self.job_service[job.id] = e.service
        self.tokens.add(e.token)
        if e.reason in SCALING_REASONS:
            view.last_scale_at = at

    def _update(self, job_id: UUID, **changes: Any) -> tuple[ServiceView, JobView]:
        view = self.services[self.job_service[job_id]]
        job = replace(view.jobs[job_id], **changes)
        view.jobs[job_id] = job
        return view, job

    def _submitted(self, e: Job.Submitted) -> None:
        view, _ = self._update(e.originator_id, phase=Phase.SUBMITTED, slurm_job_id=e.slurm_job_id)
        view.submit_failures = 0

    def _submission_failed(self, e: Job.SubmissionFailed) -> None:
        view = self.services[self.job_service[e.originator_id]]
        del view.jobs[e.originator_id]
        view.submit_failures += 1
        view.last_failure_at = e.timestamp.timestamp()
        self.ended[(view.spec.id, "not_submitted")] += 1

    def _started(self, e: Job.Started) -> None:
        self._update(
            e.originator_id, phase=Phase.RUNNING, node=e.node, started_at=e.timestamp.timestamp()
        )

    def _walltime_corrected(self, e: Job.WalltimeCorrected) -> None:
        self._update(e.originator_id, walltime=e.walltime)

    def _became_ready(self, e: Job.BecameReady) -> None:
        at = e.timestamp.timestamp()
        view, job = self._update(e.originator_id, phase=Phase.READY, ready_at=at, failed_probes=0)
        samples = (*view.startup_seconds, at - job.requested_at)
        view.startup_seconds = samples[-STARTUP_SAMPLES:]

    def _heartbeat(self, e: Job.Heartbeat) -> None:
        view = self.services[self.job_service[e.originator_id]]
        failed = 0 if e.ok else view.jobs[e.originator_id].failed_probes + 1
        self._update(
            e.originator_id, failed_probes=failed, last_heartbeat_at=e.timestamp.timestamp()
        )

    def _draining(self, e: Job.Draining) -> None:
        at = e.timestamp.timestamp()
        view, _ = self._update(e.originator_id, draining=e.reason, draining_at=at)
        if e.reason == DrainReason.SURPLUS.value:
            view.last_scale_at = at

    def _cancel_requested(self, e: Job.CancelRequested) -> None:
        self._update(e.originator_id, cancel_requested_at=e.timestamp.timestamp())

    def _ended(self, e: Job.Ended) -> None:
        view = self.services[self.job_service[e.originator_id]]
        del view.jobs[e.originator_id]
        self.ended[(view.spec.id, e.final_state)] += 1

    def _request_started(self, e: Request.Started) -> None:
        view = self.services.get(e.service)
        if view is None:
            return
        view.inflight += 1
        view.last_active_at = max(view.last_active_at, e.timestamp.timestamp())
        self.request_service[e.originator_id] = e.service

    def _request_done(self, e: Request.Finished | Request.Rejected | Request.Abandoned) -> None:
        service = self.request_service.pop(e.originator_id, None)
        if service is None:
            return
        view = self.services[service]
        view.inflight -= 1
        view.last_active_at = max(view.last_active_at, e.timestamp.timestamp())


_JOB_FIELDS = tuple(f.name for f in fields(JobView))


def _service_data(view: ServiceView) -> dict[str, Any]:
    return {
        "spec": view.spec.to_dict(),
        "registered_at": view.registered_at,
        "retired": view.retired,
        "jobs": [_job_data(job) for job in view.jobs.values()],
        "last_active_at": view.last_active_at,
        "last_scale_at": view.last_scale_at,
        "submit_failures": view.submit_failures,
        "last_failure_at": view.last_failure_at,
        "startup_seconds": list(view.startup_seconds),
        "inflight": view.inflight,
    }


def _service_view(data: dict[str, Any]) -> ServiceView:
    jobs = [_job_view(job) for job in data["jobs"]]
    return ServiceView(
        spec=ServiceSpec.from_dict(data["spec"]),
        registered_at=data["registered_at"],
        retired=data["retired"],
        jobs={job.id: job for job in jobs},
        last_active_at=data["last_active_at"],
        last_scale_at=data["last_scale_at"],
        submit_failures=data["submit_failures"],
        last_failure_at=data["last_failure_at"],
        startup_seconds=tuple(data["startup_seconds"]),
        inflight=data["inflight"],
    )


def _job_data(job: JobView) -> list[Any]:
    values = [getattr(job, name) for name in _JOB_FIELDS]
    return [v.hex if isinstance(v, UUID) else v.value if isinstance(v, Phase) else v
            for v in values]  # fmt: skip


def _job_view(values: list[Any]) -> JobView:
    data = dict(zip(_JOB_FIELDS, values, strict=True))
    data["id"] = UUID(data["id"])
    data["phase"] = Phase(data["phase"])
    if data["replaces"] is not None:
        data["replaces"] = UUID(data["replaces"])
    return JobView(**data)


_HANDLERS: dict[type, Callable[[ServiceState, Any], None]] = {
    Service.Registered: ServiceState._registered,
    Service.Reconfigured: ServiceState._reconfigured,
    Service.Retired: ServiceState._retired,
    Service.Reinstated: ServiceState._reinstated,
    Job.Requested: ServiceState._requested,
    Job.Submitted: ServiceState._submitted,
    Job.SubmissionFailed: ServiceState._submission_failed,
    Job.Started: ServiceState._started,
    Job.WalltimeCorrected: ServiceState._walltime_corrected,
    Job.BecameReady: ServiceState._became_ready,
    Job.Heartbeat: ServiceState._heartbeat,
    Job.Draining: ServiceState._draining,
    Job.CancelRequested: ServiceState._cancel_requested,
    Job.Ended: ServiceState._ended,
    Request.Started: ServiceState._request_started,
    Request.Finished: ServiceState._request_done,
    Request.Rejected: ServiceState._request_done,
    Request.Abandoned: ServiceState._request_done,
}
