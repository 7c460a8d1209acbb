"""The protocol-level swarm against a real `edgefleet server` and a real mosquitto: rollouts
converge on every swarm device, each telemetry window is stored exactly once, and a desired
state with a bad signature or an older sequence is refused by swarm devices with the error a
real agent (beside them, on the same broker) reports for the same message; `edgefleet
simulate --swarm` as a user runs it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.messages import DesiredState, TelemetryWindow
from shared.topics import Channel
from simulator.rig.agents import AgentThread, Publisher, agent_settings
from simulator.rig.server import run_cli
from simulator.swarm.rig import MODEL, SwarmRig
from simulator.swarm.scenario import ALL_AT_ONCE, CANARY, ingest_counts, measure_rollout
from simulator.swarm.shards import SwarmShards

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICES = 300
AGENT = "agent-0001"
TAMPERED = [SwarmRig.device_id(i) for i in (0, 7, 150)]
# Bounds on waits for events, never the expected time: generous for a busy 2-core machine.
BOUND = 240.0


async def until(predicate: Callable[[], Any], what: str, timeout: float = BOUND) -> Any:  # noqa: ASYNC109
    """Poll ``predicate`` (sync) until it returns something truthy; that value."""
    began = time.monotonic()
    while not (value := predicate()):
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def device(rig: SwarmRig, device_id: str) -> dict[str, Any]:
    result: dict[str, Any] = (await rig.api.get(f"/devices/{device_id}")).raise_for_status().json()
    return result


async def last_error(rig: SwarmRig, device_id: str, reason: str) -> dict[str, Any]:
    """The device's stored state once it reports ``reason`` as its last error."""
    began = time.monotonic()
    while True:
        state = (await device(rig, device_id))["state"]
        error = (state or {}).get("last_error")
        if error and error["reason"] == reason:
            return dict(state)
        if time.monotonic() - began > BOUND:
            raise AssertionError(f"{device_id} reported {error}, not {reason}")
        await asyncio.sleep(0.1)


def active_version(state: dict[str, Any]) -> int | None:
    for model in state["models"]:
        if model["name"] == MODEL and model["active"]:
            return int(model["active"]["version"])
    return None


def desired_seen(publisher: Publisher, device_id: str) -> list[DesiredState]:
    topic = publisher.topics.device(device_id, Channel.DESIRED)
    return [DesiredState.model_validate_json(p) for t, p in publisher.received if t == topic]


def start_agent(rig: SwarmRig, tmp_path: Path) -> AgentThread:
    """A real agent on the same broker and control plane, to compare refusals with."""
    with rig.control.client() as api:
        registered = api.post("/devices", json={"id": AGENT, "labels": {"site": "berlin"}})
        registered.raise_for_status()
        token = registered.json()["token"]
    rig.broker.add_user(AGENT, token)
    trust = tmp_path / "trust.json"
    trust.write_text(rig.trust.model_dump_json())
    return AgentThread(
        agent_settings(
            tmp_path / "agents",
            device_id=AGENT,
            broker=rig.broker,
            token=token,
            control_plane_url=rig.control.url,
            trust_store=trust,
        )
    )


async def converge(rig: SwarmRig, agent: AgentThread, seed: int, plan: dict[str, Any]) -> int:
    version = await rig.train(seed=seed)
    figures = await measure_rollout(rig, version, plan, BOUND)
    assert rig.swarm.serving[(MODEL, version)] == DEVICES
    assert figures.reported_s is not None, "the control plane lacks reports"
    assert figures.succeeded_s is not None, "the rollout did not succeed"
    assert figures.reported_s >= figures.installed_s > 0
    await until(
        lambda: agent.a.model_names() and agent.a.model(MODEL).manifest.version == version,
        f"the agent on v{version}",
    )
    return version


async def refusals(rig: SwarmRig, agent: AgentThread, publisher: Publisher, v2: int) -> None:
    """A bad signature, then a genuine but older desired state: refused by swarm devices as
    by the agent, and every one of them keeps v2."""
    for device_id in [*TAMPERED, AGENT]:
        latest = desired_seen(publisher, device_id)[-1]
        forged = latest.model_copy(update={"seq": latest.seq + 1})  # the signature no longer holds
        await asyncio.to_thread(publisher.desired, device_id, forged.model_dump_json())
    states = {d: await last_error(rig, d, "bad_signature") for d in [*TAMPERED, AGENT]}
    expected = states[AGENT]["last_error"]["message"]
    for device_id in TAMPERED:
        assert states[device_id]["last_error"]["message"] == expected
        assert active_version(states[device_id]) == v2
    for device_id in [*TAMPERED, AGENT]:
        first = desired_seen(publisher, device_id)[0]  # v1's, genuinely signed, older
        await asyncio.to_thread(publisher.desired, device_id, first.model_dump_json())
    states = {d: await last_error(rig, d, "replay") for d in [*TAMPERED, AGENT]}
    expected = states[AGENT]["last_error"]["message"]
    for device_id in TAMPERED:
        assert states[device_id]["last_error"]["message"] == expected
        assert active_version(states[device_id]) == v2
        assert rig.swarm.devices[device_id].models[MODEL].current is not None
    assert agent.a.model(MODEL).manifest.version == v2


async def windows_stored_once(rig: SwarmRig) -> int:
    """Stop making windows, wait until the control plane has acknowledged every one, then
    compare what each device sent with what the API holds: each exactly once, unchanged."""
    swarm = rig.swarm
    swarm.stop_telemetry()
    await swarm.wait_for(
        lambda: swarm.unacked() == 0, BOUND, lambda: f"{swarm.unacked()} windows unacknowledged"
    )
    total = 0
    for device_id, swarm_device in swarm.devices.items():
        response = await rig.api.get(f"/devices/{device_id}/telemetry", params={"limit": 10_000})
        stored = [item["window"] for item in response.raise_for_status().json()]
        seqs = [w["seq"] for w in stored]
        assert sorted(seqs) == list(range(1, swarm_device.telemetry_seq + 1)), device_id
        for window in stored:
            sent = TelemetryWindow.model_validate_json(swarm_device.sent[window["seq"]])
            assert TelemetryWindow.model_validate_json(json.dumps(window)) == sent
        total += len(stored)
    return total


async def shards_windows_stored_once(rig: SwarmRig, shards: SwarmShards) -> int:
    """Stop the shards' windows, wait until each is acknowledged, and check that each
    device's stored windows are numbered 1..k, each once; their total."""
    await shards.stop_telemetry()
    await shards.wait_acknowledged(BOUND)
    stored = 0
    for device_id in shards.devices:
        response = await rig.api.get(f"/devices/{device_id}/telemetry", params={"limit": 10_000})
        seqs = [item["window"]["seq"] for item in response.raise_for_status().json()]
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), device_id
        stored += len(seqs)
    return stored


def test_swarm_converges_refuses_like_the_agent_and_stores_each_window_once(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        options = {"window_seconds": 2.0, "record_windows": True}
        async with SwarmRig(tmp_path / "rig", DEVICES, swarm_options=options) as rig:
            publisher = Publisher(rig.broker)
            publisher.client.subscribe(publisher.topics.all_devices(Channel.DESIRED), qos=1)
            agent = await asyncio.to_thread(start_agent, rig, tmp_path)
            try:
                await converge(rig, agent, 1, ALL_AT_ONCE)
                v2 = await converge(rig, agent, 2, CANARY)
                await refusals(rig, agent, publisher, v2)
                windows = await windows_stored_once(rig)
                assert windows >= DEVICES  # every device sent some
                assert rig.swarm.counters.lost == 0
            finally:
                await asyncio.to_thread(agent.stop)
                publisher.close()

    asyncio.run(scenario())


def test_a_swarm_on_edge_brokers_bridged_to_the_control_planes_converges(
    tmp_path: Path,
) -> None:
    """The topology past one broker's descriptors (simulator.swarm.edges): devices on two
    edge mosquittos bridged to the control plane's, one swarm process per edge. Both
    rollouts converge across the bridges, and every telemetry window each device made
    crossed them and was stored exactly once (each device's stored seqs are 1..k, and
    their total is every window made)."""
    devices = 200

    async def scenario() -> None:
        options = {"window_seconds": 1.0}
        async with SwarmRig(
            tmp_path / "rig", devices, swarm_options=options, edge_brokers=2
        ) as rig:
            shards = rig.sessions
            assert isinstance(shards, SwarmShards)
            assert {len(s.devices) for s in shards.shards} == {devices // 2}
            for seed, plan in enumerate((ALL_AT_ONCE, CANARY), start=1):
                version = await rig.train(seed=seed)
                figures = await measure_rollout(rig, version, plan, BOUND)
                assert shards.serving[(MODEL, version)] == devices
                assert figures.succeeded_s is not None, "the rollout did not succeed"
            stored = await shards_windows_stored_once(rig, shards)
            counters = shards.counters
            assert stored == counters.windows >= devices
            assert counters.lost == 0
            assert rig.broker_drops() == 0

    asyncio.run(scenario())


@pytest.mark.postgres
def test_two_control_plane_processes_split_a_swarms_telemetry_each_window_stored_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """What ``benchmarks/scale.py --ingest-sizes`` measures, judged: two control-plane
    processes on one PostgreSQL, splitting telemetry through a shared subscription on the
    control plane's broker, the swarm on two edge brokers. The swarm starts with windows
    too long to close during the test; once told to make them short, windows flow, both
    processes store some, and every window made is stored exactly once."""
    devices = 100

    async def scenario() -> None:
        env = {"EDGEFLEET_DATABASE_URL": postgres_url, "EDGEFLEET_MQTT_SHARED_GROUP": "ingest"}
        async with SwarmRig(
            tmp_path / "rig",
            devices,
            swarm_options={"window_seconds": 3600.0},
            server_env=env,
            edge_brokers=2,
        ) as rig:
            shards = rig.sessions
            assert isinstance(shards, SwarmShards)
            await rig.run_control_planes(2)
            version = await rig.train()
            figures = await measure_rollout(rig, version, ALL_AT_ONCE, BOUND)
            assert figures.succeeded_s is not None, "the rollout did not succeed"
            assert shards.counters.windows == 0
            await rig.set_window(0.5)
            await until(lambda: shards.counters.windows > 0, "windows made")
            controls = [rig.control, *rig.siblings]
            for control in controls:
                began = time.monotonic()
                while (await ingest_counts(control))[0] == 0:
                    assert time.monotonic() - began < BOUND, f"{control.url} stored no window"
                    await asyncio.sleep(0.2)
            stored = await shards_windows_stored_once(rig, shards)
            assert stored == shards.counters.windows
            counts = [await ingest_counts(c) for c in controls]
            assert sum(count[0] for count in counts) == stored  # stored once, by one of them
            await rig.run_control_planes(1)
            assert rig.siblings == []

    asyncio.run(scenario())


def test_simulate_swarm_cli(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli(
        "simulate",
        "--swarm",
        "40",
        "--window-seconds",
        "1",
        "--report-dir",
        str(out),
        check=False,
        timeout=290,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "swarm of 40" in result.stdout
    assert "PASS" in result.stdout
    figures = json.loads((out / "swarm.json").read_text())["swarm"]
    assert [f["plan"] for f in figures] == ["all-at-once", "canary"]
    assert all(f["devices"] == 40 and f["installed_s"] > 0 for f in figures)
