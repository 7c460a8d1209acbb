"""Per-device desired states: built from registered versions, signed with the deployment key,
with a per-device sequence that only grows (a rollback is a new deployment, too)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from control_plane.config import ArtifactMirror
from control_plane.fleet.devices import get_device
from control_plane.fleet.selectors import parse_selector
from control_plane.registry.versions import resolve_version
from control_plane.store.tables import Device, TrustStoreVersion
from shared.manifest import ModelManifest, utc_seconds
from shared.messages import DeploymentModel, DesiredState
from shared.signing import SigningKey


def _next_seq(session: Session, device_id: str) -> int:
    """Atomic per-device increment (row lock on PostgreSQL, write lock on SQLite)."""
    session.execute(
        update(Device)
        .where(col(Device.id) == device_id)
        .values(deployment_seq=Device.deployment_seq + 1)
    )
    device = session.get(Device, device_id, populate_existing=True)
    assert device is not None
    return device.deployment_seq


def trust_version(session: Session) -> int:
    """The latest trust-store version (1 until the first key rotation)."""
    latest = session.exec(select(func.max(TrustStoreVersion.version))).one()
    return int(latest) if latest is not None else 1


def current_desired(device: Device) -> DesiredState | None:
    return DesiredState.model_validate_json(device.desired) if device.desired else None


def mirrors_for(labels: dict[str, str], mirrors: Sequence[ArtifactMirror]) -> list[str] | None:
    """The mirrors of the first entry whose selector matches ``labels`` (None: none)."""
    for entry in mirrors:
        if parse_selector(entry.selector).matches(labels):
            return list(entry.urls)
    return None


def sign_desired(
    session: Session,
    key: SigningKey,
    device_id: str,
    models: list[DeploymentModel],
    ttl: timedelta,
    mirrors: Sequence[ArtifactMirror] | None = None,
) -> DesiredState:
    """Sign ``models`` as the device's next desired state and store it (caller commits).
    ``mirrors``: the configured artifact mirrors, matched to the device's labels (None: the
    mirrors of its current desired state, as when only the signing key changed)."""
    device = session.get(Device, device_id)
    assert device is not None
    current = current_desired(device)
    chosen = (
        mirrors_for(device.labels, mirrors)
        if mirrors is not None
        else (current.mirrors if current else None)
    )
    seq = _next_seq(session, device_id)
    issued = utc_seconds(datetime.now(UTC))
    version = trust_version(session)
    desired = DesiredState(
        device_id=device_id,
        seq=seq,
        models=models,
        issued_at=issued,
        expires_at=issued + ttl,
        trust_version=version if version > 1 else None,
        mirrors=chosen,
        key_id="",
        signature="",
    ).signed_with(key)
    device.previous_desired = device.desired  # its artifacts stay downloadable (rollback slot)
    device.desired = desired.model_dump_json()
    device.desired_expires_at = desired.expires_at
    session.add(device)
    return desired


def deploy_version(
    session: Session,
    key: SigningKey,
    *,
    device_id: str,
    model: str,
    version: str,
    ttl: timedelta,
    rollout_id: str | None = None,
    stage: str | None = None,
    mirrors: Sequence[ArtifactMirror] = (),
) -> DesiredState:
    """The device's next desired state with ``model`` set to ``version`` (other models
    unchanged); the caller commits."""
    device = get_device(session, device_id)
    row = resolve_version(session, model, version)
    manifest = ModelManifest.model_validate_json(row.manifest)
    current = current_desired(device)
    models = [m for m in (current.models if current else []) if m.manifest.name != model]
    models.append(DeploymentModel(manifest=manifest, rollout_id=rollout_id, stage=stage))
    ordered = sorted(models, key=lambda m: m.manifest.name)
    return sign_desired(session, key, device_id, ordered, ttl, mirrors)


def refresh_expiring(
    session: Session, key: SigningKey, ttl: timedelta, mirrors: Sequence[ArtifactMirror] = ()
) -> list[DesiredState]:
    """Re-sign (with a new sequence) the desired states with less than half their lifetime
    left, so devices that come back late still find a valid one."""
    threshold = datetime.now(UTC) + ttl / 2
    devices = session.exec(select(Device).where(col(Device.desired_expires_at) < threshold)).all()
    refreshed = []
    for device in devices:
        current = current_desired(device)
        if current is not None:
            models = list(current.models)
            refreshed.append(sign_desired(session, key, device.id, models, ttl, mirrors))
    session.commit()
    return refreshed


def all_desired(session: Session) -> list[DesiredState]:
    rows = session.exec(select(Device.desired).where(col(Device.desired).is_not(None))).all()
    return [DesiredState.model_validate_json(r) for r in rows if r]


def desired_deployment(device: Device, model: str) -> DeploymentModel | None:
    """What the device was last told about ``model``."""
    current = current_desired(device)
    for deployment in current.models if current else []:
        if deployment.manifest.name == model:
            return deployment
    return None


def desired_version(device: Device, model: str) -> int | None:
    """The version of ``model`` the device was last told to serve."""
    deployment = desired_deployment(device, model)
    return deployment.manifest.version if deployment else None
