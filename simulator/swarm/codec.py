"""The device side of MQTT 3.1.1, as small as the swarm needs: CONNECT (credentials, clean
session, keepalive, a retained QoS 1 Last Will), SUBSCRIBE at QoS 1, PUBLISH at QoS 1 in both
directions with PUBACK, PINGREQ and DISCONNECT. One ``MqttSession`` per device, an
``asyncio.Protocol`` on the running loop (epoll): no task, timer or lock per session.

Why not aiomqtt (paho under asyncio, what the agent uses): measured with
``benchmarks/swarm_clients.py`` on this machine, paho's pure-Python packet handling and
aiomqtt's per-client tasks (a message loop and a misc loop waking every second per client)
cost several times the CPU and memory per session of this protocol class, which bounds a
process to a few thousand sessions where the swarm needs 100,000. The broker is real
mosquitto; only the client side is this small codec.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Protocol

CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBACK = 9
PINGRESP = 13
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
MAX_PACKET_BYTES = 2 * 1024 * 1024  # above the largest wire message (1 MiB caps)


class ProtocolViolationError(Exception):
    """The broker sent something this client cannot parse."""


class SessionHandler(Protocol):
    """What an ``MqttSession`` reports to (the swarm device owning it)."""

    def on_connack(self, code: int) -> None: ...
    def on_message(self, topic: str, payload: bytes) -> None: ...
    def on_lost(self, exc: Exception | None) -> None: ...
    def on_puback(self, packet_id: int) -> None: ...


def mqtt_string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    username: str,
    password: str,
    keepalive: int,
    will_topic: bytes,
    will_payload: bytes,
) -> bytes:
    """CONNECT, clean session, with a retained QoS 1 Last Will and credentials."""
    flags = 0x02 | 0x04 | 0x08 | 0x20 | 0x80 | 0x40  # clean, will, will QoS 1, retain, user, pw
    body = (
        mqtt_string(b"MQTT")
        + bytes([4, flags])
        + struct.pack("!H", keepalive)
        + mqtt_string(client_id.encode())
        + mqtt_string(will_topic)
        + mqtt_string(will_payload)
        + mqtt_string(username.encode())
        + mqtt_string(password.encode())
    )
    return packet(0x10, body)


def subscribe_packet(packet_id: int, topics: list[bytes]) -> bytes:
    return packet(
        0x82, struct.pack("!H", packet_id) + b"".join(mqtt_string(t) + b"\x01" for t in topics)
    )


def publish_packet(topic: bytes, payload: bytes, packet_id: int, *, retain: bool) -> bytes:
    """QoS 1."""
    return packet(0x32 | int(retain), mqtt_string(topic) + struct.pack("!H", packet_id) + payload)


def puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", packet_id)


class MqttSession(asyncio.Protocol):
    """One device's connection: parses what the broker sends and hands it to ``handler``."""

    def __init__(self, handler: SessionHandler) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._next_id = 0
        self.unacked = 0  # our QoS 1 publishes the broker has not PUBACKed yet
        self.last_write = time.monotonic()
        self.closed = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed:
            self.closed = True
            self.handler.on_lost(exc)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        end = len(buffer)
        try:
            while end - offset >= 2:
                length, multiplier, i, complete = 0, 1, offset + 1, False
                while i < end and i < offset + 5:
                    byte = buffer[i]
                    i += 1
                    length += (byte & 0x7F) * multiplier
                    multiplier *= 128
                    if not byte & 0x80:
                        complete = True
                        break
                if not complete:
                    if i >= offset + 5:
                        raise ProtocolViolationError("remaining length over 4 bytes")
                    break  # the length itself is still on its way
                if length > MAX_PACKET_BYTES:
                    raise ProtocolViolationError(f"a {length}-byte packet")
                if i + length > end:
                    break  # the rest of the packet is still on its way
                self._dispatch(buffer[offset], bytes(buffer[i : i + length]))
                offset = i + length
        except ProtocolViolationError:
            self.close()
            return
        if offset:
            del buffer[:offset]

    # --- packets -----------------------------------------------------------------------------

    def _dispatch(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBLISH:
            qos = (first >> 1) & 0x03
            (topic_length,) = struct.unpack_from("!H", body)
            topic = body[2 : 2 + topic_length].decode()
            start = 2 + topic_length
            if qos:
                (packet_id,) = struct.unpack_from("!H", body, start)
                start += 2
                self.write(puback_packet(packet_id))
            self.handler.on_message(topic, body[start:])
        elif kind == PUBACK:
            self.unacked = max(0, self.unacked - 1)
            (packet_id,) = struct.unpack_from("!H", body)
            self.handler.on_puback(packet_id)
        elif kind == CONNACK:
            if len(body) != 2:
                raise ProtocolViolationError(f"a CONNACK of {len(body)} bytes")
            self.handler.on_connack(body[1])
        # SUBACK and PINGRESP need nothing: every filter is granted QoS 1 (mosquitto does
        # not check ACLs at SUBSCRIBE), and any packet from the broker proves it is there.

    def write(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        self.last_write = time.monotonic()
        return True

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def publish(self, topic: bytes, payload: bytes, *, retain: bool = False) -> int | None:
        """QoS 1; the packet id (its PUBACK names it), None when the connection is gone."""
        packet_id = self.packet_id()
        if self.write(publish_packet(topic, payload, packet_id, retain=retain)):
            self.unacked += 1
            return packet_id
        return None

    def subscribe(self, topics: list[bytes]) -> bool:
        return self.write(subscribe_packet(self.packet_id(), topics))

    def ping(self) -> None:
        self.write(PINGREQ_PACKET)

    def close(self, *, disconnect: bool = False) -> None:
        """Close without the broker sending the Last Will (``disconnect``) or as a crash."""
        self.closed = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if disconnect:
                transport.write(DISCONNECT_PACKET)
            transport.close()
