"""Prometheus metrics, in its conventions (base units, ``_total`` counters, histograms).
State (devices, rollouts, gates, drift, jobs) is read from the database at scrape time by
one collector, so every process reports the same fleet; counters of this process (MQTT
ingest, failed ticks, HTTP requests) come from the parts that count them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.fleet.devices import fleet_counts
from control_plane.fleet.selectors import parse_selector
from control_plane.rollouts.machine import RolloutStatus
from control_plane.store.tables import DriftResult, Job, JobStatus, Rollout

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FleetCollector(Collector):
    """Gauges of what the database holds, and this process's counters."""

    def __init__(self, engine: Engine, state: Any) -> None:
        self.engine = engine
        self.state = state  # the app's state: leadership, bridge, rollouts, monitor

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            yield from _devices(session)
            yield from _rollouts(session)
            yield from _drift(session)
            yield _jobs(session)
        yield from self._process()

    def _process(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily(
            "edgefleet_leader", "1 while this process drives rollouts and the monitor."
        )
        leader.add_metric([], 1.0 if self.state.leadership.is_leader else 0.0)
        yield leader
        failures = CounterMetricFamily(
            "edgefleet_tick_failures", "Rollout and monitor steps that raised.", labels=["part"]
        )
        failures.add_metric(["rollouts"], self.state.rollouts.failures)
        failures.add_metric(["monitor"], self.state.monitor.failures)
        yield failures
        bridge = self.state.bridge
        if bridge is None:
            return
        counters = bridge.counters
        messages = CounterMetricFamily(
            "edgefleet_mqtt_messages", "Device messages by outcome.", labels=["outcome"]
        )
        messages.add_metric(["received"], counters.received)
        messages.add_metric(["dropped"], counters.dropped)
        messages.add_metric(["poisoned"], counters.poisoned)
        yield messages
        windows = CounterMetricFamily(
            "edgefleet_telemetry_windows", "Telemetry windows ingested.", labels=["outcome"]
        )
        windows.add_metric(["stored"], counters.stored_windows)
        windows.add_metric(["duplicate"], counters.duplicate_windows)
        yield windows
        batches = CounterMetricFamily("edgefleet_ingest_batches", "Ingest transactions.")
        batches.add_metric([], counters.batches)
        yield batches


def _devices(session: Session) -> Iterator[Metric]:
    known, online, serving = fleet_counts(session, parse_selector(""))  # counted in SQL
    by_online = GaugeMetricFamily("edgefleet_devices", "Devices known.", labels=["online"])
    by_online.add_metric(["true"], online)
    by_online.add_metric(["false"], known - online)
    yield by_online
    versions = GaugeMetricFamily(
        "edgefleet_device_models",
        "Devices by model, active version (empty: none yet) and install phase.",
        labels=["model", "version", "phase"],
    )
    for model, version, phase, count in serving:
        versions.add_metric([model, "" if version is None else str(version), phase], count)
    yield versions


def _rollouts(session: Session) -> Iterator[Metric]:
    by_status = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by status.", labels=["status"])
    counts = dict(session.exec(select(Rollout.status, func.count()).group_by(Rollout.status)).all())
    for status in RolloutStatus:
        by_status.add_metric([status.value], counts.get(status, 0))
    yield by_status
    value = GaugeMetricFamily(
        "edgefleet_rollout_gate_value",
        "The current stage's gate readings of active rollouts.",
        labels=["rollout_id", "model", "gate"],
    )
    threshold = GaugeMetricFamily(
        "edgefleet_rollout_gate_threshold",
        "What each reading is judged against.",
        labels=["rollout_id", "model", "gate"],
    )
    active = (RolloutStatus.RUNNING, RolloutStatus.PAUSED)
    for rollout in session.exec(select(Rollout).where(col(Rollout.status).in_(active))).all():
        for gate in rollout.gates or []:
            labels = [rollout.id, rollout.model_name, str(gate.get("name"))]
            if gate.get("value") is not None:
                value.add_metric(labels, float(gate["value"]))
            threshold.add_metric(labels, float(gate.get("threshold", 0.0)))
    yield value
    yield threshold


def _drift(session: Session) -> Iterator[Metric]:
    """Each model version and selector's latest bucket."""
    latest = (
        select(
            DriftResult.model_name,
            DriftResult.version,
            DriftResult.selector,
            func.max(DriftResult.bucket_start).label("start"),
        )
        .group_by(col(DriftResult.model_name), col(DriftResult.version), col(DriftResult.selector))
        .subquery()
    )
    rows = session.exec(
        select(DriftResult).join(
            latest,
            (col(DriftResult.model_name) == latest.c.model_name)
            & (col(DriftResult.version) == latest.c.version)
            & (col(DriftResult.selector) == latest.c.selector)
            & (col(DriftResult.bucket_start) == latest.c.start),
        )
    ).all()
    psi = GaugeMetricFamily(
        "edgefleet_drift_psi",
        "PSI of each feature in the latest monitor bucket.",
        labels=["model", "version", "selector", "feature"],
    )
    share = GaugeMetricFamily(
        "edgefleet_drift_share",
        "Share of features drifting in the latest monitor bucket.",
        labels=["model", "version", "selector"],
    )
    for row in rows:
        key = [row.model_name, str(row.version), row.selector]
        share.add_metric(key, row.drifted_share)
        for feature in row.features:
            if feature.get("psi") is not None:
                psi.add_metric([*key, str(feature["name"])], float(feature["psi"]))
    yield psi
    yield share


def _jobs(session: Session) -> Metric:
    jobs = GaugeMetricFamily("edgefleet_jobs", "Jobs by status.", labels=["status"])
    counts = dict(session.exec(select(Job.status, func.count()).group_by(Job.status)).all())
    for status in JobStatus:
        jobs.add_metric([status.value], counts.get(status, 0))
    return jobs


class Metrics:
    """One registry per application (tests run several in one process)."""

    def __init__(self, engine: Engine, state: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(engine, state))
        self.requests = Histogram(
            "edgefleet_http_request_duration_seconds",
            "API requests by method, route template (under /api/v1) and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).observe(seconds)


class RequestTimer:
    """ASGI middleware timing each request under its route's template (bounded labels, no
    ids), into the app's ``Metrics``. Plain ASGI, so a streamed artifact download passes
    through untouched: only the response's start is looked at."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
        if scope["type"] != "http" or metrics is None:  # or before startup finished
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            metrics.observe(scope["method"], template, status, time.perf_counter() - start)
