"""/metrics in Prometheus' text format, written by hand: a few families need no library.

Counters and histograms are the proxy's own; gauges are read at scrape time
from the router (in flight, waiting) and the service-state projection (jobs).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping

from saia.domain.state import ServiceView
from saia.proxy.routing import Router

# Seconds; LLM answers range from milliseconds (embeddings) to minutes (long generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)  # fmt: skip


class ProxyMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self._refused: Counter[int] = Counter()
        self._unreachable: Counter[str] = Counter()

    def refused(self, status: int) -> None:
        """A request turned away before it had a service: no key, no limit left, unknown
        model, bad body. By status only, as an unknown model is any string a client sends."""
        with self._lock:
            self._refused[status] += 1

    def unreachable(self, service: str) -> None:
        """A job of the service could not be reached: it is set aside for a while."""
        with self._lock:
            self._unreachable[service] += 1

    def observe(self, service: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(service, status)] += 1
            counts = self._buckets.setdefault(service, [0] * (len(LATENCY_BUCKETS) + 1))
            counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._sums[service] = self._sums.get(service, 0.0) + seconds

    def render(
        self,
        router: Router,
        services: Mapping[str, ServiceView],
        link_up: bool | None = None,
        held_events: int = 0,
    ) -> str:
        """``link_up``: whether the SSH link to the login node is up; None: there is none.
        ``held_events``: events held in memory because the store cannot write."""
        lines = [
            "# HELP saia_requests_total Requests answered or refused, by service and status.",
            "# TYPE saia_requests_total counter",
        ]
        with self._lock:
            requests = dict(self._requests)
            buckets = {k: list(v) for k, v in self._buckets.items()}
            sums = dict(self._sums)
            refused = dict(self._refused)
            unreachable = dict(self._unreachable)
        for (service, status), count in sorted(requests.items()):
            lines.append(f'saia_requests_total{{service="{service}",status="{status}"}} {count}')
        lines += ["# HELP saia_refused_requests_total Requests refused before routing, by status.",
                  "# TYPE saia_refused_requests_total counter"]  # fmt: skip
        for status, count in sorted(refused.items()):
            lines.append(f'saia_refused_requests_total{{status="{status}"}} {count}')
        lines += ["# HELP saia_unreachable_backends_total Jobs that could not be reached "
                  "before any byte was sent (each then set aside), by service.",
                  "# TYPE saia_unreachable_backends_total counter"]  # fmt: skip
        for service, count in sorted(unreachable.items()):
            lines.append(f'saia_unreachable_backends_total{{service="{service}"}} {count}')
        lines += ["# HELP saia_request_seconds Time from arrival to the end of the answer.",
                  "# TYPE saia_request_seconds histogram"]  # fmt: skip
        for service, counts in sorted(buckets.items()):
            label = f'service="{service}"'
            total = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                total += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'saia_request_seconds_bucket{{{label},le="{le}"}} {total}')
            lines.append(f"saia_request_seconds_sum{{{label}}} {sums[service]}")
            lines.append(f"saia_request_seconds_count{{{label}}} {total}")
        lines += _gauges(router, services)
        lines += ["# HELP saia_held_events Events held in memory because the store cannot write.",
                  "# TYPE saia_held_events gauge", f"saia_held_events {held_events}"]  # fmt: skip
        if link_up is not None:
            lines += ["# HELP saia_link_up Whether the SSH link to the login node is up.",
                      "# TYPE saia_link_up gauge", f"saia_link_up {int(link_up)}"]  # fmt: skip
        return "\n".join(lines) + "\n"


def _gauges(router: Router, services: Mapping[str, ServiceView]) -> list[str]:
    lines = ["# TYPE saia_inflight_requests gauge", "# TYPE saia_waiting_requests gauge",
             "# TYPE saia_ready_backends gauge", "# TYPE saia_jobs gauge"]  # fmt: skip
    for name, view in sorted(services.items()):
        inflight = sum(router.inflight.get(job_id, 0) for job_id in view.jobs)
        lines.append(f'saia_inflight_requests{{service="{name}"}} {inflight}')
        lines.append(f'saia_waiting_requests{{service="{name}"}} {router.waiting.get(name, 0)}')
        lines.append(f'saia_ready_backends{{service="{name}"}} {len(view.routing_targets())}')
        phases = Counter(job.phase.value for job in view.jobs.values())
        for phase, count in sorted(phases.items()):
            lines.append(f'saia_jobs{{service="{name}",phase="{phase}"}} {count}')
    return lines
