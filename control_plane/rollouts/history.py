"""Devices per version over a rollout's life, from the version changes devices reported
(``device_model`` events). Pure: the caller reads the events and the devices' current
versions (or has the database count them); this only replays them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class VersionChange:
    at: datetime
    device_id: str
    previous: int | None
    version: int | None


@dataclass(frozen=True, slots=True)
class CountedChange:
    """``devices`` devices moved from ``was`` (what each served just before) to
    ``version``, counted from the first moment at or after ``at``."""

    at: datetime
    was: int | None
    version: int | None
    devices: int


def moments(start: datetime, end: datetime, points: int) -> list[datetime]:
    """``points`` moments evenly spread from ``start`` to ``end`` (one if there is no time)."""
    if points < 2 or end <= start:
        return [start]
    step = (end - start) / (points - 1)
    return [start + step * i for i in range(points)]


def counts_over_time(
    at: list[datetime], at_start: Mapping[int | None, int], changes: Iterable[CountedChange]
) -> list[tuple[datetime, Counter[int | None]]]:
    """Devices per version at each of the moments ``at``, from the devices per version at
    the first and the changes after it (in any order: they add up)."""
    counts: Counter[int | None] = Counter(at_start)
    pending = sorted(changes, key=lambda c: c.at)
    out = []
    next_change = 0
    for moment in at:
        while next_change < len(pending) and pending[next_change].at <= moment:
            change = pending[next_change]
            counts[change.was] -= change.devices
            counts[change.version] += change.devices
            next_change += 1
        out.append((moment, +counts))  # unary plus drops versions no device serves
    return out


def versions_over_time(
    start: datetime,
    end: datetime,
    now_serving: Mapping[str, int | None],
    changes: Iterable[VersionChange],
    points: int,
) -> list[tuple[datetime, Counter[int | None]]]:
    """Devices per version at ``points`` moments evenly spread from ``start`` to ``end``.

    ``now_serving`` holds every device counted and the version it serves now; ``changes``
    are the changes the devices reported after ``start``, oldest first. A device serves at
    ``start`` what its first change came from, or what it serves now if it never changed;
    a change of a device not in ``now_serving`` is ignored. A change counts from the first
    moment at or after it and every change before it (a change stored after a later-dated
    one waits for it). The API has the database do the same sums
    (``api.routes.rollouts``); this replay is what they are tested against."""
    changes = [c for c in changes if c.device_id in now_serving and start < c.at]
    serving = dict(now_serving)
    for change in reversed(changes):  # unwind to the start
        serving[change.device_id] = change.previous
    at_start = Counter(serving.values())
    counted = []
    latest: datetime | None = None
    for change in changes:
        latest = change.at if latest is None else max(latest, change.at)
        was, serving[change.device_id] = serving[change.device_id], change.version
        counted.append(CountedChange(latest, was, change.version, 1))
    return counts_over_time(moments(start, end, points), at_start, counted)
