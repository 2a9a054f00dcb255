"""Rate limits per key (or per user without keys): a burst up to the limit, then 429 with
x-ratelimit headers."""

from __future__ import annotations

import httpx
import pytest

from saia.demand import DemandTracker
from saia.proxy.app import create_app
from saia.proxy.backend import HttpBackend
from saia.proxy.errors import ProxyError
from saia.proxy.keys import KeyChecker
from saia.proxy.limits import RateLimiter
from saia.proxy.settings import ProxySettings
from saia.recording import GroupCommitter
from tests.unit.proxy.harness import SERVICE, Proxy, serving
from tests.unit.proxy.test_proxy_keys import Keyring


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_user_may_burst_to_the_limit_then_waits_for_refill() -> None:
    """Up to the limit at once, then one more per 60/limit seconds; users apart."""
    clock = Clock()
    limiter = RateLimiter(per_minute=3, clock=clock)
    remaining = [limiter.take("alice")["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    with pytest.raises(ProxyError) as refused:
        limiter.take("alice")
    assert refused.value.status == 429 and refused.value.headers["retry-after"] == "20"
    assert limiter.take("bob")["x-ratelimit-remaining-requests"] == "2"
    clock.now = 20.0
    assert limiter.take("alice")["x-ratelimit-remaining-requests"] == "0"


def test_over_the_limit_is_429_with_headers_and_never_reaches_the_backend(ready: Proxy) -> None:
    """The proxy answers 429 with the x-ratelimit headers; successes carry them too."""
    settings = ProxySettings(rate_limit_per_minute=2, trusted_user_header="x-user")
    with GroupCommitter(ready.log) as recorder:
        app = create_app(ready.hub, DemandTracker(), recorder, HttpBackend(), settings,
                         lambda: None)  # fmt: skip
        with serving(app) as port:
            url = f"http://127.0.0.1:{port}/v1/completions"
            body = {"model": SERVICE, "prompt": "hi"}
            answers = [httpx.post(url, json=body, headers={"x-user": "eve"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["x-ratelimit-remaining-requests"] == "1"
    assert answers[2].headers["x-ratelimit-limit-requests"] == "2"
    assert answers[2].json()["error"]["code"] == "rate_limit_exceeded"


def test_the_limit_is_per_key_when_keys_are_required(ready: Proxy) -> None:
    """Each key has its own bucket, even two keys of one user."""
    keyring = Keyring()
    first, second = keyring.issue("alice"), keyring.issue("alice")
    settings = ProxySettings(rate_limit_per_minute=1, require_api_key=True)
    with GroupCommitter(ready.log) as recorder:
        app = create_app(ready.hub, DemandTracker(), recorder, HttpBackend(), settings,
                         lambda: None, KeyChecker(lambda: keyring.projection.keys))  # fmt: skip
        with serving(app) as port:
            url = f"http://127.0.0.1:{port}/v1/completions"
            body = {"model": SERVICE, "prompt": "hi"}

            def status(key: str) -> int:
                headers = {"authorization": f"Bearer {key}"}
                return httpx.post(url, json=body, headers=headers).status_code

            assert [status(first), status(first), status(second)] == [200, 429, 200]
