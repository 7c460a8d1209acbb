"""Artifact downloads: content-addressed, with HTTP Range support for resumable downloads.

The route is async and holds no database session: when a rollout stage starts, hundreds of
devices download at once, and a sync route would tie up a worker thread (and a pooled
connection) per download while the file streams. Token and registration checks are answered
from ``ArtifactAccess``'s memory, going to the database in a worker thread only on a miss.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials

from control_plane.api.deps import BlobsDep, bearer
from control_plane.auth.tokens import ArtifactAccess
from control_plane.errors import ForbiddenError, NotFoundError
from shared.hashing import is_sha256

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "Partial content (Range request)."},
    401: {"description": "Missing, invalid or revoked token."},
    403: {"description": "A device token, and the artifact is not deployed to its device."},
    404: {"description": "No registered artifact with this sha256."},
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
async def get_artifact(
    sha256: Annotated[str, Path(description="sha256 of the artifact.")],
    request: Request,
    blobs: BlobsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> FileResponse:
    """The ONNX file of a registered version: for a viewer (or stronger) token any, for a
    device token those its device's current or previous desired state names (403 otherwise).
    `Range: bytes=N-` resumes a download. A revoked token stops working at once on the
    process that revoked it and within 30 s on the others."""
    access: ArtifactAccess = request.app.state.artifact_access
    secret = credentials.credentials if credentials else ""
    valid = is_sha256(sha256)
    if not (secret and valid and access.known(secret, sha256)):
        if not secret or not await run_in_threadpool(access.token_ok, secret):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not valid or not await run_in_threadpool(access.registered, sha256):
            raise NotFoundError(f"no artifact {sha256[:64]}", loc=("path", "sha256"))
        if not await run_in_threadpool(access.device_may, secret, sha256):
            raise ForbiddenError(
                "a device token downloads only what its current or previous desired state names",
                loc=("path", "sha256"),
            )
    if not blobs.exists(sha256):
        raise NotFoundError(f"no artifact {sha256[:64]}", loc=("path", "sha256"))
    return FileResponse(
        blobs.path_for(sha256),
        media_type="application/octet-stream",
        filename=f"{sha256}.onnx",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )
