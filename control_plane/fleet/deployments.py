"""Per-device desired states: built from registered versions, signed with the deployment key,
with a per-device sequence that only grows (a rollback is a new deployment, too)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from control_plane.config import ArtifactMirror
from control_plane.fleet.devices import get_device, selected
from control_plane.fleet.selectors import parse_selector
from control_plane.registry.versions import resolve_version
from control_plane.store.db import update_stored
from control_plane.store.tables import Device, DeviceDeployment, TrustStoreVersion
from shared.canonical import canonical_json
from shared.manifest import ModelManifest, utc_seconds
from shared.messages import DeploymentModel, DesiredState
from shared.signing import SigningKey

BATCH = 1000  # devices per UPDATE/SELECT … IN (…): far under SQLite's and PostgreSQL's caps


def _next_seqs(session: Session, device_ids: Sequence[str]) -> dict[str, int]:
    """Atomic per-device increments, one statement per ``BATCH`` devices (row locks on
    PostgreSQL, the write lock on SQLite). Loaded rows are not scanned (no session
    synchronisation: that costs a pass over every object in the session per statement)."""
    seqs: dict[str, int] = {}
    for start in range(0, len(device_ids), BATCH):
        chunk = device_ids[start : start + BATCH]
        session.execute(
            update(Device)
            .where(col(Device.id).in_(chunk))
            .values(deployment_seq=Device.deployment_seq + 1)
            .execution_options(synchronize_session=False)
        )
        rows = session.exec(
            select(Device.id, Device.deployment_seq).where(col(Device.id).in_(chunk))
        )
        seqs.update(rows.all())
    return seqs


def load_devices(session: Session, device_ids: Sequence[str]) -> dict[str, Device]:
    """The devices with these ids, ``BATCH`` to a query."""
    loaded: dict[str, Device] = {}
    for start in range(0, len(device_ids), BATCH):
        chunk = device_ids[start : start + BATCH]
        loaded.update(
            (d.id, d) for d in session.exec(select(Device).where(col(Device.id).in_(chunk)))
        )
    return loaded


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
    return sign_many(session, key, [(device, models)], ttl, mirrors)[0]


class _BatchSigner:
    """Signs the desired states of one batch. The bytes signed are exactly
    ``SignedDocument.signed_payload``'s, but each ``DeploymentModel`` object's canonical JSON
    is computed once: a stage's devices share one, and its manifest is most of each
    document. (Signing side only: a verifier never trusts a cache.)"""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self._parts: dict[int, tuple[DeploymentModel, bytes]] = {}

    def sign(self, unsigned: DesiredState) -> DesiredState:
        document = unsigned.model_copy(update={"key_id": self.key.key_id, "signature": ""})
        signature = self.key.sign(self.payload(document))
        return document.model_copy(update={"signature": signature})

    def payload(self, document: DesiredState) -> bytes:
        marker = f"models-{secrets.token_hex(16)}"  # stands in for the list, then replaced
        head = document.model_dump(mode="json", exclude={"signature", "models"})
        text = canonical_json({**head, "models": marker})
        models = b"[" + b",".join(self._part(model) for model in document.models) + b"]"
        return text.replace(canonical_json(marker), models, 1)

    def _part(self, model: DeploymentModel) -> bytes:
        held = self._parts.get(id(model))
        if held is None or held[0] is not model:
            held = (model, canonical_json(model.model_dump(mode="json")))
            self._parts[id(model)] = held
        return held[1]


def sign_many(
    session: Session,
    key: SigningKey,
    planned: Sequence[tuple[Device, list[DeploymentModel]]],
    ttl: timedelta,
    mirrors: Sequence[ArtifactMirror] | None = None,
) -> list[DesiredState]:
    """``sign_desired`` for many devices: their sequences taken in bulk, one trust-store
    read, one issue time."""
    seqs = _next_seqs(session, [device.id for device, _ in planned])
    issued = utc_seconds(datetime.now(UTC))
    version = trust_version(session)
    signer = _BatchSigner(key)
    signed = []
    written: list[tuple[Device, dict[str, Any]]] = []
    for device, models in planned:
        if mirrors is not None:
            chosen = mirrors_for(device.labels, mirrors)
        else:
            current = current_desired(device)
            chosen = current.mirrors if current else None
        seq = seqs[device.id]
        set_committed_value(device, "deployment_seq", seq)  # as stored; not a change
        desired = signer.sign(
            DesiredState(
                device_id=device.id,
                seq=seq,
                models=models,
                issued_at=issued,
                expires_at=issued + ttl,
                trust_version=version if version > 1 else None,
                mirrors=chosen,
                key_id="",
                signature="",
            )
        )
        values = {
            "previous_desired": device.desired,  # its artifacts stay downloadable (rollback)
            "desired": desired.model_dump_json(),
            "desired_expires_at": desired.expires_at,
        }
        written.append((device, values))
        signed.append(desired)
    update_stored(session, written)
    _record_deployments(session, signed)
    return signed


def _record_deployments(session: Session, signed: Sequence[DesiredState]) -> None:
    """Keep ``device_deployment`` equal to what the devices' desired states now say."""
    for start in range(0, len(signed), BATCH):
        chunk = signed[start : start + BATCH]
        ids = [desired.device_id for desired in chunk]
        session.execute(
            delete(DeviceDeployment)
            .where(col(DeviceDeployment.device_id).in_(ids))
            .execution_options(synchronize_session=False)
        )
        rows = [
            {
                "device_id": desired.device_id,
                "model_name": model.manifest.name,
                "version": model.manifest.version,
                "rollout_id": model.rollout_id,
                "stage": model.stage,
            }
            for desired in chunk
            for model in desired.models
        ]
        if rows:
            session.execute(insert(DeviceDeployment), rows)


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
    deployment = DeploymentModel(manifest=manifest, rollout_id=rollout_id, stage=stage)
    return deploy_many(session, key, [device], deployment, ttl, mirrors)[0]


def deploy_many(
    session: Session,
    key: SigningKey,
    devices: Sequence[Device],
    deployment: DeploymentModel,
    ttl: timedelta,
    mirrors: Sequence[ArtifactMirror] = (),
) -> list[DesiredState]:
    """Each device's next desired state with ``deployment`` in place of what it had of that
    model (its other models unchanged), in the order given; the caller commits."""
    name = deployment.manifest.name
    planned = []
    for device in devices:
        current = current_desired(device)
        models = [m for m in (current.models if current else []) if m.manifest.name != name]
        models.append(deployment)
        planned.append((device, sorted(models, key=lambda m: m.manifest.name)))
    return sign_many(session, key, planned, ttl, mirrors)


def refresh_expiring(
    session: Session, key: SigningKey, ttl: timedelta, mirrors: Sequence[ArtifactMirror] = ()
) -> list[DesiredState]:
    """Re-sign (with a new sequence) the desired states with less than half their lifetime
    left, so devices that come back late still find a valid one."""
    threshold = datetime.now(UTC) + ttl / 2
    devices = session.exec(select(Device).where(col(Device.desired_expires_at) < threshold)).all()
    planned = []
    for device in devices:
        current = current_desired(device)
        if current is not None:
            planned.append((device, list(current.models)))
    refreshed = sign_many(session, key, planned, ttl, mirrors)
    session.commit()
    return refreshed


def all_desired(session: Session) -> list[DesiredState]:
    rows = session.exec(select(Device.desired).where(col(Device.desired).is_not(None))).all()
    return [DesiredState.model_validate_json(r) for r in rows if r]


def desired_changed(session: Session, known: dict[str, int]) -> list[DesiredState]:
    """The desired states whose sequence is no longer the one in ``known`` (device →
    sequence): signed since ``known`` was read. Sequences are read alone (``deployment_seq``
    is stored with ``desired``), documents only for the devices that changed."""
    rows = session.exec(
        select(Device.id, Device.deployment_seq).where(col(Device.desired).is_not(None))
    ).all()
    changed = [device_id for device_id, seq in rows if known.get(device_id) != seq]
    found: list[DesiredState] = []
    for start in range(0, len(changed), BATCH):
        chunk = changed[start : start + BATCH]
        documents = session.exec(select(Device.desired).where(col(Device.id).in_(chunk))).all()
        found += [DesiredState.model_validate_json(d) for d in documents if d]
    return found


def told_otherwise(session: Session, model: str, selector: str, rollout_id: str) -> list[Device]:
    """Devices ``selector`` matches whose desired state has ``model`` from a rollout other
    than ``rollout_id``, or does not have it: the only ones that can be behind that
    rollout's default (found in ``device_deployment``, not by parsing desired states)."""
    told = DeviceDeployment
    query = (
        select(Device)
        .outerjoin(told, and_(col(told.device_id) == Device.id, col(told.model_name) == model))
        .where(*selected(session, parse_selector(selector)))
        .where(
            or_(
                col(told.device_id).is_(None),
                and_(col(told.rollout_id).is_not(None), col(told.rollout_id) != rollout_id),
            )
        )
        .order_by(col(Device.id))
    )
    return list(session.exec(query).all())


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
