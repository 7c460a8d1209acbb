"""Devices per version over a rollout's life, from the version changes devices reported
(``device_model`` events). Pure: the caller reads the events and the devices' current
versions; this only replays them."""

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
    a change of a device not in ``now_serving`` is ignored."""
    changes = [c for c in changes if c.device_id in now_serving and start < c.at]
    serving = dict(now_serving)
    for change in reversed(changes):  # unwind to the start
        serving[change.device_id] = change.previous
    moments = [start] if points < 2 or end <= start else []
    if not moments:
        step = (end - start) / (points - 1)
        moments = [start + step * i for i in range(points)]
    counts: Counter[int | None] = Counter(serving.values())
    out = []
    next_change = 0
    for moment in moments:
        while next_change < len(changes) and changes[next_change].at <= moment:
            change = changes[next_change]
            counts[serving[change.device_id]] -= 1
            serving[change.device_id] = change.version
            counts[change.version] += 1
            next_change += 1
        out.append((moment, +counts))  # unary plus drops versions no device serves
    return out
