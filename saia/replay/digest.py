"""Digests of projections that do not depend on dict order or hash seeds.

The golden test compares these with recorded values, so they must be stable across
processes: sets and dicts are sorted by the canonical form of their items.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any


def canonical(value: Any) -> Any:  # noqa: PLR0911 -- one return per kind of value reads best
    if isinstance(value, Enum):
        return canonical(value.value)
    if is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            tuple((f.name, canonical(getattr(value, f.name))) for f in fields(value)),
        )
    if isinstance(value, dict):
        return (
            "dict",
            tuple(
                sorted(
                    ((repr(canonical(k)), canonical(v)) for k, v in value.items()),
                    key=lambda kv: kv[0],
                )
            ),
        )
    if isinstance(value, set | frozenset):
        return ("set", tuple(sorted(repr(canonical(item)) for item in value)))
    if isinstance(value, tuple | list):
        return tuple(canonical(item) for item in value)
    if isinstance(value, float):
        return repr(value)
    return value


def digest(fingerprint: Any) -> str:
    return hashlib.sha256(repr(canonical(fingerprint)).encode()).hexdigest()
