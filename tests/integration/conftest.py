"""Integration tests run against the real dev cluster that scripts/test starts."""

from __future__ import annotations

import pytest

from tests.integration.cluster import cluster_env


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    env = cluster_env()
    if env is None:
        pytest.skip("dev cluster not up: run scripts/dev-cluster up and source its env file")
    return env
