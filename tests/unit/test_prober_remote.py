"""Probes through the login node's probe verb, with a fake link."""

from __future__ import annotations

from uuid import uuid4

from saia.adapters.prober_remote import RemoteProber
from saia.adapters.ssh_link import Completed, LinkDown
from saia.ports import ProbeTarget


class FakeLink:
    def __init__(self, answers: dict[str, Completed | Exception]) -> None:
        self.answers = answers
        self.commands: list[str] = []

    def run(self, command: str, stdin: bytes = b"", *, timeout: float) -> Completed:
        self.commands.append(command)
        answer = self.answers[command]
        if isinstance(answer, Exception):
            raise answer
        return answer


def target(slurm_job_id: str, path: str = "/health") -> ProbeTarget:
    return ProbeTarget(uuid4(), "node1", 20001, path, slurm_job_id)


def test_each_target_is_one_probe_verb_and_its_json_answer() -> None:
    """ok, latency and error come from the login node's JSON; the path is passed on."""
    ok, sick = target("11"), target("12", "/v1/models")
    link = FakeLink({
        "probe 11 /health": Completed(0, b'{"ok":true,"latency":0.002,"error":""}\n', b""),
        "probe 12 /v1/models": Completed(0, b'{"ok":false,"latency":2.0,"error":"HTTP 503"}', b""),
    })
    results = RemoteProber(link).probe([ok, sick], timeout=2.0)
    assert results[ok.job].ok and results[ok.job].latency == 0.002
    assert not results[sick.job].ok and results[sick.job].error == "HTTP 503"
    assert sorted(link.commands) == ["probe 11 /health", "probe 12 /v1/models"]


def test_refusals_and_garbage_are_failed_probes_and_a_link_failure_no_result() -> None:
    """Nothing a probe meets escapes as an exception. What the login node refused or
    garbled is a failed probe; a link failure says nothing of the job: no result."""
    refused, down, garbage, unnamed = target("21"), target("22"), target("23"), target("")
    link = FakeLink({
        "probe 21 /health": Completed(77, b"", b"saia-entrypoint: not one of saia's jobs\n"),
        "probe 22 /health": LinkDown("the link is down"),
        "probe 23 /health": Completed(0, b"<html>", b""),
    })
    results = RemoteProber(link).probe([refused, down, garbage, unnamed], timeout=1.0)
    assert "not one of saia's jobs" in results[refused.job].error
    assert down.job not in results
    assert results[garbage.job].error == "unreadable probe answer"
    assert "no Slurm job id" in results[unnamed.job].error
    assert not any(result.ok for result in results.values())
