"""Models, versions, aliases and training."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session, col, select

from control_plane.api.deps import (
    BlobsDep,
    JobsDep,
    Operator,
    SessionDep,
    SettingsDep,
    Viewer,
    read_capped,
)
from control_plane.api.routes.jobs import job_public
from control_plane.api.schemas import (
    AliasPublic,
    AliasUpdate,
    Comparison,
    ImportQuery,
    ImportRequest,
    JobPublic,
    MlflowImport,
    ModelPublic,
    TrainRequest,
    VersionPublic,
)
from control_plane.config import ServerSettings
from control_plane.errors import ConflictError, ControlPlaneError, InvalidInputError
from control_plane.registry.versions import (
    aliases_of,
    check_model_name,
    delete_alias,
    get_model,
    latest_version,
    resolve_version,
    set_alias,
)
from control_plane.store.blobs import BlobStore
from control_plane.store.tables import Dataset, Job, JobKind, Model, ModelVersion
from control_plane.training.algorithms import get_algorithm, validate_params
from control_plane.training.comparison import compare
from control_plane.training.jobs import JobRunner
from control_plane.training.mlflow_registry import fetch_model
from control_plane.training.model_import import check_upload
from control_plane.training.supply_chain import check_features_match
from shared.manifest import ModelManifest, Task

router = APIRouter(prefix="/models", tags=["models"])
NamePath = Annotated[str, Path(description="Model name.")]


def _model_public(session: SessionDep, row: Model) -> ModelPublic:
    return ModelPublic(
        name=row.name,
        task=row.task,
        latest_version=row.latest_version,
        aliases=aliases_of(session, row.name),
        created_at=row.created_at,
    )


def _version_public(
    row: ModelVersion, aliases: dict[str, int], *, with_manifest: bool
) -> VersionPublic:
    return VersionPublic(
        model_name=row.model_name,
        version=row.version,
        sha256=row.sha256,
        size=row.size,
        algorithm=row.algorithm,
        dataset_id=row.dataset_id,
        job_id=row.job_id,
        metrics=row.metrics,
        parity_max_abs_diff=row.parity_max_abs_diff,
        parity_label_disagreements=row.parity_label_disagreements,
        aliases=sorted(a for a, v in aliases.items() if v == row.version),
        release=row.release,
        rollout_id=row.rollout_id,
        artifact_url=f"/api/v1/artifacts/{row.sha256}",
        created_at=row.created_at,
        manifest=ModelManifest.model_validate_json(row.manifest) if with_manifest else None,
    )


@router.post(
    "/{name}/train",
    response_model=JobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Train a new version (a background job)",
    responses={
        409: {"description": "Task or features differ from the model's."},
        422: {"description": "Unknown dataset, algorithm or parameter."},
    },
)
def train(
    name: NamePath,
    body: TrainRequest,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
    _: Operator,
    request: Request,
) -> JobPublic:
    """Check the request, queue a job and return it at once; poll `GET /jobs/{id}`."""
    check_model_name(name)
    _check_reference(session, settings, name, body.dataset_id, body.task, "body")
    algorithm = get_algorithm(body.task, body.algorithm)
    validate_params(algorithm, body.params)
    for param, values in (body.search.params if body.search else {}).items():
        for value in values:
            validate_params(algorithm, {param: value}, ("body", "search", "params"))
    return _queue(
        session, jobs, request, Job(model_name=name, request=body.model_dump(mode="json"))
    )


@router.post(
    "/{name}/import",
    response_model=JobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Import a model trained elsewhere (a background job)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
    responses={
        409: {"description": "Task or features differ from the model's."},
        413: {"description": "Larger than `max_import_bytes`."},
        422: {"description": "Not a model a device can run as this one; `detail` says why."},
    },
)
async def import_model(
    name: NamePath,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    jobs: JobsDep,
    _: Operator,
    request: Request,
    query: Annotated[ImportQuery, Query()],
) -> JobPublic:
    """The body is the model file (`Content-Type: application/octet-stream`), checked
    before anything is stored. An ONNX file: one float32 input `[batch, features]` matching
    the dataset; a classifier's int64 class indices then float probabilities
    `[batch, classes]`, a regressor's values; standard operators only, no loops, nothing
    this onnxruntime cannot load. Other formats: loaded without unpickling, and matching
    the task, features and classes. The job converts them, runs the model on the reference
    rows (metrics, reference statistics, golden vectors), signs and registers it like a
    trained version (`lineage.source` says what was imported); poll `GET /jobs/{id}`."""
    check_model_name(name)
    dataset = await run_in_threadpool(  # the database, off the event loop
        _check_reference, session, settings, name, query.dataset_id, query.task, "query"
    )
    data = await read_capped(request, settings.max_import_bytes)
    return await run_in_threadpool(
        _queue_import, session, blobs, jobs, request, name, dataset, query, data
    )


@router.post(
    "/{name}/import/mlflow",
    response_model=JobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Import a model from an MLflow registry (a background job)",
    responses={
        409: {"description": "Task, features or class order differ from the model's."},
        413: {"description": "Larger than `max_import_bytes`."},
        422: {"description": "No such model in the registry, or not one a device can run."},
    },
)
def import_from_mlflow(
    name: NamePath,
    body: MlflowImport,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    jobs: JobsDep,
    _: Operator,
    request: Request,
) -> JobPublic:
    """Fetch `uri` from the MLflow tracking server of the setting `mlflow_tracking_uri` with
    MLflow's client, take its ONNX, scikit-learn (skops), XGBoost or LightGBM flavor (never
    a pickle), and import it as `POST /models/{name}/import` does."""
    check_model_name(name)
    dataset = _check_reference(session, settings, name, body.dataset_id, body.task, "body")
    fetched = fetch_model(body.uri, settings.mlflow_tracking_uri, settings.max_import_bytes)
    query = ImportQuery(
        dataset_id=body.dataset_id,
        format=fetched.format,
        task=body.task,
        filename=fetched.filename,
        classes=body.classes,
    )
    return _queue_import(
        session, blobs, jobs, request, name, dataset, query, fetched.data, uri=body.uri
    )


def _queue_import(
    session: Session,
    blobs: BlobStore,
    jobs: JobRunner,
    request: Request,
    name: str,
    dataset: Dataset,
    query: ImportQuery,
    data: bytes,
    uri: str | None = None,
) -> JobPublic:
    """Check the model file, store it and queue its import job."""
    classes = check_upload(
        query.format,
        data,
        task=query.task,
        n_features=len(dataset.features),
        dataset_classes=dataset.classes or [],
        classes=query.classes,
    )
    _check_classes(session, name, dataset, query.task, classes)
    sha = blobs.put_bytes(data)[0]
    body = ImportRequest(
        **query.model_dump(exclude={"classes"}), sha256=sha, classes=classes, uri=uri
    )
    job = Job(kind=JobKind.IMPORT, model_name=name, request=body.model_dump(mode="json"))
    return _queue(session, jobs, request, job)


def _check_reference(
    session: Session,
    settings: ServerSettings,
    name: str,
    dataset_id: int,
    task: Task,
    where: Literal["body", "query"],
) -> Dataset:
    """The dataset a version of model ``name`` is trained on or checked against: it exists,
    its labels fit the task, and its features are the model's."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise InvalidInputError(
            f"no dataset {dataset_id}", loc=(where, "dataset_id"), code="unknown_dataset"
        )
    if task == "regression" and dataset.label_kind == "string":
        raise InvalidInputError(
            f"label {dataset.label_column!r} is not numeric; regression needs numbers",
            loc=(where, "task"),
            code="label_not_numeric",
        )
    n_classes = len(dataset.classes) if dataset.classes is not None else None
    if task == "classification" and not (
        n_classes is not None and 2 <= n_classes <= settings.max_classes
    ):
        raise InvalidInputError(
            f"classification needs 2 to {settings.max_classes} distinct "
            f"labels; dataset {dataset.id} has "
            f"{n_classes if n_classes is not None else 'more than 1000'}",
            loc=(where, "task"),
            code="bad_class_count",
        )
    model = session.get(Model, name)
    if model is not None and model.task != task:
        raise ConflictError(
            f"model {name!r} is a {model.task} model", loc=(where, "task"), code="task_mismatch"
        )
    try:
        check_features_match(session, name, dataset.features)
    except ControlPlaneError as exc:
        raise ConflictError(
            exc.message, loc=(where, "dataset_id"), code="feature_mismatch"
        ) from exc
    return dataset


def _check_classes(
    session: Session, name: str, dataset: Dataset, task: Task, classes: list[str] | None
) -> None:
    """A classifier's class order is the dataset's classes, reordered at most; and the
    model's earlier versions have the same one (gates and drift compare predictions by
    class index across versions)."""
    loc = ("query", "classes")
    if task != "classification":
        if classes:
            raise InvalidInputError("a regressor has no classes", loc=loc)
        return
    order = classes or dataset.classes or []
    if sorted(order) != sorted(dataset.classes or []) or len(set(order)) != len(order):
        raise InvalidInputError(
            f"classes {order} are not the reference dataset's {dataset.classes} reordered",
            loc=loc,
            code="class_mismatch",
        )
    latest = latest_version(session, name)
    if latest is not None:
        current = ModelManifest.model_validate_json(latest.manifest).output.classes
        if current != order:
            raise ConflictError(
                f"model {name!r} has classes {current} in this order; this import has {order}",
                loc=loc,
                code="class_mismatch",
            )


def _queue(session: Session, jobs: JobRunner, request: Request, job: Job) -> JobPublic:
    job.owner = request.app.state.leadership.process_id
    session.add(job)
    session.commit()
    session.refresh(job)
    assert job.id is not None
    jobs.submit(job.id)
    return job_public(job)


@router.get("", response_model=list[ModelPublic], summary="List models")
def list_models(session: SessionDep, _: Viewer) -> list[ModelPublic]:
    rows = session.exec(select(Model).order_by(col(Model.name))).all()
    return [_model_public(session, r) for r in rows]


@router.get("/{name}", response_model=ModelPublic, summary="One model")
def get_model_route(name: NamePath, session: SessionDep, _: Viewer) -> ModelPublic:
    return _model_public(session, get_model(session, name))


@router.get(
    "/{name}/versions",
    response_model=list[VersionPublic],
    summary="Versions of a model (without manifests)",
)
def list_versions(name: NamePath, session: SessionDep, _: Viewer) -> list[VersionPublic]:
    get_model(session, name)
    aliases = aliases_of(session, name)
    rows = session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_name == name)
        .order_by(col(ModelVersion.version))
    ).all()
    return [_version_public(r, aliases, with_manifest=False) for r in rows]


@router.get(
    "/{name}/versions/{version}",
    response_model=VersionPublic,
    summary="One version, with its signed manifest",
)
def get_version(
    name: NamePath,
    session: SessionDep,
    _: Viewer,
    version: Annotated[str, Path(max_length=32, description="Version number or alias.")],
) -> VersionPublic:
    row = resolve_version(session, name, version)
    return _version_public(row, aliases_of(session, name), with_manifest=True)


@router.get(
    "/{name}/compare",
    response_model=Comparison,
    summary="Two versions side by side on one holdout",
)
def compare_versions(
    name: NamePath,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    _: Viewer,
    a: Annotated[str, Query(max_length=32, description="A version number or alias.")],
    b: Annotated[str, Query(max_length=32, description="Another.")],
) -> Comparison:
    """Metrics of both on the same holdout (the newer one's validation rows, or its whole
    reference dataset when it was imported), size, median onnxruntime latency on the
    control plane's machine for 1 and 64 rows, and lineage."""
    first, second = resolve_version(session, name, a), resolve_version(session, name, b)
    return compare(session, blobs, first, second, settings.max_classes)


@router.put(
    "/{name}/aliases/{alias}",
    response_model=AliasPublic,
    summary="Point an alias (e.g. champion) at a version",
)
def put_alias(
    name: NamePath,
    body: AliasUpdate,
    session: SessionDep,
    _: Operator,
    alias: Annotated[str, Path(description="Alias name, e.g. `champion`.")],
) -> AliasPublic:
    row = set_alias(session, name, alias, body.version)
    return AliasPublic.model_validate(row, from_attributes=True)


@router.delete(
    "/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove an alias"
)
def remove_alias(name: NamePath, alias: str, session: SessionDep, _: Operator) -> None:
    delete_alias(session, name, alias)
