"""Is a job's service answering? Concurrent HTTP GETs to every target at once.

The controller's pass is synchronous, so ``probe`` is too: it runs the requests
on a short-lived event loop of its own and returns within about ``timeout``
(more only when targets outnumber ``max_concurrency``). It must therefore be
called from a thread that is not already running an event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from uuid import UUID

import httpx

from saia.ports import ProbeResult, ProbeTarget


class HttpProber:
    """The Prober port over HTTP: ok means a 2xx answer; every failure becomes a result."""

    def __init__(
        self, max_concurrency: int = 64, job_secret: Callable[[str], str] | None = None
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.job_secret = job_secret  # jobs given a secret answer only requests with it

    def probe(self, targets: Sequence[ProbeTarget], timeout: float) -> dict[UUID, ProbeResult]:
        if not targets:
            return {}
        return asyncio.run(self._probe_all(targets, timeout))

    async def _probe_all(
        self, targets: Sequence[ProbeTarget], timeout: float
    ) -> dict[UUID, ProbeResult]:
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=0)
        turns = asyncio.Semaphore(self.max_concurrency)
        # trust_env=False: an HTTP(S)_PROXY meant for the internet must not carry probes
        # to compute nodes. Redirects are not followed: a 3xx is not a healthy answer.
        async with httpx.AsyncClient(
            timeout=timeout, limits=limits, trust_env=False, follow_redirects=False
        ) as client:
            results = await asyncio.gather(
                *(_probe_one(client, turns, target, self._headers(target), timeout)
                  for target in targets)
            )  # fmt: skip
        return {target.job: result for target, result in zip(targets, results, strict=True)}

    def _headers(self, target: ProbeTarget) -> dict[str, str]:
        if self.job_secret is None or not target.token:
            return {}
        return {"authorization": f"Bearer {self.job_secret(target.token)}"}


async def _probe_one(
    client: httpx.AsyncClient, turns: asyncio.Semaphore, target: ProbeTarget,
    headers: dict[str, str], timeout: float,
) -> ProbeResult:  # fmt: skip
    async with turns:
        started = time.perf_counter()
        if not 1 <= target.port <= 65535:  # below httpx, a bad port escapes as OverflowError
            return _failed(started, f"not a port: {target.port}")
        try:
            # httpx's timeout bounds each phase (connect, each read); this bounds the
            # whole request, so a server that answers byte by byte cannot stall a pass.
            async with asyncio.timeout(timeout):
                url = httpx.URL(scheme="http", host=target.host, port=target.port, path=target.path)
                # Only the status matters: the body is never read.
                async with client.stream("GET", url, headers=headers) as response:
                    status = response.status_code
        except TimeoutError:
            return _failed(started, f"no answer within {timeout:g} s")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            return _failed(started, f"{type(error).__name__}: {error}")
        latency = time.perf_counter() - started
        if 200 <= status < 300:
            return ProbeResult(ok=True, latency=latency)
        return ProbeResult(ok=False, latency=latency, error=f"HTTP {status}")


def _failed(started: float, error: str) -> ProbeResult:
    return ProbeResult(ok=False, latency=time.perf_counter() - started, error=error)
