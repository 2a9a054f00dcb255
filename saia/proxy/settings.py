"""The proxy's knobs; read once at wiring time, never from the environment here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProxySettings:
    max_body_bytes: int = 8 * 1024 * 1024  # larger request bodies get 413
    # Larger request heads (request line and headers) get 431. Below the login node's
    # HTTP/2 header list limit (64 KiB), which a head passed on must never reach.
    max_head_bytes: int = 32 * 1024
    max_waiting_per_service: int = 64  # cold-start queue; beyond it 429
    max_wait_seconds: float = 300.0  # then 503 with Retry-After
    retry_after_seconds: int = 30
    keepalive_interval: float = 10.0  # SSE comment lines while a stream waits
    poll_interval: float = 0.05  # how often a waiting request looks for a backend
    include_usage: bool = True  # add stream_options.include_usage so tokens are metered
    rate_limit_per_minute: int = 0  # requests per user and minute; 0: no limit
    require_api_key: bool = False  # keys issued as events; off: trusted header or anonymous
    trusted_user_header: str = ""  # e.g. "x-consumer-username" behind a gateway; "" = anonymous
    # What the same gateway says of the user, recorded with each request for accounting;
    # read only with trusted_user_header and without keys (saia.proxy.identity).
    trusted_org_header: str = ""  # the user's organisation
    trusted_unit_header: str = ""  # the user's unit of it
    trusted_groups_header: str = ""  # or both from Kong's consumer groups: "x-consumer-groups"
    trusted_portal_header: str = ""  # the portal asked through; SAIA's: "inference-portal"
    anonymous_user: str = "anonymous"
    connect_attempts: int = 3  # backends tried for one request on connection failures
    unreachable_pause: float = 5.0  # seconds a job that refused a connection gets no requests
    store_outage_buffer: int = 0  # events held in memory while the store cannot write; 0: 503
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish on SIGTERM
