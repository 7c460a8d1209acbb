"""Key rotation, as in TUF's root rotation: every trust-store version after the first is
signed by the keys of the version before (one of each role), and devices follow the
versions one at a time (``shared.trust.check_successor``).

``rotate(role)``: a new key for ``role``; the next version trusts it beside the old one
(the window: both verify), and from now on the new key signs. ``retire(role)``: the next
version drops the old key. Before it does, everything still in use that the old key signed
is signed again by the new one (the registry's manifests for a model key; every device's
desired state, with a new sequence, for either key), so no device is left with a document
it can no longer verify. Devices learn of a new version from the ``trust_version`` of
their next desired state (and fetch ``GET /trust-stores``).

Runs where the key files are (``edgefleet keys rotate|retire --data-dir``); a running
control plane notices the new version at its next tick, reloads its keys and publishes
the re-signed desired states.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from control_plane.auth.keys import KEY_FILES, PREVIOUS_DIR, KeyStore, load_keys
from control_plane.errors import ConflictError
from control_plane.fleet.deployments import current_desired, sign_desired, trust_version
from control_plane.store.tables import Device, ModelVersion, TrustStoreVersion
from shared.manifest import ModelManifest
from shared.messages import DeploymentModel
from shared.signing import KeyRole, SigningKey
from shared.trust import MAX_CHAIN, SignedTrustStore, TrustedKey, TrustStore, check_successor

log = logging.getLogger(__name__)


def latest(session: Session, keys: KeyStore) -> SignedTrustStore:
    row = session.exec(
        select(TrustStoreVersion).order_by(col(TrustStoreVersion.version).desc())
    ).first()
    if row is None:
        first = keys.trust_store()
        return SignedTrustStore.sign(first, [keys.model, keys.deployment])
    return SignedTrustStore.model_validate_json(row.document)


def chain_after(session: Session, version: int) -> list[SignedTrustStore]:
    """The versions after ``version``, ascending (at most ``MAX_CHAIN``)."""
    rows = session.exec(
        select(TrustStoreVersion)
        .where(col(TrustStoreVersion.version) > version)
        .order_by(col(TrustStoreVersion.version))
        .limit(MAX_CHAIN)
    ).all()
    return [SignedTrustStore.model_validate_json(row.document) for row in rows]


def _write_key(path: Path, key: SigningKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.to_pem())
        handle.flush()
        os.fsync(handle.fileno())


def _store(
    session: Session, current: TrustStore, new: TrustStore, keys: KeyStore
) -> SignedTrustStore:
    signed = SignedTrustStore.sign(new, [keys.model, keys.deployment])
    check_successor(current, signed)  # what a device will check, checked before it is stored
    session.add(TrustStoreVersion(version=new.version, document=signed.model_dump_json()))
    return signed


def rotate(session: Session, keys_dir: Path, role: KeyRole) -> SignedTrustStore:
    """A new ``role`` key, trusted beside the old one from the next trust-store version
    (signed by the current keys); the old key file moves to ``keys/previous/``."""
    previous = keys_dir / PREVIOUS_DIR / KEY_FILES[role]
    if previous.exists():
        raise ConflictError(
            f"a rotation of the {role.value} key is under way: retire the old key first "
            f"(edgefleet keys retire --role {role.value})",
            code="rotation_under_way",
        )
    keys = load_keys(keys_dir)
    signed_now = latest(session, keys)
    current = signed_now.trust_store
    staged = keys_dir / (KEY_FILES[role] + ".next")
    if staged.exists():  # a rotation interrupted
        if SigningKey.from_pem(staged.read_bytes()).key_id in current.key_ids(role):
            _swap_in(keys_dir, role, staged, previous)  # stored already: finish it
            return signed_now
        staged.unlink()  # never stored, so never trusted: start again
    new_key = SigningKey.generate()
    _write_key(staged, new_key)
    new = TrustStore(
        version=current.version + 1,
        keys=[*current.keys, TrustedKey.from_verify_key(role, new_key.verify_key)],
    )
    signed = _store(session, current, new, keys)
    session.commit()
    _swap_in(keys_dir, role, staged, previous)
    return signed


def _swap_in(keys_dir: Path, role: KeyRole, staged: Path, previous: Path) -> None:
    """The current key file to ``previous``, the staged one in its place."""
    previous.parent.mkdir(mode=0o700, exist_ok=True)
    os.replace(keys_dir / KEY_FILES[role], previous)
    os.replace(staged, keys_dir / KEY_FILES[role])


def retire(
    session: Session, keys_dir: Path, role: KeyRole, ttl: timedelta
) -> tuple[SignedTrustStore, int]:
    """Drop the old ``role`` key from the next trust-store version, after signing again
    what it signed that is still in use; the re-issued desired states' count."""
    previous_file = keys_dir / PREVIOUS_DIR / KEY_FILES[role]
    if not previous_file.exists():
        raise ConflictError(
            f"no {role.value} key to retire: rotate first (edgefleet keys rotate --role "
            f"{role.value})",
            code="nothing_to_retire",
        )
    old = SigningKey.from_pem(previous_file.read_bytes())
    keys = load_keys(keys_dir)
    current = latest(session, keys).trust_store
    resigned: dict[str, ModelManifest] = {}  # sha256 -> manifest signed by the new key
    if role == KeyRole.MODEL:
        rows = session.exec(select(ModelVersion)).all()
        for row in rows:
            manifest = ModelManifest.model_validate_json(row.manifest)
            if manifest.key_id == old.key_id:
                manifest = manifest.signed_with(keys.model)
                row.manifest = manifest.model_dump_json()
                session.add(row)
                resigned[manifest.sha256] = manifest
    new = TrustStore(
        version=current.version + 1,
        keys=[k for k in current.keys if not (k.role == role and k.key_id == old.key_id)],
    )
    signed = _store(session, current, new, keys)
    session.flush()  # the desired states below carry the new trust version
    reissued = 0
    for device in session.exec(select(Device).where(col(Device.desired).is_not(None))).all():
        desired = current_desired(device)
        if desired is None:
            continue
        models = [
            DeploymentModel(
                manifest=resigned.get(m.manifest.sha256, m.manifest),
                rollout_id=m.rollout_id,
                stage=m.stage,
            )
            for m in desired.models
        ]
        sign_desired(session, keys.deployment, device.id, models, ttl)
        reissued += 1
    session.commit()
    previous_file.unlink()
    return signed, reissued


class KeyWatch:
    """Notices a rotation made by ``edgefleet keys`` while this process runs: ``check``
    reloads the keys in place when the trust-store version changed."""

    def __init__(self, engine: Engine, keys: KeyStore) -> None:
        self.engine = engine
        self.keys = keys
        self.version: int | None = None

    def check(self) -> bool:
        """Whether the version changed since the last check (not at the first). Blocking."""
        with Session(self.engine) as session:
            version = trust_version(session)
        changed = self.version is not None and version != self.version
        if changed:
            self.keys.reload()
            log.info("trust store version %d: signing keys reloaded", version)
        self.version = version
        return changed
