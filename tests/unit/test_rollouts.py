from datetime import UTC, datetime, timedelta

import pytest

from control_plane.errors import ConflictError
from control_plane.rollouts.gates import GateResult
from control_plane.rollouts.machine import (
    MakeDefault,
    Operator,
    Record,
    RestoreDefault,
    RevertDevices,
    RolloutStatus,
    StartStage,
    Tick,
    initial_state,
    step,
)
from control_plane.rollouts.plans import PlanSpec, StageSpec, resolve

T0 = datetime(2026, 11, 22, tzinfo=UTC)
STAGES = resolve(
    PlanSpec(stages=[StageSpec(count=1, soak_seconds=60), StageSpec(percent=50, soak_seconds=60)]),
    10,
)


def gate(status: str) -> GateResult:
    return GateResult(
        name="install",
        status=status,
        value=1.0,
        threshold=1.0,
        detail="x",
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def kinds(actions: list) -> list[str]:  # type: ignore[type-arg]
    return [a.type if isinstance(a, Record) else type(a).__name__ for a in actions]


def test_happy_path_through_every_stage() -> None:
    state, actions = step(initial_state(), Tick(at(0)), STAGES, "rollback")
    assert actions[0] == StartStage(0, 1)
    state, actions = step(state, Tick(at(30), (gate("pass"),)), STAGES, "rollback")
    assert actions == []  # soaking
    state, actions = step(state, Tick(at(61), (gate("wait"),)), STAGES, "rollback")
    assert actions == []  # gates not yet decided
    state, actions = step(state, Tick(at(62), (gate("pass"),)), STAGES, "rollback")
    assert StartStage(1, 5) in actions
    state, actions = step(state, Tick(at(200), (gate("pass"),)), STAGES, "rollback")
    assert StartStage(2, 10) in actions
    state, actions = step(state, Tick(at(300), (gate("pass"),)), STAGES, "rollback")
    assert state.status is RolloutStatus.SUCCEEDED
    assert MakeDefault() in actions


def test_a_failing_gate_rolls_back_or_pauses_by_policy() -> None:
    state, _ = step(initial_state(), Tick(at(0)), STAGES, "rollback")
    rolled, actions = step(state, Tick(at(5), (gate("fail"),)), STAGES, "rollback")
    assert rolled.status is RolloutStatus.ROLLED_BACK
    assert RevertDevices() in actions
    paused, actions = step(state, Tick(at(5), (gate("fail"),)), STAGES, "pause")
    assert paused.status is RolloutStatus.PAUSED
    assert "gate install failed" in (paused.reason or "")
    assert step(paused, Tick(at(500), (gate("pass"),)), STAGES, "pause") == (paused, [])


def test_operator_commands() -> None:
    state, _ = step(initial_state(), Tick(at(0)), STAGES, "rollback")
    paused, _ = step(state, Operator("pause", at(1)), STAGES, "rollback")
    with pytest.raises(ConflictError):
        step(paused, Operator("pause", at(2)), STAGES, "rollback")
    running, _ = step(paused, Operator("resume", at(3)), STAGES, "rollback")
    promoted, actions = step(running, Operator("promote", at(4)), STAGES, "rollback")
    assert promoted.stage == 1
    assert StartStage(1, 5) in actions
    aborted, _ = step(promoted, Operator("abort", at(5)), STAGES, "rollback")
    assert aborted.status is RolloutStatus.ABORTED
    with pytest.raises(ConflictError, match="cannot promote"):
        step(aborted, Operator("promote", at(6)), STAGES, "rollback")
    back, actions = step(aborted, Operator("rollback", at(7)), STAGES, "rollback")
    assert back.status is RolloutStatus.ROLLED_BACK
    assert RevertDevices() in actions
    with pytest.raises(ConflictError):
        step(back, Operator("rollback", at(8)), STAGES, "rollback")


def test_promote_on_the_last_stage_finishes() -> None:
    state, _ = step(initial_state(), Tick(at(0)), STAGES, "rollback")
    for _ in range(3):
        state, actions = step(state, Operator("promote", at(1)), STAGES, "rollback")
    assert state.status is RolloutStatus.SUCCEEDED
    assert "succeeded" in kinds(actions)


def test_rolling_back_a_finished_rollout_restores_the_default() -> None:
    state, _ = step(initial_state(), Tick(at(0)), STAGES, "rollback")
    for _ in range(3):
        state, actions = step(state, Operator("promote", at(1)), STAGES, "rollback")
    assert MakeDefault() in actions
    back, actions = step(state, Operator("rollback", at(2)), STAGES, "rollback")
    assert back.status is RolloutStatus.ROLLED_BACK
    assert RevertDevices() in actions and RestoreDefault() in actions
    # A rollout rolled back before it finished never made a default: nothing to restore.
    running, _ = step(initial_state(), Tick(at(0)), STAGES, "rollback")
    _, actions = step(running, Operator("rollback", at(1)), STAGES, "rollback")
    assert RestoreDefault() not in actions
