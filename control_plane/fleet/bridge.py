"""The control plane's MQTT side (the only control-plane module that touches MQTT).

Consumes device ``state``, ``online`` and ``telemetry`` (optionally through a shared
subscription, so several control-plane processes split them), parses each payload once,
writes in batches, and acknowledges telemetry to the device only after the commit.
Publishes signed desired states retained at QoS 1 and waits for the broker's PUBACK.

Two connections to the broker: one reads, and stops reading while ingest is behind (the
broker keeps the rest: ``inbound``); one publishes, so its PUBACKs never wait behind what
the other has not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session

from control_plane.auth.keys import KeyStore
from control_plane.config import ServerSettings
from control_plane.errors import UnavailableError
from control_plane.fleet.broker_accounts import RESPONSE_TOPIC, Dynsec
from control_plane.fleet.deployments import all_desired, desired_changed, refresh_expiring
from control_plane.fleet.enrollment import accounts_to_delete, set_broker_account
from control_plane.fleet.inbound import PausableClient, until_disconnected
from control_plane.fleet.ingestion import (
    BatchResult,
    Incoming,
    database_answers,
    implausible,
    store_batch,
)
from control_plane.observability.logs import about
from control_plane.store.db import contended
from control_plane.store.tables import utcnow
from shared.broker_address import CONTROL_PLANE_USER, BrokerAddress, parse_broker_urls
from shared.cancellation import raise_if_cancelling
from shared.messages import (
    MAX_SAMPLES_BYTES,
    MAX_STATE_BYTES,
    MAX_TELEMETRY_BYTES,
    Ack,
    DesiredState,
    DeviceState,
    OnlineStatus,
    SampleBatch,
    TelemetryWindow,
)
from shared.topics import Channel, Topics

log = logging.getLogger(__name__)
# Passes of a republish: each publishes again what was signed while the one before ran.
REPUBLISH_PASSES = 5
MAX_INFLIGHT = 200  # QoS 1 publishes awaiting the broker's PUBACK (paho's default: 20)
# Messages parsed and waiting for the ingest loop (ten batches of the default 500); past
# it, reading waits and the broker keeps the rest (_read). 50,000 parsed windows held ~1 GB.
QUEUE_MAX = 5_000
# Messages read and not yet parsed; past it, reading waits until half of them are taken.
READ_BACKLOG = 1_000
# Stored batches whose acks wait to be published: past this, storing waits for the broker.
ACK_BACKLOG = 20
_PARSERS: dict[Channel, tuple[type[Incoming], int]] = {
    Channel.STATE: (DeviceState, MAX_STATE_BYTES),
    Channel.ONLINE: (OnlineStatus, MAX_STATE_BYTES),
    Channel.TELEMETRY: (TelemetryWindow, MAX_TELEMETRY_BYTES),
    Channel.SAMPLES: (SampleBatch, MAX_SAMPLES_BYTES),
}


async def _subscribe(client: aiomqtt.Client, topic_filter: str, qos: Literal[0, 1] = 1) -> None:
    """Subscribe; a refusal in the SUBACK (0x80) ends the connection, so the loop
    connects again. A cluster node refuses while it elects a new leader (nats-server: the
    subscription's JetStream consumer times out); staying connected without the
    subscription would silently miss every device's state."""
    granted = await client.subscribe(topic_filter, qos=qos)
    if any((g.value if isinstance(g, ReasonCode) else g) >= 0x80 for g in granted):
        raise aiomqtt.MqttError(f"the broker refused the subscription to {topic_filter}")


@dataclass
class BridgeCounters:
    received: int = 0
    dropped: int = 0  # invalid payloads, device id mismatches
    stored_windows: int = 0
    duplicate_windows: int = 0
    batches: int = 0
    poisoned: int = 0  # valid messages the database refused (dropped and acknowledged)


class MqttBridge:
    def __init__(
        self,
        settings: ServerSettings,
        engine: Engine,
        keys: KeyStore,
        leads: Callable[[], bool] = lambda: True,
    ) -> None:
        if settings.mqtt_url is None:
            raise ValueError("mqtt_url is not set")
        self.settings = settings
        self.engine = engine
        self.keys = keys
        self._leads = leads  # only the leader re-signs and republishes desired states
        self.topics = Topics(settings.topic_root)
        self.brokers = parse_broker_urls(settings.mqtt_url, "mqtt_url")
        self.broker = self.brokers[0]  # its account; the node in use is ``node_index``
        self.node_index = 0
        self.connects = 0  # connections that got as far as subscribing
        self.counters = BridgeCounters()
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None  # publishes
        self._inbound: PausableClient | None = None  # reads
        # None: no message, only drops to count (and refused windows to acknowledge).
        self._queue: asyncio.Queue[Incoming | None] = asyncio.Queue(QUEUE_MAX)
        self._dropped: dict[str, int] = {}  # device → refused messages not yet counted in the DB
        self._refused: dict[str, list[int]] = {}  # device → refused windows to acknowledge
        self._acks: asyncio.Queue[BatchResult] = asyncio.Queue(ACK_BACKLOG)  # stored, to ack
        self._ttl = timedelta(seconds=settings.desired_ttl_seconds)
        self._linked = asyncio.Event()  # connected, maybe not yet subscribed
        self.dynsec = (
            Dynsec(
                self.topics,
                self.broker.username or CONTROL_PLANE_USER,
                self._publish,
                self._linked,
            )
            if settings.broker_accounts == "dynsec"
            else None
        )

    def _filters(self) -> list[str]:
        """Telemetry and samples (the volume) are split across the processes of a shared
        group; every process gets every state and online message. Those are few, and a
        process that dies takes the messages it had not stored yet with it: a device state
        lost that way (its install of a rollout's version, say) would never come again,
        since retained messages are not delivered to shared subscriptions. Storing them
        twice is harmless: ``apply_state`` ignores a report it already has."""
        group = self.settings.mqtt_shared_group
        filters = []
        for channel in _PARSERS:
            topic = self.topics.all_devices(channel)
            if group and channel in (Channel.TELEMETRY, Channel.SAMPLES):
                topic = self.topics.shared(group, topic)
            filters.append(topic)
        return filters

    async def run(self) -> None:
        """Stay connected, consume, ingest, refresh expiring desired states; until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._ingest_loop())
            group.create_task(self._ack_loop())
            group.create_task(self._refresh_loop())
            group.create_task(self._connection_loop())

    def _new_client(self, broker: BrokerAddress, role: str) -> PausableClient:
        tls = None
        if broker.tls:
            ca = self.settings.mqtt_ca_file
            tls = aiomqtt.TLSParameters(ca_certs=str(ca) if ca else None)
        return PausableClient(
            broker.host,
            broker.port,
            username=broker.username,
            password=broker.password,
            keepalive=30,
            timeout=10,
            identifier=f"edgefleet-cp-{role}-{random.getrandbits(32):08x}",
            # Unbounded: aiomqtt discards what does not fit its queue, after paho has
            # acknowledged it to the broker (a state report lost for good). _read bounds
            # it by pausing the socket.
            max_queued_incoming_messages=None,
            max_inflight_messages=MAX_INFLIGHT,  # rollouts publish a stage's states together
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            tls_params=tls,
        )

    async def _connection_loop(self) -> None:
        """Stay connected: to the next broker node at once when one is unreachable or drops
        us, backing off only once every node has failed in a row. Nothing is lost in the
        switch: publishes that were in flight fail (the rollout stored their desired states
        first) and every connect republishes all desired states; telemetry not yet
        acknowledged stays in the devices' outboxes and comes again."""
        delay, failures = 0.5, 0
        while True:
            broker, connects = self.brokers[self.node_index], self.connects
            try:
                async with (
                    self._new_client(broker, "in") as inbound,
                    self._new_client(broker, "out") as outbound,
                ):
                    self._client, self._inbound = outbound, inbound
                    self._linked.set()
                    await self._serve(inbound, outbound, broker)
            except aiomqtt.MqttError as exc:
                raise_if_cancelling(exc)
                log.warning("broker %s:%s: connection lost: %s", broker.host, broker.port, exc)
            except UnavailableError as exc:
                log.error("broker accounts: %s", exc.message)
            finally:
                self._client = self._inbound = None
                self._linked.clear()
                self.connected.clear()
            if self.connects > connects:  # it was up (subscribed): start afresh
                failures, delay = 0, 0.5
            failures += 1
            self.node_index = (self.node_index + 1) % len(self.brokers)
            pause = 0.5
            if failures >= len(self.brokers):  # every node failed in a row: back off
                pause, delay = delay, min(delay * 2, 10.0)
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311  (jitter)

    async def _serve(
        self, inbound: PausableClient, outbound: aiomqtt.Client, broker: BrokerAddress
    ) -> None:
        """One pair of connections: subscribe, (the leader) republish every desired state,
        read until either ends."""
        reader = asyncio.create_task(self._read(inbound))
        watch = asyncio.create_task(until_disconnected(outbound))
        try:
            await self._prepare(inbound)
            self.connects += 1
            self.connected.set()
            log.info("control plane connected to the broker %s:%s", broker.host, broker.port)
            if self._leads():  # a follower's connect leaves the broker's copies as they are
                await self.republish_desired()
            raise_if_cancelling()
            done, _ = await asyncio.wait((reader, watch), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (reader, watch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task

    async def _read(self, client: PausableClient) -> None:
        """Hand each message on, never dropping one: while the ingest queue is full, and
        while READ_BACKLOG messages wait to be parsed, read no more from the broker."""
        async for message in client.messages:
            incoming = self._accept(str(message.topic), message.payload)
            if incoming is not None:
                if self._queue.full():
                    client.pause_reading()
                await self._queue.put(incoming)
            if client.backlog >= READ_BACKLOG:
                client.pause_reading()
            elif client.backlog <= READ_BACKLOG // 2:
                client.resume_reading()

    async def _prepare(self, client: aiomqtt.Client) -> None:
        """With dynsec: take this account's role (its subscriptions need it) and delete the
        accounts of devices removed while the broker did not answer; then subscribe."""
        if self.dynsec is not None:
            await _subscribe(client, RESPONSE_TOPIC)
            if not await self.dynsec.set_up_control_plane():
                raise aiomqtt.MqttError("the broker ends this connection: it gave us our role")
            with Session(self.engine) as session:
                removed = await asyncio.to_thread(accounts_to_delete, session)
            for device_id in removed:
                await self.dynsec.delete_device(device_id)
                with Session(self.engine) as session:
                    await asyncio.to_thread(set_broker_account, session, device_id, False)
        for topic_filter in self._filters():
            qos: Literal[0, 1] = 0 if self.settings.mqtt_subscribe_qos == 0 else 1
            await _subscribe(client, topic_filter, qos)

    def _accept(self, topic: str, payload: object) -> Incoming | None:
        """Parse at the edge: the message to ingest, or None. A bad message is dropped and
        counted (for its device too), never raised."""
        if topic == RESPONSE_TOPIC and self.dynsec is not None:
            if isinstance(payload, bytes):
                self.dynsec.accept(payload)
            return None
        self.counters.received += 1
        parsed = self.topics.parse(topic)
        if parsed is None or parsed[1] not in _PARSERS or not isinstance(payload, bytes):
            self.counters.dropped += 1
            return None
        device_id, channel = parsed
        model, cap = _PARSERS[channel]
        try:
            if len(payload) > cap:
                raise ValueError(f"{len(payload)} bytes is over the {cap} cap")
            message = model.model_validate_json(payload)
            if message.device_id != device_id:  # the ACL pins the topic, not the payload
                raise ValueError(f"payload names {message.device_id!r}")
        except (ValidationError, ValueError) as exc:
            self._drop(device_id, channel.value, str(exc))
            return None
        if isinstance(message, TelemetryWindow) and (problem := implausible(message, utcnow())):
            self._drop(device_id, channel.value, problem, refused=message)
            return None
        return message

    def _drop(
        self, device_id: str, what: str, why: str, refused: TelemetryWindow | None = None
    ) -> None:
        """Count a refused message against its device. A window refused for what it says
        (not for its form) is acknowledged, so the device does not send it for ever."""
        self.counters.dropped += 1
        if not self._dropped and not self._refused:  # wake the ingest loop to count them
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
        self._dropped[device_id] = self._dropped.get(device_id, 0) + 1
        if refused is not None:
            self._refused.setdefault(device_id, []).append(refused.seq)
        log.warning(
            "dropped %s message from %s: %s",
            what,
            device_id,
            why[:200],
            extra=about(device_id=device_id),
        )

    async def _ingest_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first] if first is not None else []
            await asyncio.sleep(0.02)  # let a burst gather into one transaction
            while len(batch) < self.settings.ingest_batch_max and not self._queue.empty():
                if (message := self._queue.get_nowait()) is not None:
                    batch.append(message)
            dropped, self._dropped = self._dropped, {}
            refused, self._refused = self._refused, {}
            result = await self._store(batch, dropped)
            for device_id, seqs in refused.items():
                result.acks.setdefault(device_id, []).extend(seqs)
            await self._acks.put(result)

    async def _ack_loop(self) -> None:
        """Acknowledge stored batches, apart from storing them: an ack's PUBACK comes back
        behind whatever the broker is sending us, and at 100,000 devices, with megabytes
        queued on our socket, waiting for each in turn held ingest to a few batches a
        minute (acks timed out; devices' outboxes filled)."""
        while True:
            await self._acknowledge(await self._acks.get())

    async def _store(self, batch: list[Incoming], dropped: dict[str, int]) -> BatchResult:
        """Store a batch (and the drop counts) in one transaction. When that fails while the
        database answers, the batch is split until the message that fails is found: the
        others are stored and acknowledged, that one is dropped, counted and acknowledged
        (it would fail every time). While the database does not answer, or another
        transaction holds its locks past the busy timeout (SQLite's single writer behind a
        long write), the batch waits and nothing is acknowledged."""
        while True:
            try:
                result = await asyncio.to_thread(store_batch, self.engine, batch, dropped)
            except Exception as exc:
                if contended(exc) or not await asyncio.to_thread(database_answers, self.engine):
                    log.warning("ingest waits for the database: %s", str(exc)[:200])
                    await asyncio.sleep(1.0)
                    continue
                if len(batch) > 1:
                    middle = len(batch) // 2
                    first = await self._store(batch[:middle], dropped)
                    return first.merge(await self._store(batch[middle:], {}))
                if not batch:  # only the drop counts failed: they are lost, nothing else
                    log.exception("could not count %d dropped messages", sum(dropped.values()))
                    return BatchResult()
                (message,) = batch
                log.exception(
                    "dropped a message of %s that cannot be stored",
                    message.device_id,
                    extra=about(device_id=message.device_id),
                )
                self.counters.poisoned += 1
                counted = {**dropped, message.device_id: dropped.get(message.device_id, 0) + 1}
                return (await self._store([], counted)).refuse(message)
            self.counters.batches += 1
            self.counters.stored_windows += result.inserted
            self.counters.duplicate_windows += result.duplicates
            return result

    async def _acknowledge(self, result: BatchResult) -> None:
        """Every ack of a batch in flight together (paho sends MAX_INFLIGHT at a time)."""
        channels: tuple[tuple[Literal["telemetry", "samples"], dict[str, list[int]]], ...] = (
            ("telemetry", result.acks),
            ("samples", result.sample_acks),
        )
        await asyncio.gather(
            *(
                self._publish(
                    self.topics.device(device_id, Channel.ACK),
                    Ack(channel=channel, seqs=seqs).model_dump_json(),
                )
                for channel, acks in channels
                for device_id, seqs in acks.items()
            )
        )

    async def _refresh_loop(self) -> None:
        interval = min(3600.0, self.settings.desired_ttl_seconds / 10)
        while True:
            await asyncio.sleep(interval)
            if not self._leads():
                continue
            with Session(self.engine) as session:
                refreshed = await asyncio.to_thread(
                    refresh_expiring,
                    session,
                    self.keys.deployment,
                    self._ttl,
                    self.settings.artifact_mirrors,
                )
            for desired in refreshed:
                await self.publish_desired(desired)

    async def republish_desired(self) -> None:
        """Make sure the broker holds every device's latest desired state: on the leader's
        (re)connect, and when this process becomes the leader (the one before may have died
        between storing a desired state and publishing it). Not connected: nothing to do
        now, the connection does it. Only the leader: each process that joined republished
        all of them (100,000 publishes, each checked again by its device).

        The broker keeps whichever copy came last, and what was read at the start may be
        older than a desired state stored and published meanwhile (a rollout's next stage):
        republished after it, the old copy would hide it from every device that connects
        later (benchmarks/chaos.py: a broker killed -9 mid-rollout). So each pass ends by
        reading the sequences again and publishing once more whatever changed since its
        read, until nothing has."""
        if not self.connected.is_set():
            return
        with Session(self.engine) as session:
            desired_states = await asyncio.to_thread(all_desired, session)
        published: dict[str, int] = {}
        for _ in range(REPUBLISH_PASSES):
            for desired in desired_states:
                if not self.connected.is_set():
                    return  # the next connect republishes them all
                if await self.publish_desired(desired):  # else the next pass tries again
                    published[desired.device_id] = desired.seq
            with Session(self.engine) as session:
                desired_states = await asyncio.to_thread(desired_changed, session, published)
            if not desired_states:
                return
        log.warning(
            "desired states kept changing while republished: %d more after %d passes "
            "(they are published as they are signed)",
            len(desired_states),
            REPUBLISH_PASSES,
        )

    async def _publish(
        self, topic: str, payload: str, retain: bool = False, qos: Literal[0, 1] = 1
    ) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            raise_if_cancelling(exc)
            log.warning("publish to %s failed: %s", topic, exc)
            return False
        raise_if_cancelling()  # a cancel that landed as the PUBACK arrived
        return True

    async def publish_desired(self, desired: DesiredState, wait_seconds: float = 10.0) -> bool:
        """Publish retained at QoS 1; True once the broker acknowledged it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                await self.connected.wait()
                return await self._publish(
                    self.topics.device(desired.device_id, Channel.DESIRED),
                    desired.model_dump_json(),
                    retain=True,
                )
        return False
