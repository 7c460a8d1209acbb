"""A simulation that fails to start leaves nothing running: its broker (and control plane)
go with the error, as they do when a scenario ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from simulator.broker import InProcessBroker, MosquittoBroker
from simulator.broker import start_broker as real_start_broker
from simulator.run import SimOptions, Simulation

pytestmark = pytest.mark.integration


def test_a_simulation_that_fails_to_start_leaves_no_broker_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # benchmarks/chaos.py's first run failed in Simulation.__aenter__ after the broker had
    # started: the mosquitto outlived the script (and its temp dir).
    started: list[MosquittoBroker | InProcessBroker] = []

    def start_broker(workdir: Path) -> MosquittoBroker | InProcessBroker:
        started.append(real_start_broker(workdir))
        return started[-1]

    def refuse(self: object, timeout: float = 60.0) -> None:
        raise RuntimeError("the control plane did not start")

    monkeypatch.setattr("simulator.run.start_broker", start_broker)
    monkeypatch.setattr("simulator.control.ControlPlane.start", refuse)

    async def enter() -> None:
        async with Simulation(tmp_path / "sim", SimOptions(devices=1)):
            pass

    try:
        with pytest.raises(RuntimeError, match="did not start"):
            asyncio.run(enter())
        assert len(started) == 1
        broker = started[0]
        assert isinstance(broker, MosquittoBroker)
        assert not broker.running
    finally:
        for broker in started:
            broker.stop()


def test_a_fleet_without_app_traffic_has_the_shortest_bucket() -> None:
    # benchmarks/chaos.py sends its own requests: rows_per_second 0 divided by zero.
    assert SimOptions(devices=10, rows_per_second=0.0).bucket == 3.0
    assert SimOptions(devices=10, rows_per_second=10.0).bucket == 12.0
