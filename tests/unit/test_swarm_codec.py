"""The swarm's MQTT codec parses what a broker sends however the bytes are split, and its
synthetic telemetry is consistent with the manifest it counts for."""

from __future__ import annotations

import asyncio
import struct

import pytest

from shared.signing import SigningKey
from shared.stats import LATENCY_BUCKETS
from simulator.rig.models import make_model
from simulator.swarm.codec import (
    MqttSession,
    connect_packet,
    packet,
    puback_packet,
    publish_packet,
)
from simulator.swarm.runner import _spread, source_addresses, synthetic_window


class Recorder:
    def __init__(self) -> None:
        self.connacks: list[int] = []
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: list[int] = []
        self.lost = 0

    def on_connack(self, code: int) -> None:
        self.connacks.append(code)

    def on_message(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def on_lost(self, exc: Exception | None) -> None:
        self.lost += 1

    def on_puback(self, packet_id: int) -> None:
        self.pubacks.append(packet_id)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def session() -> tuple[MqttSession, Recorder, FakeTransport]:
    recorder, transport = Recorder(), FakeTransport()
    s = MqttSession(recorder)
    s.connection_made(transport)
    return s, recorder, transport


def broker_stream() -> bytes:
    big = b"d" * 200_000  # a remaining length of three bytes
    return (
        b"\x20\x02\x00\x00"  # CONNACK accepted
        + b"\x90\x04\x00\x01\x01\x01"  # SUBACK
        + publish_packet(b"edgefleet/v1/devices/a/desired", big, 7, retain=True)
        + puback_packet(3)
        + packet(0x30, struct.pack("!H", 5) + b"t/ack" + b"qos0")  # QoS 0: no packet id
        + b"\xd0\x00"  # PINGRESP
    )


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**6])
def test_packets_parse_however_split(chunk: int) -> None:
    s, recorder, transport = session()
    stream = broker_stream()
    for i in range(0, len(stream), chunk):
        s.data_received(stream[i : i + chunk])
    assert recorder.connacks == [0]
    assert recorder.messages == [
        ("edgefleet/v1/devices/a/desired", b"d" * 200_000),
        ("t/ack", b"qos0"),
    ]
    assert recorder.pubacks == [3]
    assert bytes(transport.written) == puback_packet(7)  # the QoS 1 message acknowledged


def test_a_length_over_four_bytes_closes_the_session() -> None:
    s, recorder, transport = session()
    s.data_received(b"\x30\xff\xff\xff\xff\x01")
    assert transport.closed
    assert recorder.messages == []


def test_connect_packet_carries_will_and_credentials() -> None:
    data = connect_packet("dev-1", "dev-1", "tok", 60, b"t/online", b"off")
    assert data[0] == 0x10
    flags = data[2 + 6 + 1]  # fixed header (2), "MQTT" string (6), level (1)
    assert flags == 0x02 | 0x04 | 0x08 | 0x20 | 0x80 | 0x40
    assert data.endswith(b"\x00\x05dev-1\x00\x03tok")


def test_synthetic_window_fits_the_manifest() -> None:
    manifest, _ = make_model(SigningKey.generate())
    window = synthetic_window(manifest, 61)
    assert window.requests == 61
    assert len(window.latency_counts) == LATENCY_BUCKETS
    assert sum(window.latency_counts) == 61
    assert len(window.features) == len(manifest.reference.features)
    for feature, ref in zip(window.features, manifest.reference.features, strict=True):
        assert len(feature.counts) == len(ref.counts)
        assert sum(feature.counts) == feature.n == 61
    assert len(window.predictions) == len(manifest.output.classes)
    assert sum(window.predictions) == 61


def test_spread_and_source_addresses() -> None:
    assert _spread(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(_spread(7, [0, 5, 2, 0])) == 7
    assert source_addresses(3, 5) == [None, None, None]
    assert source_addresses(5, 2) == [
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.3",
        "127.0.0.4",
    ]
