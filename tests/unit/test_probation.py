"""Probation ends at the first of: a failure, enough requests, or its time."""

from __future__ import annotations

import time

from agent.slot import Probation
from shared.messages import Verdict


def probation(requests: int, seconds: float, **kw: float) -> Probation:
    return Probation(
        sha256="a" * 64,
        seq=1,
        min_requests=requests,
        min_seconds=seconds,
        latency_budget_us=kw.get("budget_us", 1e6),
        max_error_rate=kw.get("max_error_rate", 0.0),
    )


def test_zero_zero_commits_at_once() -> None:
    p = probation(0, 0)
    assert p.passed()
    assert p.verdict() is Verdict.UNJUDGED


def test_enough_requests_commit_before_the_time_is_up() -> None:
    p = probation(3, 3600)
    for _ in range(2):
        p.observe(ok=True, latency_us=10)
    assert not p.passed()
    p.observe(ok=True, latency_us=10)
    assert p.passed()
    assert p.verdict() is Verdict.JUDGED


def test_no_traffic_commits_on_time_unjudged() -> None:
    p = probation(50, 0.05)
    assert not p.passed()
    time.sleep(0.06)
    assert p.passed()
    assert p.verdict() is Verdict.UNJUDGED
    assert p.failure() is None


def test_zero_requests_judges_by_time_alone() -> None:
    p = probation(0, 3600)
    for _ in range(100):
        p.observe(ok=True)
    assert not p.passed()


def test_failures_still_fail() -> None:
    p = probation(50, 3600)
    p.observe(ok=True, nan=True)
    assert p.failure() is not None and "NaN" in p.failure()  # type: ignore[operator]
    slow = probation(50, 3600, budget_us=100)
    for _ in range(5):
        slow.observe(ok=True, latency_us=1000)
    assert slow.failure() is not None
    errors = probation(50, 3600, max_error_rate=0.1)
    errors.observe(ok=False)
    assert errors.failure() is not None


def test_the_deciding_request_notifies_once() -> None:
    calls: list[int] = []
    p = probation(2, 3600)
    p.on_decision = lambda: calls.append(p.requests)
    for _ in range(5):
        p.observe(ok=True)
    assert calls == [2]
    failing = probation(50, 3600)
    failing.on_decision = lambda: calls.append(-1)
    failing.observe(ok=False)
    failing.observe(ok=False)
    assert calls == [2, -1]
