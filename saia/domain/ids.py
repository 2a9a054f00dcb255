"""Deterministic aggregate ids: the same name always maps to the same aggregate."""

from __future__ import annotations

from uuid import UUID, uuid5

# Fixed namespace so that ids are stable across processes, hosts and versions.
SAIA_NAMESPACE = UUID("5a1a0000-6e6f-4f2d-9a1e-000000000001")


def service_id(name: str) -> UUID:
    return uuid5(SAIA_NAMESPACE, f"service/{name}")


def job_id(token: str) -> UUID:
    return uuid5(SAIA_NAMESPACE, f"job/{token}")


def key_id(key_hash: str) -> UUID:
    return uuid5(SAIA_NAMESPACE, f"key/{key_hash}")
