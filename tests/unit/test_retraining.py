"""Retraining decisions: cooldown, data, schedule, champion vs challenger, accuracy drops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from control_plane.monitoring import release
from control_plane.monitoring.policy import (
    Go,
    ModelPolicy,
    RetrainPolicy,
    Wait,
    accuracy_low,
    compare,
    next_accuracy_streak,
    retrain_decision,
    schedule_due,
)
from control_plane.monitoring.release import Release

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


def test_cooldown_holds_back_automatic_triggers_but_not_a_manual_one() -> None:
    policy = RetrainPolicy(cooldown_seconds=3600, min_labelled_rows=100)
    recent = NOW - timedelta(minutes=10)
    waiting = retrain_decision(
        policy, trigger="drift", now=NOW, last_started_at=recent, labelled_rows=10_000
    )
    assert isinstance(waiting, Wait) and "cooldown until 2026-11-22T12:50:00" in waiting.reason
    assert isinstance(
        retrain_decision(
            policy, trigger="manual", now=NOW, last_started_at=recent, labelled_rows=10_000
        ),
        Go,
    )
    later = NOW + timedelta(minutes=51)
    assert isinstance(
        retrain_decision(
            policy, trigger="accuracy", now=later, last_started_at=recent, labelled_rows=100
        ),
        Go,
    )


def test_too_few_labelled_rows_wait_even_for_a_manual_trigger() -> None:
    policy = RetrainPolicy(min_labelled_rows=500)
    decision = retrain_decision(
        policy, trigger="manual", now=NOW, last_started_at=None, labelled_rows=499
    )
    assert decision == Wait("499 recent labelled rows, 500 needed")


def test_schedule() -> None:
    policy = RetrainPolicy(triggers=["schedule"], schedule_seconds=86_400)
    assert schedule_due(policy, NOW, None)
    assert not schedule_due(policy, NOW, NOW - timedelta(hours=23))
    assert schedule_due(policy, NOW, NOW - timedelta(hours=24))
    assert not schedule_due(RetrainPolicy(), NOW, None)  # no schedule trigger
    with pytest.raises(ValidationError, match="schedule_seconds"):
        RetrainPolicy(triggers=["schedule"])


def test_challenger_must_beat_the_champion_by_the_margin() -> None:
    assert compare("accuracy", 0.80, 0.82, 0.02).better
    assert not compare("accuracy", 0.80, 0.8199, 0.02).better
    assert not compare("accuracy", 0.80, 0.80, 0.0).better  # a tie keeps the champion
    assert compare("accuracy", 0.80, 0.8001, 0.0).better
    # Errors: lower is better, the margin is a share of the champion's error.
    assert compare("rmse", 10.0, 9.7, 0.02).better
    assert not compare("rmse", 10.0, 9.9, 0.02).better
    text = compare("f1_macro", 0.7, 0.6, 0.02).describe()
    assert text == (
        "challenger f1_macro 0.6000 does not beat the champion's 0.7000 (needed 0.7200)"
    )


def test_accuracy_drop_needs_enough_labels_and_consecutive_buckets() -> None:
    policy = ModelPolicy().accuracy  # 0.1 below validation, 50 labels, 2 buckets
    assert accuracy_low(0.70, 60, 0.85, policy) is True
    assert accuracy_low(0.80, 60, 0.85, policy) is False
    assert accuracy_low(0.10, 49, 0.85, policy) is None  # too few labels: no verdict
    assert accuracy_low(0.10, 60, None, policy) is None  # no validation accuracy
    streak = 0
    for low in (True, None, True, False, True):
        streak = next_accuracy_streak(streak, low)
    assert streak == 1  # True, (unjudged), True = 2, then reset by False, then 1


def test_policy_validation() -> None:
    with pytest.raises(ValidationError):
        ModelPolicy.model_validate({"retrain": {"holdout_fraction": 1.0}})
    with pytest.raises(ValidationError):
        ModelPolicy.model_validate({"drift": {"psi_watch": 0.3, "psi_drift": 0.2}})
    with pytest.raises(ValidationError):
        ModelPolicy.model_validate({"retrain": {"triggers": ["sometimes"]}})
    with pytest.raises(ValidationError):
        ModelPolicy.model_validate({"surprise": 1})
    plan = ModelPolicy.model_validate({}).retrain.plan
    assert plan.preset == "canary" and plan.gates.max_prediction_js == 1.0


def test_the_release_of_a_challenger_goes_one_way() -> None:
    assert release.registered(auto_rollout=True) is Release.PENDING_ROLLOUT
    waiting = release.registered(auto_rollout=False)
    assert waiting is Release.AWAITING_APPROVAL
    assert release.rolling_out(waiting) is None  # not before an operator approves it
    assert release.approved(waiting) is Release.APPROVED
    assert release.approved(Release.APPROVED) is None  # approving twice changes nothing
    assert release.approved(None) is None  # nor a version that is no challenger
    for ready in (Release.PENDING_ROLLOUT, Release.APPROVED):
        assert release.rolling_out(ready) is Release.ROLLING_OUT
    assert release.rolling_out(Release.ROLLING_OUT) is None  # one rollout per release
