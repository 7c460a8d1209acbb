"""Recording an event: the one place an audit-log row is made."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlmodel import Session

from control_plane.audit.types import PAYLOADS, EventType, Payload
from control_plane.store.tables import Event, utcnow

P = TypeVar("P", bound=Payload)


def event_values(
    kind: EventType,
    message: str,
    *,
    data: Payload | None = None,
    rollout_id: str | None = None,
    device_id: str | None = None,
    model_name: str | None = None,
    version: int | None = None,
    job_id: int | None = None,
    cause_id: int | None = None,
) -> dict[str, Any]:
    """An event's column values, every column given (rows for one multi-row insert).
    Raises ``TypeError`` when ``data`` is not the payload its type carries."""
    expected = PAYLOADS.get(kind)
    if (data is None) != (expected is None) or (
        expected is not None and not isinstance(data, expected)
    ):
        wanted = expected.__name__ if expected else "no payload"
        raise TypeError(f"a {kind.value} event carries {wanted}, not {type(data).__name__}")
    return {
        "at": utcnow(),
        "type": kind,
        "message": message,
        "data": data.model_dump(mode="json", exclude_none=True) if data is not None else None,
        "rollout_id": rollout_id,
        "device_id": device_id,
        "model_name": model_name,
        "version": version,
        "job_id": job_id,
        "cause_id": cause_id,
    }


def record_event(
    session: Session,
    kind: EventType,
    message: str,
    *,
    data: Payload | None = None,
    rollout_id: str | None = None,
    device_id: str | None = None,
    model_name: str | None = None,
    version: int | None = None,
    job_id: int | None = None,
    cause_id: int | None = None,
) -> Event:
    """Add an event to ``session`` (the caller commits, with the change it records).
    Raises ``TypeError`` when ``data`` is not the payload its type carries."""
    values = event_values(
        kind,
        message,
        data=data,
        rollout_id=rollout_id,
        device_id=device_id,
        model_name=model_name,
        version=version,
        job_id=job_id,
        cause_id=cause_id,
    )
    event = Event(**values)
    session.add(event)
    return event


def event_payload(event: Event, model: type[P]) -> P:
    """An event's figures, read back as the payload its type carries (``model`` or a
    subclass of it, e.g. ``Onset`` for a drift or an accuracy drop)."""
    carried = PAYLOADS.get(EventType(event.type))
    if carried is None or not issubclass(carried, model):
        raise TypeError(f"a {event.type} event does not carry {model.__name__}")
    return carried.model_validate(event.data)
