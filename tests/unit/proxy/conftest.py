"""Fixtures of the proxy tests: the test service as the backend, the proxy before it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from saia.adapters.store import EventLog, MemoryStore
from saia.demand import DemandTracker
from saia.proxy.app import create_app
from saia.proxy.backend import HttpBackend
from saia.recording import GroupCommitter
from saia.testservice import app as testservice
from tests.unit.proxy.harness import SERVICE, SETTINGS, TOKEN_DELAY, FakeHub, Proxy, serving


@pytest.fixture
def backend_port() -> Iterator[int]:
    app = testservice.create_app(testservice.Settings(model=SERVICE, token_delay=TOKEN_DELAY))
    with serving(app) as port:
        yield port


@pytest.fixture
def proxy(backend_port: int) -> Iterator[Proxy]:
    hub = FakeHub()
    hub.add_service(SERVICE)
    log = EventLog(MemoryStore())
    recorder = GroupCommitter(log)
    wakes: list[float] = []
    app = create_app(hub, DemandTracker(), recorder, HttpBackend(), SETTINGS,
                     lambda: wakes.append(time.monotonic()))  # fmt: skip
    try:
        with serving(app) as port:
            yield Proxy(f"http://127.0.0.1:{port}", hub, log, backend_port, wakes)
    finally:
        recorder.close()
        log.close()


@pytest.fixture
def ready(proxy: Proxy) -> Proxy:
    proxy.hub.add_job(SERVICE, proxy.backend_port)
    return proxy
