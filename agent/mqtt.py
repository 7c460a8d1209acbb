"""The agent's MQTT session (the only agent module that touches MQTT).

aiomqtt drives paho from the asyncio loop (epoll, not paho's select() loop), so hundreds of
agents fit in one process. The session reconnects forever: to the next node of a broker
cluster at once, with exponential backoff and jitter once every node has failed. Its Last
Will marks the device offline (retained); on every connect it publishes online,
re-subscribes to its own ``desired`` and ``ack`` topics (at ``mqtt_subscribe_qos``) and calls
``on_connect`` (which republishes the state and the outbox). With ``mqtt_resubscribe_seconds``
it also subscribes again to a topic that has been silent that long, so a subscription a
broker cluster keeps granted but silent cannot hold a device back for ever.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import AgentSettings
from shared.broker_address import BrokerAddress
from shared.cancellation import raise_if_cancelling
from shared.messages import OnlineStatus
from shared.topics import Channel, Topics

log = logging.getLogger(__name__)
MAX_INCOMING_QUEUE = 1000


def refused(granted: tuple[int, ...] | list[ReasonCode]) -> bool:
    """Whether a SUBACK refused a filter (return code 0x80)."""
    return any((g.value if isinstance(g, ReasonCode) else g) >= 0x80 for g in granted)


class DeviceSession:
    def __init__(
        self,
        settings: AgentSettings,
        topics: Topics,
        *,
        on_message: Callable[[Channel, bytes], None],
        on_connect: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self.settings = settings
        self.topics = topics
        self._on_message = on_message
        self._on_connect = on_connect
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.node_index = 0  # which of settings.brokers this session uses (or tries) now
        self.granted: dict[Channel, int] = {}  # the QoS the broker granted, per subscription
        self.resubscriptions = 0  # subscribed again to a silent topic (not on connect)
        self._heard: dict[str, float] = {}  # topic → loop time of its last message or SUBACK
        device = settings.device_id
        self._subscriptions = {
            topics.device(device, Channel.DESIRED): Channel.DESIRED,
            topics.device(device, Channel.ACK): Channel.ACK,
        }

    @property
    def broker(self) -> BrokerAddress:
        """The broker node in use, or being tried."""
        return self.settings.brokers[self.node_index]

    def _new_client(self, broker: BrokerAddress) -> aiomqtt.Client:
        device = self.settings.device_id
        offline = OnlineStatus(device_id=device, online=False).model_dump_json()
        tls = None
        if broker.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(self.settings.tls_ca_file) if self.settings.tls_ca_file else None,
                certfile=str(self.settings.tls_cert_file) if self.settings.tls_cert_file else None,
                keyfile=str(self.settings.tls_key_file) if self.settings.tls_key_file else None,
            )
        return aiomqtt.Client(
            broker.host,
            broker.port,
            # Without credentials in broker_url: the device id and its token (what the
            # control plane's broker accounts are made of).
            username=broker.username or device,
            password=broker.password or self.settings.token.get_secret_value(),
            identifier=device,
            clean_session=True,
            keepalive=self.settings.keepalive_seconds,
            will=aiomqtt.Will(
                self.topics.device(device, Channel.ONLINE), offline, qos=1, retain=True
            ),
            tls_params=tls,
            timeout=10,
            max_queued_incoming_messages=MAX_INCOMING_QUEUE,
            # Nagle's algorithm turns a 0.3 ms QoS 1 round trip into ~90 ms.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def run(self) -> None:
        """Stay connected until cancelled. With several broker nodes (a cluster), a node
        that is unreachable or drops the connection is followed at once by the next one;
        only when every node has failed in a row does the agent back off. Nothing needs
        carrying over: the session is clean, the desired state is retained, and every
        connect subscribes again and republishes the state and the unacknowledged outbox."""
        brokers = self.settings.brokers
        delay = self.settings.reconnect_min_seconds
        failures = 0
        while True:
            broker, connects = brokers[self.node_index], self.connects
            try:
                async with self._new_client(broker) as client:
                    self._client = client
                    await self._serve(client, broker)
            except aiomqtt.MqttError as exc:
                # Disconnecting while cancelled can raise MqttError over the CancelledError:
                # honour the cancellation instead of reconnecting.
                raise_if_cancelling(exc)
                log.info(
                    "%s: broker %s:%s: %s", self.settings.device_id, broker.host, broker.port, exc
                )
            finally:
                self._client = None
                self.connected.clear()
            if self.connects > connects:  # it was up (subscribed, online): start afresh
                failures, delay = 0, self.settings.reconnect_min_seconds
            failures += 1
            self.node_index = (self.node_index + 1) % len(brokers)
            pause = self.settings.reconnect_min_seconds
            if failures >= len(brokers):  # every node failed in a row: back off
                pause, delay = delay, min(delay * 2, self.settings.reconnect_max_seconds)
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311  (jitter)

    async def _serve(self, client: aiomqtt.Client, broker: BrokerAddress) -> None:
        """One connection: subscribe, say online, republish, hand messages on until it ends."""
        self.granted.clear()
        self._heard.clear()
        for topic in self._subscriptions:
            await self._subscribe(client, topic)
        await client.publish(
            self.topics.device(self.settings.device_id, Channel.ONLINE),
            OnlineStatus(device_id=self.settings.device_id, online=True).model_dump_json(),
            qos=1,
            retain=True,
        )
        self.connects += 1
        self.connected.set()
        log.info("%s: connected to %s:%s", self.settings.device_id, broker.host, broker.port)
        # Republishing state and outbox runs beside the message loop, so a desired state or
        # an ack is handled while a long outbox drains.
        raise_if_cancelling()
        flush = asyncio.create_task(self._on_connect())
        parts = [asyncio.create_task(self._read(client))]
        if self.settings.mqtt_resubscribe_seconds:
            parts.append(asyncio.create_task(self._resubscribe_silent(client)))
        try:
            # Either part ends only with an error (the connection is gone, or a subscription
            # was refused): end the connection with it.
            done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
            errors = [part.exception() for part in done]
            for error in errors:
                if error is not None:
                    raise error
        finally:
            flush.cancel()
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)

    async def _subscribe(self, client: aiomqtt.Client, topic: str) -> None:
        qos: Literal[0, 1] = 0 if self.settings.mqtt_subscribe_qos == 0 else 1
        granted = await client.subscribe(topic, qos=qos)
        if refused(granted):
            # A cluster node may refuse while it elects a new leader (nats-server: the
            # subscription's JetStream consumer times out); connected without it, the
            # agent would never hear of a desired state. Reconnect instead.
            raise aiomqtt.MqttError(f"the broker refused the subscription to {topic}")
        first = granted[0]
        self.granted[self._subscriptions[topic]] = (
            first.value if isinstance(first, ReasonCode) else first
        )
        self._heard[topic] = asyncio.get_running_loop().time()

    async def _read(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        async for message in client.messages:
            topic = str(message.topic)
            channel = self._subscriptions.get(topic)
            payload = message.payload
            if channel is not None and isinstance(payload, bytes | bytearray):
                self._heard[topic] = loop.time()
                self._on_message(channel, bytes(payload))
        raise aiomqtt.MqttError("the message stream ended")  # it does only when disconnected

    async def _resubscribe_silent(self, client: aiomqtt.Client) -> None:
        """Subscribe again to each topic that brought nothing for ``mqtt_resubscribe_seconds``.
        The broker then sends the retained desired state again: a new one is applied, the one
        already accepted changes nothing (the updater takes it as a re-apply). Wanted where a
        subscription can be granted and still deliver nothing (nats-server 2.9 after a node
        died), or miss a publish racing it across cluster nodes."""
        interval = self.settings.mqtt_resubscribe_seconds
        loop = asyncio.get_running_loop()
        while True:
            due = min(self._heard.values()) + interval
            # Jitter: agents that connected together do not all subscribe again together.
            jitter = interval * random.uniform(0.0, 0.1)  # noqa: S311
            await asyncio.sleep(max(0.0, due - loop.time()) + jitter)
            for topic, heard in list(self._heard.items()):
                if loop.time() - heard >= interval:
                    await self._subscribe(client, topic)
                    self.resubscriptions += 1
                    log.info(
                        "%s: subscribed again to %s (silent for %.0f s)",
                        self.settings.device_id,
                        topic,
                        interval,
                    )

    async def publish(
        self, channel: Channel, payload: str | bytes, *, retain: bool = False
    ) -> bool:
        """Publish at QoS 1 and wait for the broker's PUBACK; False when not connected."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(
                self.topics.device(self.settings.device_id, channel), payload, qos=1, retain=retain
            )
        except aiomqtt.MqttError as exc:
            raise_if_cancelling(exc)
            return False
        raise_if_cancelling()  # a cancel that landed as the PUBACK arrived (see there)
        return True

    async def go_offline(self) -> None:
        """On a clean shutdown the Last Will is not sent: say offline ourselves."""
        await self.publish(
            Channel.ONLINE,
            OnlineStatus(device_id=self.settings.device_id, online=False).model_dump_json(),
            retain=True,
        )
