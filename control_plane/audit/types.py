"""Event types and the payload each carries (pure: no database).

Every event of the audit log has one of these types; the types that carry figures carry
them as one of the payload models below, checked when the event is recorded and when it
is read back, so a reader never looks a figure up by a string key."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EventType(StrEnum):
    # rollouts
    CREATED = "created"
    STAGE_STARTED = "stage_started"
    STAGE_PASSED = "stage_passed"
    GATE_FAILED = "gate_failed"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    SUCCEEDED = "succeeded"
    PAUSE = "pause"  # operator commands, as given
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"
    ROLLBACK = "rollback"
    DEFAULT_RESTORED = "default_restored"
    LATE_JOINER = "late_joiner"
    NO_PREVIOUS_VERSION = "no_previous_version"
    # devices
    DEVICE_ONLINE = "device_online"
    DEVICE_OFFLINE = "device_offline"
    DEVICE_MODEL = "device_model"
    DEVICE_REFUSAL = "device_refusal"
    DEVICE_ADMISSION = "device_admission"  # enrolled, accepted, rejected, reissued, removed
    # models
    DRIFT = "drift"
    DRIFT_CLEARED = "drift_cleared"
    ACCURACY_DROP = "accuracy_drop"
    RETRAIN_STARTED = "retrain_started"
    CHALLENGER_REGISTERED = "challenger_registered"
    CHALLENGER_REFUSED = "challenger_refused"
    RELEASE = "release"
    APPROVED = "approved"


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Onset(Payload):
    """A verdict on a population over time: where, and since when."""

    selector: str = Field(description="Device population (label selector; empty: all).")
    onset: datetime = Field(description="Start of the first bucket of the episode.")


class DeviceModelData(Payload):
    """A device's active version of a model changed (the event's ``version`` is the new
    one, null when it serves none)."""

    previous: int | None = Field(
        default=None, description="The version it served before (null: none)."
    )


class FeatureReading(Payload):
    psi: float | None = None
    js: float | None = None
    mean_shift: float | None = None


class DriftData(Onset):
    bucket_end: datetime
    features: list[str] = Field(description="Features that started drifting.")
    prediction_drift: bool
    dataset_drift: bool
    readings: dict[str, FeatureReading] = Field(description="Their readings, by feature.")


class DriftClearedData(Payload):
    selector: str
    bucket_start: datetime


class AccuracyDropData(Onset):
    accuracy: float
    validation_accuracy: float | None = None
    labels: int


class ChallengeData(Payload):
    """How a challenger fared against the champion (also the retraining job's result)."""

    decision: Literal["registered", "refused", "insufficient_data"] = Field(
        description="`registered`, `refused` (did not beat the champion) or "
        "`insufficient_data` (too few labelled rows to judge)."
    )
    reason: str | None = Field(default=None, description="The decision, in words.")
    metric: str | None = Field(default=None, description="Holdout metric compared.")
    champion_version: int | None = Field(default=None, description="Version it challenged.")
    champion: float | None = Field(default=None, description="Champion's holdout score.")
    challenger: float | None = Field(default=None, description="Challenger's holdout score.")
    required: float | None = Field(
        default=None, description="Score the challenger needed (champion + margin)."
    )
    holdout_rows: int | None = Field(default=None, description="Rows of the holdout.")
    recent_training_rows: int | None = Field(
        default=None, description="Labelled rows from the fleet in the training set."
    )
    reference_rows: int | None = Field(
        default=None, description="Rows of the original dataset in the training set."
    )
    dataset_id: int | None = Field(default=None, description="The dataset built for it.")
    labelled_rows: int | None = Field(
        default=None, description="Fleet rows with a label (feedback) available."
    )


PAYLOADS: dict[EventType, type[Payload]] = {
    EventType.DEVICE_MODEL: DeviceModelData,
    EventType.DRIFT: DriftData,
    EventType.DRIFT_CLEARED: DriftClearedData,
    EventType.ACCURACY_DROP: AccuracyDropData,
    EventType.CHALLENGER_REGISTERED: ChallengeData,
    EventType.CHALLENGER_REFUSED: ChallengeData,
}
