"""Dataset upload and listing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlmodel import col, select

from control_plane.api.deps import (
    BlobsDep,
    IdPath,
    Operator,
    SessionDep,
    SettingsDep,
    Viewer,
    read_capped,
)
from control_plane.api.schemas import DatasetPublic
from control_plane.errors import NotFoundError
from control_plane.registry.datasets import DatasetLimits, check_name, parse_csv, store_dataset
from control_plane.store.tables import Dataset
from shared.manifest import NanPolicy

router = APIRouter(prefix="/datasets", tags=["datasets"])


def _public(row: Dataset) -> DatasetPublic:
    return DatasetPublic.model_validate(row, from_attributes=True)


@router.post(
    "",
    response_model=DatasetPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a CSV dataset",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "CSV with a header row: numeric feature columns and one "
                        "label column.",
                    }
                }
            },
        }
    },
    responses={
        200: {
            "description": "The same bytes were uploaded before under this name; "
            "the existing version is returned."
        },
        413: {"description": "Larger than `max_dataset_bytes`."},
        422: {"description": "The CSV breaks a rule; `detail` names it."},
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    _: Operator,
    name: Annotated[
        str, Query(description="Dataset name; a new upload under a name is its next version.")
    ],
    label: Annotated[str, Query(description="Name of the label column.")],
    nan_policy: Annotated[
        NanPolicy,
        Query(
            description="Missing feature values: `reject` the "
            "upload, `drop` those rows, or `impute` (median, "
            "inside the model)."
        ),
    ] = "reject",
) -> DatasetPublic:
    """Validate and store a dataset. The body is the raw CSV (`Content-Type: text/csv`)."""
    check_name(name)
    data = await read_capped(request, settings.max_dataset_bytes)
    limits = DatasetLimits(
        max_rows=settings.max_dataset_rows,
        max_columns=settings.max_dataset_columns,
        min_rows=settings.min_dataset_rows,
    )
    parsed = await run_in_threadpool(
        parse_csv, data, label=label, nan_policy=nan_policy, limits=limits
    )
    row, created = await run_in_threadpool(
        store_dataset,
        session,
        blobs,
        name=name,
        label=label,
        nan_policy=nan_policy,
        data=data,
        parsed=parsed,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return _public(row)


@router.get("", response_model=list[DatasetPublic], summary="List datasets")
def list_datasets(
    session: SessionDep,
    _: Viewer,
    name: Annotated[str | None, Query(description="Only this name.")] = None,
) -> list[DatasetPublic]:
    query = select(Dataset).order_by(col(Dataset.id))
    if name is not None:
        query = query.where(Dataset.name == name)
    return [_public(r) for r in session.exec(query).all()]


@router.get("/{dataset_id}", response_model=DatasetPublic, summary="One dataset")
def get_dataset(dataset_id: IdPath, session: SessionDep, _: Viewer) -> DatasetPublic:
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise NotFoundError(f"no dataset {dataset_id}", loc=("path", "dataset_id"))
    return _public(row)
