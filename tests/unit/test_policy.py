"""The scheduling policy and reconciliation: decisions for given states, times and demand."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any
from uuid import uuid4

import pytest

from saia.domain.demand import smoothed
from saia.domain.job import DrainReason, FinalState, Phase
from saia.domain.policy import Cancel, Drain, Observation, Submit, plan
from saia.domain.reconcile import (
    Adopt,
    CancelUnknown,
    CorrectWalltime,
    MarkEnded,
    MarkNotSubmitted,
    MarkStarted,
    MarkSubmitted,
    UnknownJobPolicy,
    reconcile,
)
from saia.domain.slurm import SlurmJob, SlurmState
from saia.domain.spec import ServiceSpec
from saia.domain.state import JobView, ServiceView

NOW = 1_800_000_000.0


def service(**fields: Any) -> ServiceView:
    spec = ServiceSpec.from_dict({"id": "svc", "sbatch": "s.sbatch", **fields})
    return ServiceView(spec=spec, registered_at=NOW - 10_000, last_active_at=NOW - 10_000)


def job(phase: Phase = Phase.READY, started: float | None = NOW - 100, **fields: Any) -> JobView:
    token = fields.pop("token", uuid4().hex[:16])
    return JobView(
        id=fields.pop("id", uuid4()), service="svc", token=token, port=fields.pop("port", 20000),
        phase=phase, requested_at=NOW - 200, walltime=3600.0,
        started_at=started if phase in (Phase.RUNNING, Phase.READY) else None, **fields,
    )


def with_jobs(view: ServiceView, *jobs: JobView) -> ServiceView:
    view.jobs = {j.id: j for j in jobs}
    return view


def run(view: ServiceView, now: float = NOW, **obs: Any) -> list[Any]:
    return plan({"svc": view}, Observation(**obs), now, random.Random(0))


def kinds(actions: list[Any]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_minimum_is_submitted_with_no_demand() -> None:
    """A service with minimum 2 and no jobs gets two submissions."""
    actions = run(service(minimum_number_instances=2, maximum_number_instances=3))
    assert kinds(actions) == ["Submit", "Submit"]
    assert all(a.reason == "minimum" for a in actions)


def test_demand_divided_by_inferences_per_instance_is_clamped_to_maximum() -> None:
    """7 in flight at 2 per instance wants 4 instances, capped at the maximum of 3."""
    actions = run(service(inferences_per_instance=2, maximum_number_instances=3),
                  demand={"svc": 7.0})
    assert kinds(actions) == ["Submit"] * 3


def test_a_waiting_request_scales_from_zero_at_once() -> None:
    """With nothing running, one waiting request submits a job in the same pass."""
    actions = run(service(), waiting={"svc": 1})
    assert kinds(actions) == ["Submit"] and actions[0].reason == "demand"


def test_no_scale_to_zero_before_the_idle_time() -> None:
    """The last job stays while the service has been idle for less than idle_time."""
    view = with_jobs(service(idle_time=600, cooldown=0), job())
    view.last_active_at = NOW - 599
    assert run(view) == []
    view.last_active_at = NOW - 601
    actions = run(view)
    assert kinds(actions) == ["Drain", "Cancel"]
    assert actions[0].reason is DrainReason.SURPLUS


def test_recent_demand_seen_by_the_proxy_counts_as_activity() -> None:
    """Demand observed by the proxy, not yet in the log, also defers scale to zero."""
    view = with_jobs(service(idle_time=600, cooldown=0), job())
    assert run(view, last_demand_at={"svc": NOW - 10}) == []


def test_scale_down_waits_for_the_cooldown() -> None:
    """Surplus jobs are drained only once cooldown has passed since the last scale change."""
    view = with_jobs(service(maximum_number_instances=3, cooldown=300, idle_time=0),
                     job(port=20001), job(port=20002), job(port=20003))
    view.last_scale_at = NOW - 100
    assert run(view, demand={"svc": 1.0}) == []
    view.last_scale_at = NOW - 301
    assert kinds(run(view, demand={"svc": 1.0})) == ["Drain", "Drain", "Cancel", "Cancel"]


def test_surplus_prefers_jobs_that_serve_least() -> None:
    """A pending job is given up before a ready one."""
    ready, pending = job(port=20001), job(Phase.SUBMITTED, port=20002)
    view = with_jobs(service(maximum_number_instances=2, cooldown=0), ready, pending)
    actions = run(view, demand={"svc": 1.0})
    assert [a.job for a in actions if isinstance(a, Drain)] == [pending.id]


def test_a_draining_job_with_requests_in_flight_is_not_cancelled_yet() -> None:
    """A drained job finishes its requests before it is cancelled, up to drain_timeout."""
    busy = job(draining="surplus", draining_at=NOW - 10)
    view = with_jobs(service(drain_timeout=120), busy)
    assert not any(isinstance(a, Cancel) for a in run(view, inflight_by_job={busy.id: 2}))
    later = run(view, now=NOW + 111, inflight_by_job={busy.id: 2})
    assert any(isinstance(a, Cancel) for a in later)


def test_replacement_is_requested_a_lead_time_before_walltime() -> None:
    """A job whose walltime ends within lead time (+ one pass) gets a replacement."""
    walltime = 3600.0
    old = job(started=NOW - walltime + 305)
    view = with_jobs(service(lead_time=300, minimum_number_instances=1), old)
    actions = run(view, pass_interval=5.0)
    assert kinds(actions) == ["Submit"] and actions[0].replaces == old.id
    assert actions[0].reason == "walltime"
    early = with_jobs(service(lead_time=300, minimum_number_instances=1),
                      job(started=NOW - walltime + 400))
    assert run(early, pass_interval=5.0) == []


def test_old_job_drains_once_its_replacement_is_ready() -> None:
    """The old job keeps serving until the replacement is ready, then drains."""
    old = job(started=NOW - 3500)
    new = job(replaces=old.id, started=NOW - 10, port=20001, phase=Phase.RUNNING)
    view = with_jobs(service(lead_time=300, minimum_number_instances=1), old, new)
    assert run(view) == []
    view.jobs[new.id] = replace(new, phase=Phase.READY)
    actions = run(view)
    assert isinstance(actions[0], Drain) and actions[0].reason is DrainReason.EXPIRING
    assert not any(isinstance(a, Submit) for a in actions)


def test_a_replacement_holds_no_slot_while_the_job_it_replaces_does() -> None:
    """Demand for two beside a replaced job and its replacement submits one more job."""
    old = job(started=NOW - 3500)
    new = job(replaces=old.id, started=NOW - 10, port=20001, phase=Phase.RUNNING)
    view = with_jobs(service(lead_time=300, maximum_number_instances=3), old, new)
    actions = run(view, demand={"svc": 2.0})
    assert kinds(actions) == ["Submit"] and actions[0].reason == "demand"


def test_a_replacement_takes_the_slot_of_a_job_drained_in_the_same_pass() -> None:
    """An unhealthy job with a replacement on its way drains; nothing more is submitted."""
    sick = job(failed_probes=3)
    new = job(replaces=sick.id, started=NOW - 10, port=20001, phase=Phase.RUNNING)
    view = with_jobs(service(unhealthy_after=3, minimum_number_instances=1), sick, new)
    actions = run(view)
    assert kinds(actions) == ["Drain", "Cancel"] and actions[0].job == sick.id


def test_job_unready_past_the_ready_timeout_is_replaced() -> None:
    """A job running but not ready after ready_timeout is drained, cancelled and replaced."""
    stuck = job(Phase.RUNNING, started=NOW - 901)
    view = with_jobs(service(ready_timeout=900, minimum_number_instances=1), stuck)
    assert kinds(run(view)) == ["Drain", "Submit", "Cancel"]


def test_unhealthy_job_is_replaced_after_repeated_failed_probes() -> None:
    """unhealthy_after failed probes in a row drain and replace a ready job."""
    sick = job(failed_probes=3)
    view = with_jobs(service(unhealthy_after=3, minimum_number_instances=1), sick)
    actions = run(view)
    assert kinds(actions) == ["Drain", "Submit", "Cancel"]
    assert actions[0].reason is DrainReason.UNHEALTHY


def test_submission_failures_back_off_exponentially() -> None:
    """After n failures, submissions wait backoff_base * 2**(n-1), capped at backoff_max."""
    view = service(minimum_number_instances=1, backoff_base=10, backoff_max=60)
    view.submit_failures, view.last_failure_at = 3, NOW
    assert run(view, now=NOW + 39) == []
    assert kinds(run(view, now=NOW + 40)) == ["Submit"]
    view.submit_failures = 10
    assert run(view, now=NOW + 59) == [] and run(view, now=NOW + 60) != []


def test_nothing_is_submitted_while_slurm_is_unavailable() -> None:
    """An unreachable controller gets no submissions, only a later pass does."""
    assert run(service(minimum_number_instances=1), slurm_available=False) == []


def test_ports_are_unique_and_within_the_range() -> None:
    """Every submission draws a port in range not used by any live job; none left, none sent."""
    def draining(port: int) -> JobView:
        return job(port=port, draining="surplus", draining_at=NOW)

    ranged = {"maximum_number_instances": 3, "port_min": 20000, "port_max": 20005}
    view = with_jobs(service(**ranged), job(port=20000), job(port=20001), draining(20002),
                     draining(20003))
    actions = [a for a in run(view, demand={"svc": 3.0}, inflight_by_job={
        j.id: 1 for j in view.jobs.values()}) if isinstance(a, Submit)]
    assert len(actions) == 1 and actions[0].port in {20004, 20005}
    full = with_jobs(service(**ranged), *(draining(p) for p in range(20000, 20006)))
    assert not any(isinstance(a, Submit) for a in run(full, demand={"svc": 3.0}))


def test_retired_service_drains_and_cancels_everything() -> None:
    """Retiring a service ends all of its jobs and submits nothing."""
    view = with_jobs(service(minimum_number_instances=1), job(port=1), job(port=2))
    view.retired = True
    assert kinds(run(view)) == ["Drain", "Drain", "Cancel", "Cancel"]


def test_plan_is_deterministic_for_a_seed() -> None:
    """The same state, time and seed give the same tokens and ports."""
    view = service(minimum_number_instances=2, maximum_number_instances=2)
    assert run(view) == run(view)


# -- reconciliation -----------------------------------------------------------------------


def queued(token: str, state: SlurmState = SlurmState.RUNNING, **fields: Any) -> SlurmJob:
    return SlurmJob(
        job_id=fields.pop("job_id", "77"), service=fields.pop("service", "svc"), token=token,
        port=fields.pop("port", 20000), state=state, batch_host=fields.pop("host", "node1"),
        start_time=fields.pop("start", NOW - 5), **fields,
    )


def reconciled(view: ServiceView, queue: list[SlurmJob], tokens: set[str] | None = None,
               policy: UnknownJobPolicy = UnknownJobPolicy.CANCEL) -> list[Any]:
    known = tokens if tokens is not None else {j.token for j in view.jobs.values()}
    return reconcile({"svc": view}, queue, known, NOW, policy)


def test_requested_job_found_by_token_is_adopted() -> None:
    """A crash between recording and sbatch: the queued job is adopted, not resubmitted."""
    requested = job(Phase.REQUESTED, token="aaaa")
    corrections = reconciled(with_jobs(service(), requested), [queued("aaaa")])
    assert corrections == [
        MarkSubmitted(requested.id, "77"), MarkStarted(requested.id, "node1", NOW - 5)
    ]


def test_requested_job_never_queued_is_given_up_after_the_grace() -> None:
    """A request whose sbatch never ran ends as not submitted once submit_grace passes."""
    requested = replace(job(Phase.REQUESTED, token="bbbb"), requested_at=NOW - 61)
    corrections = reconciled(with_jobs(service(submit_grace=60), requested), [])
    assert corrections == [MarkNotSubmitted(requested.id, "not in the queue after sbatch")]
    fresh = replace(requested, requested_at=NOW - 59)
    assert reconciled(with_jobs(service(submit_grace=60), fresh), []) == []


def test_vanished_job_is_lost_unless_cancelled() -> None:
    """A submitted job missing from the queue ends lost, or cancelled if saia cancelled it."""
    gone = job(token="cccc", slurm_job_id="5")
    assert reconciled(with_jobs(service(), gone), []) == [MarkEnded(gone.id, FinalState.LOST)]
    cancelled = replace(gone, cancel_requested_at=NOW - 1)
    assert reconciled(with_jobs(service(), cancelled), []) == [
        MarkEnded(gone.id, FinalState.CANCELLED)
    ]


def test_final_state_in_the_queue_ends_the_job() -> None:
    """TIMEOUT in the queue ends the job as timeout."""
    running = job(token="dddd", slurm_job_id="77")
    assert reconciled(with_jobs(service(), running), [queued("dddd", SlurmState.TIMEOUT)]) == [
        MarkEnded(running.id, FinalState.TIMEOUT)
    ]


def test_a_time_limit_other_than_asked_corrects_the_walltime() -> None:
    """The login node's time_limit wins over job_expiry_time: expiry follows Slurm's limit.
    The same limit, an unlimited one, or an ended job correct nothing."""
    running = job(token="eeee", slurm_job_id="77")  # asked for 3600 s
    shorter = [queued("eeee", time_limit=1800.0)]
    assert reconciled(with_jobs(service(), running), shorter) == [
        CorrectWalltime(running.id, 1800.0)
    ]
    for same in (queued("eeee", time_limit=3600.0), queued("eeee", time_limit=None),
                 queued("eeee", SlurmState.TIMEOUT, time_limit=1800.0)):  # fmt: skip
        assert not any(isinstance(c, CorrectWalltime)
                       for c in reconciled(with_jobs(service(), running), [same]))  # fmt: skip


@pytest.mark.parametrize("policy", list(UnknownJobPolicy))
def test_unknown_saia_job_is_handled_per_setting(policy: UnknownJobPolicy) -> None:
    """A saia job in the queue that the log never saw is adopted or cancelled, as configured."""
    stranger = queued("eeee")
    corrections = reconciled(service(), [stranger], tokens=set(), policy=policy)
    expected = Adopt(stranger) if policy is UnknownJobPolicy.ADOPT else CancelUnknown(
        stranger, "not in the log")
    assert corrections == [expected]


@pytest.mark.parametrize("policy", list(UnknownJobPolicy))
def test_unknown_job_of_a_service_the_log_never_knew_is_left_alone(
    policy: UnknownJobPolicy,
) -> None:
    """Another saia's job under the same account is neither adopted nor cancelled."""
    stranger = queued("ffff", service="other")
    assert reconciled(service(), [stranger], tokens=set(), policy=policy) == []


def test_unknown_job_of_a_retired_service_is_cancelled() -> None:
    """Even with adopt, a job of a retired service is cancelled."""
    view = service()
    view.retired = True
    stranger = queued("ffff")
    corrections = reconciled(view, [stranger], tokens=set(), policy=UnknownJobPolicy.ADOPT)
    assert corrections == [CancelUnknown(stranger, "its service is retired")]


# -- demand smoothing ----------------------------------------------------------------------


def test_smoothing_is_the_time_weighted_mean_over_the_window() -> None:
    """4 for the last 15 s of a 60 s window with 0 before gives a mean of 1."""
    samples = [(NOW - 100, 0.0), (NOW - 15, 4.0)]
    assert smoothed(samples, NOW, 60.0) == pytest.approx(1.0)
    assert smoothed([], NOW, 60.0) == 0.0

