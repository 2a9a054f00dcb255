"""Process settings: the only module that reads the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG = "saia.toml"


@dataclass(frozen=True, slots=True)
class Environment:
    config: Path
    log_level: str


def from_environment() -> Environment:
    return Environment(
        config=Path(os.environ.get("SAIA_CONFIG", DEFAULT_CONFIG)),
        log_level=os.environ.get("SAIA_LOG_LEVEL", "INFO").upper(),
    )
