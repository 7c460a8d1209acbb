"""Wire documents: every payload on MQTT is one of these, as JSON.

Every document is a strict, immutable pydantic model (unknown fields are an error);
top-level documents carry ``schema_version`` so a reader refuses what it does not know.
Signed documents are signed over ``canonical_json`` of every field except ``signature``.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from shared.manifest import ModelManifest, ModelName, Sha256Hex
from shared.stats import LATENCY_BUCKETS
from shared.wire import SCHEMA_VERSION, Count, Seq, SignedDocument, Version, WireModel

KiB = 1024
MiB = 1024 * KiB
# Size caps, checked before parsing. A desired state holds whole manifests (reference
# statistics, golden vectors) for a few models: tens of KiB each.
MAX_DESIRED_BYTES = 1 * MiB
MAX_STATE_BYTES = 256 * KiB
MAX_TELEMETRY_BYTES = 1 * MiB
MAX_SAMPLES_BYTES = 1 * MiB
MAX_ACK_BYTES = 64 * KiB
DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
# Lengths a legitimate message stays far below; anything longer is refused while parsing.
MAX_MODELS = 64  # model names per device
MAX_FEATURES = 1024
MAX_BINS = 1024  # reference bins per feature, classes or prediction bins per model
MAX_SAMPLE_ROWS = 10_000
MAX_ACK_SEQS = 10_000
MAX_WINDOW = timedelta(days=7)  # the longest telemetry window

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=63)]
Labels = Annotated[
    dict[Label, Annotated[str, StringConstraints(max_length=63)]], Field(max_length=32)
]


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """Labels from ``KEY=VALUE`` strings, as the CLIs take them (``--label site=berlin``).
    Raises ValueError naming the first pair without a key or an ``=``."""
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--label takes KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


Short = Annotated[str, StringConstraints(max_length=64)]
MAX_MIRRORS = 8
# An http(s) base URL without query or fragment: artifact paths are appended to it.
MirrorUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s?#]+$", max_length=1024)]
# Also a database key (sample rows, feedback): printable ASCII only, no NUL a column refuses.
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class ModelRef(WireModel):
    """Identity of one model version."""

    name: ModelName = Field(description="Model name.")
    version: Version = Field(description="Version number.")
    sha256: Sha256Hex = Field(description="sha256 of its ONNX file.")


class DeploymentModel(WireModel):
    """One model a device should serve, with the rollout that put it there."""

    manifest: ModelManifest = Field(description="The signed model manifest.")
    rollout_id: Short | None = Field(default=None, description="Rollout, if any.")
    stage: Short | None = Field(default=None, description="Rollout stage, if any.")


class DesiredState(SignedDocument):
    """What one device should serve. Signed by the deployment key; published retained on
    ``{root}/devices/{id}/desired``. A device applies it only if the signature holds, the
    device id is its own, ``seq`` is greater than the last it accepted, and it has not
    expired. Models it does not name keep serving as they are."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Format version.")
    device_id: DeviceId = Field(description="The device it is for.")
    seq: Seq = Field(description="Per-device deployment sequence; only ever grows.")
    models: list[DeploymentModel] = Field(
        max_length=MAX_MODELS, description="Models to serve, at most one per name."
    )
    issued_at: AwareDatetime = Field(description="When it was signed.")
    expires_at: AwareDatetime = Field(description="After this, devices ignore it.")
    trust_version: Version | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="The control plane's trust-store version when it was signed (absent: 1). "
        "A device on an older one first follows the newer versions (GET /trust-stores), each "
        "signed by the keys of the one before.",
    )
    mirrors: list[MirrorUrl] | None = Field(
        default=None,
        max_length=MAX_MIRRORS,
        exclude_if=lambda value: not value,
        description="HTTP(S) mirrors to fetch the artifacts from first, in order, each laid "
        "out like the control plane's blob store: `{mirror}/{sha256[:2]}/{sha256}`. A "
        "mirror is not trusted (the manifest's sha256 decides); the control plane's "
        "artifact route is the fallback. Absent: the control plane only.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> DesiredState:
        names = [m.manifest.name for m in self.models]
        if len(names) != len(set(names)):
            raise ValueError("a desired state names each model at most once")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class Phase(StrEnum):
    """Where a device is with one model."""

    IDLE = "idle"  # nothing to do
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    PROBATION = "probation"  # active, watched; may revert by itself
    SERVING = "serving"  # active and committed
    FAILED = "failed"  # the last update was refused; the previous model serves
    REVERTED = "reverted"  # probation failed; back on the previous model


class Verdict(StrEnum):
    """How a version's probation ended when it was committed."""

    JUDGED = "judged"  # served probation_requests without failing
    UNJUDGED = "unjudged"  # committed on time (or pre-empted) with fewer requests to judge


class ErrorInfo(WireModel):
    """Why something was refused, machine-readable."""

    reason: Short = Field(description="Stable reason code, e.g. `sha256_mismatch`.")
    message: Annotated[str, StringConstraints(max_length=1000)] = Field(
        description="Human-readable detail."
    )
    at: AwareDatetime = Field(description="When it happened.")
    model: ModelName | None = Field(default=None, description="Model it concerns, if any.")
    seq: Seq | None = Field(default=None, description="Desired-state sequence it concerns.")


class ModelStatus(WireModel):
    """A device's status for one model name."""

    name: ModelName = Field(description="Model name.")
    active: ModelRef | None = Field(description="The version serving requests now.")
    previous: ModelRef | None = Field(description="The rollback slot.")
    target: ModelRef | None = Field(default=None, description="The version being installed.")
    phase: Phase = Field(description="Install phase.")
    rollout_id: Short | None = Field(default=None, description="Rollout of the active version.")
    stage: Short | None = Field(default=None, description="Rollout stage of the active version.")
    last_error: ErrorInfo | None = Field(default=None, description="Last refusal for this model.")
    verdict: Verdict | None = Field(
        default=None,
        description="How the active version's probation ended: `judged` (it served "
        "`probation_requests` without failing) or `unjudged` (committed when its time ran out, "
        "or when a newer desired state ended it, with fewer requests). None while on "
        "probation, or for a version that never went through one.",
    )
    probation_requests: Count | None = Field(
        default=None, description="Requests the active version served on probation."
    )


class DeviceState(WireModel):
    """What a device serves; retained on ``{root}/devices/{id}/state``."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Format version.")
    device_id: DeviceId = Field(description="Device id.")
    seq: Seq = Field(
        description="Per-device report sequence: a report with a higher one replaces the stored "
        "one, whatever the clocks say. It survives restarts (and, via the sequence floor, a "
        "wiped data dir)."
    )
    agent_version: Short = Field(description="edgefleet version of the agent.")
    labels: Labels = Field(description="Labels from the device's config.")
    deployment_seq: Count = Field(description="Last accepted desired-state sequence.")
    models: list[ModelStatus] = Field(max_length=MAX_MODELS, description="One per model name.")
    last_error: ErrorInfo | None = Field(
        default=None, description="Last refused desired state (bad signature, replay, …)."
    )
    dropped_messages: Count = Field(description="Invalid MQTT messages dropped.")
    outbox_dropped: Count = Field(description="Telemetry windows lost to outbox overflow.")
    updated_at: AwareDatetime = Field(description="When this state was written (display only).")


class OnlineStatus(WireModel):
    """Retained on ``{root}/devices/{id}/online``; the offline form is the Last Will."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Format version.")
    device_id: DeviceId = Field(description="Device id.")
    online: bool = Field(description="False when the device went away.")


class FeatureWindow(WireModel):
    """One feature's inputs over a window, binned over the manifest's reference edges."""

    counts: list[Count] = Field(max_length=MAX_BINS, description="Rows per reference bin.")
    below: Count = Field(description="Rows below the first edge.")
    above: Count = Field(description="Rows above the last edge.")
    missing: Count = Field(description="Rows where the feature was missing.")
    n: Count = Field(description="Non-missing rows.")
    sum: float = Field(description="Sum of non-missing values (mean = sum / n).")
    sum_sq: float = Field(description="Sum of squares (variance = sum_sq / n − mean²).")


class ModelWindow(WireModel):
    """One model version's traffic over a window. All counts merge by addition."""

    name: ModelName = Field(description="Model name.")
    version: Version = Field(description="Version that served.")
    sha256: Sha256Hex = Field(description="sha256 of that version.")
    requests: Count = Field(description="Rows predicted.")
    errors: Count = Field(description="Rows that failed.")
    latency_counts: list[Count] = Field(
        min_length=LATENCY_BUCKETS,
        max_length=LATENCY_BUCKETS,
        description="Requests per latency bucket (shared.stats.LATENCY_BOUNDS_US).",
    )
    features: list[FeatureWindow] = Field(
        max_length=MAX_FEATURES, description="Per feature, in input order."
    )
    predictions: list[Count] = Field(
        max_length=MAX_BINS,
        description="Predicted rows per class (classification) or per reference bin.",
    )


class TelemetryWindow(WireModel):
    """A closed telemetry window; ingest is idempotent on (device_id, seq)."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Format version.")
    device_id: DeviceId = Field(description="Device id.")
    seq: Seq = Field(description="Per-device window sequence number.")
    window_start: AwareDatetime = Field(description="Start of the window.")
    window_end: AwareDatetime = Field(description="End of the window.")
    models: list[ModelWindow] = Field(
        max_length=MAX_MODELS, description="One entry per model version that served."
    )
    outbox_dropped: Count = Field(description="Windows this device lost to overflow so far.")

    @model_validator(mode="after")
    def _times(self) -> TelemetryWindow:
        if not self.window_start <= self.window_end <= self.window_start + MAX_WINDOW:
            raise ValueError("a window ends after it starts, and within 7 days")
        return self


class SampleRow(WireModel):
    """One sampled inference row."""

    request_id: RequestId = Field(description="The id the inference response carried.")
    features: list[float | None] = Field(
        max_length=MAX_FEATURES, description="Inputs; null is missing."
    )
    prediction: int | float = Field(description="Class index or predicted value.")


class SampleBatch(WireModel):
    """Opt-in sampled rows for retraining, on ``{root}/devices/{id}/samples``."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Format version.")
    device_id: DeviceId = Field(description="Device id.")
    seq: Seq = Field(description="Per-device sample batch sequence number.")
    model: ModelRef = Field(description="Version that predicted.")
    rows: list[SampleRow] = Field(max_length=MAX_SAMPLE_ROWS, description="Sampled rows.")


class Ack(WireModel):
    """Sequence numbers the control plane stored durably; sent on ``{root}/devices/{id}/ack``."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Format version.")
    channel: Literal["telemetry", "samples"] = Field(description="What the numbers refer to.")
    seqs: list[Seq] = Field(max_length=MAX_ACK_SEQS, description="Stored sequence numbers.")


class SequenceFloor(WireModel):
    """What the control plane has of a device's numbering (``GET /devices/{id}/floor``, with
    the device's own token). An agent that starts with no accepted sequence (a new or wiped
    data dir) learns it before accepting a desired state, so a replayed older desired state
    cannot downgrade it and its new telemetry numbers do not collide with stored ones."""

    device_id: DeviceId = Field(description="Device id.")
    deployment_seq: Count = Field(
        description="Sequence of the newest desired state signed for it (0: none)."
    )
    telemetry_seq: Count = Field(description="Highest telemetry window sequence stored.")
    samples_seq: Count = Field(description="Highest sample batch sequence stored.")
    state_seq: Count = Field(description="Sequence of the newest state report stored.")
