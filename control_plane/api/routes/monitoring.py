"""Drift readings, feedback labels, monitoring/retraining policy, manual retraining and the
approval of challengers."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from control_plane.api.deps import (
    JobsDep,
    Operator,
    OperatorOrDevice,
    SessionDep,
    SettingsDep,
    Viewer,
)
from control_plane.api.routes.jobs import job_public
from control_plane.api.schemas import (
    MAX_ID,
    DriftPointPublic,
    FeedbackCreate,
    FeedbackResult,
    JobPublic,
    RetrainCreate,
)
from control_plane.audit.record import record_event
from control_plane.audit.types import EventType
from control_plane.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    PayloadTooLargeError,
)
from control_plane.fleet.selectors import parse_selector
from control_plane.monitoring import release
from control_plane.monitoring.monitor import start_retraining
from control_plane.monitoring.policy import ModelPolicy, policy_of
from control_plane.registry.versions import get_model, latest_version, resolve_version
from control_plane.store.tables import (
    DriftResult,
    Feedback,
    Job,
    Model,
    Role,
    SampleRowRecord,
    utcnow,
)
from shared.manifest import ModelManifest

router = APIRouter(tags=["monitoring"])
NamePath = Annotated[str, Path(description="Model name.")]


# --- policy ------------------------------------------------------------------------------------


@router.get(
    "/models/{name}/policy",
    response_model=ModelPolicy,
    summary="How a model is watched and retrained",
)
def get_policy(name: NamePath, session: SessionDep, _: Viewer) -> ModelPolicy:
    """The model's policy; the defaults until one is set."""
    return policy_of(get_model(session, name).policy)


@router.put(
    "/models/{name}/policy",
    response_model=ModelPolicy,
    summary="Set how a model is watched and retrained",
    responses={422: {"description": "A bad threshold, selector or plan."}},
)
def put_policy(name: NamePath, body: ModelPolicy, session: SessionDep, _: Operator) -> ModelPolicy:
    """Replace the policy (fields left out take their defaults). Applies from the next
    bucket on; streaks already counted are kept."""
    model = get_model(session, name)
    for i, selector in enumerate([*body.selectors, body.retrain.selector]):
        parse_selector(selector, loc=("body", "selectors", i))
    model.policy = body.model_dump(mode="json")
    session.add(model)
    session.commit()
    return body


# --- drift -------------------------------------------------------------------------------------


@router.get(
    "/models/{name}/drift",
    response_model=list[DriftPointPublic],
    summary="Drift and accuracy over time",
)
def get_drift(
    name: NamePath,
    session: SessionDep,
    _: Viewer,
    version: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only this version.")] = None,
    selector: Annotated[
        str | None, Query(description="Only this population (as in the policy; `` = all).")
    ] = None,
    since: Annotated[datetime | None, Query(description="Buckets starting at or after.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
) -> list[DriftPointPublic]:
    """One reading per closed bucket, version and selector, oldest first: per feature PSI,
    JS distance, verdict, mean and shift; the prediction histogram's; which features count
    as drifted (for `consecutive` buckets); requests, errors, p95 latency; labels received
    and the accuracy on them."""
    get_model(session, name)
    query = select(DriftResult).where(DriftResult.model_name == name)
    if version is not None:
        query = query.where(DriftResult.version == version)
    if selector is not None:
        query = query.where(
            DriftResult.selector == parse_selector(selector, loc=("query", "selector")).text
        )
    if since is not None:
        query = query.where(DriftResult.bucket_start >= since)
    rows = session.exec(
        query.order_by(col(DriftResult.bucket_start).desc(), col(DriftResult.version)).limit(limit)
    ).all()
    return [DriftPointPublic.model_validate(r, from_attributes=True) for r in reversed(rows)]


# --- feedback ----------------------------------------------------------------------------------


def _encode(
    value: str | int | float, classes: list[str], task: str, loc: tuple[str | int, ...]
) -> float:
    """A label or prediction as stored: class index, or the value."""
    if task == "classification":
        if isinstance(value, str):
            if value not in classes:
                raise InvalidInputError(
                    f"{value!r} is not a class of this model ({classes})", loc=loc
                )
            return float(classes.index(value))
        if (isinstance(value, float) and not value.is_integer()) or not 0 <= value < len(classes):
            raise InvalidInputError(
                f"class index {value} out of range (0 … {len(classes) - 1})", loc=loc
            )
        return float(value)
    if isinstance(value, str):
        raise InvalidInputError("regression labels are numbers", loc=loc)
    if not math.isfinite(value):
        raise InvalidInputError("labels must be finite", loc=loc)
    return float(value)


@router.post(
    "/feedback",
    response_model=FeedbackResult,
    summary="True labels for predictions, by request id",
    responses={
        413: {"description": "More items than `max_feedback_items`."},
        422: {"description": "Unknown model, class or version; nothing was stored."},
    },
)
def post_feedback(
    body: FeedbackCreate, session: SessionDep, settings: SettingsDep, token: OperatorOrDevice
) -> FeedbackResult:
    """Labels join the prediction they judge by the request id of the agent's response: with
    `prediction` and `version` (from the same response) they count towards the accuracy of
    the bucket they arrive in; when the device sampled that row to the control plane they
    also become training rows for retraining. A device token may post labels only for its
    own device. All items are checked before any is stored."""
    if len(body.items) > settings.max_feedback_items:
        raise PayloadTooLargeError(
            f"{len(body.items)} items; at most {settings.max_feedback_items} per request",
            loc=("body", "items"),
        )
    model = get_model(session, body.model)
    device_only = token.device_id if token.role == Role.DEVICE else None
    rows = _feedback_rows(session, body, model, device_only)
    if device_only:
        _check_owner(session, device_only, [item.request_id for item in body.items])
    _upsert_feedback(session, rows, device_only)
    ids = [r["request_id"] for r in rows]
    matched = session.exec(
        select(SampleRowRecord.request_id).where(col(SampleRowRecord.request_id).in_(ids))
    ).all()
    session.commit()
    return FeedbackResult(stored=len(rows), matched_samples=len(matched))


def _feedback_rows(
    session: Session, body: FeedbackCreate, model: Model, device_only: str | None
) -> list[dict[str, Any]]:
    """Every item checked and encoded as the model's classes (or values) before any is
    stored; the first bad one is refused with its place in the body."""
    latest = latest_version(session, body.model)
    assert latest is not None
    classes = ModelManifest.model_validate_json(latest.manifest).output.classes
    task, now = model.task, utcnow()
    rows = []
    for i, item in enumerate(body.items):
        loc: tuple[str | int, ...] = ("body", "items", i)
        if item.version is not None and item.version > model.latest_version:
            raise InvalidInputError(f"no version {item.version}", loc=(*loc, "version"))
        if device_only and item.device_id not in (None, device_only):
            raise InvalidInputError(
                f"a device token posts labels for its own device ({device_only})",
                loc=(*loc, "device_id"),
            )
        rows.append(
            {
                "request_id": item.request_id,
                "model_name": body.model,
                "model_version": item.version,
                "device_id": item.device_id or device_only,
                "label": _encode(item.label, classes, task, (*loc, "label")),
                "prediction": (
                    None
                    if item.prediction is None
                    else _encode(item.prediction, classes, task, (*loc, "prediction"))
                ),
                "received_at": now,
            }
        )
    return rows


def _upsert_feedback(session: Session, rows: list[dict[str, Any]], device_only: str | None) -> None:
    """A label posted again replaces the earlier one."""
    table = Feedback.__table__  # type: ignore[attr-defined]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    insert = dialect.insert(table)
    statement = insert.on_conflict_do_update(
        index_elements=["request_id"],
        set_={
            c: getattr(insert.excluded, c)
            for c in ("label", "prediction", "model_version", "device_id", "received_at")
        },
        # A device replaces only its own labels (also against a concurrent post).
        where=(table.c.device_id == insert.excluded.device_id) if device_only else None,
    )
    session.execute(statement, rows)


def _check_owner(session: Session, device_id: str, request_ids: list[str]) -> None:
    """A request id belongs to the device that first reported it (its sampled row or its
    first label): another device's token may not label it."""
    owners: dict[str, str | None] = {}
    for table in (SampleRowRecord, Feedback):
        for request_id, owner in session.exec(
            select(table.request_id, table.device_id).where(col(table.request_id).in_(request_ids))
        ).all():
            owners.setdefault(request_id, owner)
    for i, request_id in enumerate(request_ids):
        owner = owners.get(request_id)
        if owner is not None and owner != device_id:
            raise ForbiddenError(
                f"request id {request_id!r} belongs to another device",
                loc=("body", "items", i, "request_id"),
            )


# --- retraining and release --------------------------------------------------------------------


@router.post(
    "/models/{name}/retrain",
    response_model=JobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Retrain now (a background job)",
    responses={422: {"description": "No version to challenge yet."}},
)
def retrain_now(
    name: NamePath,
    session: SessionDep,
    jobs: JobsDep,
    _: Operator,
    request: Request,
    body: RetrainCreate | None = None,
) -> JobPublic:
    """Queue a retraining job under the model's policy (cooldown skipped): the challenger
    is registered only if it beats the champion on recent labelled rows."""
    get_model(session, name)
    champion = None
    if body is not None and body.champion_version is not None:
        champion = resolve_version(session, name, str(body.champion_version)).version
    job_id = start_retraining(
        session, name, "manual", None, request.app.state.leadership.process_id, champion
    )
    if job_id is None:
        raise InvalidInputError(f"model {name!r} has no version to challenge", loc=("path",))
    session.commit()
    jobs.submit(job_id)
    job = session.get(Job, job_id)
    assert job is not None
    return job_public(job)


@router.post(
    "/models/{name}/versions/{version}/approve",
    summary="Release a challenger that waits for approval",
    responses={409: {"description": "The version is not awaiting approval."}},
)
def approve(
    name: NamePath,
    version: Annotated[int, Path(ge=1, le=MAX_ID, description="Version number.")],
    session: SessionDep,
    token: Operator,
) -> dict[str, str]:
    """Mark a retrained version approved: the monitor starts its rollout (the policy's
    selector and plan) on its next tick, once no other rollout holds the devices."""
    row = resolve_version(session, name, str(version))
    after = release.approved(row.release)
    if after is None:
        raise ConflictError(
            f"{name} v{version} is not awaiting approval (release: {row.release or 'none'})",
            loc=("path", "version"),
            code="not_awaiting_approval",
        )
    row.release = after
    session.add(row)
    record_event(
        session,
        EventType.APPROVED,
        f"{name} v{version} approved by {token.name}",
        model_name=name,
        version=version,
        job_id=row.job_id,
    )
    session.commit()
    return {"release": "approved"}
