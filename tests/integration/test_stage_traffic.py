"""A stage's running sums (``rollouts/traffic.py``) read what a full re-read of every stored
window reads, tick after tick, on real SQLite and PostgreSQL: windows arriving between
ticks, windows of devices outside the stage, of other versions and from before the
lookback, and a row that commits after a row with a higher id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session

from control_plane.fleet.ingestion import Incoming, store_batch
from control_plane.monitoring.windows import encode
from control_plane.rollouts.gates import Pair, Traffic
from control_plane.rollouts.machine import RolloutStatus
from control_plane.rollouts.traffic import Member, StageTraffic
from control_plane.store.tables import Rollout, RolloutDevice, TelemetryModelRecord
from shared.messages import ModelWindow, TelemetryWindow
from shared.stats import LATENCY_BUCKETS

pytestmark = pytest.mark.integration
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LOOKBACK = timedelta(minutes=10)
STAGE = ["dev-0", "dev-1", "dev-2"]  # assigned, updated from v1 to v2
REST = ["dev-3", "dev-4"]  # in the rollout, not in this stage
MEMBERS = {d: Member(START + timedelta(minutes=i), 1) for i, d in enumerate(STAGE)}


@pytest.fixture
def stage(engine: Engine) -> Engine:
    """The database with rollout r1: STAGE assigned v2 (from v1), REST in it unassigned."""
    with Session(engine) as session:
        session.add(rollout())
        for rank, device_id in enumerate(STAGE + REST):
            member = MEMBERS.get(device_id)
            session.add(
                RolloutDevice(
                    rollout_id="r1",
                    device_id=device_id,
                    rank=rank,
                    assigned_stage=0 if member else None,
                    assigned_at=member.assigned_at if member else None,
                    previous_version=1 if member else None,
                )
            )
        session.commit()
    return engine


def rollout() -> Rollout:
    return Rollout(
        id="r1",
        model_name="m",
        version=2,
        selector="",
        plan={},
        status=RolloutStatus.RUNNING,
        stage=0,
        stage_started_at=START,
        created_by="test",
    )


def model(version: int, requests: int, errors: int, bucket: int) -> ModelWindow:
    latency = [0] * LATENCY_BUCKETS
    latency[bucket] = requests
    return ModelWindow(
        name="m",
        version=version,
        sha256="a" * 64,
        requests=requests,
        errors=errors,
        latency_counts=latency,
        features=[],
        predictions=[max(requests - errors, 0), errors],
    )


SEQ = iter(range(1, 10**9))
windows = st.builds(
    lambda device, version, minute, requests, errors, bucket: TelemetryWindow(
        device_id=device,
        seq=next(SEQ),
        window_start=START + timedelta(minutes=minute - 1),
        window_end=START + timedelta(minutes=minute),
        models=[model(version, requests, errors, bucket)],
        outbox_dropped=0,
    ),
    st.sampled_from(STAGE + REST + ["dev-other"]),
    st.sampled_from([1, 2, 3]),
    st.integers(-20, 30),
    st.integers(0, 500),
    st.integers(0, 5),
    st.integers(0, LATENCY_BUCKETS - 1),
)


def reading(traffic: StageTraffic, engine: Engine) -> tuple[list[Pair], Traffic]:
    with Session(engine) as session:
        return traffic.read(session, rollout(), MEMBERS, START, LOOKBACK, None)


def assert_same(a: tuple[list[Pair], Traffic], b: tuple[list[Pair], Traffic]) -> None:
    def flat(t: Traffic) -> tuple[object, ...]:
        predictions = None if t.predictions is None else t.predictions.tolist()
        return (sorted(t.devices), t.requests, t.errors, t.latency.tolist(), predictions)

    pairs_a = {p.device_id: (flat(p.before), flat(p.after)) for p in a[0]}
    pairs_b = {p.device_id: (flat(p.before), flat(p.after)) for p in b[0]}
    assert pairs_a == pairs_b
    assert flat(a[1]) == flat(b[1])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(ticks=st.lists(st.tuples(st.lists(windows, max_size=6), st.floats(0, 40)), max_size=8))
def test_running_sums_read_what_a_full_read_reads(
    stage: Engine, ticks: list[tuple[list[TelemetryWindow], float]]
) -> None:
    engine = stage
    clock = Clock()
    running = StageTraffic(settle_seconds=30, clock=clock)
    with Session(engine) as session:  # windows of earlier examples: the reading starts over
        session.exec(TelemetryModelRecord.__table__.delete())  # type: ignore[attr-defined]
        session.commit()
    for batch, elapsed in ticks:
        store_batch(engine, list[Incoming](batch))
        clock.now += elapsed
        assert_same(reading(running, engine), reading(StageTraffic(settle_seconds=0), engine))


def test_a_row_committed_after_a_higher_id_is_still_counted(stage: Engine) -> None:
    """A row whose id is below one already read (its transaction committed later) is added
    when its id settles, neither lost nor counted twice."""
    engine = stage
    clock = Clock()
    running = StageTraffic(settle_seconds=30, clock=clock)
    late = model(2, 40, 1, 3)
    encoded = encode(late)

    def insert(row_id: int, window_id: int) -> None:
        with Session(engine) as session:
            session.add(
                TelemetryModelRecord(
                    id=row_id,
                    window_id=window_id,
                    position=0,
                    device_id="dev-1",
                    window_end=START + timedelta(minutes=5),
                    model_name="m",
                    version=2,
                    sha256=late.sha256,
                    requests=late.requests,
                    errors=late.errors,
                    shape=encoded.shape,
                    counts=encoded.counts,
                    moments=encoded.moments,
                )
            )
            session.commit()

    window = TelemetryWindow(
        device_id="dev-1",
        seq=1,
        window_start=START,
        window_end=START + timedelta(minutes=5),
        models=[late],
        outbox_dropped=0,
    )
    store_batch(engine, [window, window.model_copy(update={"seq": 2})])
    insert(1000, 1)  # a high id first …
    first = reading(running, engine)
    clock.now += 5
    insert(999, 2)  # … then a lower one, committed later but within the settle time
    for step in (0, 40, 40):
        clock.now += step
        got = reading(running, engine)
        assert_same(got, reading(StageTraffic(settle_seconds=0), engine))
    after = {p.device_id: p.after for p in got[0]}["dev-1"]
    assert after.requests == 4 * 40 and after.errors == 4
    assert np.asarray(after.latency)[3] == 4 * 40
    assert {p.device_id: p.after for p in first[0]}["dev-1"].requests == 3 * 40
