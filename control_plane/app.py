"""The control-plane application factory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy import Engine

from control_plane import ui
from control_plane.api import errors
from control_plane.api.admission import Admission
from control_plane.api.routes import (
    artifacts,
    datasets,
    devices,
    enrollment,
    events,
    jobs,
    models,
    monitoring,
    rollouts,
    system,
    tokens,
)
from control_plane.auth.keys import KeyStore, load_keys
from control_plane.auth.rotation import KeyWatch
from control_plane.auth.tokens import ArtifactAccess
from control_plane.config import ServerSettings
from control_plane.coordination.leadership import Leadership
from control_plane.fleet.bridge import MqttBridge
from control_plane.monitoring.monitor import Monitor
from control_plane.observability.metrics import Metrics, RequestTimer
from control_plane.rollouts.engine import RolloutEngine
from control_plane.store.blobs import BlobStore
from control_plane.store.db import create_db_engine, migrate
from control_plane.training.jobs import JobRunner
from edgefleet import __version__

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"

HEARTBEAT_SECONDS = 5.0  # well inside leadership.STALE_AFTER
# How long a computing thread (gates, an ingest batch) keeps the GIL from one waiting for
# it: 5 ms by default. The MQTT reader lets go of it three to five times per message
# (paho's recv and send calls), so beside a busy thread it took in ~200 messages a second
# (benchmarks/gil_reader.py).
SWITCH_INTERVAL_SECONDS = 0.0005
REST_PER_BUSY = 2.0
# HTTP requests at once past arriving (control_plane/api/admission.py): fewer than the
# worker threads (anyio's 40) and the database pool's connections (store.db: 40).
ADMITTED_REQUESTS = 32


async def _lead(
    leadership: Leadership,
    rollouts: RolloutEngine,
    monitor: Monitor,
    runner: JobRunner,
    interval: float,
    on_leading: Callable[[], Awaitable[None]] | None = None,
    key_watch: KeyWatch | None = None,
) -> None:
    """Heartbeat always; while leading, drive rollouts and the monitor (drift, retraining,
    releases) every ``interval`` and, with several processes, take over the jobs of
    processes that died. ``on_leading`` runs each time this process becomes the leader, and
    on the leader after a key rotation (the desired states signed again get published);
    every process reloads its keys then."""
    leading = False
    beat_at = -HEARTBEAT_SECONDS
    while True:
        busy = 0.0  # seconds of rollout and monitor work this tick (not publishing)
        try:
            if time.monotonic() - beat_at >= HEARTBEAT_SECONDS:  # by the clock: ticks vary
                beat_at = time.monotonic()
                await asyncio.to_thread(leadership.heartbeat)
                if leadership.engine.dialect.name != "sqlite" and leadership.is_leader:
                    await asyncio.to_thread(runner.recover_orphans, leadership)
            rotated = key_watch is not None and await asyncio.to_thread(key_watch.check)
            now_leading = await asyncio.to_thread(leadership.try_lead)
            if now_leading and (rotated or not leading) and on_leading is not None:
                await on_leading()  # when it fails, ``leading`` stays False: the next tick retries
            leading = now_leading
            if leading:
                await rollouts.tick()
                began = time.monotonic()
                await asyncio.to_thread(monitor.tick)
                busy = rollouts.busy_seconds + time.monotonic() - began
        except Exception:  # a bad tick must not stop the loop
            log.exception("leader loop tick failed")
        # A long tick (gates over a stage of 100,000 devices) rests twice as long after it:
        # ingest and the API keep two thirds of the process however large the fleet.
        await asyncio.sleep(max(interval, REST_PER_BUSY * busy))


@dataclass(frozen=True)
class _Services:
    """What the control plane runs beside its API, sharing one engine and one set of keys."""

    engine: Engine
    keys: KeyStore
    runner: JobRunner
    leadership: Leadership
    bridge: MqttBridge | None
    rollouts: RolloutEngine
    monitor: Monitor

    @classmethod
    def start(cls, settings: ServerSettings) -> _Services:
        keys = load_keys(settings.keys_dir)
        engine = create_db_engine(settings.resolved_database_url)
        migrate(engine)
        runner = JobRunner(settings, engine)
        leadership = Leadership(engine)
        bridge = (
            MqttBridge(settings, engine, keys, leads=lambda: leadership.is_leader)
            if settings.mqtt_url
            else None
        )
        rollouts = RolloutEngine(
            engine,
            keys,
            timedelta(seconds=settings.desired_ttl_seconds),
            bridge.publish_desired if bridge else None,
            settings.artifact_mirrors,
        )
        monitor = Monitor(
            engine,
            bucket_seconds=settings.monitor_bucket_seconds,
            grace_seconds=settings.monitor_grace_seconds,
            submit=runner.submit,
            owner=leadership.process_id,
        )
        return cls(engine, keys, runner, leadership, bridge, rollouts, monitor)


def freeze_startup_objects() -> None:
    """Keep what start-up made (~270,000 objects: SQLAlchemy, pydantic, numpy, scikit-learn)
    out of the garbage collector's walks. Every full collection walked all of them, and
    ingest sets off collections: parsing a batch of 500 telemetry windows cost 72 µs a
    window, 39 µs with them frozen (31 µs with no collector at all)."""
    gc.collect()
    gc.freeze()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start: migrate, load the keys, start the bridge, the leader loop and the job workers;
    stop them in turn."""
    settings: ServerSettings = app.state.settings
    parts = _Services.start(settings)
    bridge, engine, runner = parts.bridge, parts.engine, parts.runner
    bridge_task = asyncio.create_task(bridge.run()) if bridge else None
    leader_task = asyncio.create_task(
        _lead(
            parts.leadership,
            parts.rollouts,
            parts.monitor,
            runner,
            settings.rollout_tick_seconds,
            bridge.republish_desired if bridge else None,
            KeyWatch(engine, parts.keys),
        )
    )
    app.state.rollouts = parts.rollouts
    app.state.monitor = parts.monitor
    app.state.leadership = parts.leadership
    app.state.bridge = bridge
    app.state.engine = engine
    app.state.keys = parts.keys
    app.state.blobs = BlobStore(settings.blobs_dir)
    app.state.artifact_access = ArtifactAccess(engine)
    app.state.jobs = runner
    app.state.metrics = Metrics(engine, app.state)
    if engine.dialect.name == "sqlite":
        runner.recover()  # one process per SQLite file: whatever ran before is gone
    freeze_startup_objects()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # the MQTT reader beside busy threads
    log.info("control plane ready (data dir %s)", settings.data_dir)
    try:
        yield
    finally:
        for task in (leader_task, bridge_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        runner.shutdown()
        parts.leadership.release()
        engine.dispose()


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the API for ``settings``. Startup migrates the database, loads the keys (the data
    directory must have been set up by ``edgefleet init``) and starts the job workers."""

    app = FastAPI(
        title="edgefleet control plane",
        version=__version__,
        summary="Train, sign, register and roll out models to fleets of edge devices; watch "
        "them for drift and retrain.",
        description="All routes except `/healthz` and `/keys` need `Authorization: Bearer "
        "<token>`. Every error (400, 401, 403, 404, 409, 413, 422, 500) answers "
        '`{"detail": [{"loc", "msg", "type"}]}`, naming the field and the rule, and echoes at '
        "most a short piece of the input. JSON bodies are at most 2 MiB and 32 levels deep.",
        lifespan=_lifespan,
    )

    app.state.settings = settings
    errors.install(app)

    for module in (
        system,
        tokens,
        datasets,
        models,
        jobs,
        artifacts,
        devices,
        enrollment,
        rollouts,
        events,
        monitoring,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(system.metrics_router)
    ui.install(app)

    app.add_middleware(Admission, limit=ADMITTED_REQUESTS)
    app.add_middleware(RequestTimer)  # outside: a request's time includes its wait
    return app
