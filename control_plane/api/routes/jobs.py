"""Background jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import col, select

from control_plane.api.deps import IdPath, SessionDep, Viewer
from control_plane.api.schemas import JobPublic
from control_plane.errors import NotFoundError
from control_plane.store.tables import Job

router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_public(row: Job) -> JobPublic:
    return JobPublic.model_validate(row, from_attributes=True)


@router.get("/{job_id}", response_model=JobPublic, summary="Job status and progress")
def get_job(job_id: IdPath, session: SessionDep, _: Viewer) -> JobPublic:
    row = session.get(Job, job_id)
    if row is None:
        raise NotFoundError(f"no job {job_id}", loc=("path", "job_id"))
    return job_public(row)


@router.get("", response_model=list[JobPublic], summary="Recent jobs, newest first")
def list_jobs(
    session: SessionDep, _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[JobPublic]:
    rows = session.exec(
        select(Job).order_by(col(Job.id).desc()).limit(max(1, min(limit, 500)))
    ).all()
    return [job_public(r) for r in rows]
