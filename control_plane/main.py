"""The control-plane application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from control_plane.api.routes import (
    artifacts,
    datasets,
    devices,
    events,
    jobs,
    models,
    rollouts,
    system,
    tokens,
)
from control_plane.artifacts import BlobStore
from control_plane.config import ServerSettings
from control_plane.db import create_db_engine, migrate
from control_plane.errors import ControlPlaneError
from control_plane.jobs import JobRunner
from control_plane.keystore import load_keys
from control_plane.mqtt_bridge import MqttBridge
from control_plane.rollout_engine import RolloutEngine
from edgefleet import __version__

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the API for ``settings``. Startup migrates the database, loads the keys (the data
    directory must have been set up by ``edgefleet init``) and starts the job workers."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = load_keys(settings.keys_dir)
        engine = create_db_engine(settings.resolved_database_url)
        migrate(engine)
        runner = JobRunner(settings, engine)
        bridge = MqttBridge(settings, engine, keys) if settings.mqtt_url else None
        bridge_task = asyncio.create_task(bridge.run()) if bridge else None
        rollouts = RolloutEngine(
            engine,
            keys,
            timedelta(seconds=settings.desired_ttl_seconds),
            bridge.publish_desired if bridge else None,
        )
        rollouts_task = asyncio.create_task(rollouts.run(settings.rollout_tick_seconds))
        app.state.rollouts = rollouts
        app.state.bridge = bridge
        app.state.settings = settings
        app.state.engine = engine
        app.state.keys = keys
        app.state.blobs = BlobStore(settings.blobs_dir)
        app.state.jobs = runner
        runner.recover()
        log.info("control plane ready (data dir %s)", settings.data_dir)
        try:
            yield
        finally:
            for task in (rollouts_task, bridge_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            runner.shutdown()
            engine.dispose()

    app = FastAPI(
        title="edgefleet control plane",
        version=__version__,
        summary="Train, sign and register models for fleets of edge devices.",
        description="All routes except `/healthz` and `/keys` need `Authorization: Bearer "
        '<token>`. Errors answer `{"detail": [{"loc", "msg", "type"}]}`, naming the field '
        "and the rule.",
        lifespan=lifespan,
    )

    @app.exception_handler(ControlPlaneError)
    async def _domain_error(_: Request, exc: ControlPlaneError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content={"detail": [{"loc": list(exc.loc), "msg": exc.message, "type": exc.code}]},
        )

    for module in (system, tokens, datasets, models, jobs, artifacts, devices, rollouts, events):
        app.include_router(module.router, prefix=API_PREFIX)
    return app
