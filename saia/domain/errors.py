"""Typed errors raised by the domain."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every rule the domain refuses to break."""


class InvalidTransition(DomainError):
    def __init__(self, aggregate: str, state: str, action: str) -> None:
        super().__init__(f"{aggregate} in state {state} cannot {action}")
        self.aggregate = aggregate
        self.state = state
        self.action = action


class InvalidSpec(DomainError):
    """A service specification breaks a rule; names the field."""

    def __init__(self, service: str, field: str, message: str) -> None:
        super().__init__(f"service {service!r}, field {field!r}: {message}")
        self.service = service
        self.field = field
        self.message = message


class ServiceNotFound(DomainError):
    def __init__(self, service: str) -> None:
        super().__init__(f"no service {service!r}")
        self.service = service


class ServiceExists(DomainError):
    def __init__(self, service: str) -> None:
        super().__init__(f"service {service!r} exists already")
        self.service = service


class JobNotFound(DomainError):
    def __init__(self, job: str) -> None:
        super().__init__(f"no job {job!r}")
        self.job = job
