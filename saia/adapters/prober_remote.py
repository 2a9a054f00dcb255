"""Probes through the login node: from the hub, compute nodes are out of reach.

Each target is one ``probe <slurm-job-id> <path>`` on the SSH link; the login node
checks the job is saia's and running, asks it over HTTP and answers with JSON.
Targets are probed concurrently, each on its own channel of the one connection.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID

from saia.adapters.slurm_remote import CommandLink
from saia.adapters.ssh_link import LinkError
from saia.ports import ProbeResult, ProbeTarget

# Beyond the probe's own timeout: the channel, the entrypoint's start and its queue look.
OVERHEAD = 5.0


class RemoteProber:
    def __init__(self, link: CommandLink, max_concurrency: int = 16) -> None:
        self.link = link
        self.max_concurrency = max_concurrency

    def probe(self, targets: Sequence[ProbeTarget], timeout: float) -> dict[UUID, ProbeResult]:
        if not targets:
            return {}
        workers = min(len(targets), self.max_concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="saia-probe") as pool:
            results = pool.map(lambda target: self._probe_one(target, timeout), targets)
            return {
                target.job: result
                for target, result in zip(targets, results, strict=True)
                if result is not None
            }

    def _probe_one(self, target: ProbeTarget, timeout: float) -> ProbeResult | None:
        """The job's answer; None when the link failed, which says nothing of the job."""
        started = time.perf_counter()
        if not target.slurm_job_id:
            return ProbeResult(False, 0.0, "no Slurm job id to probe through the login node")
        try:
            answer = self.link.run(
                f"probe {target.slurm_job_id} {target.path}", timeout=timeout + OVERHEAD
            )
        except LinkError:
            # An outage of the link must not count against every job, or its end
            # would find them all replaced; the controller probes again next pass.
            return None
        if answer.exit_code != 0:
            said = answer.stderr.decode("utf-8", "replace").strip()[:200]
            return ProbeResult(False, time.perf_counter() - started, f"refused: {said}")
        try:
            record = json.loads(answer.stdout)
            return ProbeResult(bool(record["ok"]), float(record["latency"]), str(record["error"]))
        except (ValueError, KeyError, TypeError):
            return ProbeResult(False, time.perf_counter() - started, "unreadable probe answer")
