"""Probes through the login node: from the hub, compute nodes are out of reach.

Each target is one ``GET /jobs/<slurm-job-id>/probe?path=..`` on the
controller's session; the login node checks the job is saia's and running,
asks it over HTTP and answers with JSON. Targets are probed concurrently, as
streams of the one session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID

from saia.adapters.slurm_remote import EntrypointCalls
from saia.adapters.ssh_link import LinkError
from saia.ports import ProbeResult, ProbeTarget
from saia.protocol.session import probe_path

# Beyond the probe's own timeout: the session's round trip and the login node's queue look.
OVERHEAD = 5.0


class RemoteProber:
    def __init__(self, entrypoint: EntrypointCalls, max_concurrency: int = 16) -> None:
        self.entrypoint = entrypoint
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
            answer = self.entrypoint.call(
                "GET", probe_path(target.slurm_job_id, target.path), timeout=timeout + OVERHEAD
            )
        except LinkError:
            # An outage of the link must not count against every job, or its end
            # would find them all replaced; the controller probes again next pass.
            return None
        if answer.exit_code != 0:
            return ProbeResult(False, time.perf_counter() - started, f"refused: {answer.reason}")
        try:
            record = json.loads(answer.body)
            return ProbeResult(bool(record["ok"]), float(record["latency"]), str(record["error"]))
        except (ValueError, KeyError, TypeError):
            return ProbeResult(False, time.perf_counter() - started, "unreadable probe answer")
