"""Per-user request rate limits: a token bucket each, refilled continuously.

A bucket holds up to ``per_minute`` requests and regains one every
60/per_minute seconds, so a user may burst to the limit and then keeps the
average. The headers follow OpenAI's ``x-ratelimit-*`` names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from saia.proxy.errors import ProxyError


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    def take(self, user: str) -> dict[str, str]:
        """Count one request of the user; its headers, or 429 with them when none is left."""
        now = self._clock()
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = Bucket(float(self.per_minute), now)
        bucket.tokens = min(float(self.per_minute),
                            bucket.tokens + (now - bucket.updated) * self._rate)  # fmt: skip
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / self._rate)
            headers = self._headers(0, wait)
            headers["retry-after"] = str(wait)
            raise ProxyError(429, f"more than {self.per_minute} requests a minute",
                             "rate_limit_exceeded", headers)  # fmt: skip
        bucket.tokens -= 1.0
        full_in = math.ceil((self.per_minute - bucket.tokens) / self._rate)
        return self._headers(int(bucket.tokens), full_in)

    def _headers(self, remaining: int, reset_seconds: int) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.per_minute),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{reset_seconds}s",
        }
