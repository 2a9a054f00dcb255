"""GET /v1/models and /v1/models/{model}, answered by the hub itself: OpenAI's model
objects plus SAIA's modalities, status and demand.

Each name a client may put in ``model``, a service's id or one of its aliases, is a
model object of its own, as OpenAI's clients expect; ``service`` says whose it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from saia.domain.state import ServiceView
from saia.proxy.errors import ProxyError, error_response
from saia.proxy.routing import Router, RoutingTable
from saia.status import service_status


def model_entry(view: ServiceView, router: Router, name: str) -> dict[str, Any]:
    spec = view.spec
    inflight = sum(router.inflight.get(job_id, 0) for job_id in view.jobs)
    return {
        "id": name,
        "name": spec.display_name,
        "object": "model",
        "created": int(view.registered_at),
        "owned_by": spec.owned_by,
        "service": spec.id,
        "input": list(spec.input),
        "output": list(spec.output),
        "status": service_status(view),
        "demand": inflight + router.waiting.get(spec.id, 0),
    }


def model_list(services: Mapping[str, ServiceView], router: Router) -> dict[str, Any]:
    entries = [model_entry(view, router, name) for _, view in sorted(services.items())
               if not view.retired for name in view.spec.model_names]  # fmt: skip
    return {"object": "list", "data": entries}


def model_routes(
    table: RoutingTable, router: Router, authenticate: Callable[[Request], object]
) -> list[Route]:
    """The two routes; ``authenticate`` raises the ProxyError that turns a caller away."""

    async def listing(request: Request) -> Response:
        try:
            authenticate(request)
        except ProxyError as error:
            return error_response(error)
        with table.lock:
            services = dict(table.state.services)
        return _json(model_list(services, router))

    async def one(request: Request) -> Response:
        name = request.path_params["model"]
        try:
            authenticate(request)
            with table.lock:
                service = table.state.service_named(name)
                if service is None:
                    raise ProxyError(404, f"the model {name!r} does not exist", "model_not_found")
                return _json(model_entry(table.state.services[service], router, name))
        except ProxyError as error:
            return error_response(error)

    return [Route("/v1/models", listing), Route("/v1/models/{model:path}", one)]


def _json(content: dict[str, Any]) -> Response:
    return Response(orjson.dumps(content), media_type="application/json")
