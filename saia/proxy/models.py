"""GET /v1/models in SAIA's shape: the OpenAI list plus modalities, status and demand."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saia.domain.state import ServiceView
from saia.proxy.routing import Router
from saia.status import service_status


def model_entry(view: ServiceView, router: Router) -> dict[str, Any]:
    spec = view.spec
    inflight = sum(router.inflight.get(job_id, 0) for job_id in view.jobs)
    return {
        "id": spec.id,
        "name": spec.display_name,
        "object": "model",
        "created": int(view.registered_at),
        "owned_by": spec.owned_by,
        "input": list(spec.input),
        "output": list(spec.output),
        "status": service_status(view),
        "demand": inflight + router.waiting.get(spec.id, 0),
    }


def model_list(services: Mapping[str, ServiceView], router: Router) -> dict[str, Any]:
    entries = [model_entry(view, router) for _, view in sorted(services.items())
               if not view.retired]  # fmt: skip
    return {"object": "list", "data": entries}
