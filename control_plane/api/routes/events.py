"""The audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import col, select

from control_plane.api.deps import SessionDep, Viewer
from control_plane.api.schemas import MAX_ID, EventPublic
from control_plane.audit.types import EventType
from control_plane.store.tables import Event

router = APIRouter(tags=["events"])


@router.get("/events", response_model=list[EventPublic], summary="The audit log, newest first")
def list_events(
    session: SessionDep,
    _: Viewer,
    type_filter: Annotated[
        list[EventType] | None,
        Query(
            alias="type",
            max_length=len(EventType),
            description="Only these types (repeatable), e.g. gate_failed, drift, release.",
        ),
    ] = None,
    device_id: Annotated[str | None, Query(description="Only this device.")] = None,
    rollout_id: Annotated[str | None, Query(description="Only this rollout.")] = None,
    model: Annotated[str | None, Query(description="Only this model.")] = None,
    job_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only this job.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> list[EventPublic]:
    """State changes of rollouts (created, stages, gates, commands), of devices (online,
    offline, model versions, refusals), and the drift loop (drift, accuracy drops,
    retraining, challengers, releases; `cause_id` links each to the event it follows)."""
    query = select(Event).order_by(col(Event.id).desc()).limit(limit)
    if type_filter:
        query = query.where(col(Event.type).in_(type_filter))
    if device_id:
        query = query.where(Event.device_id == device_id)
    if rollout_id:
        query = query.where(Event.rollout_id == rollout_id)
    if model:
        query = query.where(Event.model_name == model)
    if job_id is not None:
        query = query.where(Event.job_id == job_id)
    return [EventPublic.model_validate(e, from_attributes=True) for e in session.exec(query).all()]
