"""Wiring: builds the application from a configuration. The only place that picks adapters."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from saia.adapters.control_session import ControlSession
from saia.adapters.lock import FileLock
from saia.adapters.prober import HttpProber
from saia.adapters.prober_remote import RemoteProber
from saia.adapters.session_client import ReconnectingSession
from saia.adapters.slurm_local import LocalSlurm, LocalSlurmSettings, SlurmCommands
from saia.adapters.slurm_remote import RemoteSlurm
from saia.adapters.ssh_link import SshLink, SshLinkSettings
from saia.config import Config, Placement, SshSettings
from saia.controller import Controller, OutsideDemand
from saia.demand import DemandTracker
from saia.hub import Hub
from saia.ports import Prober, Slurm
from saia.protocol import demand as demand_notes
from saia.protocol import job_secret
from saia.proxy.backend import Backend, HttpBackend
from saia.proxy.session_backend import SessionBackend

JobSecret = Callable[[str], str]  # a job's secret from its token


def hub_for(config: Config) -> Hub:
    hub = Hub(config.store)
    hub.refresh()
    return hub


def local_slurm(config: Config, secret: JobSecret | None = None) -> LocalSlurm:
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
            job_secret=secret,
            jobs=config.jobs,
        )
    )


def job_secrets(config: Config) -> JobSecret | None:
    """Login-node placement: each job's secret, by the entrypoint's key (None: no secrets)."""
    folder = config.entrypoint_state_dir()
    if folder is None:
        return None
    return job_secret.secrets_of(job_secret.load_key(str(folder)))


def ssh_link(ssh: SshSettings, hub: Hub) -> SshLink:
    """The link to the login node, started; its ups and downs are recorded in the log."""

    def record(up: bool, error: str) -> None:
        hub.link_changed(ssh.target, up, error, time.time())

    link = SshLink(
        SshLinkSettings(
            host=ssh.host,
            port=ssh.port,
            user=ssh.user,
            key_file=ssh.key_file,
            known_hosts_file=ssh.known_hosts_file,
            keepalive_interval=ssh.keepalive_interval,
            ssh_config=ssh.ssh_config,
            jump_host=ssh.jump_host,
        ),
        on_change=record,
    )
    link.start()
    hub.on_close(link.close)
    return link


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """How this hub reaches the cluster: Slurm and probes for the controller, and the
    proxy's way to the jobs."""

    slurm: Slurm
    prober: Prober
    backend: Callable[[], Backend]  # a new one for each event loop that serves requests
    link_up: Callable[[], bool] | None = None  # whether the SSH link is up; None: no link


def cluster_access(config: Config, hub: Hub) -> ClusterAccess:
    """Over the SSH link (hub placement), or on this host (login node)."""
    if config.placement is Placement.LOGIN_NODE:
        secret = job_secrets(config)
        return ClusterAccess(local_slurm(config, secret), HttpProber(job_secret=secret),
                             lambda: HttpBackend(job_secret=secret))  # fmt: skip
    assert config.ssh is not None  # config.parse requires [ssh] for hub placement
    link = ssh_link(config.ssh, hub)
    link.wait_up(timeout=10.0)  # a first pass with the link still connecting is wasted

    def open_session() -> paramiko.Channel:
        return link.open_channel("session")

    def session_backend() -> Backend:
        return SessionBackend(ReconnectingSession(open_session))

    # The controller's passes and probes have a session of their own: no process is
    # started on the login node per pass, and a burst of requests never delays them.
    control = ControlSession(open_session)
    hub.on_close(control.close)  # before the link (closers run newest first)
    link.check_with(lambda: control.keep_alive(timeout=link.settings.keepalive_timeout))
    return ClusterAccess(RemoteSlurm(control), RemoteProber(control), session_backend,
                         lambda: link.up)  # fmt: skip


def controller_for(
    config: Config, hub: Hub, access: ClusterAccess | None = None,
    demand: DemandTracker | None = None,
) -> Controller:  # fmt: skip
    access = access if access is not None else cluster_access(config, hub)
    return Controller(
        hub,
        access.slurm,
        access.prober,
        config.controller,
        clock=time.time,
        rng=random.SystemRandom(),
        demand=demand,
        outside_demand=legacy_demand(config),
    )


def legacy_demand(config: Config) -> OutsideDemand | None:
    """The login node's notes of legacy requests, when an unmodified SAIA hub sends them."""
    folder = config.entrypoint_state_dir()
    if folder is None:
        return None
    return lambda since: demand_notes.recent(str(folder), since)


def controller_lock(config: Config) -> FileLock:
    return FileLock(config.path.parent / "saia.lock")
