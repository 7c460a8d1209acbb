"""Health, public keys and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from control_plane.api.deps import KeysDep, SessionDep, Viewer
from control_plane.api.schemas import Health
from control_plane.observability.metrics import CONTENT_TYPE
from edgefleet import __version__
from shared.trust import TrustStore

router = APIRouter(tags=["system"])
metrics_router = APIRouter(tags=["system"])  # at the root, where Prometheus looks


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
