"""A rollout's devices per version over time, summed by the database: the sums
``rollouts.history.versions_over_time`` replays device by device, without reading a row per
device (at 100,000 devices the replay in Python took 0.5-0.8 s)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import String, Subquery, and_, case, cast, func, select
from sqlmodel import Session, col

from control_plane.audit.types import EventType
from control_plane.rollouts.history import CountedChange
from control_plane.store.tables import DeviceModel, Event, RolloutDevice, as_utc


def _steps(rollout_id: str, model: str, start: datetime) -> Subquery:
    """The rollout's devices' version changes after ``start``, in the order stored: each
    with the moment it counts from, what it went from, and whether it is its device's
    first."""
    members = select(col(RolloutDevice.device_id)).where(
        col(RolloutDevice.rollout_id) == rollout_id
    )
    # ``previous`` is DeviceModelData's field; an event recorded before events carried it has
    # no data and cannot be replayed.
    changes = (
        select(
            col(Event.id).label("id"),
            col(Event.device_id).label("device_id"),
            col(Event.at).label("at"),
            col(Event.data)["previous"].as_integer().label("previous"),
            col(Event.version).label("version"),
        )
        .where(
            col(Event.type) == EventType.DEVICE_MODEL,
            col(Event.model_name) == model,
            col(Event.device_id).in_(members),
            col(Event.at) > start,
            cast(col(Event.data), String) != "null",  # JSON null: no payload
        )
        .cte("changes")
    )
    device, order = changes.c.device_id, changes.c.id
    first = func.lag(changes.c.id).over(partition_by=device, order_by=order).is_(None)
    return select(
        func.max(changes.c.at).over(order_by=changes.c.id, rows=(None, 0)).label("at"),
        case(
            (first, changes.c.previous),
            else_=func.lag(changes.c.version).over(partition_by=device, order_by=order),
        ).label("was"),
        changes.c.version,
        first.label("first"),
        changes.c.device_id,
    ).subquery("steps")


def counted_versions(
    session: Session, rollout_id: str, model: str, start: datetime
) -> tuple[Counter[int | None], list[CountedChange]]:
    """The rollout's devices per version of ``model`` at ``start``, and the version changes
    they reported after it (``device_model`` events) grouped by (moment, from, to).

    A device served at ``start`` what its first change came from, or what it serves now if
    it never changed; each change goes from what the device's previous change went to (its
    first from its own ``previous``), and counts from the latest moment among it and the
    changes stored before it: ``versions_over_time``'s replay, in window functions."""
    steps = _steps(rollout_id, model, start)
    serving = and_(
        col(DeviceModel.device_id) == RolloutDevice.device_id, col(DeviceModel.model_name) == model
    )
    now = session.execute(
        select(col(DeviceModel.version), func.count())
        .select_from(RolloutDevice)
        .outerjoin(DeviceModel, serving)
        .where(col(RolloutDevice.rollout_id) == rollout_id)
        .group_by(col(DeviceModel.version))
    ).all()
    # One pass over the changes (window functions are the cost): grouped by moment, from,
    # to, and for a device's first change also what the device serves now, because a device
    # that changed served at the start what its first change came from.
    current = and_(
        col(DeviceModel.device_id) == steps.c.device_id,
        col(DeviceModel.model_name) == model,
        steps.c.first,
    )
    grouped = (steps.c.at, steps.c.was, steps.c.version, steps.c.first, col(DeviceModel.version))
    rows = session.execute(
        select(*grouped, func.count())
        .select_from(steps)
        .outerjoin(DeviceModel, current)
        .group_by(*grouped)
    ).all()
    at_start: Counter[int | None] = Counter({version: int(n) for version, n in now})
    moved: Counter[tuple[datetime, int | None, int | None]] = Counter()
    for at, was, version, first, serving_now, n in rows:
        if first:
            at_start[serving_now] -= int(n)
            at_start[was] += int(n)
        moved[as_utc(at), was, version] += int(n)
    return (
        at_start,
        [CountedChange(at, was, version, n) for (at, was, version), n in moved.items()],
    )
