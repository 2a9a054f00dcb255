"""Probes through the login node's session path /jobs/<id>/probe, with a fake entrypoint."""

from __future__ import annotations

from uuid import uuid4

from saia.adapters.control_session import Answer
from saia.adapters.prober_remote import RemoteProber
from saia.adapters.ssh_link import LinkDown
from saia.ports import ProbeTarget


class FakeEntrypoint:
    def __init__(self, answers: dict[str, Answer | Exception]) -> None:
        self.answers = answers
        self.requests: list[str] = []

    def call(self, method: str, path: str, body: bytes = b"", *, timeout: float) -> Answer:
        self.requests.append(f"{method} {path}")
        answer = self.answers[f"{method} {path}"]
        if isinstance(answer, Exception):
            raise answer
        return answer


def target(slurm_job_id: str, path: str = "/health") -> ProbeTarget:
    return ProbeTarget(uuid4(), "node1", 20001, path, slurm_job_id)


def test_each_target_is_one_probe_request_and_its_json_answer() -> None:
    """ok, latency and error come from the login node's JSON; the path is passed on."""
    ok, sick = target("11"), target("12", "/v1/models")
    entrypoint = FakeEntrypoint({
        "GET /jobs/11/probe?path=/health":
            Answer(0, b'{"ok":true,"latency":0.002,"error":""}\n', ""),
        "GET /jobs/12/probe?path=/v1/models":
            Answer(0, b'{"ok":false,"latency":2.0,"error":"HTTP 503"}', ""),
    })  # fmt: skip
    results = RemoteProber(entrypoint).probe([ok, sick], timeout=2.0)
    assert results[ok.job].ok and results[ok.job].latency == 0.002
    assert not results[sick.job].ok and results[sick.job].error == "HTTP 503"
    assert sorted(entrypoint.requests) == [
        "GET /jobs/11/probe?path=/health", "GET /jobs/12/probe?path=/v1/models"
    ]


def test_refusals_and_garbage_are_failed_probes_and_a_link_failure_no_result() -> None:
    """Nothing a probe meets escapes as an exception. What the login node refused or
    garbled is a failed probe; a link failure says nothing of the job: no result."""
    refused, down, garbage, unnamed = target("21"), target("22"), target("23"), target("")
    entrypoint = FakeEntrypoint({
        "GET /jobs/21/probe?path=/health": Answer(77, b"", "job 21 is not one of saia's jobs"),
        "GET /jobs/22/probe?path=/health": LinkDown("the link is down"),
        "GET /jobs/23/probe?path=/health": Answer(0, b"<html>", ""),
    })  # fmt: skip
    results = RemoteProber(entrypoint).probe([refused, down, garbage, unnamed], timeout=1.0)
    assert "not one of saia's jobs" in results[refused.job].error
    assert down.job not in results
    assert results[garbage.job].error == "unreadable probe answer"
    assert "no Slurm job id" in results[unnamed.job].error
    assert not any(result.ok for result in results.values())
