"""FastAPI dependencies: settings, database sessions, blob store, keys, the caller's role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from control_plane.api.schemas import MAX_ID
from control_plane.auth.keys import KeyStore
from control_plane.auth.tokens import find_token, has_role
from control_plane.config import ServerSettings
from control_plane.errors import PayloadTooLargeError
from control_plane.fleet.bridge import MqttBridge
from control_plane.store.blobs import BlobStore
from control_plane.store.tables import ApiToken, Role
from control_plane.training.jobs import JobRunner


def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


def get_blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


def get_keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


def get_bridge(request: Request) -> MqttBridge | None:
    bridge: MqttBridge | None = request.app.state.bridge
    return bridge


def get_jobs(request: Request) -> JobRunner:
    jobs: JobRunner = request.app.state.jobs
    return jobs


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
BridgeDep = Annotated[MqttBridge | None, Depends(get_bridge)]

bearer = HTTPBearer(
    auto_error=False, description="An API token from `edgefleet init` or `POST /api/v1/tokens`."
)


def require(role: Role, *also: Role) -> Callable[..., ApiToken]:
    """A dependency: the caller's token, which must have ``role`` (or one of ``also``)."""

    def dependency(
        session: SessionDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiToken:
        token = find_token(session, credentials.credentials) if credentials else None
        if token is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not any(has_role(token, r) for r in (role, *also)):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this needs the {role.value} role; the token has {token.role}",
            )
        return token

    return dependency


# Ids in paths and queries: a BIGINT's range (larger ones are a 422, not a database error).
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Id.")]

Viewer = Annotated[ApiToken, Depends(require(Role.VIEWER))]
Operator = Annotated[ApiToken, Depends(require(Role.OPERATOR))]
Admin = Annotated[ApiToken, Depends(require(Role.ADMIN))]
OperatorOrDevice = Annotated[ApiToken, Depends(require(Role.OPERATOR, Role.DEVICE))]
ViewerOrDevice = Annotated[ApiToken, Depends(require(Role.VIEWER, Role.DEVICE))]


async def read_capped(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``cap`` (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLargeError(
            f"the upload is {declared} bytes; the cap is {cap}", loc=("body",)
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise PayloadTooLargeError(f"the upload exceeds the cap of {cap} bytes", loc=("body",))
        chunks.append(chunk)
    return b"".join(chunks)
