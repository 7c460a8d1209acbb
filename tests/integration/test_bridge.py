"""The control plane's MQTT side against a real mosquitto: ingest is batched, idempotent on
(device, seq) and acknowledged after the commit; garbage changes nothing; deployments are
signed desired states published retained."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy import Engine

from control_plane.auth.keys import load_keys
from control_plane.config import ServerSettings, load_settings
from control_plane.fleet.bridge import MqttBridge
from control_plane.store.datadir import init_data_dir
from control_plane.store.db import create_db_engine, migrate
from shared.messages import DesiredState, DeviceState
from shared.signing import KeyRole
from shared.trust import TrustStore
from simulator.broker import MosquittoBroker
from simulator.data import sensor_csv
from simulator.rig.agents import CP_PASSWORD, wait_until
from tests.integration.conftest import MakeApi, MqttDevice, bridge_of, state, window

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: object) -> Iterator[MosquittoBroker]:
    running = MosquittoBroker(Path(str(tmp_path)) / "broker")
    running.add_control_plane_user(CP_PASSWORD)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_ingest_ack_and_garbage(make_api: MakeApi, broker: MosquittoBroker) -> None:
    api = make_api(mqtt_url=broker.control_plane_url(CP_PASSWORD), broker_accounts=broker.accounts)
    bridge = bridge_of(api)
    wait_until(bridge.connected.is_set, what="bridge connected")
    token = api.post("/devices", json={"id": "dev-a", "labels": {"site": "x"}}).json()["token"]
    broker.add_user("dev-a", token)
    device = MqttDevice(broker, "dev-a", token)
    try:
        device.send("state", b"{garbage")
        forged = DeviceState.model_validate_json(state("dev-b", seq=10))
        device.send("state", forged.model_dump_json())  # another device's id in the payload
        device.send("telemetry", window("dev-a", 1))
        device.send("telemetry", window("dev-a", 1))  # at-least-once: a duplicate
        device.send("telemetry", window("dev-a", 2))
        device.send("state", forged.model_copy(update={"device_id": "dev-a"}).model_dump_json())
        wait_until(
            lambda: api.get("/devices/dev-a").json()["state"] is not None, what="state stored"
        )
        wait_until(
            lambda: (
                sorted(
                    s
                    for _, p in device.received
                    if _.endswith("/ack")
                    for s in json.loads(p)["seqs"]
                )
                == [1, 1, 2]
            ),
            what="acks",
        )
        assert bridge.counters.dropped == 2
        stored = api.get("/devices/dev-a/telemetry").json()
        assert [w["window"]["seq"] for w in stored] == [1, 2]  # stored exactly once
        assert api.get("/devices/dev-b").status_code == 404  # the forgery changed nothing
        assert bridge.counters.duplicate_windows == 1
        # A report older by the device's own counter changes nothing, whatever its clock says.
        stored = api.get("/devices/dev-a").json()["state"]
        stale = forged.model_copy(update={"device_id": "dev-a", "agent_version": "stale", "seq": 9})
        device.send("state", stale.model_dump_json())
        device.send("telemetry", window("dev-a", 3))  # processed after the stale state
        wait_until(lambda: len(api.get("/devices/dev-a/telemetry").json()) == 3, what="window 3")
        assert api.get("/devices/dev-a").json()["state"] == stored
        # A clock in 2099 does not freeze the device: its next report (by seq) still wins.
        future = stale.model_copy(
            update={
                "seq": 11,
                "agent_version": "future",
                "updated_at": datetime(2099, 1, 1, tzinfo=UTC),
            }
        )
        device.send("state", future.model_dump_json())
        wait_until(
            lambda: api.get("/devices/dev-a").json()["state"]["agent_version"] == "future",
            what="the 2099 report stored",
        )
        now = stale.model_copy(update={"seq": 12, "agent_version": "now"})
        device.send("state", now.model_dump_json())
        wait_until(
            lambda: api.get("/devices/dev-a").json()["state"]["agent_version"] == "now",
            what="the next real report stored",
        )
        # What a wiped dev-a would learn before numbering new windows: with its own token.
        floor = api.get("/devices/dev-a/floor", headers=api.auth(token))
        assert floor.status_code == 200, floor.text
        assert floor.json() == {
            "device_id": "dev-a",
            "deployment_seq": 0,
            "telemetry_seq": 3,
            "samples_seq": 0,
            "state_seq": 12,
        }
    finally:
        device.close()


def test_deployment_is_signed_and_retained(make_api: MakeApi, broker: MosquittoBroker) -> None:
    api = make_api(mqtt_url=broker.control_plane_url(CP_PASSWORD), broker_accounts=broker.accounts)
    wait_until(bridge_of(api).connected.is_set, what="bridge connected")
    dataset = api.upload(sensor_csv(200, seed=2)).json()
    api.train_ok("fault", dataset_id=dataset["id"], algorithm="logreg")
    token = api.post("/devices", json={"id": "dev-c"}).json()["token"]
    broker.add_user("dev-c", token)
    assert (
        api.post(
            "/deployments", json={"device_id": "dev-x", "model": "fault", "version": "1"}
        ).status_code
        == 404
    )
    assert (
        api.post(
            "/deployments", json={"device_id": "dev-c", "model": "fault", "version": "7"}
        ).status_code
        == 404
    )
    first = api.post("/deployments", json={"device_id": "dev-c", "model": "fault", "version": "1"})
    assert first.status_code == 201, first.text
    assert first.json()["published"] is True
    second = api.post(
        "/deployments", json={"device_id": "dev-c", "model": "fault", "version": "1"}
    ).json()
    assert second["seq"] == first.json()["seq"] + 1  # a sequence that only grows

    device = MqttDevice(broker, "dev-c", token)  # connects later: the retained state waits
    try:
        wait_until(
            lambda: any(t.endswith("/desired") for t, _ in device.received),
            what="retained desired state",
        )
        payload = next(p for t, p in device.received if t.endswith("/desired"))
        desired = DesiredState.model_validate_json(payload)
        trust = TrustStore.model_validate_json(api.client.get("/api/v1/keys").content)
        desired.verify_signature(trust.key_for(KeyRole.DEPLOYMENT, desired.key_id))
        assert desired.seq == second["seq"]
        assert desired.models[0].manifest.version == 1
        # A device token reaches its artifacts and nothing else.
        headers = {"Authorization": f"Bearer {token}"}
        sha = desired.models[0].manifest.sha256
        assert api.client.get(f"/api/v1/artifacts/{sha}", headers=headers).status_code == 200
        assert api.client.get("/api/v1/models", headers=headers).status_code == 403
        assert api.client.get("/api/v1/devices", headers=headers).status_code == 403
        # Its own sequence floor, and no other device's.
        floor = api.client.get("/api/v1/devices/dev-c/floor", headers=headers).json()
        assert floor["deployment_seq"] == second["seq"]
        api.post("/devices", json={"id": "dev-other"})
        assert api.client.get("/api/v1/devices/dev-other/floor", headers=headers).status_code == 403
        assert api.get("/devices/dev-other/floor").json()["deployment_seq"] == 0  # operator
    finally:
        device.close()


def test_expiring_desired_states_are_resigned_with_a_new_sequence(make_api: MakeApi) -> None:
    from datetime import timedelta

    from sqlmodel import Session

    from control_plane.auth.keys import load_keys
    from control_plane.fleet.deployments import refresh_expiring
    from control_plane.store.db import create_db_engine

    api = make_api()
    dataset = api.upload(sensor_csv(200, seed=3)).json()
    api.train_ok("fault", dataset_id=dataset["id"], algorithm="logreg")
    api.post("/devices", json={"id": "dev-d"})
    deployed = api.post(
        "/deployments", json={"device_id": "dev-d", "model": "fault", "version": "1"}
    ).json()
    assert deployed["published"] is False  # no broker configured: stored for later
    engine = create_db_engine(api.settings.resolved_database_url)
    key = load_keys(api.settings.keys_dir).deployment
    with Session(engine) as session:
        assert refresh_expiring(session, key, timedelta(days=7)) == []  # plenty of time left
        refreshed = refresh_expiring(session, key, timedelta(days=30))  # half of 30 d > 7 d
    engine.dispose()
    assert [d.seq for d in refreshed] == [deployed["seq"] + 1]
    assert refreshed[0].expires_at - refreshed[0].issued_at == timedelta(days=30)
    assert refreshed[0].models[0].manifest.version == 1
    assert api.get("/devices/dev-d").json()["deployment_seq"] == deployed["seq"] + 1


def control_plane_on(broker: MosquittoBroker, data_dir: Path) -> tuple[ServerSettings, Engine]:
    """A control plane's settings on ``broker`` and its migrated database (no process)."""
    settings = load_settings(
        data_dir, mqtt_url=broker.control_plane_url(CP_PASSWORD), broker_accounts=broker.accounts
    )
    init_data_dir(settings)
    engine = create_db_engine(settings.resolved_database_url)
    migrate(engine)
    return settings, engine


def test_only_the_leader_republishes_desired_states_when_it_connects(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Every connect of the leader makes sure the broker holds each desired state; a
    follower's does not (at 100,000 devices each joining process republished them all).
    A connect's republish starts before the event loop runs anything else after
    ``connected`` is set, so the wait on it is the event that judges."""
    settings, engine = control_plane_on(broker, tmp_path / "cp")
    republished: list[bool] = []

    async def connect(leads: bool) -> None:
        bridge = MqttBridge(settings, engine, load_keys(settings.keys_dir), leads=lambda: leads)

        async def republish() -> None:
            republished.append(leads)

        bridge.republish_desired = republish  # type: ignore[method-assign]
        running = asyncio.create_task(bridge.run())
        try:
            await asyncio.wait_for(bridge.connected.wait(), 60)
            await asyncio.sleep(0)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    try:
        asyncio.run(connect(leads=False))
        asyncio.run(connect(leads=True))
    finally:
        engine.dispose()
    assert republished == [True]


def test_a_republish_never_puts_back_an_older_desired_state(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A connect's republish publishes the desired states it read when it began. A newer one
    stored and published meanwhile (the rollout's next stage, signed while the republish
    was under way) must stay what the broker retains: the older copy published after it
    would hide it from a device that connects later (benchmarks/chaos.py: after a broker
    kill -9, a device was sent sequence 1 again after it had accepted 2)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from sqlmodel import Session

    from control_plane.store.tables import Device
    from shared.broker_address import CONTROL_PLANE_USER
    from simulator.rig.agents import sign_desired
    from simulator.rig.models import make_model

    settings, engine = control_plane_on(broker, tmp_path / "cp")
    keys = load_keys(settings.keys_dir)
    manifest, _ = make_model(keys.model)

    def desired(device_id: str, seq: int) -> DesiredState:
        return sign_desired(keys.deployment, device_id, seq, [manifest])

    def store(state: DesiredState) -> None:  # as sign_many stores it: seq and document
        with Session(engine) as session:
            device = session.get(Device, state.device_id) or Device(id=state.device_id, labels={})
            device.deployment_seq, device.desired = state.seq, state.model_dump_json()
            session.add(device)
            session.commit()

    devices = [f"dev-{i}" for i in range(3)]
    for device_id in devices:
        store(desired(device_id, 1))
    newer: list[DesiredState] = []

    async def scenario() -> None:
        bridge = MqttBridge(settings, engine, keys, leads=lambda: False)
        publish = bridge._publish

        async def publish_then_race(
            topic: str, payload: str, retain: bool = False, qos: Literal[0, 1] = 1
        ) -> bool:
            if retain and not newer:  # the republish's first one: a stage starts now
                other = next(d for d in devices if f"/{d}/" not in topic)
                newer.append(desired(other, 2))
                store(newer[0])
                assert await publish(
                    f"edgefleet/v1/devices/{other}/desired", newer[0].model_dump_json(), True
                )
            return await publish(topic, payload, retain, qos)

        bridge._publish = publish_then_race  # type: ignore[method-assign]
        running = asyncio.create_task(bridge.run())
        try:
            await asyncio.wait_for(bridge.connected.wait(), 60)
            await bridge.republish_desired()
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()
    retained: dict[str, int] = {}
    reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retained-reader")
    reader.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
    reader.on_message = lambda _c, _u, m: retained.update(
        {m.topic.split("/")[-2]: DesiredState.model_validate_json(m.payload).seq}
    )
    reader.connect(broker.host, broker.cp_port)
    reader.loop_start()
    try:
        reader.subscribe("edgefleet/v1/devices/+/desired", qos=1)
        wait_until(lambda: len(retained) == len(devices), what="every retained desired state")
    finally:
        reader.loop_stop()
        reader.disconnect()
    assert newer
    assert retained == {d: 2 if d == newer[0].device_id else 1 for d in devices}
