"""No single device, message or bad value stops what belongs to others: ingest stores the
good messages of a batch and drops (and counts) the bad one, on SQLite and PostgreSQL; one
failing rollout or one model's unreadable policy holds up no other."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from control_plane.audit.types import EventType
from control_plane.store.db import create_db_engine
from control_plane.store.tables import Model, RetrainState, Rollout
from shared.stats import LATENCY_BUCKETS
from simulator.broker import MosquittoBroker
from simulator.data import sensor_csv
from simulator.rig.agents import CP_PASSWORD, wait_until
from tests.integration.conftest import Api, MakeApi, bridge_of
from tests.integration.conftest import MqttDevice as Device

pytestmark = pytest.mark.integration
POISON_SEQ = 666


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    running = MosquittoBroker(tmp_path / "broker")
    running.add_control_plane_user(CP_PASSWORD)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def window(device_id: str, seq: int | str, **changes: Any) -> bytes:
    now = datetime.now(UTC)
    document: dict[str, Any] = {
        "schema_version": 1,
        "device_id": device_id,
        "seq": seq,
        "window_start": now.isoformat(),
        "window_end": now.isoformat(),
        "models": [],
        "outbox_dropped": 0,
        **changes,
    }
    return json.dumps(document).encode()


def model_window(total: float) -> dict[str, Any]:
    feature = {"counts": [1], "below": 0, "above": 0, "missing": 0, "n": 1}
    return {
        "name": "fault",
        "version": 1,
        "sha256": "a" * 64,
        "requests": 1,
        "errors": 0,
        "latency_counts": [1] + [0] * (LATENCY_BUCKETS - 1),
        "features": [{**feature, "sum": total, "sum_sq": 1.0}],
        "predictions": [1],
    }


def poison(api: Api) -> None:
    """A database that refuses one row, as a real one may (a constraint, a bad value): a
    trigger on the telemetry table, for the window numbered POISON_SEQ."""
    engine = create_db_engine(api.settings.resolved_database_url)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text(
                    "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.seq = {POISON_SEQ} THEN RAISE EXCEPTION 'poison'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON telemetry_window "
                    "FOR EACH ROW EXECUTE FUNCTION poison()"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON telemetry_window "
                    f"WHEN NEW.seq = {POISON_SEQ} BEGIN SELECT RAISE(ABORT, 'poison'); END"
                )
            )
    engine.dispose()


def acked(device: Device) -> list[int]:
    return sorted(
        s for t, p in device.received if t.endswith("/ack") for s in json.loads(p)["seqs"]
    )


def connected_api(make_api: MakeApi, broker: MosquittoBroker, database_url: str | None) -> Api:
    """A control plane whose bridge is connected to ``broker``."""
    api = make_api(
        database_url,
        mqtt_url=broker.control_plane_url(CP_PASSWORD),
        broker_accounts=broker.accounts,
    )
    wait_until(bridge_of(api).connected.is_set, what="bridge connected")
    return api


def test_one_bad_message_stops_nobody_elses_ingest(
    make_api: MakeApi, broker: MosquittoBroker, database_url: str | None
) -> None:
    api = connected_api(make_api, broker, database_url)
    bridge = bridge_of(api)
    poison(api)
    devices = {}
    for name in ("dev-a", "dev-b", "dev-c", "dev-d"):
        token = api.post("/devices", json={"id": name}).json()["token"]
        broker.add_user(name, token)
        devices[name] = Device(broker, name, token)
    try:
        a, b, c, d = (devices[f"dev-{x}"] for x in "abcd")
        far = (datetime.now(UTC) + timedelta(days=365 * 70)).isoformat()
        for seq in (1, 2, 3):
            a.send("telemetry", window("dev-a", seq))
        b.send("telemetry", window("dev-b", "900003"))  # a string: not coerced
        b.send("telemetry", window("dev-b", 2**53))  # beyond what JSON reads back exactly
        b.send("telemetry", window("dev-b", 4, models=[model_window(float("nan"))]))
        b.send("telemetry", window("dev-b", 5, window_start=far, window_end=far))  # 2095
        b.send("telemetry", window("dev-b", 6))
        # Counts no device serves in a window (they would wrap the gates' int64 sums).
        b.send(
            "telemetry", window("dev-b", 7, models=[{**model_window(1.0), "requests": 2**53 - 1}])
        )
        c.send("telemetry", window("dev-c", POISON_SEQ))  # the database refuses it
        c.send("telemetry", window("dev-c", 2**31 + 5))  # past PostgreSQL's int4
        c.send("telemetry", window("dev-c", 7))
        wait_until(lambda: acked(a) == [1, 2, 3], what="dev-a's windows acknowledged")
        # A device that sends nothing else: its refused window is counted and acknowledged.
        d.send("telemetry", window("dev-d", 9, window_start=far, window_end=far))
        wait_until(lambda: acked(d) == [9], what="dev-d's implausible window acknowledged")
        wait_until(lambda: acked(b) == [5, 6, 7], what="dev-b's good and implausible acked")
        wait_until(lambda: acked(c) == [7, POISON_SEQ, 2**31 + 5], what="dev-c's acked")

        def stored(device_id: str) -> list[int]:
            response = api.get(f"/devices/{device_id}/telemetry")
            assert response.status_code == 200, response.text  # everything stored reads back
            return [w["window"]["seq"] for w in response.json()]

        assert stored("dev-a") == [1, 2, 3]
        assert stored("dev-b") == [6]
        assert stored("dev-c") == [7, 2**31 + 5]
        dropped = {d: api.get(f"/devices/{d}").json()["dropped_messages"] for d in devices}
        assert dropped == {"dev-a": 0, "dev-b": 5, "dev-c": 1, "dev-d": 1}
        assert bridge.counters.poisoned == 1
    finally:
        for device in devices.values():
            device.close()


def test_a_failing_rollout_holds_up_no_other(make_api: MakeApi) -> None:
    api = make_api(rollout_tick_seconds=0.1)
    api.upload(sensor_csv(100, seed=1))
    for model in ("broken", "fine"):
        api.train_ok(model, dataset_id=1, algorithm="logreg")
    api.post("/devices", json={"id": "dev-1"})
    gates = {"min_requests": 0, "min_devices_reporting": 0, "install_timeout_seconds": 0.1}
    gates["min_install_success"] = 0
    plan = {"preset": "all-at-once", "soak_seconds": 0, "gates": gates}
    stays = {**plan, "soak_seconds": 3600}  # running until the test breaks it
    broken = api.post("/rollouts", json={"model": "broken", "version": "1", "plan": stays}).json()
    # Broken only once a tick has started its first stage: a tick in flight when the row is
    # changed would write its own stage over it (a busy machine showed it).
    wait_until(
        lambda: api.get(f"/rollouts/{broken['id']}").json()["stage"] == 0,
        what="the first stage started",
    )
    engine = create_db_engine(api.settings.resolved_database_url)
    with Session(engine) as session:  # a row its tick cannot step: a stage that is not
        row = session.get(Rollout, broken["id"])
        assert row is not None
        row.stage, row.stage_started_at = 99, datetime.now(UTC)
        session.add(row)
        session.commit()
    engine.dispose()
    fine = api.post("/rollouts", json={"model": "fine", "version": "1", "plan": plan}).json()
    wait_until(
        lambda: api.get(f"/rollouts/{fine['id']}").json()["status"] == "succeeded",
        timeout=60,
        what="the other rollout to finish",
    )
    assert api.get(f"/rollouts/{broken['id']}").json()["status"] == "running"
    engine_ = api.client.app.state.rollouts  # type: ignore[attr-defined]
    wait_until(
        lambda: engine_.failures > 0, timeout=60, what="the broken rollout's failure counted"
    )


def test_one_models_unreadable_policy_holds_up_no_other_model(make_api: MakeApi) -> None:
    api = make_api(rollout_tick_seconds=0.1)
    api.upload(sensor_csv(100, seed=1))
    for model in ("broken", "fine"):
        api.train_ok(model, dataset_id=1, algorithm="logreg")
    schedule = {"triggers": ["schedule"], "schedule_seconds": 60, "min_labelled_rows": 10}
    assert api.put("/models/fine/policy", json={"retrain": schedule}).status_code == 200
    engine = create_db_engine(api.settings.resolved_database_url)
    with Session(engine) as session:  # stored before the bounds existed
        row = session.get(Model, "broken")
        assert row is not None
        row.policy = {"retrain": {"recent_seconds": 1e300, "triggers": ["schedule"]}}
        session.add(row)
        session.commit()

    def waiting() -> str | None:
        with Session(engine) as session:
            state = session.get(RetrainState, "fine")
            return state.waiting_for if state else None

    try:
        wait_until(
            lambda: waiting() is not None, timeout=60, what="the fine model's retraining judged"
        )
        assert "labelled rows" in (waiting() or "")
    finally:
        engine.dispose()
    monitor = api.client.app.state.monitor  # type: ignore[attr-defined]
    wait_until(lambda: monitor.failures > 0, timeout=60, what="the broken model's failure")


def test_a_failed_unit_of_the_monitor_leaves_nothing_behind_on_sqlite(tmp_path: Path) -> None:
    """What the monitor's isolation relies on: once a write has opened the transaction, a
    savepoint rolled back (one failed model) keeps nothing, one released keeps its rows
    only until the whole bucket commits (pysqlite would otherwise commit a first savepoint
    on release, and a bucket rolled back would be judged twice)."""
    from control_plane.store.db import migrate
    from control_plane.store.tables import Event

    engine = create_db_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    try:
        with Session(engine) as session:
            session.add(Event(type=EventType.CREATED, message="a write opens the transaction"))
            session.flush()
            failed = session.begin_nested()
            session.add(Event(type=EventType.GATE_FAILED, message="rolled back"))
            session.flush()
            failed.rollback()
            released = session.begin_nested()
            session.add(Event(type=EventType.RELEASE, message="kept until the commit"))
            session.flush()
            released.commit()
            session.rollback()  # the bucket as a whole fails
        with Session(engine) as session:
            assert session.exec(select(Event)).all() == []
    finally:
        engine.dispose()


class IdleMonitor:
    def tick(self) -> None:
        pass


def lead_until(leadership: Any, rollouts: Any, done: asyncio.Event, republish: Any = None) -> None:
    """Run the leader loop (ticks 0.01 s apart) with these stand-ins until ``done``."""
    from control_plane.app import _lead

    async def run() -> None:
        leader = asyncio.create_task(
            _lead(leadership, rollouts, IdleMonitor(), None, 0.01, republish)  # type: ignore[arg-type]
        )
        try:
            await asyncio.wait_for(done.wait(), 60)
        finally:
            leader.cancel()

    asyncio.run(run())


def test_a_new_leader_retries_its_republish_until_it_succeeds(tmp_path: Path) -> None:
    """A process that becomes the leader publishes the stored desired states (the old leader
    may have died before it did). When that fails (the broker away for a moment) the next
    tick tries again, and rollouts are driven only once it succeeded."""
    from control_plane.coordination.leadership import Leadership
    from control_plane.store.db import migrate

    engine = create_db_engine(f"sqlite:///{tmp_path / 'l.db'}")
    migrate(engine)
    attempts: list[int] = []
    order: list[str] = []

    async def republish() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("the broker is away")
        order.append("republished")

    class Counted:
        busy_seconds = 0.0

        async def tick(self) -> None:  # the rollout engine's tick
            order.append("tick")
            if order.count("tick") >= 2:
                done.set()

    done = asyncio.Event()
    try:
        lead_until(Leadership(engine), Counted(), done, republish)
    finally:
        engine.dispose()
    assert len(attempts) == 2
    assert order[0] == "republished"


def test_a_long_rollout_tick_is_followed_by_a_longer_rest(tmp_path: Path) -> None:
    """A tick that works for a long time (gates over a stage of 100,000 devices) must not
    take the whole process: the leader rests twice as long as the tick worked before the
    next, and still heartbeats every few seconds however long its ticks are. Sleeps only
    ever last longer on a busy machine, so the lower bound holds there too."""
    from control_plane.app import HEARTBEAT_SECONDS, REST_PER_BUSY
    from control_plane.coordination.leadership import Leadership
    from control_plane.store.db import migrate

    engine = create_db_engine(f"sqlite:///{tmp_path / 'l.db'}")
    migrate(engine)
    starts: list[float] = []
    beats: list[float] = []
    leadership = Leadership(engine)
    real_heartbeat = leadership.heartbeat

    def heartbeat() -> None:
        beats.append(time.monotonic())
        real_heartbeat()

    leadership.heartbeat = heartbeat  # type: ignore[method-assign]
    worked = 0.3

    class Busy:
        busy_seconds = 0.0

        async def tick(self) -> None:
            starts.append(time.monotonic())
            await asyncio.to_thread(time.sleep, worked)  # _tick_all's work, in its thread
            self.busy_seconds = worked
            if len(starts) == 8:  # 7 rests of >= 0.9 s: past HEARTBEAT_SECONDS
                done.set()

    done = asyncio.Event()
    try:
        lead_until(leadership, Busy(), done)
    finally:
        engine.dispose()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= worked * (1 + REST_PER_BUSY)
    assert starts[-1] - starts[0] > HEARTBEAT_SECONDS
    assert len(beats) >= 2  # by the clock; counting ticks, 0.01 s apart, it took 500


def hold_the_telemetry_table(api: Api) -> Any:
    """A transaction that keeps ingest from writing windows until it ends."""
    engine = create_db_engine(api.settings.resolved_database_url)
    connection = engine.connect()
    if connection.dialect.name == "postgresql":
        connection.execute(text("LOCK TABLE telemetry_window IN EXCLUSIVE MODE"))
    else:  # SQLite's one writer
        connection.execute(text("UPDATE device SET dropped_messages = dropped_messages"))
    return connection


def test_storing_goes_on_while_acks_wait_for_the_broker(
    make_api: MakeApi,
    broker: MosquittoBroker,
    database_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ack's PUBACK comes back behind whatever the broker is sending the control plane
    (at 100,000 devices, megabytes on its socket). While no ack gets out, windows that
    arrive later are still stored; once acks flow, every window is acknowledged."""
    api = connected_api(make_api, broker, database_url)
    bridge = bridge_of(api)
    release = threading.Event()
    publish = bridge._publish

    async def held_acks(topic: str, payload: str, retain: bool = False, qos: Any = 1) -> bool:
        while topic.endswith("/ack") and not release.is_set():
            await asyncio.sleep(0.01)
        return await publish(topic, payload, retain, qos)

    monkeypatch.setattr(bridge, "_publish", held_acks)
    token = api.post("/devices", json={"id": "dev-a"}).json()["token"]
    broker.add_user("dev-a", token)
    device = Device(broker, "dev-a", token)
    try:
        device.send("telemetry", window("dev-a", 1))
        wait_until(lambda: bridge.counters.stored_windows == 1, what="the first batch stored")
        for seq in range(2, 51):
            device.send("telemetry", window("dev-a", seq))
        wait_until(lambda: bridge.counters.stored_windows == 50, what="later batches stored")
        assert acked(device) == []
        release.set()
        wait_until(lambda: acked(device) == list(range(1, 51)), what="every window acknowledged")
    finally:
        release.set()
        device.close()


def test_a_burst_larger_than_the_ingest_queue_loses_nothing(
    make_api: MakeApi,
    broker: MosquittoBroker,
    database_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the database is held up (a long write elsewhere, as a 100,000-device rollout
    makes on SQLite), a device sends 40 times what the ingest queue holds. The bridge
    waits for room in the queue instead of dropping what does not fit, and reads no more
    from the broker meanwhile (at 100,000 devices it read a whole flood into 4.9 GB): the
    rest waits at the broker, and every window is stored once the database is free."""
    monkeypatch.setattr("control_plane.fleet.bridge.QUEUE_MAX", 25)
    monkeypatch.setattr("control_plane.fleet.bridge.READ_BACKLOG", 50)
    api = connected_api(make_api, broker, database_url)
    bridge = bridge_of(api)
    token = api.post("/devices", json={"id": "dev-a"}).json()["token"]
    broker.add_user("dev-a", token)
    device = Device(broker, "dev-a", token)
    held = hold_the_telemetry_table(api)
    try:
        device.send("telemetry", window("dev-a", 1))
        wait_until(
            lambda: bridge.counters.received == 1 and bridge._queue.empty(),
            what="the first window taken for storing",
        )
        for seq in range(2, 1001):
            device.send("telemetry", window("dev-a", seq))
        wait_until(bridge._queue.full, what="the ingest queue full")
        inbound = bridge._inbound
        assert inbound is not None
        wait_until(lambda: inbound.paused, what="reading paused")
        # Read from the broker: a batch taken for storing and the queue (each at most
        # QUEUE_MAX), the message waiting for room, and at most READ_BACKLOG (+ the packet
        # read as it filled) not yet parsed. The other ~900 wait at the broker.
        assert bridge.counters.received <= 2 * 25 + 2
        assert inbound.backlog <= 50 + 1
        held.rollback()
        wanted = list(range(1, 1001))
        wait_until(lambda: acked(device) == wanted, what="every window acknowledged", timeout=120)
        assert bridge.counters.dropped == 0
        assert bridge.counters.poisoned == 0
        stored = api.get("/devices/dev-a/telemetry", params={"limit": 2000}).json()
        assert sorted(w["window"]["seq"] for w in stored) == wanted
    finally:
        held.close()
        device.close()
