"""/metrics: requests by service and status, latency histograms, gauges of the routing table."""

from __future__ import annotations

import httpx

from saia.demand import DemandTracker
from saia.domain.job import Phase
from saia.proxy.app import create_app
from saia.proxy.backend import HttpBackend
from saia.proxy.settings import ProxySettings
from saia.recording import GroupCommitter
from tests.unit.proxy.harness import SERVICE, Proxy, serving


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


def test_refusals_before_routing_are_counted_by_status(ready: Proxy) -> None:
    """Requests turned away before they had a service are counted by status alone."""
    url = f"{ready.url}/v1/chat/completions"
    assert httpx.post(url, json={"model": "no-such-model", "messages": []}).status_code == 404
    assert httpx.post(url, content=b"{").status_code == 400
    lines = set(httpx.get(f"{ready.url}/metrics").text.splitlines())
    assert 'saia_refused_requests_total{status="404"} 1' in lines
    assert 'saia_refused_requests_total{status="400"} 1' in lines
    assert not any("no-such-model" in line for line in lines)


def test_the_link_state_is_shown_when_there_is_a_link(ready: Proxy) -> None:
    up = [True]
    with GroupCommitter(ready.log) as recorder:
        app = create_app(ready.hub, DemandTracker(), recorder, HttpBackend(), ProxySettings(),
                         lambda: None, link_up=lambda: up[0])  # fmt: skip
        with serving(app) as port:
            assert "saia_link_up 1" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
            up[0] = False
            assert "saia_link_up 0" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "saia_link_up" not in httpx.get(f"{ready.url}/metrics").text  # no link, no gauge
