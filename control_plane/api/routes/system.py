"""Health, public keys and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from control_plane.api.deps import KeysDep, SessionDep, Viewer, ViewerOrDevice
from control_plane.api.schemas import MAX_ID, Caller, Health
from control_plane.auth import rotation
from control_plane.observability.metrics import CONTENT_TYPE
from edgefleet import __version__
from shared.trust import SignedTrustStore, TrustStore

router = APIRouter(tags=["system"])
metrics_router = APIRouter(tags=["system"])  # at the root, where Prometheus looks


@router.get("/healthz", response_model=Health, summary="Readiness (no auth)")
def healthz(session: SessionDep, request: Request) -> Health:
    """200 once the server has migrated its database and loaded its keys."""
    session.connection()
    return Health(status="ok", version=__version__, leader=request.app.state.leadership.is_leader)


@router.get("/whoami", response_model=Caller, summary="Who this token is")
def whoami(token: ViewerOrDevice) -> Caller:
    """The token's name and role (the dashboard shows operators their buttons from it; the
    API checks every action itself)."""
    return Caller(name=token.name, role=token.role.value, device_id=token.device_id)


@router.get("/keys", response_model=TrustStore, summary="Public keys (the agents' trust store)")
def keys(keys: KeysDep, session: SessionDep) -> TrustStore:
    """The model-signing and deployment-signing public keys of the latest trust-store
    version (during a key rotation, the old and the new key of that role). Save the answer
    as a file: it is the trust-store format agents and `edgefleet verify --trust-store`
    load."""
    return rotation.latest(session, keys).trust_store


@router.get(
    "/trust-stores",
    response_model=list[SignedTrustStore],
    summary="Trust-store versions after a given one (no auth: each is signed)",
)
def trust_stores(
    session: SessionDep,
    after: Annotated[int, Query(ge=1, le=MAX_ID, description="The version the caller has.")],
) -> list[SignedTrustStore]:
    """Each version after `after`, ascending (at most 100), signed by the keys of the version
    before it. A device checks each against the one it has and moves one at a time; a
    version signed by any other key changes nothing. Public: the signatures, not the
    channel, make them trustworthy."""
    return rotation.chain_after(session, after)


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics (viewer token)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Text exposition format."}},
)
def metrics(request: Request, _: Viewer) -> Response:
    """Devices by online status and by model, version and phase; rollouts by status and the
    active ones' gate readings with their thresholds; jobs by status; each model version's
    latest drift readings; this process's leadership, MQTT ingest counters, failed ticks and
    API request durations. Scrape with `authorization: {credentials: <viewer token>}`."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)
