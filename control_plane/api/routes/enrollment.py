"""Enrollment and admission: bootstrap tokens, a device's enrollment and check-in,
pre-authorized ids, and an operator's approve / reject / reissue / remove. With
``broker_accounts = "dynsec"`` these also make and delete the devices' broker accounts."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials

from control_plane.api.deps import (
    BridgeDep,
    IdPath,
    Operator,
    SessionDep,
    SettingsDep,
    Viewer,
    bearer,
)
from control_plane.api.routes.devices import device_public
from control_plane.api.schemas import (
    BootstrapTokenCreate,
    BootstrapTokenIssued,
    BootstrapTokenPublic,
    DevicePublic,
    DeviceRegistered,
    DevicesPreauthorize,
    Enrolled,
    EnrollmentStatus,
    EnrollRequest,
)
from control_plane.auth.tokens import ArtifactAccess, find_token, revoke_by_id
from control_plane.errors import UnavailableError
from control_plane.fleet import enrollment
from control_plane.fleet.bridge import MqttBridge
from control_plane.fleet.devices import get_device
from control_plane.store.tables import Admission, BootstrapToken, Device, Role

router = APIRouter(tags=["enrollment"])
DeviceIdPath = Annotated[str, Path(description="Device id.")]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _unauthorized(what: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, what, headers={"WWW-Authenticate": "Bearer"})


def bearer_secret(credentials: Credentials) -> str:
    """The bearer secret, whatever it is (checked by the route): 401 before the body is read."""
    if credentials is None:
        raise _unauthorized("this needs a bearer token")
    return credentials.credentials


Secret = Annotated[str, Depends(bearer_secret)]


def _bootstrap_public(row: BootstrapToken) -> BootstrapTokenPublic:
    return BootstrapTokenPublic.model_validate(row, from_attributes=True)


def _forget(request: Request, hashes: list[str]) -> None:
    access: ArtifactAccess = request.app.state.artifact_access
    for token_hash in hashes:
        access.forget_token(token_hash)


async def _make_account(
    bridge: MqttBridge | None, session: SessionDep, device: Device, token: str
) -> None:
    """Make (or re-key) an accepted device's broker account with its token; a broker that
    does not answer leaves ``broker_account`` false (the next check-in tries again)."""
    if bridge is None or bridge.dynsec is None:
        return
    await bridge.dynsec.put_device(device.id, token)
    await run_in_threadpool(enrollment.set_broker_account, session, device.id, True)
    session.refresh(device)


async def _drop_account(bridge: MqttBridge | None, session: SessionDep, device: Device) -> None:
    if bridge is None or bridge.dynsec is None or not device.broker_account:
        return
    await bridge.dynsec.delete_device(device.id)
    await run_in_threadpool(enrollment.set_broker_account, session, device.id, False)
    session.refresh(device)


@router.post(
    "/bootstrap-tokens",
    response_model=BootstrapTokenIssued,
    status_code=status.HTTP_201_CREATED,
    summary="Issue a bootstrap token devices enroll with",
)
def create_bootstrap_token(
    body: BootstrapTokenCreate, session: SessionDep, _: Operator
) -> BootstrapTokenIssued:
    """`uses` devices may enroll with it until `expires_in_seconds` have passed or it is
    revoked. The secret is in this answer only."""
    row, secret = enrollment.create_bootstrap_token(
        session,
        name=body.name,
        uses=body.uses,
        ttl=timedelta(seconds=body.expires_in_seconds),
        labels=body.labels,
        auto_accept=body.auto_accept,
    )
    return BootstrapTokenIssued(**_bootstrap_public(row).model_dump(), token=secret)


@router.get(
    "/bootstrap-tokens",
    response_model=list[BootstrapTokenPublic],
    summary="List bootstrap tokens (no secrets)",
)
def list_bootstrap_tokens(session: SessionDep, _: Viewer) -> list[BootstrapTokenPublic]:
    return [_bootstrap_public(r) for r in enrollment.list_bootstrap_tokens(session)]


@router.delete(
    "/bootstrap-tokens/{token_id}",
    response_model=BootstrapTokenPublic,
    summary="Revoke a bootstrap token",
)
def revoke_bootstrap_token(
    token_id: IdPath, session: SessionDep, _: Operator
) -> BootstrapTokenPublic:
    """Devices it enrolled stay as they are."""
    return _bootstrap_public(revoke_by_id(session, BootstrapToken, token_id))


@router.post(
    "/enroll",
    response_model=Enrolled,
    status_code=status.HTTP_201_CREATED,
    summary="Enroll a device (bearer: a bootstrap token)",
)
async def enroll_device(
    body: EnrollRequest,
    secret: Secret,
    session: SessionDep,
    settings: SettingsDep,
    bridge: BridgeDep,
) -> Enrolled:
    """Takes one use of the bootstrap token and creates the device, `pending` until an
    operator accepts it, or `accepted` at once when its id was pre-authorized or the token
    accepts at once (then its broker account is made before this answers, when the broker
    confirms; otherwise at its first check-in). 401 when the bootstrap token is unknown,
    revoked, expired or used up; 409 when the device exists (a lost token is reissued by an
    operator). `edgefleet agent enroll` does this and the check-ins."""
    device, token = await run_in_threadpool(
        enrollment.enroll, session, secret, body.device_id, body.labels
    )
    if device.admission == Admission.ACCEPTED:
        with contextlib.suppress(UnavailableError):
            await _make_account(bridge, session, device, token)
    return Enrolled(**_status(device, settings, bridge).model_dump(), token=token)


def _status(device: Device, settings: SettingsDep, bridge: MqttBridge | None) -> EnrollmentStatus:
    managed = bridge is not None and bridge.dynsec is not None
    accepted = device.admission == Admission.ACCEPTED
    return EnrollmentStatus(
        device_id=device.id,
        admission=device.admission.value,
        broker_account=device.broker_account,
        ready=accepted and (device.broker_account or not managed),
        topic_root=settings.topic_root,
    )


@router.get(
    "/enrollment",
    response_model=EnrollmentStatus,
    summary="A device's check-in: where its admission stands (bearer: its own token)",
)
async def check_in(
    secret: Secret,
    session: SessionDep,
    settings: SettingsDep,
    bridge: BridgeDep,
) -> EnrollmentStatus:
    """The one thing a pending or rejected device's token may do. Once the device is
    accepted, this makes its broker account (with the token it presents: the control plane
    keeps only hashes) if it has none yet; 503 when the broker does not confirm it."""
    token = await run_in_threadpool(find_token, session, secret, admitted_only=False)
    if token is None or token.role != Role.DEVICE or token.device_id is None:
        raise _unauthorized("the check-in needs the device's own token (revoked tokens fail)")
    device = await run_in_threadpool(get_device, session, token.device_id)
    if device.admission == Admission.ACCEPTED and not device.broker_account:
        await _make_account(bridge, session, device, secret)
    return _status(device, settings, bridge)


@router.post(
    "/devices/preauthorize",
    response_model=list[DevicePublic],
    status_code=status.HTTP_201_CREATED,
    summary="Pre-authorize device ids: accepted as soon as they enroll",
)
def preauthorize_devices(
    body: DevicesPreauthorize, session: SessionDep, _: Operator
) -> list[DevicePublic]:
    """All are checked before any is stored; 409 when any of the ids exists already."""
    rows = enrollment.preauthorize(session, [(d.id, d.labels) for d in body.devices])
    return [device_public(d) for d in rows]


async def _admit(
    device_id: str, command: str, request: Request, session: SessionDep, bridge: BridgeDep
) -> DevicePublic:
    device = await run_in_threadpool(enrollment.admit, session, device_id, command)
    if device.admission != Admission.ACCEPTED:
        access: ArtifactAccess = request.app.state.artifact_access
        access.forget_device(device.id)  # its token stops opening downloads here at once
        await _drop_account(bridge, session, device)
    return device_public(device)


@router.post("/devices/{device_id}/approve", response_model=DevicePublic, summary="Accept a device")
async def approve_device(
    device_id: DeviceIdPath, request: Request, session: SessionDep, bridge: BridgeDep, _: Operator
) -> DevicePublic:
    """A pending (or rejected) device becomes accepted: its token works, and its broker
    account is made at its next check-in. 409 from other states."""
    return await _admit(device_id, "approve", request, session, bridge)


@router.post("/devices/{device_id}/reject", response_model=DevicePublic, summary="Reject a device")
async def reject_device(
    device_id: DeviceIdPath, request: Request, session: SessionDep, bridge: BridgeDep, _: Operator
) -> DevicePublic:
    """Its token stops working and its broker account is deleted (its live connections
    end); an operator may still accept it later. 503 when the broker does not confirm the
    deletion (it is retried at every connect)."""
    return await _admit(device_id, "reject", request, session, bridge)


@router.post(
    "/devices/{device_id}/reissue",
    response_model=DeviceRegistered,
    summary="Issue a device a new token (the old ones stop working)",
)
async def reissue_device(
    device_id: DeviceIdPath,
    request: Request,
    session: SessionDep,
    bridge: BridgeDep,
    _: Operator,
) -> DeviceRegistered:
    """For a lost or leaked token: the old tokens are revoked, and an accepted device's
    broker account gets the new one as its password (its live connections end). The new
    token is shown once. 503 when the broker does not confirm (the new token is issued;
    reissue again)."""
    device, token, revoked = await run_in_threadpool(enrollment.reissue, session, device_id)
    _forget(request, revoked)
    if device.admission == Admission.ACCEPTED:
        await _make_account(bridge, session, device, token)
    return DeviceRegistered(device=device_public(device), token=token)


@router.delete("/devices/{device_id}", response_model=DevicePublic, summary="Decommission a device")
async def remove_device(
    device_id: DeviceIdPath,
    request: Request,
    session: SessionDep,
    bridge: BridgeDep,
    _: Operator,
) -> DevicePublic:
    """Its tokens are revoked, its broker account deleted (its live connections end), and it
    is marked `decommissioned`; its history stays. 503 when the broker does not confirm the
    deletion (it is retried at every connect)."""
    device, revoked = await run_in_threadpool(enrollment.decommission, session, device_id)
    _forget(request, revoked)
    await _drop_account(bridge, session, device)
    return device_public(device)
