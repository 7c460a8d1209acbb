"""Database tables. API schemas live in ``api/schemas.py`` (plain pydantic, so the CLI client
runs without the server extra); routes convert rows to them."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, overload

from pydantic import TypeAdapter
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    delete,
    event,
    false,
    insert,
)
from sqlalchemy.orm import PassiveFlag, Session, UOWTransaction, attributes
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from control_plane.audit.types import EventType
from control_plane.monitoring.release import Release
from control_plane.rollouts.machine import RolloutStatus
from control_plane.training.results import JobResult


def utcnow() -> datetime:
    return datetime.now(UTC)


# Row ids of tables that grow by the fleet's size every minute (a 32-bit id lasts about two
# weeks at 100,000 devices): BIGINT, but SQLite's rowid alias must be spelled INTEGER.
BIG_ID = BigInteger().with_variant(Integer, "sqlite")


def _bigint_zero() -> Column[int]:
    """A BIGINT counter (sequences reach 2^53 - 1, past PostgreSQL's int4) starting at 0."""
    return Column(BigInteger, nullable=False, server_default="0")


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were stored as UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


E = TypeVar("E", bound=StrEnum)


class EnumText(TypeDecorator[E]):
    """A VARCHAR holding a StrEnum's value, read back as the enum member (the stored text
    is the same as a plain string column's, so the schema does not change)."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)


class PayloadJSON(TypeDecorator[Any]):
    """A JSON column holding a pydantic model (or a union of them): checked when written
    and when read back."""

    impl = JSON
    cache_ok = True

    def __init__(self, kind: Any) -> None:
        super().__init__()
        self.kind = kind
        self.adapter: TypeAdapter[Any] = TypeAdapter(kind)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        checked = self.adapter.validate_python(value)
        return self.adapter.dump_python(checked, mode="json", exclude_none=True)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.adapter.validate_python(value)


def enum_column(
    enum: type[StrEnum], length: int, *, nullable: bool = False, index: bool = False
) -> Any:
    return Column(EnumText(enum, length), nullable=nullable, index=index)


class Role(StrEnum):
    """API roles. admin ⊃ operator ⊃ viewer; ``device`` stands apart: a device token may only
    download artifacts (and later post its own feedback)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    DEVICE = "device"


ROLE_RANK = {Role.DEVICE: -1, Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class JobKind(StrEnum):
    TRAIN = "train"
    RETRAIN = "retrain"
    IMPORT = "import"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    role: Role = Field(sa_column=enum_column(Role, 16))
    token_hash: str = Field(max_length=64, unique=True, index=True)
    device_id: str | None = Field(default=None, max_length=64, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class BootstrapToken(SQLModel, table=True):
    """A secret a new device enrolls with (``POST /enroll``): a number of uses, an expiry,
    labels given to the devices it enrolls, and whether they are accepted at once."""

    __tablename__ = "bootstrap_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    max_uses: int
    uses: int = 0
    expires_at: datetime
    labels: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    auto_accept: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class TrustStoreVersion(SQLModel, table=True):
    """One version of the trust store after the first, as devices fetch it: a
    ``SignedTrustStore`` signed by the keys of the version before."""

    __tablename__ = "trust_store_version"

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    document: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Dataset(SQLModel, table=True):
    __tablename__ = "dataset"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, index=True)
    version: int
    sha256: str = Field(max_length=64, index=True)
    size: int
    rows: int
    label_column: str = Field(max_length=128)
    label_kind: str = Field(max_length=16)
    nan_policy: str = Field(max_length=16)
    dropped_rows: int = 0
    missing_values: int = 0
    features: list[str] = Field(sa_column=Column(JSON, nullable=False))
    classes: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)


class Job(SQLModel, table=True):
    __tablename__ = "job"

    id: int | None = Field(default=None, primary_key=True)
    kind: JobKind = Field(default=JobKind.TRAIN, sa_column=enum_column(JobKind, 16))
    status: JobStatus = Field(
        default=JobStatus.QUEUED, sa_column=enum_column(JobStatus, 16, index=True)
    )
    stage: str = Field(max_length=32, default="queued")
    progress: float = 0.0
    model_name: str = Field(max_length=64, index=True)
    request: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    result_version: int | None = None
    # A retraining job's challenge, or a training job's search (see ``training.results``).
    result: JobResult | None = Field(
        default=None, sa_column=Column(PayloadJSON(JobResult), nullable=True)
    )
    trigger_event_id: int | None = None
    owner: str | None = Field(default=None, max_length=32, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Model(SQLModel, table=True):
    __tablename__ = "model"

    name: str = Field(max_length=64, primary_key=True)
    task: str = Field(max_length=16)
    latest_version: int = 0
    policy: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=64, foreign_key="model.name", index=True)
    version: int
    sha256: str = Field(max_length=64, index=True)
    size: int
    algorithm: str = Field(max_length=32)
    dataset_id: int = Field(foreign_key="dataset.id")
    job_id: int | None = Field(default=None, foreign_key="job.id")
    metrics: dict[str, float] = Field(sa_column=Column(JSON, nullable=False))
    parity_max_abs_diff: float
    parity_label_disagreements: int
    manifest: str = Field(sa_column=Column(Text, nullable=False))
    # Set for versions a retraining job registered: awaiting_approval → approved →
    # rolling_out (then ``rollout_id``); pending_rollout when the policy rolls out by itself.
    release: Release | None = Field(
        default=None, sa_column=enum_column(Release, 32, nullable=True, index=True)
    )
    rollout_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow)


class ModelAlias(SQLModel, table=True):
    __tablename__ = "model_alias"

    model_name: str = Field(max_length=64, foreign_key="model.name", primary_key=True)
    alias: str = Field(max_length=32, primary_key=True)
    version: int
    updated_at: datetime = Field(default_factory=utcnow)


class Admission(StrEnum):
    """Where a device stands: pre-authorized (its id listed, not yet enrolled), pending (it
    enrolled and waits for an operator), accepted (it may connect and fetch), rejected (it
    may not; an operator may still accept it), decommissioned (gone for good)."""

    PREAUTHORIZED = "preauthorized"
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DECOMMISSIONED = "decommissioned"


class Device(SQLModel, table=True):
    """A device: registered by an operator, enrolled with a bootstrap token, or first seen
    through its MQTT messages (on a broker whose accounts are kept by hand)."""

    __tablename__ = "device"

    id: str = Field(max_length=64, primary_key=True)
    labels: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    registered: bool = False
    admission: Admission = Field(
        default=Admission.ACCEPTED,
        sa_column=Column(EnumText(Admission, 16), nullable=False, server_default="accepted"),
    )
    # Whether the broker holds an account for it (made by the control plane, dynsec mode).
    broker_account: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    online: bool = Field(default=False, index=True)  # counted without reading the rows
    last_seen: datetime | None = None
    state: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The device's own report counter: a report with a higher one wins (not its clock).
    state_seq: int = Field(default=0, sa_column=_bigint_zero())
    deployment_seq: int = Field(default=0, sa_column=_bigint_zero())
    desired: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The desired state before ``desired``: its artifacts may still be downloaded (the
    # device's rollback slot), no others.
    previous_desired: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    desired_expires_at: datetime | None = Field(default=None, index=True)
    dropped_messages: int = Field(default=0, sa_column=_bigint_zero())  # refused at ingest
    created_at: datetime = Field(default_factory=utcnow)


class DeviceLabel(SQLModel, table=True):
    """One of a device's labels: a copy of ``Device.labels`` (which stays what the API
    answers), kept by every flush that writes them (``_copy_device_labels``). Label
    selectors are answered from its ``(key, value)`` index: reading every device's JSON
    cost ~250 ms at 100,000 devices."""

    __tablename__ = "device_label"
    __table_args__ = (Index("ix_device_label_key_value", "key", "value", "device_id"),)

    device_id: str = Field(
        max_length=64, foreign_key="device.id", ondelete="CASCADE", primary_key=True
    )
    key: str = Field(primary_key=True)
    value: str


_LABEL_CHUNK = 5000  # ids per DELETE: PostgreSQL takes at most 65,535 parameters


@event.listens_for(Session, "after_flush")
def _copy_device_labels(session: Session, _flush: UOWTransaction) -> None:
    """Rewrite the ``device_label`` rows of the devices whose labels this flush wrote: new
    devices, and devices whose ``labels`` were set (the ORM's history, still there after the
    flush). A deleted device's rows go with it (``ON DELETE CASCADE``)."""
    new = session.new  # a fresh set each time it is read: once, not once per device
    written = [
        device
        for device in (*new, *session.dirty)
        if isinstance(device, Device)
        and (
            device in new
            # An attribute not loaded has not changed: never load it to find out.
            or attributes.get_history(
                device, "labels", PassiveFlag.PASSIVE_NO_INITIALIZE
            ).has_changes()
        )
    ]
    if not written:
        return
    connection = session.connection()
    stale = [device.id for device in written if device not in new]
    for at in range(0, len(stale), _LABEL_CHUNK):
        ids = stale[at : at + _LABEL_CHUNK]
        connection.execute(delete(DeviceLabel).where(DeviceLabel.device_id.in_(ids)))  # type: ignore[attr-defined]
    rows = [
        {"device_id": device.id, "key": key, "value": value}
        for device in written
        for key, value in device.labels.items()
    ]
    if rows:
        connection.execute(insert(DeviceLabel), rows)


class DeviceModel(SQLModel, table=True):
    """What a device reports of one model (its latest state, in columns): what the fleet
    summary and the device list count in SQL instead of parsing every state report."""

    __tablename__ = "device_model"

    device_id: str = Field(max_length=64, foreign_key="device.id", primary_key=True)
    model_name: str = Field(max_length=64, primary_key=True)
    version: int | None = Field(default=None, index=True)  # the active one; null: none
    phase: str = Field(max_length=16)
    # The desired-state sequence its last refusal concerns (a rollout counts a failure
    # only for the desired state it sent or a later one); null: none.
    error_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class DeviceDeployment(SQLModel, table=True):
    """What a device's current desired state says of one model, in columns: the rollout
    engine finds devices behind a default with a query instead of parsing every desired
    state on every tick."""

    __tablename__ = "device_deployment"

    device_id: str = Field(max_length=64, foreign_key="device.id", primary_key=True)
    model_name: str = Field(max_length=64, primary_key=True)
    version: int
    rollout_id: str | None = Field(default=None, max_length=32, index=True)
    stage: str | None = Field(default=None, max_length=64)


class TelemetryRecord(SQLModel, table=True):
    """One telemetry window, stored once per (device, seq) however often it arrives; what
    each model served in it is in ``telemetry_model``."""

    __tablename__ = "telemetry_window"
    __table_args__ = (UniqueConstraint("device_id", "seq"),)

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True))
    device_id: str = Field(max_length=64, index=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    window_start: datetime
    window_end: datetime = Field(index=True)
    outbox_dropped: int = Field(default=0, sa_column=_bigint_zero())
    received_at: datetime = Field(default_factory=utcnow)


class TelemetryModelRecord(SQLModel, table=True):
    """One model version's traffic in one window, as numbers (``monitoring/windows.py``):
    requests and errors in columns, histograms and feature counts as little-endian arrays
    that numpy reads without parsing (``shape`` int32, ``counts`` int64, ``moments``
    float64). Gates and the drift monitor add these up; the wire's JSON is not kept."""

    __tablename__ = "telemetry_model"
    __table_args__ = (Index("ix_telemetry_model_device_end", "device_id", "window_end"),)

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True))
    window_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("telemetry_window.id"), nullable=False, index=True)
    )
    position: int  # its place among the window's models
    device_id: str = Field(max_length=64)
    window_end: datetime = Field(index=True)
    model_name: str = Field(max_length=64)
    version: int
    sha256: str = Field(max_length=64)
    requests: int = Field(sa_column=Column(BigInteger, nullable=False))
    errors: int = Field(sa_column=Column(BigInteger, nullable=False))
    shape: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    counts: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    moments: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SampleRecord(SQLModel, table=True):
    """One batch of opt-in sampled rows, stored once per (device, seq). Joined with labels
    for retraining later."""

    __tablename__ = "sample_batch"
    __table_args__ = (UniqueConstraint("device_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64, index=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    model_name: str = Field(max_length=64, index=True)
    model_version: int
    rows: int
    payload: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = Field(default_factory=utcnow)


class Rollout(SQLModel, table=True):
    """A staged rollout of one model version to the devices a selector matched."""

    __tablename__ = "rollout"

    id: str = Field(max_length=32, primary_key=True)
    model_name: str = Field(max_length=64, index=True)
    version: int
    selector: str = Field(max_length=1024)
    plan: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: RolloutStatus = Field(sa_column=enum_column(RolloutStatus, 16, index=True))
    stage: int = -1
    stage_started_at: datetime | None = None
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    gates: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class RolloutDevice(SQLModel, table=True):
    """A device of a rollout: its place in the cohort order and what it got."""

    __tablename__ = "rollout_device"
    # A stage's cohort is a range of ranks, listed in rank order (the dashboard's pages).
    __table_args__ = (Index("ix_rollout_device_rank", "rollout_id", "rank"),)

    rollout_id: str = Field(max_length=32, foreign_key="rollout.id", primary_key=True)
    device_id: str = Field(max_length=64, primary_key=True)
    rank: int
    assigned_stage: int | None = None
    assigned_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    assigned_at: datetime | None = None  # when it was given the version (paired gates)
    previous_version: int | None = None
    reverted: bool = False


class Event(SQLModel, table=True):
    """The audit log: every state change of a rollout or a device, drift and retraining."""

    __tablename__ = "event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    type: EventType = Field(sa_column=enum_column(EventType, 32, index=True))
    rollout_id: str | None = Field(default=None, max_length=32, index=True)
    device_id: str | None = Field(default=None, max_length=64, index=True)
    model_name: str | None = Field(default=None, max_length=64, index=True)
    version: int | None = None
    job_id: int | None = Field(default=None, index=True)
    cause_id: int | None = None  # the event this one follows from (lineage)
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    message: str = Field(sa_column=Column(Text, nullable=False))


class DefaultVersion(SQLModel, table=True):
    """The version devices matching a selector get when they join (set by a finished rollout)."""

    __tablename__ = "default_version"

    model_name: str = Field(max_length=64, primary_key=True)
    selector: str = Field(max_length=1024, primary_key=True)
    version: int
    rollout_id: str = Field(max_length=32)
    updated_at: datetime = Field(default_factory=utcnow)
    # What it was before this rollout made ``version`` the default: restored if the rollout
    # is rolled back after it finished.
    previous_version: int | None = None
    previous_rollout_id: str | None = Field(default=None, max_length=32)


class ControlPlaneProcess(SQLModel, table=True):
    """A running control-plane process, with its heartbeat (see ``coordination.leadership``)."""

    __tablename__ = "control_plane_process"

    id: str = Field(max_length=32, primary_key=True)
    host: str = Field(max_length=64)
    pid: int
    started_at: datetime
    heartbeat_at: datetime = Field(index=True)


class SampleRowRecord(SQLModel, table=True):
    """One sampled inference row (from a ``SampleBatch``); a training row once feedback
    with the same request id brings its label."""

    __tablename__ = "sample_row"

    request_id: str = Field(max_length=64, primary_key=True)
    device_id: str = Field(max_length=64)
    model_name: str = Field(max_length=64, index=True)
    model_version: int
    features: list[float | None] = Field(sa_column=Column(JSON, nullable=False))
    prediction: float
    received_at: datetime = Field(default_factory=utcnow, index=True)


class Feedback(SQLModel, table=True):
    """A true label for one prediction, by the request id the agent's response carried.
    ``label`` and ``prediction`` are class indices (classification) or values."""

    __tablename__ = "feedback"

    request_id: str = Field(max_length=64, primary_key=True)
    model_name: str = Field(max_length=64, index=True)
    model_version: int | None = None
    device_id: str | None = Field(default=None, max_length=64)
    label: float
    prediction: float | None = None
    received_at: datetime = Field(default_factory=utcnow, index=True)


class DriftResult(SQLModel, table=True):
    """The monitor's reading of one model version on one selector over one time bucket."""

    __tablename__ = "drift_result"
    __table_args__ = (UniqueConstraint("model_name", "version", "selector", "bucket_start"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=64, index=True)
    version: int
    selector: str = Field(max_length=1024)
    bucket_start: datetime = Field(index=True)
    bucket_end: datetime
    devices: int
    windows: int
    requests: int
    errors: int
    p95_latency_us: float | None = None
    features: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    prediction: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    drifted_share: float
    drifted_features: list[str] = Field(sa_column=Column(JSON, nullable=False))
    dataset_drift: bool
    labels: int = 0
    accuracy: float | None = None
    f1_macro: float | None = None


class MonitorState(SQLModel, table=True):
    """Streaks between buckets per (model, version, selector); the row with model_name ""
    holds how far the monitor has read (``evaluated_until``)."""

    __tablename__ = "monitor_state"

    model_name: str = Field(max_length=64, primary_key=True)
    version: int = Field(primary_key=True)
    selector: str = Field(max_length=1024, primary_key=True)
    state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    accuracy_streak: int = 0
    evaluated_until: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class RetrainState(SQLModel, table=True):
    """Per model: a trigger waiting for its turn (cooldown, data) and when the last
    retraining started."""

    __tablename__ = "retrain_state"

    model_name: str = Field(max_length=64, primary_key=True)
    pending_event_id: int | None = None
    pending_reason: str | None = Field(default=None, max_length=32)
    waiting_for: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_started_at: datetime | None = None
    last_job_id: int | None = None
