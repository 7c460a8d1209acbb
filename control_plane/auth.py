"""API tokens: random bearer secrets stored only as their sha256."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import Engine
from sqlmodel import Session, select

from control_plane.models import ROLE_RANK, ApiToken, ModelVersion, Role
from shared.hashing import sha256_bytes

TOKEN_PREFIX = "ef_"  # noqa: S105  (a prefix, not a secret)


def hash_token(token: str) -> str:
    return sha256_bytes(token.encode("utf-8"))


def issue_token(
    session: Session, *, name: str, role: Role, device_id: str | None = None
) -> tuple[ApiToken, str]:
    """Create a token; return the row and the secret, which is shown once and not stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role.value, token_hash=hash_token(secret), device_id=device_id)
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, secret


def find_token(session: Session, secret: str) -> ApiToken | None:
    """The live token with this secret, or ``None``."""
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    return row


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
    artifacts are remembered for good (content-addressed and immutable)."""

    def __init__(self, engine: Engine, ttl: float = 30.0) -> None:
        self._engine = engine
        self._ttl = ttl
        self._tokens: dict[str, float] = {}  # token hash -> monotonic expiry
        self._registered: set[str] = set()

    def token_ok(self, secret: str) -> bool:
        """Whether ``secret`` is a live viewer (or stronger) or device token. Blocking on a
        cache miss: call it from a worker thread."""
        key = hash_token(secret)
        expiry = self._tokens.get(key)
        if expiry is not None and expiry > time.monotonic():
            return True
        with Session(self._engine) as session:
            token = find_token(session, secret)
            allowed = token is not None and (
                has_role(token, Role.VIEWER) or has_role(token, Role.DEVICE)
            )
        if allowed:
            self._tokens[key] = time.monotonic() + self._ttl
        else:
            self._tokens.pop(key, None)
        return allowed

    def known(self, secret: str, sha256: str) -> bool:
        """Both answers from memory: no database, no thread."""
        expiry = self._tokens.get(hash_token(secret))
        return expiry is not None and expiry > time.monotonic() and sha256 in self._registered

    def forget_token(self, token_hash: str) -> None:
        self._tokens.pop(token_hash, None)

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
