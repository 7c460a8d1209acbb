"""API tokens: random bearer secrets stored only as their sha256."""

from __future__ import annotations

import secrets

from sqlmodel import Session, select

from control_plane.models import ROLE_RANK, ApiToken, Role
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
