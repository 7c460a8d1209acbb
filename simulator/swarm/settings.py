"""What a swarm is told (``SwarmSettings``) and what it counts (``SwarmCounters``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SwarmSettings:
    broker_host: str
    broker_port: int
    topic_root: str = "edgefleet/v1"
    keepalive_seconds: int = 60
    window_seconds: float | None = 60.0  # None: no telemetry
    requests_per_window: int = 60  # synthetic rows counted in each window
    outbox_max_messages: int = 10_000
    outbox_resend_windows: int = 5  # the agent's default
    probation_seconds: float = 0.0  # the swarm serves no requests: committed by time
    probation_requests: int = 0
    max_artifact_bytes: int = 512 * 1024 * 1024
    connect_concurrency: int = 500
    sessions_per_address: int = 20_000
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 30.0
    connect_timeout_seconds: float = 60.0
    record_windows: bool = False  # keep every window sent (tests compare what was stored)


@dataclass
class SwarmCounters:
    connects: int = 0
    refused_connects: int = 0  # CONNACK other than 0
    lost: int = 0
    accepted: int = 0  # desired states accepted (applied or re-applied)
    refused: int = 0  # desired states or models refused
    states: int = 0  # state reports published
    windows: int = 0  # telemetry windows made
    telemetry_published: int = 0  # publishes of windows (first sends and resends)
    last_accepted: float = 0.0  # time.monotonic() of the newest desired state applied
