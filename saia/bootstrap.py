"""Wiring: builds the application from a configuration. The only place that picks adapters."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from saia.adapters.lock import FileLock
from saia.adapters.prober import HttpProber
from saia.adapters.slurm_local import LocalSlurm, LocalSlurmSettings, SlurmCommands
from saia.config import Config
from saia.controller import Controller
from saia.demand import DemandTracker
from saia.hub import Hub


def hub_for(config: Config) -> Hub:
    hub = Hub(config.store)
    hub.refresh()
    return hub


def local_slurm(config: Config) -> LocalSlurm:
    settings = config.controller
    return LocalSlurm(
        LocalSlurmSettings(
            sbatch_dir=config.sbatch_dir().resolve(),
            job_python=settings.job_python or sys.executable,
            job_output_dir=Path(settings.job_output_dir) if settings.job_output_dir else None,
            sbatch_args=settings.sbatch_args,
            user=settings.slurm_user or None,
            commands=SlurmCommands(
                sbatch=f"{settings.slurm_bin}/sbatch",
                squeue=f"{settings.slurm_bin}/squeue",
                scancel=f"{settings.slurm_bin}/scancel",
            ),
        )
    )


def controller_for(config: Config, hub: Hub, demand: DemandTracker | None = None) -> Controller:
    return Controller(
        hub,
        local_slurm(config),
        HttpProber(),
        config.controller,
        clock=time.time,
        rng=random.SystemRandom(),
        demand=demand,
    )


def controller_lock(config: Config) -> FileLock:
    return FileLock(config.path.parent / "saia.lock")
