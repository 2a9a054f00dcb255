"""The service catalogue: adding, changing and retiring services, each as an event.

A service alone checks its own spec; what spans services (each model name names one
service) is checked here, against the services that are not retired."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from saia.domain.errors import ServiceExists, ServiceNotFound
from saia.domain.ids import service_id
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec, check_names
from saia.hub import Hub, utc


@dataclass(frozen=True, slots=True)
class Change:
    service: str
    what: str  # registered, reinstated, reconfigured, retired
    fields: tuple[str, ...] = ()


def _load(hub: Hub, name: str) -> Service | None:
    try:
        service: object = hub.log.repository.get(service_id(name))
    except AggregateNotFoundError:
        return None
    assert isinstance(service, Service)
    return service


def _others(hub: Hub, but: Collection[str]) -> list[ServiceSpec]:
    """The specs of the services that are not retired, but those named."""
    return [view.spec for name, view in hub.state.services.items()
            if not view.retired and name not in but]  # fmt: skip


def add(hub: Hub, spec: ServiceSpec, now: float) -> Change:
    service = _load(hub, spec.id)
    if service is not None and not service.retired:
        raise ServiceExists(spec.id)
    check_names([*_others(hub, {spec.id}), spec])
    if service is None:
        hub.log.save(Service.register(spec, utc(now)))
        return Change(spec.id, "registered")
    service.reinstate(spec, utc(now))
    hub.log.save(service)
    return Change(spec.id, "reinstated")


def edit(hub: Hub, name: str, changes: Mapping[str, Any], now: float) -> Change | None:
    service = _load(hub, name)
    if service is None or service.retired:
        raise ServiceNotFound(name)
    check_names([*_others(hub, {name}), service.spec.changed(changes)])
    before = service.version
    service.reconfigure(dict(changes), utc(now))
    if service.version == before:
        return None
    hub.log.save(service)
    return Change(name, "reconfigured", tuple(sorted(changes)))


def retire(hub: Hub, name: str, now: float) -> Change:
    service = _load(hub, name)
    if service is None or service.retired:
        raise ServiceNotFound(name)
    service.retire(utc(now))
    hub.log.save(service)
    return Change(name, "retired")


def sync(hub: Hub, specs: Iterable[ServiceSpec], now: float, prune: bool = False) -> list[Change]:
    """Make the catalogue match a validated list of specs, in one transaction."""
    at = utc(now)
    wanted = {spec.id: spec for spec in specs}
    check_names([*([] if prune else _others(hub, wanted)), *wanted.values()])
    pending: list[Service] = []
    changes: list[Change] = []
    for name, spec in wanted.items():
        service = _load(hub, name)
        if service is None:
            pending.append(Service.register(spec, at))
            changes.append(Change(name, "registered"))
            continue
        if service.retired:
            service.reinstate(spec, at)
            pending.append(service)
            changes.append(Change(name, "reinstated"))
            continue
        differences = {
            key: value
            for key, value in spec.to_dict().items()
            if service.spec.to_dict().get(key) != value
        }
        if differences:
            service.reconfigure(differences, at)
            pending.append(service)
            changes.append(Change(name, "reconfigured", tuple(sorted(differences))))
    if prune:
        for name, view in hub.state.services.items():
            if name not in wanted and not view.retired:
                service = _load(hub, name)
                assert service is not None
                service.retire(at)
                pending.append(service)
                changes.append(Change(name, "retired"))
    if pending:
        hub.log.save(*pending)
    return changes
