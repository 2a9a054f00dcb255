"""A service's specification: what to run and how to scale it.

Field names follow SAIA's config.json (``name``, ``id``, ``owned_by``, ``input``,
``output``, ``sbatch``, ``inferences_per_instance``, ``minimum_number_instances``,
``maximum_number_instances``, ``job_expiry_time``); the rest are saia's own.
Times are seconds, except ``job_expiry_time``, which is minutes as in SAIA.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from saia.domain.errors import InvalidSpec

# The login node checks the same ids (saia.protocol holds them for both; standard library only).
from saia.protocol.ids import PROBE_PATH, SBATCH_NAME, SERVICE_ID

MODALITY = re.compile(r"[a-z][a-z0-9_-]{0,31}")
DEFAULT_WALLTIME_MINUTES = 60  # job_expiry_time when a service names none
# What clients may put in "model" besides a service id, Hugging Face style
# ("meta-llama/Llama-3.1-8B-Instruct"). Aliases stay on the hub: unlike ids they never
# reach Slurm, file names or the login node, so they may hold '/' and ':'.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*(?:/[A-Za-z0-9._:-]+)*")
MODEL_NAME_MAX = 256


def is_model_name(name: str) -> bool:
    """1-256 characters, segments of [A-Za-z0-9._:-] between single '/', no '..'."""
    return (len(name) <= MODEL_NAME_MAX and MODEL_NAME.fullmatch(name) is not None
            and ".." not in name)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    id: str
    sbatch: str
    name: str = ""
    owned_by: str = "saia"
    input: tuple[str, ...] = ("text",)
    output: tuple[str, ...] = ("text",)
    aliases: tuple[str, ...] = ()  # further names clients may put in "model"
    inferences_per_instance: int = 1
    minimum_number_instances: int = 0
    maximum_number_instances: int = 1
    job_expiry_time: int = DEFAULT_WALLTIME_MINUTES
    idle_time: float = 900.0
    cooldown: float = 300.0
    port_min: int = 20000
    port_max: int = 29999
    lead_time: float = 300.0
    ready_timeout: float = 900.0
    probe_path: str = "/health"
    demand_window: float = 60.0
    backoff_base: float = 10.0
    backoff_max: float = 600.0
    unhealthy_after: int = 3
    drain_timeout: float = 120.0
    submit_grace: float = 60.0

    @property
    def walltime(self) -> float:
        return self.job_expiry_time * 60.0

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name clients may put in "model" for this service: its id first."""
        return (self.id, *self.aliases)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input"] = list(self.input)
        data["output"] = list(self.output)
        data["aliases"] = list(self.aliases)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceSpec:
        """Build and validate a spec; any problem raises InvalidSpec naming the field."""
        label = str(data.get("id", "?"))
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise InvalidSpec(label, key, "unknown field")
        for required in ("id", "sbatch"):
            if required not in data:
                raise InvalidSpec(label, required, "missing")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in data:
                values[f.name] = _coerce(label, f.name, f.default, data[f.name])
        spec = cls(**values)
        spec.validate()
        return spec

    def changed(self, changes: Mapping[str, Any]) -> ServiceSpec:
        """This spec with some fields changed, validated; the id cannot change."""
        if "id" in changes and changes["id"] != self.id:
            raise InvalidSpec(self.id, "id", "cannot be changed; retire and add instead")
        merged = {**self.to_dict(), **changes}
        return ServiceSpec.from_dict(merged)

    def validate(self) -> None:
        def bad(field: str, message: str) -> InvalidSpec:
            return InvalidSpec(self.id, field, message)

        if not SERVICE_ID.fullmatch(self.id):
            raise bad("id", f"{self.id!r} is not 1-128 of [A-Za-z0-9._-] starting alphanumeric")
        if not SBATCH_NAME.fullmatch(self.sbatch):
            raise bad("sbatch", f"{self.sbatch!r} must be a plain file name in the sbatch folder")
        if not PROBE_PATH.fullmatch(self.probe_path):
            raise bad("probe_path", f"{self.probe_path!r} is not an absolute URL path")
        for field, modalities in (("input", self.input), ("output", self.output)):
            for modality in modalities:
                if not MODALITY.fullmatch(modality):
                    raise bad(field, f"{modality!r} is not a modality name")
        for index, alias in enumerate(self.aliases):
            if not is_model_name(alias):
                raise bad("aliases", f"{alias!r} is not 1-256 of [A-Za-z0-9._:-] starting "
                          "alphanumeric, with single '/' between segments and no '..'")  # fmt: skip
            if alias == self.id:
                raise bad("aliases", f"{alias!r} is the service's own id")
            if alias in self.aliases[:index]:
                raise bad("aliases", f"{alias!r} is listed twice")
        if self.inferences_per_instance < 1:
            raise bad("inferences_per_instance", "must be at least 1")
        if self.minimum_number_instances < 0:
            raise bad("minimum_number_instances", "must be 0 or more")
        if self.maximum_number_instances < max(1, self.minimum_number_instances):
            raise bad("maximum_number_instances", "must be at least 1 and at least the minimum")
        if self.job_expiry_time < 1:
            raise bad("job_expiry_time", "must be at least 1 minute")
        if not 1024 <= self.port_min <= self.port_max <= 65535:
            raise bad("port_min", "need 1024 <= port_min <= port_max <= 65535")
        if self.port_max - self.port_min + 1 < 2 * self.maximum_number_instances:
            raise bad("port_max", "the port range must hold two ports per instance (rollover)")
        if not 0 <= self.lead_time < self.walltime:
            raise bad("lead_time", "must be 0 or more and below the walltime")
        for field in ("idle_time", "cooldown", "ready_timeout", "drain_timeout", "submit_grace"):
            if getattr(self, field) < 0:
                raise bad(field, "must be 0 or more")
        for field in ("demand_window", "backoff_base", "backoff_max"):
            if getattr(self, field) <= 0:
                raise bad(field, "must be more than 0")
        if self.unhealthy_after < 1:
            raise bad("unhealthy_after", "must be at least 1")


def check_names(specs: Iterable[ServiceSpec]) -> None:
    """Each id and alias names one service only, so that a request's model names one.

    Checked wherever specs are collected or change: each spec alone cannot see the
    others. Raises InvalidSpec naming the alias that clashes (ids are unique by their
    own rule, and an id never gives way to an alias)."""
    specs = list(specs)
    owners = {spec.id: spec.id for spec in specs}
    for spec in specs:
        for alias in spec.aliases:
            owner = owners.setdefault(alias, spec.id)
            if owner == alias:
                raise InvalidSpec(spec.id, "aliases", f"{alias!r} is the id of another service")
            if owner != spec.id:
                message = f"{alias!r} is already an alias of service {owner!r}"
                raise InvalidSpec(spec.id, "aliases", message)


def _coerce(service: str, field: str, default: Any, value: Any) -> Any:
    """Check a value against the type of the field's default; no silent conversions."""
    if isinstance(default, bool) or isinstance(value, bool):
        raise InvalidSpec(service, field, f"unexpected boolean {value!r}")
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise InvalidSpec(service, field, "must be a list of strings")
        return tuple(value)
    if isinstance(default, float):
        if not isinstance(value, int | float):
            raise InvalidSpec(service, field, f"must be a number, not {value!r}")
        return float(value)
    if isinstance(default, int):
        if not isinstance(value, int):
            raise InvalidSpec(service, field, f"must be a whole number, not {value!r}")
        return value
    if not isinstance(value, str):
        raise InvalidSpec(service, field, f"must be a string, not {value!r}")
    return value

