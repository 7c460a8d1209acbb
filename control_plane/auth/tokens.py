"""API tokens: random bearer secrets stored only as their sha256."""

from __future__ import annotations

import secrets
import time
from typing import TypeVar

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from control_plane.errors import NotFoundError
from control_plane.store.tables import (
    ROLE_RANK,
    Admission,
    ApiToken,
    BootstrapToken,
    Device,
    ModelVersion,
    Role,
    utcnow,
)
from shared.hashing import sha256_bytes
from shared.messages import DesiredState

TOKEN_PREFIX = "ef_"  # noqa: S105  (a prefix, not a secret)
AnyToken = TypeVar("AnyToken", ApiToken, BootstrapToken)


def hash_token(token: str) -> str:
    return sha256_bytes(token.encode("utf-8"))


def issue_token(
    session: Session, *, name: str, role: Role, device_id: str | None = None
) -> tuple[ApiToken, str]:
    """Add a token to ``session`` (the caller commits); return the row and the secret, which
    is shown once and not stored."""
    row, secret = new_token(name=name, role=role, device_id=device_id)
    session.add(row)
    session.flush()
    return row, secret


def new_token(*, name: str, role: Role, device_id: str | None = None) -> tuple[ApiToken, str]:
    """A token row, not yet added anywhere, and its secret."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role, token_hash=hash_token(secret), device_id=device_id)
    return row, secret


def find_token(session: Session, secret: str, *, admitted_only: bool = True) -> ApiToken | None:
    """The live token with this secret, or ``None``. A device's token lives only while its
    device is accepted (``admitted_only``; the enrollment check-in reads any)."""
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    if admitted_only and row.device_id is not None:
        device = session.get(Device, row.device_id)
        if device is None or device.admission != Admission.ACCEPTED:
            return None
    return row


def revoke_by_id(session: Session, table: type[AnyToken], token_id: int) -> AnyToken:
    """Revoke an API or bootstrap token by id (again is a no-op); 404 when there is none."""
    row = session.get(table, token_id)
    if row is None:
        what = "bootstrap token" if table is BootstrapToken else "token"
        raise NotFoundError(f"no {what} {token_id}", loc=("path", "token_id"))
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.commit()
        session.refresh(row)
    return row


def revoke_device_tokens(session: Session, device_id: str) -> list[str]:
    """Revoke every live token of a device; their hashes (to forget in caches)."""
    rows = session.exec(
        select(ApiToken).where(ApiToken.device_id == device_id, col(ApiToken.revoked_at).is_(None))
    ).all()
    for row in rows:
        row.revoked_at = utcnow()
        session.add(row)
    return [row.token_hash for row in rows]


def has_role(token: ApiToken, needed: Role) -> bool:
    """Device tokens carry only the device role; the others include the weaker roles."""
    if needed is Role.DEVICE or token.role == Role.DEVICE:
        return token.role == needed
    return ROLE_RANK[Role(token.role)] >= ROLE_RANK[needed]


class ArtifactAccess:
    """Answers "may this token download this artifact?" without holding a database session
    while the file streams: a fleet downloading at once must not need one connection or one
    worker thread per download. Valid tokens are remembered for ``ttl`` seconds (a revocation
    in this process takes effect at once, in other processes within ``ttl``); registered
    artifacts are remembered for good (content-addressed and immutable). A device token
    reaches only the artifacts named in its device's current or previous desired state (its
    rollback slot); those sets are remembered too and read again when a device asks for one
    not in them (a new deployment)."""

    def __init__(self, engine: Engine, ttl: float = 30.0) -> None:
        self._engine = engine
        self._ttl = ttl
        self._tokens: dict[str, tuple[float, str | None]] = {}  # hash -> (expiry, device id)
        self._registered: set[str] = set()
        self._deployed: dict[str, frozenset[str]] = {}  # device id -> artifacts it may fetch

    def token_ok(self, secret: str) -> bool:
        """Whether ``secret`` is a live viewer (or stronger) or device token. Blocking on a
        cache miss: call it from a worker thread."""
        key = hash_token(secret)
        cached = self._tokens.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return True
        with Session(self._engine) as session:
            token = find_token(session, secret)
            allowed = token is not None and (
                has_role(token, Role.VIEWER) or has_role(token, Role.DEVICE)
            )
            device_id = token.device_id if token is not None and token.role == Role.DEVICE else None
        if allowed:
            self._tokens[key] = (time.monotonic() + self._ttl, device_id)
        else:
            self._tokens.pop(key, None)
        return allowed

    def known(self, secret: str, sha256: str) -> bool:
        """All answers from memory: no database, no thread."""
        cached = self._tokens.get(hash_token(secret))
        if cached is None or cached[0] <= time.monotonic() or sha256 not in self._registered:
            return False
        device_id = cached[1]
        return device_id is None or sha256 in self._deployed.get(device_id, frozenset())

    def device_may(self, secret: str, sha256: str) -> bool:
        """For a live token (``token_ok`` first): an operator's may fetch any registered
        artifact, a device's those deployed to its device. Blocking on a miss."""
        cached = self._tokens.get(hash_token(secret))
        if cached is None or cached[1] is None:
            return True
        device_id = cached[1]
        if sha256 in self._deployed.get(device_id, frozenset()):
            return True
        with Session(self._engine) as session:
            device = session.get(Device, device_id)
            shas = frozenset(
                deployment.manifest.sha256
                for document in ((device.desired, device.previous_desired) if device else ())
                if document
                for deployment in DesiredState.model_validate_json(document).models
            )
        self._deployed[device_id] = shas
        return sha256 in shas

    def forget_token(self, token_hash: str) -> None:
        self._tokens.pop(token_hash, None)

    def forget_device(self, device_id: str) -> None:
        """A device no longer accepted: its tokens are asked about again."""
        for key in [k for k, (_, device) in self._tokens.items() if device == device_id]:
            self._tokens.pop(key, None)

    def registered(self, sha256: str) -> bool:
        """Whether ``sha256`` is a registered model version. Blocking on a cache miss."""
        if sha256 in self._registered:
            return True
        with Session(self._engine) as session:
            found = (
                session.exec(select(ModelVersion.id).where(ModelVersion.sha256 == sha256)).first()
                is not None
            )
        if found:
            self._registered.add(sha256)
        return found
