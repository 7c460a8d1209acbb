"""Many callers at once against a real `edgefleet server` (uvicorn, its worker threads and
the database pool as shipped): a fleet that starts together, each agent asking for its
sequence floor, gets every answer. Each request's session held a pooled connection until
its close, and a synchronous dependency's close waits for a free worker thread: with every
worker waiting for a connection only such a close gives back, 1,000 agents starting at once
got nothing for 30 s (the pool's timeout) and then errors, and none came online."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from simulator.rig.server import start_server, stop_server

pytestmark = pytest.mark.integration
DEVICES = 400  # ten times the worker threads and the pool's connections


def test_a_fleet_asking_for_its_floors_at_once_gets_every_answer(tmp_path: Path) -> None:
    server = start_server(tmp_path / "cp")
    try:
        with server.client() as api:
            body = [{"id": f"dev-{i:04d}"} for i in range(DEVICES)]
            registered = api.post("/devices", json=body).raise_for_status().json()
        tokens = {item["device"]["id"]: item["token"] for item in registered}

        async def ask_all() -> list[int]:
            limits = httpx.Limits(max_connections=DEVICES)
            async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120) as c:
                answers = await asyncio.gather(
                    *(
                        c.get(
                            f"/api/v1/devices/{device_id}/floor",
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        for device_id, token in tokens.items()
                    )
                )
            return [answer.status_code for answer in answers]

        assert asyncio.run(ask_all()) == [200] * DEVICES
    finally:
        stop_server(server)
