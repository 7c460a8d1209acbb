"""Artifact downloads: content-addressed, with HTTP Range support for resumable downloads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse
from sqlmodel import select

from control_plane.api.deps import BlobsDep, SessionDep, ViewerOrDevice
from control_plane.errors import NotFoundError
from control_plane.models import ModelVersion
from shared.hashing import is_sha256

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "Partial content (Range request)."},
}


@router.head(
    "/{sha256}",
    response_class=FileResponse,
    operation_id="head_artifact",
    summary="Size and ETag of a model artifact",
    responses=_RESPONSES,
)
@router.get(
    "/{sha256}",
    response_class=FileResponse,
    operation_id="get_artifact",
    summary="Download a model artifact by sha256",
    responses=_RESPONSES,
)
def get_artifact(
    sha256: Annotated[str, Path(description="sha256 of the artifact.")],
    session: SessionDep,
    blobs: BlobsDep,
    _: ViewerOrDevice,
) -> FileResponse:
    """The ONNX file of a registered version. `Range: bytes=N-` resumes a download."""
    registered = (
        is_sha256(sha256)
        and session.exec(select(ModelVersion.id).where(ModelVersion.sha256 == sha256)).first()
        is not None
    )
    if not registered or not blobs.exists(sha256):
        raise NotFoundError(f"no artifact {sha256[:64]}", loc=("path", "sha256"))
    # Give the database connection back before streaming: a fleet downloading at once would
    # otherwise hold one per download and exhaust the pool.
    session.close()
    return FileResponse(
        blobs.path_for(sha256),
        media_type="application/octet-stream",
        filename=f"{sha256}.onnx",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )
