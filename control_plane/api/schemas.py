"""REST API schemas (plain pydantic: the CLI client imports them without the server extra)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, TypeAdapter, model_validator

from control_plane.audit.types import ChallengeData, EventType
from control_plane.monitoring.policy import RetrainPolicy, Trigger
from control_plane.monitoring.release import Release
from control_plane.rollouts.gates import GateResult
from control_plane.rollouts.machine import RolloutStatus
from control_plane.rollouts.plans import PlanSpec
from control_plane.training.results import SearchResult
from shared.manifest import Lineage, ModelManifest, NanPolicy, ParamValue, Task
from shared.messages import DEVICE_ID_PATTERN, DeviceState, TelemetryWindow

MAX_ID = 2**63 - 1  # ids and versions in paths and bodies: what a BIGINT holds
VERSION_REF = r"^([0-9]{1,18}|[a-z][a-z0-9_-]{0,31})$"  # a version number or an alias
MAX_FEEDBACK_ITEMS = 10_000


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiRequest(ApiModel):
    """A request body: nothing is coerced (``"7"`` is not 7, ``true`` is not 1) and numbers
    are finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class RoleName(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Health(ApiModel):
    status: Literal["ok"] = Field(description="`ok` once the database answers.")
    version: str = Field(description="edgefleet version of this server.")
    leader: bool = Field(
        description="This process drives rollouts (one of several sharing "
        "a PostgreSQL database; always true with SQLite)."
    )


class DatasetPublic(ApiModel):
    """A stored, validated dataset version."""

    id: int = Field(description="Dataset id, used to train.")
    name: str = Field(description="Dataset name; uploads under one name get versions 1, 2, …")
    version: int = Field(description="Version under this name (1, 2, …).")
    sha256: str = Field(description="sha256 of the uploaded CSV bytes.")
    size: int = Field(description="Size of the uploaded CSV in bytes.")
    rows: int = Field(description="Rows kept for training (after the NaN policy).")
    label_column: str = Field(description="Name of the label column.")
    label_kind: Literal["integer", "number", "string"] = Field(
        description="`integer`/`string` labels suit classification, `number` regression."
    )
    nan_policy: NanPolicy = Field(description="`reject`, `drop` rows, or `impute` (median).")
    dropped_rows: int = Field(description="Rows dropped for missing values (policy `drop`).")
    missing_values: int = Field(description="Missing feature values kept (policy `impute`).")
    features: list[str] = Field(description="Feature columns, in order.")
    classes: list[str] | None = Field(description="Distinct labels, sorted; null if > 1000.")
    created_at: datetime = Field(description="Upload time (UTC).")


class SearchSpec(ApiRequest):
    """A bounded hyperparameter search: each candidate is scored by cross-validation on the
    training rows, and the best is trained on all of them and registered."""

    params: dict[str, list[ParamValue]] = Field(
        min_length=1,
        max_length=8,
        description='Parameter → values to try, e.g. {"max_depth": [4, 8, null]}; each '
        "value is checked against the algorithm's rules.",
    )
    folds: int = Field(default=3, ge=2, le=10, description="Cross-validation folds.")
    max_candidates: int = Field(
        default=20,
        ge=1,
        le=200,
        description="Most candidates tried: a larger grid is sampled (seeded).",
    )


class TrainRequest(ApiRequest):
    """Train a new version of a model on a stored dataset."""

    dataset_id: int = Field(ge=1, le=MAX_ID, description="Id of the dataset to train on.")
    algorithm: str = Field(
        max_length=32,
        description="`logreg`, `random_forest`, `hist_gb`, `xgboost`, `lightgbm` "
        "(classification); `ridge`, `random_forest`, `hist_gb`, `xgboost`, `lightgbm` "
        "(regression).",
    )
    task: Task = Field(default="classification", description="`classification` or `regression`.")
    params: dict[str, ParamValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Algorithm parameters; unknown names are refused.",
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed for split and model.")
    validation_fraction: float = Field(
        default=0.2, ge=0.05, le=0.5, description="Share of rows held out for validation."
    )
    search: SearchSpec | None = Field(
        default=None,
        description="Search these parameters first (the job's result keeps "
        "every candidate's score).",
    )


ImportFormat = Literal["onnx", "sklearn", "xgboost", "lightgbm"]


class ImportQuery(ApiModel):
    """The query of `POST /models/{name}/import` (the body is the model file): query
    strings are text, so numbers are parsed; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: int = Field(
        ge=1,
        le=MAX_ID,
        description="Reference dataset: the model runs on its rows, which give the version's "
        "metrics, reference statistics and golden vectors.",
    )
    format: ImportFormat = Field(
        default="onnx",
        description="`onnx`; `sklearn` (a fitted estimator or pipeline saved with "
        "`skops.io.dump`: only scikit-learn types are loaded, never a pickle); `xgboost` "
        "(`save_model`, .json or .ubj); `lightgbm` (`Booster.save_model`, text). Other "
        "formats are converted to ONNX and the conversion must pass the parity gate against "
        "the source model on the reference rows.",
    )
    task: Task = Field(default="classification", description="`classification` or `regression`.")
    filename: str | None = Field(
        default=None, max_length=255, description="The file's name, for the lineage."
    )
    classes: list[str] | None = Field(
        default=None,
        max_length=1000,
        description="Classifiers: the class names in the order of the model's class indices, "
        "when not the reference dataset's (sorted) order. Repeat the parameter.",
    )


class MlflowImport(ApiRequest):
    """A model of an MLflow registry to import."""

    uri: str = Field(
        max_length=512,
        pattern=r"^models:/[^/@\s]+(/[0-9]+|@[A-Za-z0-9_-]+)$",
        description="`models:/NAME/VERSION` or `models:/NAME@ALIAS`.",
    )
    dataset_id: int = Field(ge=1, le=MAX_ID, description="The reference dataset.")
    task: Task = Field(default="classification", description="`classification` or `regression`.")
    classes: list[str] | None = Field(
        default=None,
        max_length=1000,
        description="Classifiers: the class names in the order of the model's class indices, "
        "when not the reference dataset's (sorted) order.",
    )


class ImportRequest(ApiModel):
    """What an import job was asked to do (made by `POST /models/{name}/import`)."""

    format: ImportFormat = Field(default="onnx", description="Format of the upload.")
    dataset_id: int = Field(ge=1, le=MAX_ID, description="The reference dataset.")
    task: Task = Field(description="`classification` or `regression`.")
    sha256: str = Field(description="sha256 of the stored upload.")
    filename: str | None = Field(default=None, description="The upload's file name.")
    classes: list[str] | None = Field(
        default=None,
        description="Class names in the order of the model's class indices (default: the "
        "reference dataset's classes, sorted).",
    )
    uri: str | None = Field(default=None, description="The MLflow model URI it came from.")
    seed: int = Field(default=0, description="Seed of the rows golden vectors come from.")


class RetrainRequest(ApiModel):
    """What a retraining job was asked to do (made by the monitor or `POST .../retrain`)."""

    trigger: Trigger = Field(description="`drift`, `accuracy`, `schedule` or `manual`.")
    trigger_event_id: int | None = Field(
        default=None, description="The event that triggered it (lineage)."
    )
    champion_version: int = Field(description="The version the challenger must beat.")
    since: datetime | None = Field(
        default=None,
        description="Labelled rows from this time on: the trigger's onset, or the policy's "
        "`recent_seconds` back.",
    )
    policy: RetrainPolicy = Field(description="The model's retraining policy at the time.")


class RetrainCreate(ApiRequest):
    """Retrain now, whatever the triggers say (the cooldown is skipped)."""

    champion_version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ID,
        description="Version the challenger must beat; default: the version the policy's "
        "selector defaults to, else the latest.",
    )


class JobPublic(ApiModel):
    """A background job (training or retraining). Poll until `status` is `succeeded` or
    `failed`; a retraining whose challenger lost ends `succeeded` at stage `refused`."""

    id: int = Field(description="Job id.")
    kind: Literal["train", "retrain", "import"] = Field(
        description="Job kind (`train`, `retrain`, `import`)."
    )
    status: Literal["queued", "running", "succeeded", "failed"] = Field(
        description="`queued`, `running`, `succeeded` or `failed`."
    )
    stage: str = Field(
        description="Current step: queued, loading, (retraining: collecting,) training, "
        "(with a search: search i/n,) "
        "exporting, parity, (retraining: challenge,) signing, done, refused, failed."
    )
    progress: float = Field(ge=0, le=1, description="0 … 1.")
    model_name: str = Field(description="Model the job trains a version of.")
    request: TrainRequest | RetrainRequest | ImportRequest = Field(
        description="The request as submitted."
    )
    error: str | None = Field(description="Why the job failed, or why its challenger was refused.")
    result_version: int | None = Field(description="The registered version, on success.")
    result: ChallengeData | SearchResult | None = Field(
        default=None,
        description="Retraining: champion and challenger scores on the holdout, the decision "
        "and its reason, rows used, the dataset built. Training with `search`: every "
        "candidate's cross-validation score and the best (the version is `result_version`).",
    )
    trigger_event_id: int | None = Field(
        default=None, description="Retraining: the event that triggered it."
    )
    created_at: datetime = Field(description="When the job was queued (UTC).")
    started_at: datetime | None = Field(description="When a worker started it.")
    finished_at: datetime | None = Field(description="When it ended.")


class Holdout(ApiModel):
    dataset_id: int = Field(description="Dataset the holdout rows come from.")
    rows: int = Field(description="Holdout rows (complete ones).")
    of_version: int = Field(
        description="The newer version: its validation rows when it was trained here, else "
        "its whole reference dataset."
    )
    unseen_by_both: bool = Field(
        description="Neither version trained on these rows (both trained here on the same "
        "dataset and split); otherwise the older one may have."
    )


class ComparedVersion(ApiModel):
    version: int = Field(description="Version number.")
    algorithm: str = Field(description="Algorithm, or the format it was imported from.")
    size: int = Field(description="ONNX bytes.")
    metrics: dict[str, float] = Field(description="Metrics on the holdout.")
    latency_us: dict[str, float] = Field(
        description="Median µs of one onnxruntime run on this machine, by rows per run "
        '("1", "64"); one intra-op thread, as on devices.'
    )
    lineage: Lineage = Field(description="Where it came from.")


class Comparison(ApiModel):
    """Two versions on the same holdout."""

    holdout: Holdout = Field(description="The rows both were scored on.")
    a: ComparedVersion = Field(description="The first version asked for.")
    b: ComparedVersion = Field(description="The second.")


class ModelPublic(ApiModel):
    name: str = Field(description="Model name.")
    task: Task = Field(description="`classification` or `regression`, fixed by the first version.")
    latest_version: int = Field(description="Highest registered version (0: none yet).")
    aliases: dict[str, int] = Field(description="Alias → version, e.g. champion → 3.")
    created_at: datetime = Field(description="When the first version was registered.")


class VersionPublic(ApiModel):
    """A registered model version. `manifest` is the signed manifest devices verify."""

    model_name: str = Field(description="Model name.")
    version: int = Field(description="Version number (monotonic per model).")
    sha256: str = Field(description="sha256 of the ONNX artifact.")
    size: int = Field(description="Size of the ONNX artifact in bytes.")
    algorithm: str = Field(description="Training algorithm.")
    dataset_id: int = Field(description="Dataset it was trained on.")
    job_id: int | None = Field(description="Training job.")
    metrics: dict[str, float] = Field(description="Validation metrics.")
    parity_max_abs_diff: float = Field(description="Measured max |sklearn − onnxruntime|.")
    parity_label_disagreements: int = Field(
        description="Validation rows whose class differed between sklearn and onnxruntime."
    )
    aliases: list[str] = Field(description="Aliases pointing at this version.")
    release: Release | None = Field(
        default=None,
        description="Versions from retraining: awaiting_approval, approved, "
        "pending_rollout, rolling_out (see `rollout_id`).",
    )
    rollout_id: str | None = Field(default=None, description="The rollout that released it.")
    artifact_url: str = Field(description="Path of the artifact download (Range supported).")
    created_at: datetime = Field(description="Registration time (UTC).")
    manifest: ModelManifest | None = Field(
        default=None, description="The signed manifest (single-version reads only)."
    )


class AliasUpdate(ApiRequest):
    version: int = Field(ge=1, le=MAX_ID, description="Version the alias points at.")


class AliasPublic(ApiModel):
    model_name: str = Field(description="Model name.")
    alias: str = Field(description="Alias name.")
    version: int = Field(description="Version the alias points at.")
    updated_at: datetime = Field(description="When the alias last changed.")


class TokenCreate(ApiRequest):
    name: str = Field(min_length=1, max_length=64, description="Who or what uses the token.")
    role: RoleName = Field(
        strict=False,  # the enum's value, as JSON carries it
        description="`admin`, `operator` (train, upload, aliases) or `viewer` (read only).",
    )


class TokenPublic(ApiModel):
    id: int = Field(description="Token id (to revoke it).")
    name: str = Field(description="Who or what uses the token.")
    role: Literal["admin", "operator", "viewer", "device"] = Field(
        description="`admin`, `operator`, `viewer`, or `device` (a device's own token)."
    )
    device_id: str | None = Field(default=None, description="The device of a device token.")
    created_at: datetime = Field(description="When it was issued.")
    revoked_at: datetime | None = Field(description="When it was revoked; null while valid.")


class TokenIssued(TokenPublic):
    token: str = Field(description="The bearer secret. Shown once; only its hash is stored.")


MAX_REGISTRATIONS = 10_000  # devices one POST /devices may register


class DeviceCreate(ApiRequest):
    """Register a device."""

    id: str = Field(
        pattern=DEVICE_ID_PATTERN,
        description="Device id; also its MQTT username. Ids starting with `edgefleet-` are "
        "reserved for the broker's service accounts.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="Labels, e.g. site=berlin."
    )


class DevicePublic(ApiModel):
    """A device and what it last reported."""

    id: str = Field(description="Device id.")
    labels: dict[str, str] = Field(description="Labels.")
    registered: bool = Field(description="Registered by an operator (else only seen on MQTT).")
    online: bool = Field(description="From its retained online message and Last Will.")
    last_seen: datetime | None = Field(description="Last message from the device.")
    deployment_seq: int = Field(description="Sequence of the last desired state signed for it.")
    desired_expires_at: datetime | None = Field(description="When that desired state expires.")
    state: DeviceState | None = Field(description="Its last retained state report.")
    dropped_messages: int = Field(
        description="Messages from this device the control plane refused (malformed, "
        "implausible, or not storable), each dropped and counted."
    )
    admission: str = Field(
        description="`preauthorized`, `pending`, `accepted`, `rejected` or `decommissioned`; "
        "only an accepted device's token works and only it has a broker account."
    )
    broker_account: bool = Field(
        description="The broker holds its account (made by the control plane when "
        "`broker_accounts` is `dynsec`: at once for `devices add`, at the device's first "
        "check-in after it is accepted otherwise)."
    )


class DeviceRegistrations(RootModel[DeviceCreate | list[DeviceCreate]]):
    """One device, or a list of up to 10,000 (registered all or none)."""

    @model_validator(mode="wrap")
    @classmethod
    def _one_or_many(cls, value: Any, handler: Any) -> DeviceRegistrations:
        # Validated as the one shape it has: errors name the item (["body", 3, "id"]), not
        # both branches of the union.
        if isinstance(value, list):
            return cls.model_construct(root=_REGISTRATIONS.validate_python(value))
        return cls.model_construct(root=DeviceCreate.model_validate(value))


_REGISTRATIONS = TypeAdapter(
    Annotated[list[DeviceCreate], Field(min_length=1, max_length=MAX_REGISTRATIONS)]
)


class DeviceRegistered(ApiModel):
    device: DevicePublic = Field(description="The registered device.")
    token: str = Field(
        description="Device token (role `device`), shown once. It is also the "
        "device's MQTT password (username = device id)."
    )


class Caller(ApiModel):
    """The caller's token, as the caller may know it (never its secret)."""

    name: str = Field(description="The token's name.")
    role: str = Field(description="`admin`, `operator`, `viewer` or `device`.")
    device_id: str | None = Field(description="The device of a device token.")


class DevicesPreauthorize(ApiRequest):
    """Devices that will be accepted as soon as they enroll."""

    devices: list[DeviceCreate] = Field(
        min_length=1, max_length=10_000, description="Ids (and labels); all or none stored."
    )


class BootstrapTokenCreate(ApiRequest):
    """A bootstrap token devices enroll with."""

    name: str = Field(min_length=1, max_length=64, description="What it is for.")
    uses: int = Field(default=1, ge=1, le=100_000, description="Devices it may enroll.")
    expires_in_seconds: int = Field(
        default=86_400, ge=60, le=90 * 86_400, description="Lifetime (default a day)."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="Labels given to each device it enrolls."
    )
    auto_accept: bool = Field(
        default=False,
        description="Devices it enrolls are accepted at once (else they wait as `pending`).",
    )


class BootstrapTokenPublic(ApiModel):
    id: int = Field(description="Id (to revoke it).")
    name: str = Field(description="What it is for.")
    max_uses: int = Field(description="Devices it may enroll.")
    uses: int = Field(description="Devices it enrolled.")
    expires_at: datetime = Field(description="After this it enrolls nothing.")
    labels: dict[str, str] = Field(description="Labels given to each device it enrolls.")
    auto_accept: bool = Field(description="Its devices are accepted at once.")
    created_at: datetime = Field(description="When it was issued.")
    revoked_at: datetime | None = Field(description="When it was revoked, if it was.")


class BootstrapTokenIssued(BootstrapTokenPublic):
    token: str = Field(description="The bootstrap secret. Shown once; only its hash is stored.")


class EnrollRequest(ApiRequest):
    """A device asks to join (with a bootstrap token as its bearer token)."""

    device_id: str = Field(
        max_length=64,
        description="Its id: ^[a-z0-9][a-z0-9-]{0,63}$, not starting with `edgefleet-`.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Its labels (the bootstrap token's and a pre-authorization's win).",
    )


class EnrollmentStatus(ApiModel):
    device_id: str = Field(description="The device.")
    admission: str = Field(description="`pending`, `accepted` or `rejected`.")
    broker_account: bool = Field(description="Its broker account exists (it may connect).")
    ready: bool = Field(
        description="Accepted, and its broker account exists (or the broker's accounts are "
        "kept by hand): the agent can start."
    )
    topic_root: str = Field(description="MQTT topic root.")


class Enrolled(EnrollmentStatus):
    token: str = Field(
        description="The device's token, shown once: its API bearer token and its MQTT "
        "password (username = device id). It works once the device is accepted."
    )


class DeploymentCreate(ApiRequest):
    """Deploy one model version to one device (the rollout engine does this at scale)."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="Target device.")
    model: str = Field(max_length=64, description="Model name.")
    version: str = Field(pattern=VERSION_REF, description="Version number or alias.")


class DeploymentPublic(ApiModel):
    device_id: str = Field(description="Target device.")
    seq: int = Field(description="Sequence of the signed desired state.")
    expires_at: datetime = Field(description="When it expires unless re-signed.")
    published: bool = Field(
        description="The broker acknowledged the retained publish; if "
        "false it is stored and published once the broker is reachable."
    )


class TelemetryPublic(ApiModel):
    received_at: datetime = Field(description="When the control plane stored it.")
    window: TelemetryWindow = Field(description="The window as the device sent it.")
    p95_latency_us: dict[str, float | None] = Field(
        default_factory=dict,
        description="Per `model:version` in the window, the p95 latency from its histogram.",
    )


class FleetSummary(ApiModel):
    """What a selector's devices serve, counted."""

    devices: int = Field(description="Devices the selector matches.")
    online: int = Field(description="Of them, online.")
    serving: list[ServingCount] = Field(description="Devices per model, version and phase.")


class ServingCount(ApiModel):
    model: str = Field(description="Model name.")
    version: int | None = Field(description="The active version (null: none yet).")
    phase: str = Field(description="Install phase.")
    devices: int = Field(description="Devices.")


class DeviceUpdate(ApiRequest):
    labels: dict[str, str] = Field(
        max_length=32, description="The device's labels (replaces them)."
    )


class RolloutCreate(ApiRequest):
    """Roll a model version out to the devices a selector matches, in stages."""

    model: str = Field(max_length=64, description="Model name.")
    version: str = Field(pattern=VERSION_REF, description="Version number or alias.")
    selector: str = Field(
        default="",
        max_length=1024,
        description="Label selector, e.g. `site=berlin,hw!=rpi3`; empty: every device.",
    )
    plan: PlanSpec = Field(
        default_factory=lambda: PlanSpec(preset="canary"),
        description="Stages, gates and failure policy (default: canary).",
    )
    id: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]{6,32}$",
        description="Rollout id; pass the `rollout_id` of a dry run to get "
        "exactly the cohorts it showed (cohorts hash the rollout id).",
    )


class PlannedDevice(ApiModel):
    id: str = Field(description="Device id.")
    current_version: int | None = Field(description="Version it reports serving now.")


class StagePublic(ApiModel):
    index: int = Field(description="Stage number, from 0.")
    label: str = Field(description="What the plan said: a count or a percentage.")
    target: int = Field(description="Devices with the version once the stage starts (cumulative).")
    soak_seconds: float = Field(description="Watch time before going on.")
    devices: list[PlannedDevice] | None = Field(
        default=None, description="Devices the stage adds (dry run only)."
    )


class RolloutPlanPublic(ApiModel):
    """A dry run: the blast radius per stage; nothing was changed."""

    rollout_id: str = Field(description="Create the rollout with this id to get these cohorts.")
    model: str = Field(description="Model name.")
    version: int = Field(description="Version number.")
    selector: str = Field(description="Selector.")
    devices: int = Field(description="Devices the selector matches.")
    stages: list[StagePublic] = Field(description="Stages with the devices each adds.")


class RolloutMemberPublic(ApiModel):
    device_id: str = Field(description="Device id.")
    rank: int = Field(description="Place in the rollout's cohort order, from 0.")
    stage: int = Field(description="The stage whose cohort it is in, from 0.")
    assigned_stage: int | None = Field(description="The stage that gave it the version.")
    assigned_at: datetime | None = Field(description="When it was given the version.")
    previous_version: int | None = Field(description="What it was to serve before.")
    reverted: bool = Field(description="Given its previous version back (rollback).")


class VersionSeries(ApiModel):
    version: int | None = Field(description="A version of the rollout's model (null: none).")
    devices: list[int] = Field(description="Devices serving it, one count per moment.")


class RolloutVersions(ApiModel):
    """Devices of a rollout per version they served, from its start to now (or its end)."""

    times: list[datetime] = Field(description="The moments, evenly spread, oldest first.")
    series: list[VersionSeries] = Field(description="One per version served at some moment.")


class RolloutPublic(ApiModel):
    """A rollout and where it is."""

    id: str = Field(description="Rollout id.")
    model: str = Field(description="Model name.")
    version: int = Field(description="Version rolled out.")
    selector: str = Field(description="Selector of its devices.")
    plan: PlanSpec = Field(description="Its plan.")
    status: RolloutStatus = Field(description="running, paused, succeeded, rolled_back or aborted.")
    stage: int = Field(description="Current stage (-1 before the first).")
    stages: list[StagePublic] = Field(description="Resolved stages.")
    reason: str | None = Field(description="Why it paused, rolled back or aborted.")
    gates: list[GateResult] = Field(description="The current stage's last gate readings.")
    devices: int = Field(description="Devices in the rollout.")
    assigned: int = Field(description="Devices given the version so far.")
    created_by: str = Field(description="Who started it.")
    created_at: datetime = Field(description="When.")
    updated_at: datetime = Field(description="Last change.")


class EventPublic(ApiModel):
    at: datetime = Field(description="When.")
    type: EventType = Field(description="What happened (see the enum).")
    id: int = Field(description="Event id (other events refer to it as `cause_id`).")
    rollout_id: str | None = Field(description="Rollout it concerns, if any.")
    device_id: str | None = Field(description="Device it concerns, if any.")
    model_name: str | None = Field(default=None, description="Model it concerns, if any.")
    version: int | None = Field(default=None, description="Model version it concerns, if any.")
    job_id: int | None = Field(default=None, description="Job it concerns, if any.")
    cause_id: int | None = Field(
        default=None,
        description="The event this one follows from: drift → retrain_started → "
        "challenger_registered → release.",
    )
    data: dict[str, Any] | None = Field(default=None, description="Figures behind it.")
    message: str = Field(description="What happened.")


class ErrorItem(ApiModel):
    loc: list[str | int] = Field(description='Where: e.g. ["query", "label"].')
    msg: str = Field(description="What rule was broken.")
    type: str = Field(description="Stable error code.")


class ErrorResponse(ApiModel):
    detail: list[ErrorItem] | str


class FeedbackItem(ApiRequest):
    """The true label of one prediction."""

    request_id: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="The `id` the agent's inference response carried.",
    )
    label: str | int | float = Field(
        description="Classification: class name (or index); regression: the true value."
    )
    prediction: str | int | float | None = Field(
        default=None,
        description="What the model answered (from the response); needed for accuracy unless "
        "the row was sampled to the control plane.",
    )
    version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ID,
        description="Model version that answered (from the response).",
    )
    device_id: str | None = Field(
        default=None, pattern=DEVICE_ID_PATTERN, description="Device that answered."
    )


class FeedbackCreate(ApiRequest):
    """True labels, batched; the same request id posted again replaces its label (when
    the same device, or an operator, posts it)."""

    model: str = Field(max_length=64, description="Model name.")
    items: list[FeedbackItem] = Field(
        min_length=1, max_length=MAX_FEEDBACK_ITEMS, description="Labels."
    )


class FeedbackResult(ApiModel):
    stored: int = Field(description="Labels stored (new or replaced).")
    matched_samples: int = Field(
        description="Of them, rows sampled from devices: these become training rows."
    )


class FeatureDriftPublic(ApiModel):
    name: str = Field(description="Feature name, or `prediction`.")
    rows: int = Field(description="Non-missing rows in the bucket.")
    psi: float | None = Field(description="Population stability index (null: no verdict).")
    js: float | None = Field(description="Jensen–Shannon distance, base 2.")
    verdict: Literal["insufficient", "ok", "watch", "drift"] = Field(
        description="`insufficient` (too few rows), `ok`, `watch` or `drift`."
    )
    mean: float | None = Field(default=None, description="Mean in the bucket.")
    std: float | None = Field(default=None, description="Standard deviation in the bucket.")
    mean_shift: float | None = Field(
        default=None, description="(mean − reference mean) / reference standard deviation."
    )
    missing_share: float = Field(default=0.0, description="Share of rows missing the value.")
    out_of_range_share: float = Field(
        default=0.0, description="Share of rows outside the training range."
    )
    psi_threshold: float | None = Field(
        default=None,
        description="The PSI at which this reading is `drift`: the policy's, raised where "
        "the training set and the bucket are small (calibration).",
    )
    js_threshold: float | None = Field(
        default=None, description="The JS distance at which this reading is `drift`."
    )


class DriftPointPublic(ApiModel):
    """The monitor's reading of one version on one selector over one time bucket."""

    version: int = Field(description="Model version.")
    selector: str = Field(description="Device population (label selector; empty: all).")
    bucket_start: datetime = Field(description="Bucket start (UTC).")
    bucket_end: datetime = Field(description="Bucket end (UTC).")
    devices: int = Field(description="Devices whose windows were merged.")
    windows: int = Field(description="Telemetry windows merged.")
    requests: int = Field(description="Predictions.")
    errors: int = Field(description="Failed predictions.")
    p95_latency_us: float | None = Field(description="p95 latency from merged histograms.")
    features: list[FeatureDriftPublic] = Field(description="Per feature, in input order.")
    prediction: FeatureDriftPublic = Field(description="The prediction histogram.")
    drifted_share: float = Field(description="Share of judged features reading drift.")
    drifted_features: list[str] = Field(
        description="Features drifted for `consecutive` buckets in a row."
    )
    dataset_drift: bool = Field(description="Dataset drift (share held `consecutive` buckets).")
    labels: int = Field(description="Labels received in the bucket for this version.")
    accuracy: float | None = Field(description="Accuracy on them (classification).")
    f1_macro: float | None = Field(description="Macro F1 on them (classification).")
