"""A rollout's devices per version over time, summed by the database
(``rollouts.version_counts``), against the replay device by device
(``rollouts.history.versions_over_time``) it replaced, on real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete
from sqlmodel import Session

from control_plane.audit.types import EventType
from control_plane.rollouts.history import (
    VersionChange,
    counts_over_time,
    moments,
    versions_over_time,
)
from control_plane.rollouts.machine import RolloutStatus
from control_plane.rollouts.version_counts import counted_versions
from control_plane.store.tables import Device, DeviceModel, Event, Rollout, RolloutDevice

pytestmark = pytest.mark.integration
START = datetime(2026, 1, 1, tzinfo=UTC)
DEVICES = [f"dev-{i}" for i in range(6)]
MEMBERS = DEVICES[:4]  # the others' changes are not the rollout's
VERSIONS = st.none() | st.integers(1, 3)
MISSING = "missing"  # an event without a ``previous`` in its data
Change = tuple[str, str, int, int | str | None, int | None, bool]


def previous_of(previous: int | str | None) -> int | None:
    return None if isinstance(previous, str) else previous


changes = st.tuples(
    st.sampled_from(DEVICES),
    st.sampled_from(["fault", "fault", "fault", "other"]),
    st.integers(-5_000_000, 40_000_000),  # µs after the start, in any order
    VERSIONS | st.just(MISSING),
    VERSIONS,
    st.sampled_from([False, False, False, True]),  # JSON null data: not replayed
)


def store(session: Session, serving: dict[str, int | None], events: list[Change]) -> None:
    for table in (Event, DeviceModel, RolloutDevice, Rollout, Device):
        session.exec(delete(table))
    session.add_all(Device(id=d, labels={}) for d in DEVICES)
    session.add(
        Rollout(
            id="r1", model_name="fault", version=2, selector="", plan={}, created_by="t",
            status=RolloutStatus.RUNNING, created_at=START,
        )
    )  # fmt: skip
    session.add_all(
        RolloutDevice(rollout_id="r1", device_id=d, rank=i) for i, d in enumerate(MEMBERS)
    )
    session.add_all(
        DeviceModel(device_id=d, model_name="fault", version=v, phase="serving")
        for d, v in serving.items()
    )
    session.flush()
    for device, model, after, previous, version, null in events:
        data = None if null else {} if previous == MISSING else {"previous": previous}
        session.add(
            Event(
                type=EventType.DEVICE_MODEL, device_id=device, model_name=model, version=version,
                at=START + timedelta(microseconds=after), data=data, message="m",
            )
        )  # fmt: skip
        session.flush()  # ids in this order
    session.commit()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    serving=st.dictionaries(st.sampled_from(MEMBERS), VERSIONS),
    events=st.lists(changes, max_size=14),
    seconds=st.integers(0, 40),
    points=st.integers(2, 7),
)
def test_the_database_sums_what_the_replay_counts(
    engine: Engine,
    serving: dict[str, int | None],
    events: list[Change],
    seconds: int,
    points: int,
) -> None:
    """Devices without a row serve nothing; changes of other devices, other models, before
    the start, without data or without ``previous``; a change stored after a later-dated
    one; a device changed several times: the same counts at every moment."""
    end = START + timedelta(seconds=seconds)
    with Session(engine) as session:
        store(session, serving, events)
        at_start, summed = counted_versions(session, "r1", "fault", START)
    replayed = versions_over_time(
        START,
        end,
        {d: serving.get(d) for d in MEMBERS},
        [
            VersionChange(START + timedelta(microseconds=after), device, previous_of(p), v)
            for device, model, after, p, v, null in events
            if model == "fault" and not null
        ],
        points,
    )
    assert counts_over_time(moments(START, end, points), at_start, summed) == replayed


def test_a_change_stored_after_a_later_dated_one_waits_for_it(engine: Engine) -> None:
    """The replay applies changes in the order they were stored, each once its moment has
    come: one dated 10 s stored after one dated 30 s counts from 30 s, as it did."""
    events: list[Change] = [
        ("dev-0", "fault", 30_000_000, 1, 2, False),
        ("dev-1", "fault", 10_000_000, 1, 3, False),
    ]
    with Session(engine) as session:
        store(session, {"dev-0": 2, "dev-1": 3}, events)
        at_start, summed = counted_versions(session, "r1", "fault", START)
    counted = counts_over_time(moments(START, START + timedelta(seconds=40), 5), at_start, summed)
    assert [dict(c) for _, c in counted] == [
        {1: 2, None: 2},
        {1: 2, None: 2},
        {1: 2, None: 2},
        {2: 1, 3: 1, None: 2},
        {2: 1, 3: 1, None: 2},
    ]
