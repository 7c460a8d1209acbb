"""A rollout stage's traffic as running sums: each stored window is read once, not on every
tick of a stage (a soak of an hour over 100,000 devices is millions of windows).

Windows are read in ``telemetry_model`` id order. Ids are handed out when a row is
inserted, but a transaction commits later, so a row with a smaller id can appear after one
with a larger id (PostgreSQL, several ingest processes). The sums therefore keep only rows
up to an id seen at least ``settle`` seconds ago (every row below it was inserted before
then, and an ingest transaction takes far less), and each tick adds the newer rows to a
copy for that tick's reading only. A change of stage or of the stage's devices starts the
sums again from the database.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from control_plane.monitoring.windows import shape_of
from control_plane.rollouts.gates import Pair, Traffic
from control_plane.store.db import fast_rows
from control_plane.store.tables import Rollout, RolloutDevice, TelemetryModelRecord, as_utc

SETTLE_SECONDS = 30.0

# A window's prediction counts re-binned onto the rolled-out version's grid (regression),
# given the version that served it; None for classes.
Rebin = Callable[[int, npt.NDArray[np.int64]], npt.NDArray[np.float64]] | None


@dataclass(frozen=True)
class Member:
    """A device of the stage: when its desired state was sent, and what it ran before."""

    assigned_at: datetime
    previous_version: int | None


@dataclass
class _Sums:
    key: tuple[object, ...]
    members: dict[str, Member]
    since: datetime
    pairs: dict[str, Pair]
    baseline: Traffic = field(default_factory=Traffic)
    folded: int = 0  # telemetry_model ids up to here are in the sums
    marks: deque[tuple[float, int]] = field(default_factory=deque)  # (seen at, top id)


class StageTraffic:
    """Running sums per rollout (one stage at a time); see the module's docstring."""

    def __init__(
        self, settle_seconds: float = SETTLE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settle = settle_seconds
        self.clock = clock
        self._sums: dict[str, _Sums] = {}
        self._members: dict[str, tuple[tuple[object, ...], dict[str, Member]]] = {}

    def read(
        self,
        session: Session,
        rollout: Rollout,
        members: dict[str, Member],
        started: datetime,
        lookback: timedelta,
        rebin: Rebin,
    ) -> tuple[list[Pair], Traffic]:
        """The stage devices' own traffic before and after their update, and the rest of
        the rollout's over the stage's span."""
        assert rollout.id is not None
        key = (rollout.stage, started, lookback, rollout.version)
        sums = self._sums.get(rollout.id)
        if (
            sums is None
            or sums.key != key
            or (sums.members is not members and sums.members != members)
        ):
            since = min([started, *(m.assigned_at - lookback for m in members.values())])
            sums = _Sums(key, members, since, {d: Pair(d) for d in members})
            self._sums[rollout.id] = sums
        settled = self._settled(session, sums)
        classify = _Classifier(rollout, sums, started, lookback, rebin)
        for row in _rows(session, rollout, sums.since, sums.folded, settled):
            classify.add(row, sums.pairs, sums.baseline)
        sums.folded = max(sums.folded, settled)
        pairs, baseline = dict(sums.pairs), sums.baseline
        copied: set[str] = set()
        fresh = _rows(session, rollout, sums.since, sums.folded, None)
        if fresh:
            baseline = baseline.copy()
        for row in fresh:
            device_id = row[0]
            if device_id in pairs and device_id not in copied:
                pair = pairs[device_id]
                pairs[device_id] = Pair(device_id, pair.before.copy(), pair.after.copy())
                copied.add(device_id)
            classify.add(row, pairs, baseline)
        return list(pairs.values()), baseline

    def members(self, session: Session, rollout: Rollout, started: datetime) -> dict[str, Member]:
        """The stage's devices (those assigned the version so far), read again only when
        their count or latest assignment changed: a tick at 100,000 devices otherwise
        spent most of its time building this from the database."""
        assert rollout.id is not None
        assigned = (
            RolloutDevice.rollout_id == rollout.id,
            col(RolloutDevice.assigned_stage).is_not(None),
        )
        count, latest = session.exec(
            select(func.count(), func.max(RolloutDevice.assigned_at)).where(*assigned)
        ).one()
        fingerprint = (rollout.stage, started, count, latest)
        cached = self._members.get(rollout.id)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        members = {
            device_id: Member(as_utc(at) or started, previous)
            for device_id, at, previous in session.exec(
                select(
                    RolloutDevice.device_id,
                    RolloutDevice.assigned_at,
                    RolloutDevice.previous_version,
                ).where(*assigned)
            )
        }
        self._members[rollout.id] = (fingerprint, members)
        return members

    def forget(self, keep: set[str]) -> None:
        """Drop the sums of rollouts no longer running."""
        for rollout_id in set(self._sums) - keep:
            del self._sums[rollout_id]
        for rollout_id in set(self._members) - keep:
            del self._members[rollout_id]

    def _settled(self, session: Session, sums: _Sums) -> int:
        """The highest id below which every row is committed (seen ``settle`` seconds ago)."""
        now = self.clock()
        top = session.exec(select(func.max(TelemetryModelRecord.id))).one()
        sums.marks.append((now, top or 0))
        settled = sums.folded
        while sums.marks and sums.marks[0][0] <= now - self.settle:
            settled = max(settled, sums.marks.popleft()[1])
        return settled


Row = tuple[str, datetime, int, int, int, bytes, bytes]


def _rows(
    session: Session, rollout: Rollout, since: datetime, above: int, upto: int | None
) -> list[Row]:
    t = TelemetryModelRecord.__table__.c  # type: ignore[attr-defined]
    members = select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == rollout.id)
    query = sa_select(
        t.device_id, t.window_end, t.version, t.requests, t.errors, t.shape, t.counts
    ).where(
        t.id > above,
        t.model_name == rollout.model_name,
        t.window_end >= since,
        t.device_id.in_(members),
    )
    if upto is not None:
        if upto <= above:
            return []
        query = query.where(t.id <= upto)
    return fast_rows(session, query)


@dataclass
class _Classifier:
    rollout: Rollout
    sums: _Sums
    started: datetime
    lookback: timedelta
    rebin: Rebin

    def add(self, row: Row, pairs: dict[str, Pair], baseline: Traffic) -> None:
        """Add one window to the side it belongs to: a stage device's own before (the
        previous version, within the lookback before its update) or after (the new version
        since its update), or the rest of the rollout over the stage's span."""
        device_id, ended, version, requests, errors, shape, counts = row
        end = as_utc(ended)
        mine = self.sums.members.get(device_id)
        if mine is None:  # the rest of the rollout, over the stage's span
            side = baseline if end >= self.started else None
        elif version == self.rollout.version and end >= mine.assigned_at:
            side = pairs[device_id].after
        elif (
            version == mine.previous_version
            and mine.assigned_at - self.lookback <= end <= mine.assigned_at
        ):
            side = pairs[device_id].before
        else:
            return
        if side is None:
            return
        n_latency, n_predictions, _ = shape_of(shape)
        ints = np.frombuffer(counts, dtype="<i8")
        latency = ints[2 : 2 + n_latency]
        predictions = ints[2 + n_latency : 2 + n_latency + n_predictions]
        if self.rebin is not None:
            side.add(device_id, requests, errors, latency, self.rebin(version, predictions))
        else:
            side.add(device_id, requests, errors, latency, predictions)
