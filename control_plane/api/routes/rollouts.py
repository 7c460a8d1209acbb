"""Rollouts."""

from __future__ import annotations

from bisect import bisect_right
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlmodel import col, func, select

from control_plane.api.deps import Operator, SessionDep, Viewer
from control_plane.api.schemas import (
    EventPublic,
    PlannedDevice,
    RolloutCreate,
    RolloutMemberPublic,
    RolloutPlanPublic,
    RolloutPublic,
    RolloutVersions,
    StagePublic,
    VersionSeries,
)
from control_plane.errors import InvalidInputError
from control_plane.rollouts.engine import (
    ACTIVE,
    RolloutEngine,
    create_rollout,
    get_rollout,
    new_rollout_id,
    plan_rollout,
    stages_of,
)
from control_plane.rollouts.history import counts_over_time, moments
from control_plane.rollouts.machine import RolloutStatus
from control_plane.rollouts.version_counts import counted_versions
from control_plane.store.tables import Event, Rollout, RolloutDevice, as_utc, utcnow

router = APIRouter(prefix="/rollouts", tags=["rollouts"])
RolloutIdPath = Annotated[str, Path(description="Rollout id.")]


def rollout_public(session: SessionDep, rollout: Rollout) -> RolloutPublic:
    devices, assigned = session.exec(
        select(func.count(), func.count(col(RolloutDevice.assigned_stage))).where(
            RolloutDevice.rollout_id == rollout.id
        )
    ).one()
    return RolloutPublic.model_validate(
        {
            "id": rollout.id,
            "model": rollout.model_name,
            "version": rollout.version,
            "selector": rollout.selector,
            "plan": rollout.plan,
            "status": rollout.status,
            "stage": rollout.stage,
            "reason": rollout.reason,
            "gates": rollout.gates,
            "stages": [
                StagePublic(
                    index=s.index, label=s.label, target=s.target, soak_seconds=s.soak_seconds
                )
                for s in stages_of(session, rollout)
            ],
            "devices": devices,
            "assigned": assigned,
            "created_by": rollout.created_by,
            "created_at": rollout.created_at,
            "updated_at": rollout.updated_at,
        }
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Start a rollout (or dry-run it)",
    response_model=RolloutPublic | RolloutPlanPublic,
    responses={
        200: {"model": RolloutPlanPublic, "description": "Dry run."},
        409: {"description": "Devices already in a rollout of this model."},
        422: {
            "description": "Bad plan or selector, unknown version, or the "
            "selector matches no device."
        },
    },
)
def post_rollout(
    body: RolloutCreate,
    session: SessionDep,
    token: Operator,
    response: Response,
    dry_run: Annotated[
        bool, Query(description="Only show the stages and their devices; change nothing.")
    ] = False,
) -> RolloutPublic | RolloutPlanPublic:
    """The engine starts the first stage within a second. The version must be registered;
    devices of the selector must not be in another active rollout of the same model."""
    if dry_run:
        rollout_id = body.id or new_rollout_id()
        number, ordered, planned = plan_rollout(
            session,
            model=body.model,
            version=body.version,
            selector=body.selector,
            plan=body.plan,
            rollout_id=rollout_id,
        )
        response.status_code = status.HTTP_200_OK
        return RolloutPlanPublic(
            rollout_id=rollout_id,
            model=body.model,
            version=number,
            selector=body.selector,
            devices=len(ordered),
            stages=[
                StagePublic(
                    index=p.stage.index,
                    label=p.stage.label,
                    target=p.stage.target,
                    soak_seconds=p.stage.soak_seconds,
                    devices=[PlannedDevice(id=d, current_version=v) for d, v in p.devices],
                )
                for p in planned
            ],
        )
    rollout = create_rollout(
        session,
        rollout_id=body.id,
        model=body.model,
        version=body.version,
        selector=body.selector,
        plan=body.plan,
        actor=token.name,
    )
    return rollout_public(session, rollout)


@router.get("", response_model=list[RolloutPublic], summary="List rollouts")
def list_rollouts(
    session: SessionDep,
    _: Viewer,
    status_filter: Annotated[
        RolloutStatus | None, Query(alias="status", description="Only this status.")
    ] = None,
) -> list[RolloutPublic]:
    query = select(Rollout).order_by(col(Rollout.created_at).desc())
    if status_filter:
        query = query.where(Rollout.status == status_filter)
    return [rollout_public(session, r) for r in session.exec(query).all()]


@router.get("/{rollout_id}", response_model=RolloutPublic, summary="One rollout")
def one_rollout(rollout_id: RolloutIdPath, session: SessionDep, _: Viewer) -> RolloutPublic:
    return rollout_public(session, get_rollout(session, rollout_id))


@router.get(
    "/{rollout_id}/events",
    response_model=list[EventPublic],
    summary="What happened to a rollout, oldest first",
)
def rollout_events(rollout_id: RolloutIdPath, session: SessionDep, _: Viewer) -> list[EventPublic]:
    get_rollout(session, rollout_id)
    rows = session.exec(
        select(Event).where(Event.rollout_id == rollout_id).order_by(col(Event.id))
    ).all()
    return [EventPublic.model_validate(r, from_attributes=True) for r in rows]


@router.get(
    "/{rollout_id}/devices",
    response_model=list[RolloutMemberPublic],
    summary="A rollout's devices, in cohort order",
)
def rollout_devices(
    rollout_id: RolloutIdPath,
    session: SessionDep,
    response: Response,
    _: Viewer,
    stage: Annotated[
        int | None, Query(ge=0, le=1000, description="Only this stage's cohort (from 0).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9, description="Skip this many first.")] = 0,
) -> list[RolloutMemberPublic]:
    """The devices the rollout's selector matched, by rank: stage *k*'s cohort holds the
    ranks from stage *k−1*'s target to stage *k*'s. `X-Total-Count` says how many match."""
    rollout = get_rollout(session, rollout_id)
    targets = [s.target for s in stages_of(session, rollout)]
    starts = [0, *targets[:-1]]
    query = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
    if stage is not None:
        if stage >= len(targets):
            raise InvalidInputError(
                f"the rollout has {len(targets)} stages (0 to {len(targets) - 1})",
                loc=("query", "stage"),
            )
        query = query.where(
            col(RolloutDevice.rank) >= starts[stage], col(RolloutDevice.rank) < targets[stage]
        )
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    response.headers["X-Total-Count"] = str(total)
    rows = session.exec(query.order_by(col(RolloutDevice.rank)).offset(offset).limit(limit))
    return [
        RolloutMemberPublic(
            device_id=m.device_id,
            rank=m.rank,
            stage=bisect_right(targets, m.rank),
            assigned_stage=m.assigned_stage,
            assigned_at=as_utc(m.assigned_at),
            previous_version=m.previous_version,
            reverted=m.reverted,
        )
        for m in rows
    ]


@router.get(
    "/{rollout_id}/versions",
    response_model=RolloutVersions,
    summary="Devices per version over the rollout's life",
)
def rollout_versions(
    rollout_id: RolloutIdPath,
    session: SessionDep,
    _: Viewer,
    points: Annotated[int, Query(ge=2, le=500, description="Moments to count at.")] = 60,
) -> RolloutVersions:
    """The rollout's devices counted by the version of its model they served, at `points`
    moments from its creation to now (to its last change once it ended), replayed from the
    version changes the devices reported (`device_model` events)."""
    rollout = get_rollout(session, rollout_id)
    start = as_utc(rollout.created_at) or utcnow()
    end = utcnow() if rollout.status in ACTIVE else as_utc(rollout.updated_at) or utcnow()
    at_start, changes = counted_versions(session, rollout_id, rollout.model_name, start)
    counted = counts_over_time(moments(start, end, points), at_start, changes)
    versions = sorted({v for _, counts in counted for v in counts}, key=lambda v: v or 0)
    return RolloutVersions(
        times=[moment for moment, _ in counted],
        series=[
            VersionSeries(version=v, devices=[counts[v] for _, counts in counted]) for v in versions
        ],
    )


@router.post(
    "/{rollout_id}/{command}",
    response_model=RolloutPublic,
    summary="pause, resume, promote (skip the soak), abort, or rollback",
    responses={409: {"description": "Not possible in the rollout's state."}},
)
async def rollout_command(
    rollout_id: RolloutIdPath,
    command: Annotated[
        Literal["pause", "resume", "promote", "abort", "rollback"], Path(description="What to do.")
    ],
    request: Request,
    session: SessionDep,
    token: Operator,
) -> RolloutPublic:
    engine: RolloutEngine = request.app.state.rollouts
    rollout = await engine.command(rollout_id, command, token.name)
    return await run_in_threadpool(rollout_public, session, rollout)
