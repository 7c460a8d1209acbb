"""Devices per version over a rollout's life, replayed from reported version changes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from control_plane.rollouts.history import VersionChange, versions_over_time

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def counts(points: list[tuple[datetime, Counter[int | None]]]) -> list[dict[int | None, int]]:
    return [dict(c) for _, c in points]


def test_devices_move_from_their_old_version_to_the_new_one_at_the_moment_they_report_it() -> None:
    now = {"a": 2, "b": 2, "c": 1}
    changes = [VersionChange(at(10), "a", 1, 2), VersionChange(at(20), "b", None, 2)]
    replayed = versions_over_time(T0, at(30), now, changes, points=4)
    assert [moment for moment, _ in replayed] == [at(0), at(10), at(20), at(30)]
    assert counts(replayed) == [
        {1: 2, None: 1},
        {1: 1, 2: 1, None: 1},
        {1: 1, 2: 2},
        {1: 1, 2: 2},
    ]


def test_a_device_that_went_there_and_back_is_counted_where_it_was_at_each_moment() -> None:
    changes = [VersionChange(at(5), "a", 1, 2), VersionChange(at(15), "a", 2, 1)]
    replayed = versions_over_time(T0, at(20), {"a": 1}, changes, points=5)
    assert counts(replayed) == [{1: 1}, {2: 1}, {2: 1}, {1: 1}, {1: 1}]


def test_changes_before_the_start_and_of_other_devices_are_left_out() -> None:
    changes = [VersionChange(at(-5), "a", None, 1), VersionChange(at(5), "stranger", 1, 2)]
    replayed = versions_over_time(T0, at(10), {"a": 1}, changes, points=2)
    assert counts(replayed) == [{1: 1}, {1: 1}]


def test_a_rollout_with_no_time_yet_is_one_moment() -> None:
    assert counts(versions_over_time(T0, T0, {"a": 3}, [], points=60)) == [{3: 1}]
