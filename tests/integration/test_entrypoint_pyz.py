"""The single-file saia-entrypoint (scripts/build-entrypoint) on a system Python and on 3.9.

Each run is `python -I saia-entrypoint.pyz --config ...` with no virtualenv, no saia
installed and an environment like sshd's, as on a login node. The Python 3.9 is the
one scripts/old-python provides; scripts/test exports its path as SAIA_PYTHON39.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipapp
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian 12's: 3.11
LIBRARIES = ("h2", "h11", "hpack", "hyperframe", "tomli")
PACKAGES = ("saia/protocol/", "saia/entrypoint/")


def entrypoint_config(folder: Path) -> Path:
    """The smallest entrypoint.toml the entrypoint accepts, with its folders."""
    (folder / "sbatch").mkdir()
    (folder / "state").mkdir(mode=0o700)
    path = folder / "entrypoint.toml"
    path.write_text(f'sbatch_dir = "{folder / "sbatch"}"\nstate_dir = "{folder / "state"}"\n')
    return path


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("pyz") / "saia-entrypoint.pyz"
    build = [sys.executable, str(REPO / "scripts" / "build-entrypoint"), "--output", str(output)]
    built = subprocess.run(build, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    return output


@pytest.fixture(scope="session")
def python39() -> str:
    path = os.environ.get("SAIA_PYTHON39", "")
    if not path:
        pytest.fail("SAIA_PYTHON39 is not set: export SAIA_PYTHON39=\"$(scripts/old-python)\" "
                    "(scripts/test does)")  # fmt: skip
    if not os.access(path, os.X_OK):
        pytest.fail(f"SAIA_PYTHON39={path} is not an executable: run scripts/old-python")
    return path


@pytest.fixture(params=["python3", "python3.9"])
def python(request: pytest.FixtureRequest) -> str:
    if request.param == "python3":
        return SYSTEM_PYTHON
    return str(request.getfixturevalue("python39"))


def run(python: str, archive: Path, folder: Path, command: str) -> subprocess.CompletedProcess[str]:
    """The archive as sshd's forced command runs it: a bare environment, another folder."""
    argv = [python, "-I", str(archive), "--config", str(entrypoint_config(folder))]
    environment = {"PATH": "/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": command}
    return subprocess.run(
        argv, env=environment, cwd=folder, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_the_old_python_runs_a_zipapp(python39: str, tmp_path: Path) -> None:
    """The 3.9 of scripts/old-python runs a zipapp in isolated mode with the C modules."""
    source = tmp_path / "app"
    source.mkdir()
    (source / "__main__.py").write_text(
        "import sys, asyncio, json, ssl, hashlib, hmac, fcntl, subprocess\n"
        "print('%d.%d' % sys.version_info[:2])\n"
    )
    zipapp.create_archive(source, tmp_path / "app.pyz")
    argv = [python39, "-I", str(tmp_path / "app.pyz")]
    answer = subprocess.run(
        argv, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert (answer.returncode, answer.stdout, answer.stderr) == (0, "3.9\n", "")


def test_keep_alive_answers_ok(python: str, pyz: Path, tmp_path: Path) -> None:
    """The archive answers keep-alive with ok and exit 0."""
    answer = run(python, pyz, tmp_path, "keep-alive")
    assert (answer.returncode, answer.stdout) == (0, "ok\n"), answer.stderr
    assert answer.stderr == ""


def test_unknown_verb_is_refused(python: str, pyz: Path, tmp_path: Path) -> None:
    """The archive refuses an unknown verb with exit 64 and one line of reason."""
    answer = run(python, pyz, tmp_path, "launch-missiles")
    assert (answer.returncode, answer.stdout) == (64, ""), answer.stderr
    assert answer.stderr.startswith("saia-entrypoint: ")
    assert answer.stderr.count("\n") == 1 and answer.stderr.endswith("\n"), answer.stderr


def test_archive_holds_nothing_of_the_hub(pyz: Path) -> None:
    """The archive holds the entrypoint, the protocol, an empty saia/__init__.py, the libraries."""

    def allowed(name: str) -> bool:
        top = name.partition("/")[0]
        if top.endswith(".dist-info"):
            top = top.partition("-")[0]
        return (
            name in ("__main__.py", "__main__.pyc", "saia/__init__.py", "saia/__init__.pyc")
            or name.startswith(PACKAGES)
            or top in LIBRARIES
        )

    with zipfile.ZipFile(pyz) as archive:
        names = archive.namelist()
        assert archive.read("saia/__init__.py") == b""
    assert [name for name in names if not allowed(name)] == []
    assert {name.partition("/")[0] for name in names} >= {"__main__.py", "saia", *LIBRARIES}
