"""Health and public keys."""

from __future__ import annotations

from fastapi import APIRouter, Request

from control_plane.api.deps import KeysDep, SessionDep
from control_plane.api.schemas import Health
from edgefleet import __version__
from shared.trust import TrustStore

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health, summary="Readiness (no auth)")
def healthz(session: SessionDep, request: Request) -> Health:
    """200 once the server has migrated its database and loaded its keys."""
    session.connection()
    return Health(status="ok", version=__version__, leader=request.app.state.leadership.is_leader)


@router.get("/keys", response_model=TrustStore, summary="Public keys (the agents' trust store)")
def keys(keys: KeysDep) -> TrustStore:
    """The model-signing and deployment-signing public keys. Save the answer as a file: it is
    the trust-store format agents and `edgefleet verify --trust-store` load."""
    return keys.trust_store()
