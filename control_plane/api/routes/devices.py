"""Devices and deployments."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session, col, select

from control_plane.api.deps import (
    BridgeDep,
    KeysDep,
    Operator,
    SessionDep,
    SettingsDep,
    Viewer,
    ViewerOrDevice,
)
from control_plane.api.schemas import (
    DeploymentCreate,
    DeploymentPublic,
    DevicePublic,
    DeviceRegistered,
    DeviceRegistrations,
    DeviceUpdate,
    FleetSummary,
    ServingCount,
    TelemetryPublic,
)
from control_plane.errors import UnavailableError
from control_plane.fleet.deployments import deploy_version
from control_plane.fleet.devices import (
    check_labels,
    fleet_counts,
    forget_devices,
    get_device,
    page_of_devices,
    register_devices,
    sequence_floor,
)
from control_plane.fleet.enrollment import set_broker_accounts
from control_plane.fleet.ingestion import stored_windows
from control_plane.fleet.selectors import parse_selector
from control_plane.store.tables import Device
from shared.messages import DesiredState, DeviceState, SequenceFloor, TelemetryWindow
from shared.stats import histogram_quantile

router = APIRouter(tags=["devices"])
DeviceIdPath = Annotated[str, Path(description="Device id.")]


def device_public(device: Device) -> DevicePublic:
    return DevicePublic(
        id=device.id,
        labels=device.labels,
        registered=device.registered,
        online=device.online,
        last_seen=device.last_seen,
        deployment_seq=device.deployment_seq,
        desired_expires_at=device.desired_expires_at,
        state=DeviceState.model_validate_json(device.state) if device.state else None,
        dropped_messages=device.dropped_messages,
        admission=device.admission.value,
        broker_account=device.broker_account,
    )


def _answer(session: Session, registered: list[tuple[Device, str]]) -> list[DeviceRegistered]:
    ids = [device.id for device, _ in registered]
    session.exec(select(Device).where(col(Device.id).in_(ids))).all()  # reloaded in one query
    return [DeviceRegistered(device=device_public(d), token=t) for d, t in registered]


@router.post(
    "/devices",
    response_model=DeviceRegistered | list[DeviceRegistered],
    status_code=status.HTTP_201_CREATED,
    summary="Register a device (or a list of them) and issue their tokens",
)
async def create_device(
    body: Annotated[
        DeviceRegistrations,
        Body(description="One device, or a list of up to 10,000 (one transaction: all or none)."),
    ],
    session: SessionDep,
    bridge: BridgeDep,
    _: Operator,
) -> DeviceRegistered | list[DeviceRegistered]:
    """The device is accepted at once. The token is shown once: give it to the device
    (config `token`). With `broker_accounts = "dynsec"` the control plane makes the device's
    broker account (username = device id, password = the token) before answering; if the
    broker does not confirm, nothing is kept (503). With `manual`, give the token to the
    broker yourself. A list is registered all or none: every item is checked first (422
    names the item), an id already registered is a 409, and the answer lists the devices
    with their tokens in the order given."""
    items = body.root if isinstance(body.root, list) else [body.root]
    listed = isinstance(body.root, list)
    wanted = [(d.id, d.labels) for d in items]
    registered = await run_in_threadpool(register_devices, session, wanted, listed=listed)
    ids = [device.id for device, _ in registered]
    if bridge is not None and bridge.dynsec is not None:
        try:
            await bridge.dynsec.put_devices([(device.id, token) for device, token in registered])
        except UnavailableError:
            await run_in_threadpool(forget_devices, session, ids)
            raise
        await run_in_threadpool(set_broker_accounts, session, ids, True)
    answer = await run_in_threadpool(_answer, session, registered)
    return answer if listed else answer[0]


@router.get("/devices", response_model=list[DevicePublic], summary="List devices")
def get_devices(
    session: SessionDep,
    response: Response,
    _: Viewer,
    selector: Annotated[
        str, Query(description="Label selector, e.g. `site=berlin,hw!=rpi3`.")
    ] = "",
    limit: Annotated[
        int | None, Query(ge=1, le=1000, description="At most this many (by id); all if unset.")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=10**9, description="Skip this many first.")] = 0,
    after: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only devices whose id sorts after this one: the next page after a "
            "page's last id, read from the index however deep (a deep `offset` reads every "
            "row it skips).",
        ),
    ] = None,
) -> list[DevicePublic]:
    """Devices by id. The `X-Total-Count` header says how many the selector matches, so a
    page of `limit` from `offset` can say where it is."""
    parsed = parse_selector(selector, loc=("query", "selector"))
    total, devices = page_of_devices(session, parsed, limit, offset, after)
    response.headers["X-Total-Count"] = str(total)
    return [device_public(d) for d in devices]


@router.get(
    "/devices/summary",
    response_model=FleetSummary,
    summary="Devices per model, version and phase",
)
def get_summary(
    session: SessionDep,
    _: Viewer,
    selector: Annotated[str, Query(description="Label selector.")] = "",
) -> FleetSummary:
    """Counted over every device the selector matches (the list itself is paged)."""
    parsed = parse_selector(selector, loc=("query", "selector"))
    devices, online, groups = fleet_counts(session, parsed)
    return FleetSummary(
        devices=devices,
        online=online,
        serving=[
            ServingCount(model=m, version=v, phase=p, devices=n)
            for m, v, p, n in sorted(groups, key=lambda g: (g[0], g[1] or 0, g[2]))
        ],
    )


@router.patch("/devices/{device_id}", response_model=DevicePublic, summary="Set a device's labels")
def patch_device(
    device_id: DeviceIdPath, body: DeviceUpdate, session: SessionDep, _: Operator
) -> DevicePublic:
    """Labels set here win over the labels the device reports."""
    device = get_device(session, device_id)
    check_labels(body.labels)
    device.labels = body.labels
    device.registered = True
    session.add(device)
    session.commit()
    session.refresh(device)
    return device_public(device)


@router.get("/devices/{device_id}", response_model=DevicePublic, summary="One device")
def get_one_device(device_id: DeviceIdPath, session: SessionDep, _: Viewer) -> DevicePublic:
    return device_public(get_device(session, device_id))


@router.get(
    "/devices/{device_id}/floor",
    response_model=SequenceFloor,
    summary="The sequences issued to and stored of a device",
)
def get_floor(device_id: DeviceIdPath, session: SessionDep, token: ViewerOrDevice) -> SequenceFloor:
    """The newest desired-state sequence signed for the device and the highest telemetry
    and sample sequences stored. An agent that starts with an empty data dir asks for it
    with its own device token before accepting a desired state: an older (replayed) one is
    refused, and its new telemetry is numbered above what is stored. A device token may
    read only its own device (403 otherwise)."""
    return sequence_floor(session, device_id, token)


@router.get(
    "/devices/{device_id}/telemetry",
    response_model=list[TelemetryPublic],
    summary="Stored telemetry windows of a device, by sequence",
)
def get_telemetry(
    device_id: DeviceIdPath,
    session: SessionDep,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[TelemetryPublic]:
    get_device(session, device_id)
    return [
        telemetry_public(r.received_at, r.window) for r in stored_windows(session, device_id, limit)
    ]


def telemetry_public(received_at: datetime, window: TelemetryWindow) -> TelemetryPublic:
    return TelemetryPublic(
        received_at=received_at,
        window=window,
        p95_latency_us={
            f"{m.name}:{m.version}": histogram_quantile(m.latency_counts, 0.95)
            for m in window.models
        },
    )


@router.post(
    "/deployments",
    response_model=DeploymentPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Sign and publish a desired state putting a version on a device",
)
async def create_deployment(
    body: DeploymentCreate,
    session: SessionDep,
    keys: KeysDep,
    settings: SettingsDep,
    bridge: BridgeDep,
    _: Operator,
) -> DeploymentPublic:
    """Signs the device's next desired state (its other models unchanged), stores it, and
    publishes it retained at QoS 1, waiting for the broker's acknowledgement."""

    def deploy() -> DesiredState:
        desired = deploy_version(
            session,
            keys.deployment,
            device_id=body.device_id,
            model=body.model,
            version=body.version,
            ttl=timedelta(seconds=settings.desired_ttl_seconds),
            mirrors=settings.artifact_mirrors,
        )
        session.commit()
        return desired

    desired = await run_in_threadpool(deploy)
    published = await bridge.publish_desired(desired) if bridge is not None else False
    return DeploymentPublic(
        device_id=desired.device_id,
        seq=desired.seq,
        expires_at=desired.expires_at,
        published=published,
    )
