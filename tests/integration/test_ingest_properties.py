"""Property-based tests of the ingest path (hypothesis): whatever bytes arrive on whatever
device topic, what the control plane stores reads back, and another device's messages in
the same batch are stored all the same. Real SQLite through the bridge's own edge (parse,
drop and count) and store (batch, split on failure) code; the broker is not in the loop, so
hundreds of examples take seconds (tests/integration/test_isolation.py has the broker)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlmodel import Session, select

from control_plane.auth.keys import load_keys
from control_plane.config import load_settings
from control_plane.fleet.bridge import MqttBridge
from control_plane.fleet.ingestion import stored_windows
from control_plane.store.datadir import init_data_dir
from control_plane.store.db import create_db_engine, migrate
from control_plane.store.tables import Device, SampleRecord
from shared.messages import DeviceState, SampleBatch, TelemetryWindow
from shared.topics import Channel, Topics
from tests.unit.test_wire_properties import DOCUMENTS, json_values, paths, replaced

pytestmark = pytest.mark.integration
TOPICS = Topics()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBridge]:
    settings = load_settings(
        Path(tmp_path_factory.mktemp("ingest")), mqtt_url="mqtt://cp:pw@127.0.0.1:1"
    )
    init_data_dir(settings)
    engine = create_db_engine(settings.resolved_database_url)
    migrate(engine)
    try:
        yield MqttBridge(settings, engine, load_keys(settings.keys_dir))
    finally:
        engine.dispose()


def ingest(bridge: MqttBridge, messages: list[tuple[str, bytes]]) -> None:
    """What the bridge does with messages off the broker: the edge, then one stored batch."""
    batch = [m for topic, payload in messages if (m := bridge._accept(topic, payload))]
    dropped, bridge._dropped, bridge._refused = bridge._dropped, {}, {}
    asyncio.run(bridge._store(batch, dropped))


def good_window(seq: int) -> bytes:
    now = datetime.now(UTC).isoformat()
    document = {**DOCUMENTS[TelemetryWindow], "device_id": "dev-good", "seq": seq}
    return json.dumps({**document, "window_start": now, "window_end": now}).encode()


def everything_reads_back(bridge: MqttBridge) -> None:
    with Session(bridge.engine) as session:
        for device in session.exec(select(Device)).all():
            if device.state:
                DeviceState.model_validate_json(device.state)
            for record in stored_windows(session, device.id, 100_000):
                TelemetryWindow.model_validate(record.window.model_dump())
        for sample in session.exec(select(SampleRecord)).all():
            SampleBatch.model_validate_json(sample.payload)


channels = st.sampled_from([Channel.TELEMETRY, Channel.STATE, Channel.SAMPLES, Channel.ONLINE])
devices = st.sampled_from(["dev-1", "dev-2", "dev-good"])
mutated: Any = st.tuples(st.sampled_from(list(DOCUMENTS)), st.data(), json_values)
SEQ = iter(range(1, 10**9))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    noise=st.lists(
        st.tuples(devices, channels, st.one_of(st.binary(max_size=300), st.just(b""))),
        max_size=3,
    ),
    edits=st.lists(st.tuples(devices, channels, mutated), max_size=3),
)
def test_any_bytes_on_any_device_topic(
    bridge: MqttBridge,
    noise: list[tuple[str, Channel, bytes]],
    edits: list[tuple[str, Channel, Any]],
) -> None:
    messages = [(TOPICS.device(d, c), payload) for d, c, payload in noise]
    for device_id, channel, (model, data, value) in edits:
        document = {**DOCUMENTS[model], "device_id": device_id}
        document = replaced(document, data.draw(st.sampled_from(paths(document))), value)
        messages.append((TOPICS.device(device_id, channel), json.dumps(document).encode()))
    seq = next(SEQ) + 10**6  # dev-good's window of this example, among the others
    messages.insert(
        len(messages) // 2, (TOPICS.device("dev-good", Channel.TELEMETRY), good_window(seq))
    )
    ingest(bridge, messages)
    with Session(bridge.engine) as session:
        stored = {r.window.seq for r in stored_windows(session, "dev-good", 100_000)}
    assert seq in stored  # the other devices' garbage cost dev-good nothing
    everything_reads_back(bridge)


def test_a_write_held_up_past_the_busy_timeout_waits_and_loses_nothing(
    bridge: MqttBridge, tmp_path: Path
) -> None:
    """Another transaction holds SQLite's one write lock past the busy timeout (as a long
    write of a 100,000-device rollout stage did): the batch waits for it and is stored
    whole, instead of being split as if one of its messages could never be stored."""
    url = bridge.settings.resolved_database_url
    impatient = MqttBridge(
        bridge.settings,
        create_engine(url, connect_args={"timeout": 0.05}),  # a 50 ms busy timeout
        bridge.keys,
    )
    window = TelemetryWindow.model_validate_json(good_window(10_001))
    holder = create_db_engine(url).connect()
    holder.execute(text("UPDATE device SET dropped_messages = dropped_messages"))
    release = threading.Timer(1.0, holder.rollback)
    release.start()
    try:
        result = asyncio.run(impatient._store([window], {}))
    finally:
        release.join()
        holder.close()
    assert (result.inserted, impatient.counters.poisoned) == (1, 0)
    assert result.acks == {"dev-good": [10_001]}
