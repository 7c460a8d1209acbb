import pytest
from pydantic import ValidationError

from control_plane.errors import InvalidInputError
from control_plane.rollouts.plans import ExponentialSpec, PlanSpec, StageSpec, cohort_order, resolve


def targets(plan: PlanSpec, n: int) -> list[int]:
    return [s.target for s in resolve(plan, n)]


def test_canary_preset() -> None:
    assert targets(PlanSpec(preset="canary"), 100) == [1, 10, 50, 100]
    assert targets(PlanSpec(preset="canary"), 3) == [1, 2, 3]  # stages adding nobody dropped
    assert targets(PlanSpec(preset="canary"), 1) == [1]
    assert targets(PlanSpec(preset="all-at-once"), 7) == [7]


def test_explicit_stages_end_with_everyone() -> None:
    plan = PlanSpec(stages=[StageSpec(count=2), StageSpec(percent=50)])
    assert targets(plan, 20) == [2, 10, 20]


def test_exponential_ramp() -> None:
    plan = PlanSpec(exponential=ExponentialSpec(base=2, factor=3))
    assert targets(plan, 100) == [2, 6, 18, 54, 100]


@pytest.mark.parametrize(
    "stages",
    [
        [StageSpec(percent=50), StageSpec(percent=10)],
        [StageSpec(count=5), StageSpec(count=2)],
    ],
)
def test_out_of_order_is_refused(stages: list[StageSpec]) -> None:
    with pytest.raises(InvalidInputError, match="must not decrease"):
        resolve(PlanSpec(stages=stages), 100)


@pytest.mark.parametrize(
    "data",
    [
        {"stages": [{"percent": 120}]},
        {"stages": [{"percent": 10, "soak_seconds": -1}]},
        {"stages": [{"percent": 10, "count": 2}]},
        {"stages": []},
        {},
        {"preset": "canary", "stages": [{"count": 1}]},
        {"preset": "yolo"},
    ],
)
def test_bad_plans_are_refused(data: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError):
        PlanSpec.model_validate(data)


def test_cohorts_are_deterministic_and_per_rollout() -> None:
    devices = [f"dev-{i}" for i in range(50)]
    assert cohort_order("r1", devices) == cohort_order("r1", list(reversed(devices)))
    assert cohort_order("r1", devices) != cohort_order("r2", devices)
