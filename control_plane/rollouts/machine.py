"""The rollout state machine (pure): state + event → new state + actions. No I/O: the engine
(``rollouts.engine``) observes devices and telemetry, feeds events in, and carries the actions
out in the same transaction that stores the new state, so a restart never repeats one."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Literal

from control_plane.audit.types import EventType
from control_plane.errors import ConflictError
from control_plane.rollouts.gates import GateResult
from control_plane.rollouts.plans import Stage


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


TERMINAL = frozenset({RolloutStatus.SUCCEEDED, RolloutStatus.ROLLED_BACK, RolloutStatus.ABORTED})
Command = Literal["pause", "resume", "promote", "abort", "rollback"]


@dataclass(frozen=True)
class RolloutState:
    status: RolloutStatus
    stage: int  # index of the current stage; -1 before the first one started
    stage_started_at: datetime | None
    reason: str | None = None


@dataclass(frozen=True)
class Tick:
    """Time passed; ``gates`` are the current stage's readings (empty before it starts)."""

    now: datetime
    gates: tuple[GateResult, ...] = ()


@dataclass(frozen=True)
class Operator:
    command: Command
    now: datetime
    actor: str = "operator"


Event = Tick | Operator


@dataclass(frozen=True)
class StartStage:
    """Give the version to the first ``target`` devices of the cohort order."""

    stage: int
    target: int


@dataclass(frozen=True)
class RevertDevices:
    """Every device that got the version goes back to the one it had (a new deployment)."""


@dataclass(frozen=True)
class MakeDefault:
    """The version becomes the default for the rollout's selector (late joiners get it)."""


@dataclass(frozen=True)
class RestoreDefault:
    """A finished rollout was rolled back: the selector's default goes back to what it was
    before the rollout made its version the default (late joiners follow the rollback)."""


@dataclass(frozen=True)
class Record:
    type: EventType
    message: str


Action = StartStage | RevertDevices | MakeDefault | RestoreDefault | Record


def initial_state() -> RolloutState:
    return RolloutState(status=RolloutStatus.RUNNING, stage=-1, stage_started_at=None)


def step(
    state: RolloutState, event: Event, stages: list[Stage], on_failure: str
) -> tuple[RolloutState, list[Action]]:
    """Advance the rollout. Operator commands that make no sense in the current state raise
    ``ConflictError`` (an API 409)."""
    if isinstance(event, Operator):
        return _command(state, event, stages)
    if state.status is not RolloutStatus.RUNNING:
        return state, []
    if state.stage < 0:
        return _start(state, 0, stages, event.now)
    failed = [g for g in event.gates if g.status == "fail"]
    if failed:
        reason = "; ".join(f"gate {g.name} failed: {g.detail}" for g in failed)
        if on_failure == "pause":
            return (
                replace(state, status=RolloutStatus.PAUSED, reason=reason),
                [
                    Record(EventType.GATE_FAILED, reason),
                    Record(EventType.PAUSED, "paused by policy"),
                ],
            )
        return (
            replace(state, status=RolloutStatus.ROLLED_BACK, reason=reason),
            [
                Record(EventType.GATE_FAILED, reason),
                RevertDevices(),
                Record(EventType.ROLLED_BACK, "rolled back by policy"),
            ],
        )
    stage = stages[state.stage]
    assert state.stage_started_at is not None
    soaked = (event.now - state.stage_started_at).total_seconds() >= stage.soak_seconds
    if soaked and event.gates and all(g.status == "pass" for g in event.gates):
        return _advance(state, stages, event.now, "gates passed")
    return state, []


def _start(
    state: RolloutState, index: int, stages: list[Stage], now: datetime
) -> tuple[RolloutState, list[Action]]:
    stage = stages[index]
    return (
        replace(state, stage=index, stage_started_at=now, reason=None),
        [
            StartStage(index, stage.target),
            Record(
                EventType.STAGE_STARTED,
                f"stage {index + 1}/{len(stages)} ({stage.label}): {stage.target} devices",
            ),
        ],
    )


def _advance(
    state: RolloutState, stages: list[Stage], now: datetime, why: str
) -> tuple[RolloutState, list[Action]]:
    done = Record(EventType.STAGE_PASSED, f"stage {state.stage + 1}/{len(stages)} passed: {why}")
    if state.stage + 1 >= len(stages):
        return (
            replace(state, status=RolloutStatus.SUCCEEDED, reason=None),
            [done, MakeDefault(), Record(EventType.SUCCEEDED, "every stage passed")],
        )
    new_state, actions = _start(state, state.stage + 1, stages, now)
    return new_state, [done, *actions]


def _command(
    state: RolloutState, event: Operator, stages: list[Stage]
) -> tuple[RolloutState, list[Action]]:
    command, now = event.command, event.now
    note = Record(EventType(command), f"{command} by {event.actor}")
    if command == "rollback":
        if state.status is RolloutStatus.ROLLED_BACK:
            raise ConflictError("the rollout is already rolled back", code="invalid_state")
        restore: list[Action] = (
            [RestoreDefault()] if state.status is RolloutStatus.SUCCEEDED else []
        )
        return (
            replace(state, status=RolloutStatus.ROLLED_BACK, reason=f"rollback by {event.actor}"),
            [note, RevertDevices(), *restore],
        )
    if state.status in TERMINAL:
        raise ConflictError(
            f"the rollout has {state.status.value}; it cannot {command}", code="invalid_state"
        )
    if command == "pause":
        if state.status is RolloutStatus.PAUSED:
            raise ConflictError("the rollout is already paused", code="invalid_state")
        return replace(state, status=RolloutStatus.PAUSED, reason=f"paused by {event.actor}"), [
            note
        ]
    if command == "resume":
        if state.status is not RolloutStatus.PAUSED:
            raise ConflictError("only a paused rollout can resume", code="invalid_state")
        return replace(state, status=RolloutStatus.RUNNING, reason=None), [note]
    if command == "abort":
        return replace(state, status=RolloutStatus.ABORTED, reason=f"aborted by {event.actor}"), [
            note
        ]
    # promote: end this stage's soak now (gates that failed still count: resume or roll back)
    if state.stage < 0:
        new_state, actions = _start(state, 0, stages, now)
        return new_state, [note, *actions]
    new_state, actions = _advance(
        replace(state, status=RolloutStatus.RUNNING), stages, now, f"promoted by {event.actor}"
    )
    return new_state, [note, *actions]
