"""Aggregates: their rules, their events and the topics those are stored under."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from saia.domain.errors import InvalidSpec, InvalidTransition
from saia.domain.ids import job_id
from saia.domain.job import DrainReason, FinalState, Job, Phase
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec, check_names

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SPEC = ServiceSpec.from_dict({"id": "llama", "sbatch": "vllm.sbatch"})


def topics(aggregate: object) -> list[str]:
    return [type(e).TOPIC for e in aggregate.collect_events()]  # type: ignore[attr-defined]


def test_job_lifecycle_records_each_step_under_a_stable_topic() -> None:
    """A job goes requested -> submitted -> running -> ready -> draining -> ended."""
    job = Job.request("llama", 20001, "abcdef0123456789", 3600.0, T0, reason="demand")
    job.submitted("42", T0)
    job.started("node1", T0)
    job.became_ready(T0)
    job.heartbeat(True, 0.01, T0)
    job.drain(DrainReason.SURPLUS, T0)
    job.request_cancel("surplus", T0)
    job.end(FinalState.CANCELLED, T0)
    assert job.phase is Phase.ENDED and job.final_state == "cancelled"
    assert topics(job) == [
        "saia.Job.Requested", "saia.Job.Submitted", "saia.Job.Started", "saia.Job.BecameReady",
        "saia.Job.Heartbeat", "saia.Job.Draining", "saia.Job.CancelRequested", "saia.Job.Ended",
    ]


def test_a_walltime_seen_is_recorded_only_where_it_differs() -> None:
    """Slurm's time limit replaces the one asked for; the same one records nothing."""
    job = Job.request("llama", 20001, "abcdef0123456789", 3600.0, T0)
    job.submitted("42", T0)
    job.collect_events()
    job.walltime_seen(3600.0, T0)
    assert topics(job) == []
    job.walltime_seen(1800.0, T0)
    assert job.walltime == 1800.0 and topics(job) == ["saia.Job.WalltimeCorrected"]
    job.end(FinalState.TIMEOUT, T0)
    with pytest.raises(InvalidTransition):
        job.walltime_seen(60.0, T0)


def test_job_id_follows_from_its_token() -> None:
    """The token in the Slurm job finds the aggregate again after a crash."""
    job = Job.request("llama", 20001, "abcdef0123456789", 3600.0, T0)
    assert job.id == job_id("abcdef0123456789")


def test_event_time_is_the_time_given_not_the_clock() -> None:
    """The domain never reads the clock: events carry the time they were given."""
    job = Job.request("llama", 20001, "t1", 60.0, T0)
    assert job.created_on == T0


@pytest.mark.parametrize(
    ("steps", "bad"),
    [
        ([], lambda j: j.started("node1", T0)),
        ([], lambda j: j.became_ready(T0)),
        ([lambda j: j.submitted("1", T0)], lambda j: j.submitted("2", T0)),
        ([lambda j: j.submission_failed("x", T0)], lambda j: j.submitted("2", T0)),
        ([lambda j: j.drain(DrainReason.SURPLUS, T0)], lambda j: j.drain(DrainReason.SURPLUS, T0)),
        ([], lambda j: j.end(FinalState.LOST, T0)),
    ],
)
def test_job_refuses_transitions_out_of_order(steps: list, bad: object) -> None:  # type: ignore[type-arg]
    """A transition its phase does not allow raises InvalidTransition and records nothing."""
    job = Job.request("llama", 20001, "t2", 60.0, T0)
    for step in steps:
        step(job)
    version = job.version
    with pytest.raises(InvalidTransition):
        bad(job)  # type: ignore[operator]
    assert job.version == version


def test_service_reconfigure_validates_before_recording() -> None:
    """An invalid change raises InvalidSpec naming the field; nothing is recorded."""
    service = Service.register(SPEC, T0)
    with pytest.raises(InvalidSpec) as caught:
        service.reconfigure({"maximum_number_instances": 0}, T0)
    assert caught.value.field == "maximum_number_instances"
    assert service.version == 1


def test_service_reconfigure_records_only_real_changes() -> None:
    """Setting a field to its current value is not an event."""
    service = Service.register(SPEC, T0)
    service.reconfigure({"maximum_number_instances": 1}, T0)
    assert service.version == 1
    service.reconfigure({"maximum_number_instances": 4}, T0)
    assert service.spec.maximum_number_instances == 4 and service.version == 2


def test_retired_service_can_be_reinstated_but_not_retired_twice() -> None:
    """Retire, then reinstate with a new spec; a second retire is refused."""
    service = Service.register(SPEC, T0)
    service.retire(T0)
    with pytest.raises(InvalidTransition):
        service.retire(T0)
    service.reinstate(SPEC.changed({"maximum_number_instances": 2}), T0)
    assert not service.retired and service.spec.maximum_number_instances == 2


def test_request_finishes_once() -> None:
    """A request is finished or rejected once, never both."""
    request = Request.start(uuid4(), "alice", "llama", "job-1", 120, T0)
    request.finish(200, "job-1", 800, 10, 20, T0)
    with pytest.raises(InvalidTransition):
        request.reject(503, "late", T0)
    assert topics(request) == ["saia.Request.Started", "saia.Request.Finished"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "bad/id"),
        ("id", ""),
        ("sbatch", "../etc/passwd"),
        ("inferences_per_instance", 0),
        ("minimum_number_instances", -1),
        ("maximum_number_instances", 0),
        ("job_expiry_time", 0),
        ("port_min", 80),
        ("lead_time", 99999.0),
        ("probe_path", "health"),
        ("input", "text"),
        ("idle_time", "soon"),
        ("maximum_number_instances", True),
        ("colour", "blue"),
        ("aliases", "org/model"),
        ("aliases", ["/org/model"]),
        ("aliases", ["org//model"]),
        ("aliases", ["org/model/"]),
        ("aliases", ["org/../model"]),
        ("aliases", ["org/model..v2"]),
        ("aliases", ["org model"]),
        ("aliases", [""]),
        ("aliases", ["a" * 257]),
        ("aliases", ["llama"]),
        ("aliases", ["org/model", "org/model"]),
    ],
)
def test_spec_names_the_bad_field(field: str, value: object) -> None:
    """Each invalid value raises InvalidSpec naming exactly that field."""
    data = {"id": "llama", "sbatch": "vllm.sbatch", field: value}
    with pytest.raises(InvalidSpec) as caught:
        ServiceSpec.from_dict(data)
    assert caught.value.field in (field, "port_min", "port_max")


def test_aliases_may_be_hugging_face_style_names() -> None:
    """Aliases take '/', ':' and dots between plain segments, up to 256 characters."""
    aliases = ["meta-llama/Llama-3.1-8B-Instruct", "llama3:8b", "a" * 256, "org/sub/m_1.5"]
    spec = ServiceSpec.from_dict({"id": "llama", "sbatch": "vllm.sbatch", "aliases": aliases})
    assert spec.model_names == ("llama", *aliases)


@pytest.mark.parametrize(
    ("aliases", "clash"),
    [
        ({"chat": ["org/chat"], "code": ["org/chat"]}, "already an alias of service 'chat'"),
        ({"chat": [], "code": ["chat"]}, "the id of another service"),
        ({"chat": ["code"], "code": []}, "the id of another service"),
    ],
)
def test_a_name_may_name_one_service_only(aliases: dict[str, list[str]], clash: str) -> None:
    """An alias that another service has, as an alias or as its id, is refused, naming
    the service with the alias and the field."""
    specs = [ServiceSpec.from_dict({"id": name, "sbatch": "s.sbatch", "aliases": names})
             for name, names in aliases.items()]  # fmt: skip
    with pytest.raises(InvalidSpec) as caught:
        check_names(specs)
    assert caught.value.field == "aliases" and clash in caught.value.message
    assert caught.value.service == [spec.id for spec in specs if spec.aliases][-1]
    check_names(specs[:1])  # alone, each is fine


def test_spec_round_trips_through_a_dict() -> None:
    """to_dict and from_dict are inverse: what is recorded is what is replayed."""
    spec = ServiceSpec.from_dict({"id": "m", "sbatch": "s.sbatch", "input": ["text", "image"],
                                  "idle_time": 30, "aliases": ["org/m"]})  # fmt: skip
    assert ServiceSpec.from_dict(spec.to_dict()) == spec
