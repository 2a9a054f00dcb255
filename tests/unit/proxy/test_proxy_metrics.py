"""/metrics: requests by service and status, latency histograms, gauges of the routing table."""

from __future__ import annotations

import httpx

from saia.domain.job import Phase
from tests.unit.proxy.harness import SERVICE, Proxy


def test_metrics_count_requests_and_show_backends(ready: Proxy) -> None:
    """Answered requests are counted with their latency; ready backends and jobs are shown."""
    ready.hub.add_job(SERVICE, 1, phase=Phase.SUBMITTED)
    for _ in range(2):
        ready.client().completions.create(model=SERVICE, prompt="hi")
    text = ""
    for _ in range(50):  # the counter moves when the answer's end is recorded
        text = httpx.get(f"{ready.url}/metrics").text
        if f'saia_requests_total{{service="{SERVICE}",status="200"}} 2' in text:
            break
    lines = set(text.splitlines())
    assert f'saia_requests_total{{service="{SERVICE}",status="200"}} 2' in lines
    assert f'saia_request_seconds_count{{service="{SERVICE}"}} 2' in lines
    assert f'saia_request_seconds_bucket{{service="{SERVICE}",le="+Inf"}} 2' in lines
    assert f'saia_ready_backends{{service="{SERVICE}"}} 1' in lines
    assert f'saia_jobs{{service="{SERVICE}",phase="submitted"}} 1' in lines
    assert f'saia_waiting_requests{{service="{SERVICE}"}} 0' in lines
