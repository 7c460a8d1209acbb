"""Rollout plans (pure): stages with counts or percentages, an exponential ramp, or a named
preset; resolved against a fleet size into cumulative device targets; deterministic cohorts."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from control_plane.errors import InvalidInputError

MAX_STAGES = 50  # a plan resolves to at most this many stages
MAX_SECONDS = 10 * 365 * 86_400.0  # the longest soak or timeout: ten years


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateSpec(_Spec):
    """When a stage may go on. Behaviour gates are paired: each stage device against its own
    windows on the previous version just before its update (see ``rollouts.gates``)."""

    install_timeout_seconds: float = Field(
        default=600, gt=0, le=MAX_SECONDS, description="Installs must be done within this long."
    )
    min_install_success: float = Field(
        default=1.0, ge=0, le=1, description="Share of the stage's devices that must install."
    )
    max_failure_ratio: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Halt at once when more of the stage's devices "
        "than this share refused or reverted the version (hawkBit-style error threshold).",
    )
    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="Largest inference error rate of the new version."
    )
    max_error_rate_increase: float = Field(
        default=0.02, ge=0, le=1, description="Largest error-rate increase over the baseline."
    )
    max_latency_p50_ratio: float = Field(
        default=1.5,
        gt=0,
        le=1e6,
        description="Largest median, over the stage's devices, of each device's median "
        "latency after its update / before it (the model's own cost: a busy CPU moves the "
        "tail far more than the middle).",
    )
    max_latency_p95_ratio: float = Field(
        default=1.5,
        gt=0,
        le=1e6,
        description="Largest median, over the stage's devices, of each device's p95 latency "
        "after its update / before it.",
    )
    min_latency_increase_ms: float = Field(
        default=1.0,
        ge=0,
        le=3_600_000,
        description="A latency failure also needs the median reading to rise by at least "
        "this much: a ratio over a few microseconds is noise, not a regression.",
    )
    max_prediction_js: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Largest Jensen–Shannon distance between the "
        "prediction histograms of the new version and the baseline.",
    )
    min_devices_reporting: int = Field(
        default=1, ge=0, le=1_000_000, description="Stage devices with telemetry before judging."
    )
    min_requests: int = Field(
        default=50, ge=0, le=10**12, description="Requests on the new version before judging."
    )
    min_requests_per_device: int = Field(
        default=300,
        ge=1,
        le=10**9,
        description="Requests a device needs on each side (before and after its update) "
        "before its readings count as evidence: on fewer, a busy CPU alone moves a device's "
        "median latency by half (derived in benchmarks/gates.py).",
    )
    min_requests_per_device_p95: int = Field(
        default=400,
        ge=1,
        le=10**9,
        description="Requests a device needs on each side before its p95 counts: 400 puts "
        "20 requests above the p95; on fewer, a burst of contention decides it.",
    )
    pair_lookback_seconds: float = Field(
        default=3600,
        gt=0,
        le=MAX_SECONDS,
        description="How far before its update a device's windows on the previous version "
        "count as its baseline.",
    )


class StageSpec(_Spec):
    """One stage: how many devices have the version when it starts (cumulative)."""

    count: int | None = Field(default=None, ge=1, le=10**9, description="Devices, cumulative.")
    percent: float | None = Field(
        default=None, gt=0, le=100, description="Share of the target devices, cumulative."
    )
    soak_seconds: float = Field(
        default=0, ge=0, le=MAX_SECONDS, description="Time to watch before going on."
    )
    gates: GateSpec | None = Field(default=None, description="Overrides the plan's gates.")

    @model_validator(mode="after")
    def _one_size(self) -> StageSpec:
        if (self.count is None) == (self.percent is None):
            raise ValueError("give either count or percent")
        return self


class ExponentialSpec(_Spec):
    """AWS IoT Greengrass-style ramp: base devices, then × factor each stage."""

    base: int = Field(default=1, ge=1, le=10**9, description="Devices in the first stage.")
    factor: float = Field(default=2.0, gt=1, le=100, description="Growth per stage.")
    soak_seconds: float = Field(default=0, ge=0, le=MAX_SECONDS, description="Soak of every stage.")


class PlanSpec(_Spec):
    """Exactly one of ``preset``, ``stages`` or ``exponential``."""

    preset: Literal["canary", "all-at-once"] | None = Field(
        default=None, description="`canary`: 1 device → 10% → 50% → 100%; `all-at-once`."
    )
    soak_seconds: float = Field(
        default=300, ge=0, le=MAX_SECONDS, description="Soak per stage of a preset."
    )
    stages: list[StageSpec] | None = Field(
        default=None, max_length=MAX_STAGES, description="Explicit stages."
    )
    exponential: ExponentialSpec | None = Field(default=None, description="A ramp.")
    gates: GateSpec = Field(default_factory=GateSpec, description="Gates of every stage.")
    on_failure: Literal["rollback", "pause"] = Field(
        default="rollback", description="What a failing gate does."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> PlanSpec:
        kinds = [k for k in (self.preset, self.stages, self.exponential) if k is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of preset, stages or exponential")
        if self.stages is not None and not self.stages:
            raise ValueError("stages must not be empty")
        return self


@dataclass(frozen=True)
class Stage:
    index: int
    target: int  # devices that have the version once this stage has started (cumulative)
    soak_seconds: float
    gates: GateSpec
    label: str


def _check_order(stages: list[StageSpec]) -> None:
    last_percent, last_count = 0.0, 0
    for i, stage in enumerate(stages):
        if stage.percent is not None:
            if stage.percent < last_percent:
                raise InvalidInputError(
                    f"stage {i}: {stage.percent}% comes after "
                    f"{last_percent}%; percentages must not decrease",
                    loc=("plan", "stages", i, "percent"),
                )
            last_percent = stage.percent
        if stage.count is not None:
            if stage.count < last_count:
                raise InvalidInputError(
                    f"stage {i}: {stage.count} devices comes after "
                    f"{last_count}; counts must not decrease",
                    loc=("plan", "stages", i, "count"),
                )
            last_count = stage.count


def _next_size(size: float, target: int, factor: float) -> float:
    """The first ``size * factor**k`` (k ≥ 1) that adds a device to ``target``, in O(1): a
    factor of 1.000001 would otherwise take millions of steps per device."""
    grown = size * factor
    if math.ceil(grown) <= target:
        steps = max(1, math.ceil(math.log(target / size) / math.log(factor)))
        grown = size * factor**steps
        while math.ceil(grown) <= target:  # float rounding: a step or two more at most
            grown *= factor
    return grown


def resolve(plan: PlanSpec, devices: int) -> list[Stage]:
    """Stages with cumulative targets for a fleet of ``devices``: strictly growing (a stage
    that would add nobody is dropped) and ending with every device (a final 100% stage is
    added when the plan stops short)."""
    if plan.preset == "canary":
        specs = [
            StageSpec(count=1, soak_seconds=plan.soak_seconds),
            *(StageSpec(percent=p, soak_seconds=plan.soak_seconds) for p in (10, 50, 100)),
        ]
    elif plan.preset == "all-at-once":
        specs = [StageSpec(percent=100, soak_seconds=plan.soak_seconds)]
    elif plan.exponential is not None:
        ramp, specs, size = plan.exponential, [], float(plan.exponential.base)
        while True:
            target = min(devices, math.ceil(size))
            if not specs or target > (specs[-1].count or 0):  # only stages that add devices
                if len(specs) == MAX_STAGES:
                    raise InvalidInputError(
                        f"this ramp needs more than {MAX_STAGES} stages for {devices} "
                        "devices: use a larger factor or base",
                        loc=("plan", "exponential", "factor"),
                    )
                specs.append(StageSpec(count=target, soak_seconds=ramp.soak_seconds))
            if target >= devices:
                break
            size = _next_size(size, target, ramp.factor)
    else:
        assert plan.stages is not None
        specs = list(plan.stages)
        _check_order(specs)
    stages: list[Stage] = []
    for spec in specs:
        target = (
            min(devices, spec.count)
            if spec.count is not None
            else min(devices, math.ceil((spec.percent or 0) * devices / 100))
        )
        if stages and target <= stages[-1].target:
            continue
        label = (
            f"{spec.percent:g}%"
            if spec.percent is not None
            else f"{spec.count} device{'' if spec.count == 1 else 's'}"
        )
        stages.append(
            Stage(len(stages), target, spec.soak_seconds, spec.gates or plan.gates, label)
        )
    if not stages or stages[-1].target < devices:
        last = specs[-1]
        stages.append(
            Stage(len(stages), devices, last.soak_seconds, last.gates or plan.gates, "100%")
        )
    return stages


def cohort_order(rollout_id: str, device_ids: list[str]) -> list[str]:
    """Devices in rollout order: by sha256 of rollout id and device id, so cohorts are
    deterministic for a rollout yet differ between rollouts."""
    return sorted(
        device_ids, key=lambda d: hashlib.sha256(f"{rollout_id}:{d}".encode()).hexdigest()
    )
