"""Per-model monitoring and retraining policy, and the pure decisions made from it.

What is decided here (no I/O): when a bucket's accuracy counts as a drop, whether a pending
retraining trigger may start a job now (cooldown, enough labelled rows), and whether a
challenger beats the champion. The monitor (``monitoring.monitor``) and the retraining
job (``training.retraining_job``) do the I/O.

Defaults, and why:

- Accuracy drop: 0.1 below the version's validation accuracy, judged on at least 50 labels
  in a bucket, two buckets in a row. With 50 labels the standard error of an accuracy near
  0.85 is 0.05, so a 0.1 drop is two standard errors; two buckets in a row keep one unlucky
  bucket from starting a retraining.
- Retraining waits for 500 recent labelled rows (Sedna's incremental-learning default):
  fewer make a noisy challenger and a noisier holdout. 30% of them are the holdout both
  models are judged on; the challenger trains on the other 70% plus up to 5,000 rows of the
  champion's training data (what the world looked like before; set 0 when the old data is
  wrong, e.g. after a concept change).
- Cooldown one hour between retraining jobs of a model, so a drift that persists (or a
  challenger that keeps losing) cannot start a retraining storm; a manual trigger skips it.
- A winning challenger goes out as a canary (soak 300 s) without the prediction-divergence
  gate: predicting differently from the drifted champion is the point.
- A challenger must beat the champion by 0.02 (accuracy or macro F1) or by 2% of the
  champion's error (RMSE/MAE) on the same holdout; a tie keeps the champion, whose
  behaviour on devices is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from control_plane.monitoring.drift import DriftPolicy
from control_plane.rollouts.plans import GateSpec, PlanSpec
from shared.manifest import ParamValue

Trigger = Literal["drift", "accuracy", "schedule", "manual"]
AutoTrigger = Literal["drift", "accuracy", "schedule"]
Metric = Literal["accuracy", "f1_macro", "rmse", "mae"]
LOWER_IS_BETTER = {"rmse", "mae"}


MAX_SECONDS = 10 * 365 * 86_400.0  # the longest duration a policy may name: ten years
MAX_ROWS = 10_000_000


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AccuracyPolicy(_Spec):
    """When labelled feedback says a version got worse."""

    max_drop: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Accuracy this far below the version's validation accuracy is a drop.",
    )
    min_labels: int = Field(
        default=50,
        ge=1,
        le=MAX_ROWS,
        description="Labels a bucket needs before its accuracy is judged.",
    )
    consecutive: int = Field(
        default=2, ge=1, le=1000, description="Buckets in a row below the line."
    )


def _default_triggers() -> list[AutoTrigger]:
    return ["drift", "accuracy"]


def _default_plan() -> PlanSpec:
    # No prediction-divergence gate: a challenger trained because the world changed is
    # meant to predict differently from the drifted champion, and its being better was
    # proven on labelled rows. Install, error-rate and latency gates still hold.
    return PlanSpec(preset="canary", soak_seconds=300, gates=GateSpec(max_prediction_js=1.0))


class RetrainPolicy(_Spec):
    """When to retrain, on what data, and what happens to a challenger that wins."""

    triggers: list[AutoTrigger] = Field(
        default_factory=_default_triggers,
        max_length=3,
        description="Events that start a retraining (a manual one is always possible): "
        "`drift` (a feature, the predictions or the dataset of the champion drifted), "
        "`accuracy` (an accuracy drop), `schedule` (every `schedule_seconds`).",
    )
    schedule_seconds: float | None = Field(
        default=None,
        ge=60,
        le=MAX_SECONDS,
        description="With the `schedule` trigger: retrain this often.",
    )
    cooldown_seconds: float = Field(
        default=3600,
        ge=0,
        le=MAX_SECONDS,
        description="At least this long between two retraining jobs.",
    )
    min_labelled_rows: int = Field(
        default=500,
        ge=10,
        le=MAX_ROWS,
        description="Recent labelled rows needed before retraining.",
    )
    recent_seconds: float = Field(
        default=7 * 86_400,
        gt=0,
        le=MAX_SECONDS,
        description="Labelled rows younger than this are recent.",
    )
    max_recent_rows: int = Field(
        default=50_000,
        ge=10,
        le=MAX_ROWS,
        description="At most this many recent rows (the newest).",
    )
    max_reference_rows: int = Field(
        default=5_000,
        ge=0,
        le=MAX_ROWS,
        description="Rows of the champion's training dataset added to the training data "
        "(a seeded sample; 0: recent rows only).",
    )
    holdout_fraction: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Share of the recent labelled rows both models are judged on.",
    )
    metric: Metric | None = Field(
        default=None,
        description="Judge by this; default `accuracy` (classification) or `rmse` (regression).",
    )
    min_improvement: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="The challenger must beat the champion by this much (accuracy, F1), or "
        "by this share of the champion's error (RMSE, MAE).",
    )
    algorithm: str | None = Field(
        default=None, max_length=64, description="Default: the champion's."
    )
    params: dict[str, ParamValue] | None = Field(
        default=None, max_length=64, description="Default: the champion's."
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**32 - 1,
        description="Seed of the holdout split, sampling and training.",
    )
    auto_rollout: bool = Field(
        default=True,
        description="Roll a winning challenger out by itself; false: wait for "
        "POST /models/{name}/versions/{v}/approve.",
    )
    selector: str = Field(
        default="", max_length=1024, description="Devices the challenger is rolled out to."
    )
    plan: PlanSpec = Field(
        default_factory=_default_plan, description="Rollout plan of a winning challenger."
    )

    @model_validator(mode="after")
    def _schedule(self) -> RetrainPolicy:
        if "schedule" in self.triggers and self.schedule_seconds is None:
            raise ValueError("the schedule trigger needs schedule_seconds")
        return self


class ModelPolicy(_Spec):
    """How a model is watched and retrained (`PUT /models/{name}/policy`)."""

    selectors: list[Annotated[str, StringConstraints(max_length=1024)]] = Field(
        default_factory=lambda: [""],
        max_length=20,
        description="Device populations judged separately (label selectors; `` = all).",
    )
    drift: DriftPolicy = Field(default_factory=DriftPolicy, description="Drift thresholds.")
    accuracy: AccuracyPolicy = Field(
        default_factory=AccuracyPolicy, description="Accuracy drop detection."
    )
    retrain: RetrainPolicy = Field(
        default_factory=RetrainPolicy, description="Retraining and release of challengers."
    )


def policy_of(stored: dict[str, Any] | None) -> ModelPolicy:
    return ModelPolicy.model_validate(stored) if stored else ModelPolicy()


def metric_for(policy: RetrainPolicy, task: str) -> Metric:
    return policy.metric or ("accuracy" if task == "classification" else "rmse")


# --- decisions ---------------------------------------------------------------------------------


def accuracy_low(
    accuracy: float | None, labels: int, validation_accuracy: float | None, policy: AccuracyPolicy
) -> bool | None:
    """Whether a bucket's accuracy is a drop; ``None`` when it cannot be judged."""
    if accuracy is None or validation_accuracy is None or labels < policy.min_labels:
        return None
    return accuracy < validation_accuracy - policy.max_drop


def next_accuracy_streak(streak: int, low: bool | None) -> int:
    """Like drift streaks: an unjudged bucket leaves the streak as it is."""
    if low is None:
        return streak
    return streak + 1 if low else 0


@dataclass(frozen=True)
class Go:
    """Start a retraining job now."""


@dataclass(frozen=True)
class Wait:
    """Keep the trigger pending: ``reason`` says for what."""

    reason: str


def retrain_decision(
    policy: RetrainPolicy,
    *,
    trigger: Trigger,
    now: datetime,
    last_started_at: datetime | None,
    labelled_rows: int,
) -> Go | Wait:
    """May a pending ``trigger`` start a retraining job now?"""
    if trigger != "manual" and last_started_at is not None:
        ready = last_started_at + timedelta(seconds=policy.cooldown_seconds)
        if now < ready:
            return Wait(f"cooldown until {ready.isoformat(timespec='seconds')}")
    if labelled_rows < policy.min_labelled_rows:
        return Wait(f"{labelled_rows} recent labelled rows, {policy.min_labelled_rows} needed")
    return Go()


def schedule_due(policy: RetrainPolicy, now: datetime, last_started_at: datetime | None) -> bool:
    if "schedule" not in policy.triggers or policy.schedule_seconds is None:
        return False
    return last_started_at is None or now >= last_started_at + timedelta(
        seconds=policy.schedule_seconds
    )


@dataclass(frozen=True)
class Comparison:
    metric: str
    champion: float
    challenger: float
    required: float  # the challenger needed at least (or at most, for errors) this
    better: bool

    def describe(self) -> str:
        verb = "beats" if self.better else "does not beat"
        return (
            f"challenger {self.metric} {self.challenger:.4f} {verb} the champion's "
            f"{self.champion:.4f} (needed {self.required:.4f})"
        )


def compare(metric: str, champion: float, challenger: float, margin: float) -> Comparison:
    """Whether ``challenger`` beats ``champion`` by ``margin`` on the same holdout."""
    eps = 1e-9  # 0.80 + 0.02 is 0.8200000000000001 in floats
    if metric in LOWER_IS_BETTER:
        required = champion * (1 - margin)
        better = challenger <= required + eps if margin > 0 else challenger < champion
    else:
        required = champion + margin
        better = challenger >= required - eps if margin > 0 else challenger > champion
    return Comparison(metric, champion, challenger, required, better)
