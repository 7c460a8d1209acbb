"""The broker side of edgefleet against a real mosquitto: deploy/mosquitto/mosquitto.conf and
deploy/mosquitto/acl, run by simulator/broker.py.

Negative checks ("X is not delivered") never sleep: after the denied message the test sends
a permitted one along the same path, and since mosquitto delivers in order, the permitted
message arriving first proves the denied one was dropped.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from shared.broker_address import CONTROL_PLANE_USER
from shared.messages import MAX_DESIRED_BYTES
from simulator.broker import MosquittoBroker, mosquitto_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed"),
]

T = TypeVar("T")
ROOT = "edgefleet/v1"
CP_PASSWORD = "control-plane-secret"
TOKENS = {"dev-a": "token-a", "dev-b": "token-b"}
TIMEOUT = 5.0


def topic(device: str, leaf: str) -> str:
    return f"{ROOT}/devices/{device}/{leaf}"


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run a test coroutine with an overall deadline, so nothing hangs."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def connect(
    broker: MosquittoBroker,
    username: str | None,
    password: str | None = None,
    *,
    identifier: str | None = None,
    will: aiomqtt.Will | None = None,
) -> aiomqtt.Client:
    if username is not None and password is None:
        password = CP_PASSWORD if username == CONTROL_PLANE_USER else TOKENS[username]
    return aiomqtt.Client(
        broker.host,
        broker.cp_port if username == CONTROL_PLANE_USER else broker.port,
        username=username,
        password=password,
        identifier=identifier,
        will=will,
        timeout=TIMEOUT,
    )


async def next_message(client: aiomqtt.Client, within: float = TIMEOUT) -> aiomqtt.Message:
    async with asyncio.timeout(within):
        return await anext(client.messages)


async def received_until(client: aiomqtt.Client, last_payload: bytes) -> list[tuple[str, bytes]]:
    """(topic, payload) of every message up to and including the one carrying last_payload."""
    out: list[tuple[str, bytes]] = []
    while True:
        message = await next_message(client)
        assert isinstance(message.payload, bytes)
        out.append((message.topic.value, message.payload))
        if message.payload == last_payload:
            return out


def accounts_broker(workdir: Path, **options: str) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(workdir, options=options) as running:
        running.add_control_plane_user(CP_PASSWORD)
        for device, token in TOKENS.items():
            running.add_user(device, token)
        yield running


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    yield from accounts_broker(tmp_path / "broker")


@pytest.fixture
def saving_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Saving every ~2 s instead of deploy/'s 5 minutes: the durability window under test
    is the same, only shorter to wait for."""
    yield from accounts_broker(tmp_path / "broker", autosave_interval="1")


# -- authentication ----------------------------------------------------------------------


def test_helper_renders_the_deploy_template(broker: MosquittoBroker) -> None:
    config = broker.config_path.read_text()
    assert "${" not in config
    assert f"listener {broker.port} 127.0.0.1" in config
    assert "allow_anonymous false" in config
    assert f"listener {broker.cp_port} 127.0.0.1" in config
    assert "max_packet_size 1114112" in config
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("dev-a", "wrong"), ("no-such-device", "token-a"), (CONTROL_PLANE_USER, "")],
    ids=["anonymous", "wrong-password", "unknown-user", "empty-password"],
)
def test_connection_refused(broker: MosquittoBroker, username: str | None, password: str) -> None:
    async def attempt() -> None:
        with pytest.raises(aiomqtt.MqttCodeError) as caught:
            async with connect(broker, username, password):
                pass
        # CONNACK return code 5 (MQTT 3.1.1), which paho reports as the MQTT 5 reason code
        # "Not authorized" (0x87).
        rc = caught.value.rc
        assert isinstance(rc, ReasonCode), rc
        assert (rc.value, str(rc)) == (0x87, "Not authorized")

    run(attempt())


# -- topic ACLs --------------------------------------------------------------------------


def test_device_writes_only_its_own_outbound_topics(broker: MosquittoBroker) -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        async with connect(broker, CONTROL_PLANE_USER) as cp, connect(broker, "dev-a") as dev:
            await cp.subscribe(f"{ROOT}/#", qos=1)
            attempts = [
                (topic("dev-b", "state"), b"forged dev-b state"),
                (topic("dev-a", "state"), b"state"),
                (topic("dev-a", "desired"), b"self-assigned desired state"),
                (topic("dev-a", "ack"), b"forged ack"),
                (topic("dev-a", "online"), b"online"),
                (topic("dev-b", "telemetry"), b"forged dev-b telemetry"),
                (topic("dev-a", "telemetry"), b"telemetry"),
                (topic("dev-a", "samples"), b"samples"),
                (f"{ROOT}/broadcast", b"outside the device tree"),
                (topic("dev-a", "state"), b"end"),
            ]
            for name, payload in attempts:
                # MQTT 3.1.1: mosquitto PUBACKs a denied publish and drops it silently.
                await dev.publish(name, payload, qos=1)
            return await received_until(cp, b"end")

    assert run(scenario()) == [
        (topic("dev-a", "state"), b"state"),
        (topic("dev-a", "online"), b"online"),
        (topic("dev-a", "telemetry"), b"telemetry"),
        (topic("dev-a", "samples"), b"samples"),
        (topic("dev-a", "state"), b"end"),
    ]


def test_device_reads_only_its_own_inbound_topics(broker: MosquittoBroker) -> None:
    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        async with (
            connect(broker, CONTROL_PLANE_USER) as cp,
            connect(broker, "dev-a") as dev_a,
            connect(broker, "dev-b") as dev_b,
        ):
            # Explicit filters on another device's topics: the SUBACK grants them (mosquitto
            # 2.0 does not check ACLs on SUBSCRIBE), delivery is what the ACL filters.
            for name in (topic("dev-b", "desired"), topic("dev-a", "desired")):
                await dev_a.subscribe(name, qos=1)
            await cp.publish(topic("dev-b", "desired"), b"for dev-b", qos=1)
            await cp.publish(topic("dev-a", "desired"), b"for dev-a", qos=1)
            explicit = await received_until(dev_a, b"for dev-a")
            await dev_a.unsubscribe([topic("dev-b", "desired"), topic("dev-a", "desired")])

            # A wildcard over the whole tree: still only dev-a's desired and ack.
            await dev_a.subscribe(f"{ROOT}/#", qos=1)
            await dev_b.publish(topic("dev-b", "state"), b"dev-b state", qos=1)
            await cp.publish(topic("dev-b", "ack"), b"ack for dev-b", qos=1)
            await cp.publish(topic("dev-a", "state"), b"control plane on a device topic", qos=1)
            await cp.publish(topic("dev-a", "ack"), b"ack for dev-a", qos=1)
            await cp.publish(topic("dev-a", "desired"), b"end", qos=1)
            wildcard = await received_until(dev_a, b"end")
            return explicit, wildcard

    explicit, wildcard = run(scenario())
    assert explicit == [(topic("dev-a", "desired"), b"for dev-a")]
    assert wildcard == [
        (topic("dev-a", "ack"), b"ack for dev-a"),
        (topic("dev-a", "desired"), b"end"),
    ]


def test_acl_is_keyed_on_username_not_client_id(broker: MosquittoBroker) -> None:
    """dev-a's credentials with client id "dev-b" get dev-a's topics, never dev-b's."""

    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        async with (
            connect(broker, CONTROL_PLANE_USER) as cp,
            connect(broker, "dev-a", identifier="dev-b") as spoof,
        ):
            await cp.subscribe(f"{ROOT}/#", qos=1)
            await spoof.subscribe(topic("+", "desired"), qos=1)
            await cp.publish(topic("dev-b", "desired"), b"for dev-b", qos=1)
            await cp.publish(topic("dev-a", "desired"), b"for dev-a", qos=1)
            read = await received_until(spoof, b"for dev-a")
            await spoof.publish(topic("dev-b", "state"), b"forged", qos=1)
            await spoof.publish(topic("dev-a", "state"), b"dev-a state", qos=1)
            written = await received_until(cp, b"dev-a state")
            return read, written

    read, written = run(scenario())
    assert read == [(topic("dev-a", "desired"), b"for dev-a")]
    # The control plane also sees its own two publishes (it reads the whole tree).
    assert written[-1] == (topic("dev-a", "state"), b"dev-a state")
    assert (topic("dev-b", "state"), b"forged") not in written


def test_shared_subscriptions_need_no_extra_acl(broker: MosquittoBroker) -> None:
    """Control-plane replicas share `$share/edgefleet/...`: the ACL `edgefleet/v1/#` covers
    them (read access is checked against the message topic), and a device cannot use
    `$share` to read another device's topics."""
    sent = [f"state {i}".encode() for i in range(20)]

    async def scenario() -> tuple[list[bytes], list[bytes], list[tuple[str, bytes]]]:
        shared = f"$share/edgefleet/{ROOT}/devices/+/state"
        async with (
            connect(broker, CONTROL_PLANE_USER, identifier="cp-1") as cp1,
            connect(broker, CONTROL_PLANE_USER, identifier="cp-2") as cp2,
            connect(broker, "dev-a") as dev,
            connect(broker, "dev-b") as dev_b,
        ):
            await cp1.subscribe(shared, qos=1)
            await cp2.subscribe(shared, qos=1)
            await dev.subscribe(f"$share/sneaky/{ROOT}/devices/+/state", qos=1)
            await dev.subscribe(f"$share/sneaky/{ROOT}/devices/+/desired", qos=1)
            got: tuple[list[bytes], list[bytes]] = ([], [])
            enough = asyncio.Event()

            async def collect(client: aiomqtt.Client, into: list[bytes]) -> None:
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    into.append(message.payload)
                    if len(got[0]) + len(got[1]) >= len(sent):
                        enough.set()

            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(collect(c, g)) for c, g in zip((cp1, cp2), got, strict=True)
                ]
                for payload in sent:
                    await dev_b.publish(topic("dev-b", "state"), payload, qos=1)
                await asyncio.wait_for(enough.wait(), TIMEOUT)
                for task in tasks:
                    task.cancel()
            await cp1.publish(topic("dev-b", "desired"), b"for dev-b", qos=1)
            await cp1.publish(topic("dev-a", "desired"), b"for dev-a", qos=1)
            sneaked = await received_until(dev, b"for dev-a")
            return got[0], got[1], sneaked

    got1, got2, sneaked = run(scenario())
    # Each message went to exactly one member of the group (20 received, all distinct)...
    assert sorted(got1 + got2) == sorted(sent)
    # ...and the group is served round-robin.
    assert got1
    assert got2
    # dev-a's `$share` filters deliver only what its ACL lets it read.
    assert sneaked == [(topic("dev-a", "desired"), b"for dev-a")]


def test_largest_legitimate_payload_is_delivered(broker: MosquittoBroker) -> None:
    """A message as large as the largest legitimate one (1 MiB: a desired state, a window)
    reaches the device; the agent's own caps judge it."""
    payload = bytes(range(256)) * (MAX_DESIRED_BYTES // 256)

    async def scenario() -> bytes:
        async with connect(broker, CONTROL_PLANE_USER) as cp, connect(broker, "dev-a") as dev:
            await dev.subscribe(topic("dev-a", "desired"), qos=1)
            await cp.publish(topic("dev-a", "desired"), payload, qos=1)
            message = await next_message(dev, within=15)
            assert isinstance(message.payload, bytes)
            return message.payload

    assert run(scenario()) == payload


def test_an_oversized_packet_costs_its_sender_the_connection_not_the_others(
    broker: MosquittoBroker,
) -> None:
    """max_packet_size: a device sending 10 MB is disconnected before the broker holds it;
    dev-b, connected beside it, goes on receiving."""

    async def flood() -> None:
        async with connect(broker, "dev-a") as client:
            await client.publish(topic("dev-a", "telemetry"), b"x" * 10_000_000, qos=1)
            await client.publish(topic("dev-a", "telemetry"), b"again", qos=1)

    async def scenario() -> bytes:
        async with connect(broker, CONTROL_PLANE_USER) as cp, connect(broker, "dev-b") as dev_b:
            await dev_b.subscribe(topic("dev-b", "desired"), qos=1)
            with pytest.raises(aiomqtt.MqttError):
                await flood()
            await cp.publish(topic("dev-b", "desired"), b"still here", qos=1)
            message = await next_message(dev_b)
            assert isinstance(message.payload, bytes)
            return message.payload

    assert run(scenario()) == b"still here"


def test_a_device_cannot_take_over_another_devices_session(broker: MosquittoBroker) -> None:
    """The device listener pins the client id to the username: dev-a connecting with client
    id "dev-b" gets a session of its own and dev-b stays connected (without this, mosquitto
    ends the older session of a client id, so dev-a could keep kicking dev-b off)."""

    async def scenario() -> bytes:
        async with connect(broker, CONTROL_PLANE_USER) as cp, connect(broker, "dev-b") as dev_b:
            await dev_b.subscribe(topic("dev-b", "desired"), qos=1)
            for _ in range(3):
                async with connect(broker, "dev-a", identifier="dev-b"):
                    pass
            await cp.publish(topic("dev-b", "desired"), b"dev-b is still connected", qos=1)
            message = await next_message(dev_b)  # raises if dev-b was disconnected
            assert isinstance(message.payload, bytes)
            return message.payload

    assert run(scenario()) == b"dev-b is still connected"


def test_devices_cannot_log_in_on_the_control_planes_listener(broker: MosquittoBroker) -> None:
    async def attempt() -> None:
        with pytest.raises(aiomqtt.MqttCodeError):
            async with aiomqtt.Client(
                broker.host, broker.cp_port, username="dev-a", password=TOKENS["dev-a"]
            ):
                pass

    run(attempt())


# -- retained messages and persistence ---------------------------------------------------


async def retained_desired(broker: MosquittoBroker, device: str = "dev-a") -> bytes | None:
    """What a device gets on subscribing to its desired topic: the retained payload, or None
    (checked with a barrier on the ack topic, so no waiting for an absent message)."""
    async with connect(broker, CONTROL_PLANE_USER) as cp, connect(broker, device) as dev:
        await dev.subscribe(topic(device, "desired"), qos=1)
        await dev.subscribe(topic(device, "ack"), qos=1)
        await cp.publish(topic(device, "ack"), b"barrier", qos=1)
        first = await next_message(dev)
        if first.topic.value == topic(device, "ack"):
            return None
        assert first.retain
        assert isinstance(first.payload, bytes)
        assert (await next_message(dev)).payload == b"barrier"
        return first.payload


async def publish_retained(broker: MosquittoBroker, payload: bytes, device: str = "dev-a") -> None:
    async with connect(broker, CONTROL_PLANE_USER) as cp:
        await cp.publish(topic(device, "desired"), payload, qos=1, retain=True)


def test_retained_desired_reaches_a_late_subscriber_and_survives_restart(
    broker: MosquittoBroker,
) -> None:
    assert run(retained_desired(broker)) is None
    run(publish_retained(broker, b'{"model": "v1"}'))
    assert run(retained_desired(broker)) == b'{"model": "v1"}'
    assert run(retained_desired(broker, "dev-b")) is None

    port = broker.port
    broker.restart()  # SIGTERM: mosquitto saves its database on the way out
    assert broker.port == port
    assert run(retained_desired(broker)) == b'{"model": "v1"}'


def test_retained_message_survives_sigkill_once_autosaved(saving_broker: MosquittoBroker) -> None:
    broker = saving_broker
    run(publish_retained(broker, b"v1"))
    broker.wait_for_autosave()  # autosave_interval 1: within ~2 s
    broker.restart(kill=True)
    assert run(retained_desired(broker)) == b"v1"


def test_sigkill_loses_what_changed_since_the_last_autosave(
    saving_broker: MosquittoBroker,
) -> None:
    """The durability window, documented: a crash right after a change loses it (the next
    autosave is at least ~1 s away once one has just happened)."""
    broker = saving_broker
    run(publish_retained(broker, b"v1"))
    broker.wait_for_autosave()
    started = time.monotonic()
    run(publish_retained(broker, b"v2"))
    broker.kill()
    assert time.monotonic() - started < 0.5, "too slow to be before the next autosave"
    broker.start()
    assert run(retained_desired(broker)) == b"v1"


# -- Last Will ---------------------------------------------------------------------------

DEVICE_PROCESS = """
import sys, time
import paho.mqtt.client as mqtt

host, port, user, password, root = sys.argv[1:6]
online = f"{root}/devices/{user}/online"
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
client.username_pw_set(user, password)
client.will_set(online, b"offline", qos=1, retain=True)
client.connect(host, int(port), keepalive=60)
client.loop_start()
client.publish(online, b"online", qos=1, retain=True).wait_for_publish(10)
time.sleep(60)
"""


def test_last_will_marks_a_crashed_device_offline(broker: MosquittoBroker) -> None:
    """A device process dies without DISCONNECT (SIGKILL: the kernel closes its socket): the
    broker publishes its will, retained, and the control plane sees `offline`."""

    async def scenario() -> None:
        async with connect(broker, CONTROL_PLANE_USER) as cp:
            await cp.subscribe(topic("dev-a", "online"), qos=1)
            device = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                DEVICE_PROCESS,
                broker.host,
                str(broker.port),
                "dev-a",
                TOKENS["dev-a"],
                ROOT,
            )
            try:
                message = await next_message(cp, within=10)
                assert message.payload == b"online"
                device.kill()  # SIGKILL: no DISCONNECT, the kernel closes the socket
                await device.wait()
                message = await next_message(cp)
                assert message.payload == b"offline"
                assert message.qos == 1
            finally:
                if device.returncode is None:
                    device.kill()
                    await device.wait()
        # Retained: whoever subscribes later (a restarted control plane) sees it too.
        async with connect(broker, CONTROL_PLANE_USER) as late:
            await late.subscribe(topic("dev-a", "online"), qos=1)
            message = await next_message(late)
            assert (message.payload, message.retain) == (b"offline", True)

    run(scenario())


# -- users added and removed at run time (SIGHUP) ----------------------------------------


def test_add_user_reloads_without_dropping_connected_clients(broker: MosquittoBroker) -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        async with connect(broker, CONTROL_PLANE_USER) as cp, connect(broker, "dev-a") as dev_a:
            await cp.subscribe(f"{ROOT}/#", qos=1)
            await asyncio.to_thread(broker.add_user, "dev-new", "token-new")
            # The connections made before the reload keep working.
            await dev_a.publish(topic("dev-a", "state"), b"still here", qos=1)
            async with connect(broker, "dev-new", "token-new") as new:
                await new.publish(topic("dev-new", "state"), b"hello", qos=1)
                # The reloaded ACL applies to the new user like to any device.
                await new.publish(topic("dev-a", "state"), b"forged", qos=1)
                await new.publish(topic("dev-new", "telemetry"), b"end", qos=1)
            return await received_until(cp, b"end")

    assert run(scenario()) == [
        (topic("dev-a", "state"), b"still here"),
        (topic("dev-new", "state"), b"hello"),
        (topic("dev-new", "telemetry"), b"end"),
    ]


def test_remove_user_disconnects_the_device(broker: MosquittoBroker) -> None:
    async def scenario() -> None:
        async with connect(broker, CONTROL_PLANE_USER) as cp, connect(broker, "dev-b") as dev:
            await asyncio.to_thread(broker.remove_user, "dev-b")
            # remove_user returns once the reload has happened: refused straight away...
            with pytest.raises(aiomqtt.MqttCodeError):
                async with connect(broker, "dev-b"):
                    pass
            # ...and the live connection is dropped (the message iterator ends).
            with pytest.raises(aiomqtt.MqttError):
                await next_message(dev)
            await cp.publish(topic("dev-a", "desired"), b"control plane unaffected", qos=1)

    run(scenario())
