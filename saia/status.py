"""What ``saia status`` shows: each service's state and jobs, as rows or as JSON."""

from __future__ import annotations

from collections import Counter
from typing import Any

from saia.domain.job import Phase
from saia.domain.state import ServiceView
from saia.projections.service_state import ServiceState


def service_status(view: ServiceView) -> str:
    """ready: can answer now; loading: a job is on its way; offline: nothing runs."""
    if view.routing_targets():
        return "ready"
    if view.jobs:
        return "loading"
    return "offline"


def report(state: ServiceState) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, view in sorted(state.services.items()):
        phases = Counter(job.phase.value for job in view.jobs.values())
        rows.append(
            {
                "service": name,
                "name": view.spec.display_name,
                "aliases": list(view.spec.aliases),
                "status": "retired" if view.retired else service_status(view),
                "minimum": view.spec.minimum_number_instances,
                "maximum": view.spec.maximum_number_instances,
                "inflight": view.inflight,
                "jobs": [
                    {
                        "id": str(job.id),
                        "slurm_job_id": job.slurm_job_id,
                        "phase": job.phase.value,
                        "node": job.node,
                        "port": job.port,
                        "ready": job.phase is Phase.READY,
                        "draining": job.draining,
                        "expiry": job.expiry,
                    }
                    for job in sorted(view.jobs.values(), key=lambda j: j.requested_at)
                ],
                "phases": dict(phases),
            }
        )
    return rows
