"""Models, versions, aliases and training."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from sqlmodel import col, select

from control_plane.api.deps import JobsDep, Operator, SessionDep, SettingsDep, Viewer
from control_plane.api.routes.jobs import job_public
from control_plane.api.schemas import (
    AliasPublic,
    AliasUpdate,
    JobPublic,
    ModelPublic,
    TrainRequest,
    VersionPublic,
)
from control_plane.errors import ConflictError, ControlPlaneError, InvalidInputError
from control_plane.registry.versions import (
    aliases_of,
    check_model_name,
    delete_alias,
    get_model,
    resolve_version,
    set_alias,
)
from control_plane.store.tables import Dataset, Job, Model, ModelVersion
from control_plane.training.algorithms import get_algorithm, validate_params
from control_plane.training.supply_chain import check_features_match
from shared.manifest import ModelManifest

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
    process_id: str = request.app.state.leadership.process_id
    check_model_name(name)
    dataset = session.get(Dataset, body.dataset_id)
    if dataset is None:
        raise InvalidInputError(
            f"no dataset {body.dataset_id}", loc=("body", "dataset_id"), code="unknown_dataset"
        )
    validate_params(get_algorithm(body.task, body.algorithm), body.params)
    if body.task == "regression" and dataset.label_kind == "string":
        raise InvalidInputError(
            f"label {dataset.label_column!r} is not numeric; regression needs numbers",
            loc=("body", "task"),
            code="label_not_numeric",
        )
    n_classes = len(dataset.classes) if dataset.classes is not None else None
    if body.task == "classification" and not (
        n_classes is not None and 2 <= n_classes <= settings.max_classes
    ):
        raise InvalidInputError(
            f"classification needs 2 to {settings.max_classes} distinct "
            f"labels; dataset {dataset.id} has "
            f"{n_classes if n_classes is not None else 'more than 1000'}",
            loc=("body", "task"),
            code="bad_class_count",
        )
    model = session.get(Model, name)
    if model is not None and model.task != body.task:
        raise ConflictError(
            f"model {name!r} is a {model.task} model", loc=("body", "task"), code="task_mismatch"
        )
    try:
        check_features_match(session, name, dataset.features)
    except ControlPlaneError as exc:
        raise ConflictError(
            exc.message, loc=("body", "dataset_id"), code="feature_mismatch"
        ) from exc
    job = Job(model_name=name, request=body.model_dump(mode="json"), owner=process_id)
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
