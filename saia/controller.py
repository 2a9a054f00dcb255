"""The controller: observe the queue and the jobs, plan, act; one pass at a time.

Deciding is the pure policy's (saia.domain.policy) and reconciliation's
(saia.domain.reconcile); this module only gathers their inputs and carries out
their outputs, recording every change as an event before it acts on Slurm.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from eventsourcing.persistence import PersistenceError

from saia.adapters.lock import FileLock
from saia.config import ControllerSettings
from saia.demand import DemandTracker
from saia.domain.cluster import Cluster
from saia.domain.errors import DomainError
from saia.domain.job import Job, Phase
from saia.domain.policy import Action, Cancel, Drain, Observation, Submit, plan
from saia.domain.reconcile import (
    Adopt,
    CancelUnknown,
    Correction,
    CorrectWalltime,
    MarkEnded,
    MarkNotSubmitted,
    MarkStarted,
    MarkSubmitted,
    reconcile,
)
from saia.domain.slurm import RUNNING_STATES, SlurmJob
from saia.domain.state import JobView
from saia.hub import Hub, utc
from saia.ports import (
    Prober,
    ProbeTarget,
    Slurm,
    SlurmError,
    SlurmTimeout,
    SubmissionRejected,
    SubmitRequest,
)

log = logging.getLogger(__name__)

# How long after a submission passes stay fast, to see the job start at once.
FAST_AFTER_SUBMIT = 60.0


@dataclass(slots=True)
class PassReport:
    at: float
    slurm_available: bool = True
    observation: Observation | None = None
    corrections: list[Correction] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# The times of requests since a moment, per service, that no proxy of saia's counted.
OutsideDemand = Callable[[float], Mapping[str, Sequence[float]]]


class Controller:
    def __init__(
        self,
        hub: Hub,
        slurm: Slurm,
        prober: Prober,
        settings: ControllerSettings,
        clock: Callable[[], float],
        rng: random.Random,
        demand: DemandTracker | None = None,
        outside_demand: OutsideDemand | None = None,
    ) -> None:
        self.hub = hub
        self.slurm = slurm
        self.prober = prober
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.demand = demand if demand is not None else DemandTracker()
        self.outside_demand = outside_demand
        self._wake = threading.Event()
        self._last_probe: dict[UUID, float] = {}

    def sleep(self, seconds: float) -> None:
        """Wait for the next pass: the interval, or less if woken."""
        self._wake.wait(seconds)
        self._wake.clear()

    def wake(self) -> None:
        """Run the next pass now (a request is waiting for a service with no backend)."""
        self._wake.set()

    def starting(self) -> bool:
        """Whether passes should come fast: a request waits, a started job is not ready
        yet, or a job was submitted within the last FAST_AFTER_SUBMIT seconds.

        A job left pending in a busy queue does not keep squeue polled fast for hours.
        """
        if self.demand.waiting_total() > 0:
            return True
        recent = self.clock() - FAST_AFTER_SUBMIT
        return any(
            job.phase is Phase.RUNNING
            or (job.phase in (Phase.REQUESTED, Phase.SUBMITTED) and job.requested_at > recent)
            for service in self.hub.state.services.values()
            for job in service.jobs.values()
            if not job.draining
        )

    def tick(self) -> PassReport:
        now = self.clock()
        report = PassReport(at=now)
        self.hub.refresh()
        self._take_outside_demand(now)
        queue = self._observe_queue(now, report)
        if queue is not None:
            self._reconcile(queue, now, report)
        self._probe(now)
        self._plan_and_act(now, report)
        return report

    # -- observe -------------------------------------------------------------------

    def _observe_queue(self, now: float, report: PassReport) -> list[SlurmJob] | None:
        cluster = self.hub.cluster(now)
        try:
            queue = self.slurm.jobs()
        except SlurmError as error:
            log.warning("slurm unavailable: %s", error)
            report.slurm_available = False
            report.errors.append(str(error))
            cluster.unavailable(str(error), utc(now))
            self._save_if_changed(cluster)
            return None
        cluster.available_again(utc(now))
        self._save_if_changed(cluster)
        return queue

    def _save_if_changed(self, cluster: Cluster) -> None:
        # Most passes change nothing here; an empty save would still be a transaction.
        if cluster.pending_events:
            self.hub.log.save(cluster)

    def _reconcile(self, queue: list[SlurmJob], now: float, report: PassReport) -> None:
        state = self.hub.state
        corrections = reconcile(
            state.active_services(), queue, state.tokens, now, self.settings.unknown_jobs
        )
        report.corrections.extend(corrections)
        for correction in corrections:
            try:
                self._correct(correction, now)
            except SlurmError as error:
                report.errors.append(str(error))
        self.hub.refresh()

    def _correct(self, correction: Correction, now: float) -> None:
        at = utc(now)
        match correction:
            case MarkSubmitted(job_id, slurm_job_id):
                self._change(job_id, lambda job: job.submitted(slurm_job_id, at))
            case MarkStarted(job_id, node, started):
                self._change(job_id, lambda job: job.started(node, utc(started)))
            case CorrectWalltime(job_id, walltime):
                job = self._change(job_id, lambda job: job.walltime_seen(walltime, at))
                spec = self.hub.state.services[job.service].spec
                log.warning(
                    "job %s of %s has a time limit of %g min from Slurm, not the %g min of "
                    "job_expiry_time: its replacement is timed by Slurm's; set them alike",
                    job.slurm_job_id or job.id, job.service, walltime / 60, spec.walltime / 60,
                )
            case MarkEnded(job_id, final_state):
                self._change(job_id, lambda job: job.end(final_state, at))
            case MarkNotSubmitted(job_id, error):
                self._change(job_id, lambda job: job.submission_failed(error, at))
            case Adopt(seen):
                self.hub.log.save(self._adopted(seen, now))
            case CancelUnknown(seen, why):
                self._cancel_stranger(seen, why, now)

    def _change(self, job_id: UUID, change: Callable[[Job], None]) -> Job:
        """Load a job, apply one command to it, record what it decided."""
        job = self.hub.job(job_id)
        change(job)
        self.hub.log.save(job)
        return job

    def _adopted(self, seen: SlurmJob, now: float) -> Job:
        spec = self.hub.state.services[seen.service].spec
        walltime = seen.time_limit if seen.time_limit is not None else spec.walltime
        job = Job.request(seen.service, seen.port, seen.token, walltime, utc(now), reason="adopted")
        job.submitted(seen.job_id, utc(now))
        if seen.state in RUNNING_STATES and seen.batch_host:
            start = seen.start_time if seen.start_time is not None else now
            job.started(seen.batch_host, utc(start))
        return job

    def _cancel_stranger(self, seen: SlurmJob, why: str, now: float) -> None:
        """Record the unknown job as adopted and cancelled, then cancel it."""
        job = self._adopted(seen, now)
        job.request_cancel(f"unknown job: {why}", utc(now))
        self.hub.log.save(job)
        self.slurm.cancel(seen.job_id)

    def _due_for_probe(self, job: JobView, now: float) -> bool:
        """Starting jobs every pass, to see them ready at once; ready ones now and then."""
        if job.phase is Phase.RUNNING:
            return True
        last = self._last_probe.get(job.id)
        return last is None or now - last >= self.settings.probe_interval

    def _probe(self, now: float) -> None:
        services = self.hub.state.active_services()
        targets = [
            ProbeTarget(
                job.id, job.node, job.port, service.spec.probe_path, job.slurm_job_id, job.token
            )
            for service in services.values()
            for job in service.jobs.values()
            if job.phase in (Phase.RUNNING, Phase.READY) and job.node
            and job.cancel_requested_at is None and self._due_for_probe(job, now)
        ]
        live = {job for service in services.values() for job in service.jobs}
        for gone in self._last_probe.keys() - live:
            del self._last_probe[gone]
        if not targets:
            return
        for target in targets:
            self._last_probe[target.job] = now
        results = self.prober.probe(targets, self.settings.probe_timeout)
        changed: list[Job] = []
        for target in targets:
            result = results.get(target.job)
            view = self.hub.state.job(target.job)
            if result is None or view is None:
                continue
            if view.phase is Phase.RUNNING:
                if result.ok:
                    job = self.hub.job(target.job)
                    job.became_ready(utc(now))
                    changed.append(job)
                continue
            steady = result.ok and view.failed_probes == 0
            last = view.last_heartbeat_at or view.ready_at or 0.0
            if steady and now - last < self.settings.heartbeat_interval:
                continue  # a healthy job is recorded now and then, not every pass
            job = self.hub.job(target.job)
            job.heartbeat(result.ok, result.latency, utc(now))
            changed.append(job)
        if changed:
            self.hub.log.save(*changed)
            self.hub.refresh()

    def _take_outside_demand(self, now: float) -> None:
        """Requests no proxy of saia's saw (legacy ones, on the login node) as demand: those
        of a service without a ready job wait for one; the others are in flight."""
        if self.outside_demand is None:
            return
        services = self.hub.state.active_services()
        windows = {name: view.spec.demand_window for name, view in services.items()}
        seen = self.outside_demand(now - max(windows.values(), default=0.0))
        for name, view in services.items():
            count = sum(1 for at in seen.get(name, []) if at >= now - windows[name])
            ready = any(job.phase is Phase.READY for job in view.jobs.values())
            self.demand.set(name, count if ready else 0, 0 if ready else count, now)

    # -- plan and act ----------------------------------------------------------------

    def _plan_and_act(self, now: float, report: PassReport) -> None:
        services = self.hub.state.active_services()
        windows = {name: view.spec.demand_window for name, view in services.items()}
        seen = self.demand.snapshot(windows, now)
        observation = Observation(
            demand=seen.demand,
            waiting=seen.waiting,
            last_demand_at=seen.last_demand_at,
            inflight_by_job=seen.inflight_by_job,
            slurm_available=report.slurm_available,
            pass_interval=self.settings.interval,
        )
        report.observation = observation
        actions = plan(services, observation, now, self.rng)
        report.actions.extend(actions)
        for action in actions:
            try:
                self._act(action, now)
            except SlurmError as error:
                log.warning("%s failed: %s", type(action).__name__, error)
                report.errors.append(str(error))
        self.hub.refresh()

    def _act(self, action: Action, now: float) -> None:
        at = utc(now)
        match action:
            case Submit(service, port, token, walltime, reason, replaces):
                job = Job.request(service, port, token, walltime, at, replaces, reason)
                self.hub.log.save(job)  # durable before sbatch: see saia.domain.reconcile
                sbatch = self.hub.state.services[service].spec.sbatch
                request = SubmitRequest(service, sbatch, port, token, walltime)
                try:
                    slurm_id = self.slurm.submit(request)
                except SlurmTimeout:
                    raise  # outcome unknown: reconciliation adopts it or gives up on it
                except SlurmError as error:
                    job.submission_failed(str(error), at)
                    self.hub.log.save(job)
                    if not isinstance(error, SubmissionRejected):
                        raise
                    log.warning("submission of %s refused: %s", service, error)
                    return
                job.submitted(slurm_id, at)
                self.hub.log.save(job)
            case Drain(job_id, reason):
                self._change(job_id, lambda job: job.drain(reason, at))
            case Cancel(job_id, why):
                # Recorded before scancel, so a job that vanishes is known as cancelled.
                job = self._change(job_id, lambda job: job.request_cancel(why, at))
                if job.slurm_job_id:
                    self.slurm.cancel(job.slurm_job_id)


def describe(report: PassReport) -> list[str]:
    """One line per correction and action of a pass, for people."""
    return [f"{type(item).__name__}: {item}" for item in (*report.corrections, *report.actions)]


def run(
    controller: Controller,
    lock: FileLock,
    stop: threading.Event,
    on_pass: Callable[[PassReport], None] | None = None,
) -> None:
    """Pass after pass until ``stop`` is set (then wake the controller); one pass at a time.

    A store error or a stale decision (another writer moved a job first) loses
    one pass, not the controller: the next pass starts from the log again.
    """
    settings = controller.settings
    while not stop.is_set():
        started = time.monotonic()
        with lock:
            try:
                report = controller.tick()
            except (PersistenceError, DomainError) as error:
                log.error("pass failed, retrying next pass: %s", error)
            else:
                if on_pass is not None:
                    on_pass(report)
                if report.actions or report.corrections:
                    log.info(
                        "pass: %d corrections, %d actions, %d errors",
                        len(report.corrections), len(report.actions), len(report.errors),
                    )
        interval = settings.startup_interval if controller.starting() else settings.interval
        controller.sleep(max(0.0, interval - (time.monotonic() - started)))
