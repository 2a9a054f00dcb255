"""How saia-entrypoint reads its start: the forced command line and an allowlisted environment."""

from __future__ import annotations

import pytest

from saia.entrypoint import settings


def test_only_allowlisted_variables_are_kept_for_the_commands_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SLURM_*, SBATCH_*, SQUEUE_*, LD_PRELOAD and SSH_* never reach Slurm or the jobs."""
    sent = {
        "PATH": "/usr/bin:/bin", "HOME": "/home/saia", "USER": "saia", "LANG": "C.UTF-8",
        "SLURM_CONF": "/tmp/evil.conf", "SBATCH_PARTITION": "gpu", "SQUEUE_USERS": "root",
        "SCANCEL_INTERACTIVE": "1", "LD_PRELOAD": "/tmp/evil.so", "PYTHONPATH": "/tmp",
        "SSH_ORIGINAL_COMMAND": "session", "SSH_CONNECTION": "1.2.3.4 5 6.7.8.9 22",
    }  # fmt: skip
    monkeypatch.setattr(settings.os, "environ", sent)
    monkeypatch.setattr(settings.os, "environb", {b"SSH_ORIGINAL_COMMAND": b"session"})
    invocation = settings.from_environment(["--config", "/etc/saia/entrypoint.toml"])
    assert invocation.environment == {
        "PATH": "/usr/bin:/bin", "HOME": "/home/saia", "USER": "saia", "LANG": "C.UTF-8"
    }
    assert invocation.command == b"session"


def test_a_missing_path_gets_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PATH (sshd always sets one, but a starter might not), the commands still run."""
    monkeypatch.setattr(settings.os, "environ", {})
    monkeypatch.setattr(settings.os, "environb", {})
    invocation = settings.from_environment(["--config=/etc/saia/entrypoint.toml"])
    assert invocation.environment == {"PATH": settings.DEFAULT_PATH}
    assert invocation.command is None


@pytest.mark.parametrize(
    "argv",
    [[], ["--config"], ["--config", "relative.toml"], ["-c", "/etc/x"], ["--config", "/a", "/b"]],
)
def test_the_forced_command_line_must_name_an_absolute_config(argv: list[str]) -> None:
    """Anything but --config /absolute/path is a mistake in authorized_keys."""
    with pytest.raises(settings.UsageError):
        settings.from_environment(argv)
