"""API tokens (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from sqlmodel import col, select

from control_plane.api.deps import Admin, IdPath, SessionDep
from control_plane.api.schemas import TokenCreate, TokenIssued, TokenPublic
from control_plane.auth.tokens import ArtifactAccess, issue_token, revoke_by_id
from control_plane.store.tables import ApiToken, Role

router = APIRouter(prefix="/tokens", tags=["tokens"])


def _public(row: ApiToken) -> TokenPublic:
    return TokenPublic.model_validate(row, from_attributes=True)


@router.post(
    "", response_model=TokenIssued, status_code=status.HTTP_201_CREATED, summary="Issue a token"
)
def create_token(body: TokenCreate, session: SessionDep, _: Admin) -> TokenIssued:
    """Issue a bearer token with a role. The secret is in this answer only."""
    row, secret = issue_token(session, name=body.name, role=Role(body.role.value))
    session.commit()
    return TokenIssued(**_public(row).model_dump(), token=secret)


@router.get("", response_model=list[TokenPublic], summary="List tokens (no secrets)")
def list_tokens(session: SessionDep, _: Admin) -> list[TokenPublic]:
    return [_public(r) for r in session.exec(select(ApiToken).order_by(col(ApiToken.id))).all()]


@router.delete("/{token_id}", response_model=TokenPublic, summary="Revoke a token")
def revoke_token(token_id: IdPath, request: Request, session: SessionDep, _: Admin) -> TokenPublic:
    row = revoke_by_id(session, ApiToken, token_id)
    access: ArtifactAccess = request.app.state.artifact_access
    access.forget_token(row.token_hash)
    return _public(row)
