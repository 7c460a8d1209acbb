"""The worker-process entry point of a job: claim it, run it by kind (training, or
retraining a challenger), and record how it ended."""

from __future__ import annotations

import logging
import logging.config
import multiprocessing
import multiprocessing.connection
import os
import threading

from sqlalchemy import update
from sqlmodel import Session, col

from control_plane.api.schemas import TrainRequest
from control_plane.config import ServerSettings
from control_plane.errors import ControlPlaneError
from control_plane.observability.logs import LogFormat, about, log_config
from control_plane.store.db import create_db_engine
from control_plane.store.tables import Job, JobKind, JobStatus, utcnow
from control_plane.training.mlflow_registry import log_to_mlflow
from control_plane.training.model_import import import_version
from control_plane.training.retraining_job import retrain
from control_plane.training.supply_chain import Refused, finish_job, set_progress, train_version

log = logging.getLogger(__name__)


def start_worker(log_level: str, log_format: LogFormat) -> None:
    """Pool initializer: the server's logging, and an exit when the server dies."""
    logging.config.dictConfig(log_config(log_level, log_format))
    exit_with_parent()


def exit_with_parent() -> None:
    """Pool initializer: a worker whose control plane died (kill -9, out of memory) exits
    instead of waiting for jobs forever (and keeping the fork server alive with it). The
    parent's sentinel is the write end of the pipe it sent the worker over, which only its
    death closes."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run(settings: ServerSettings, session: Session, job: Job) -> int | Refused:
    if job.kind == JobKind.RETRAIN:
        return retrain(settings, session, job)
    if job.kind == JobKind.IMPORT:
        return import_version(settings, session, job)
    return train_version(settings, session, job, TrainRequest.model_validate(job.request))


def run_training_job(settings: ServerSettings, job_id: int) -> None:
    """Worker-process entry point: claim job ``job_id`` and run it to the end."""
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            claimed = session.execute(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.status) == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, stage="loading", started_at=utcnow())
            )
            session.commit()
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return  # another worker has it, or it was cancelled
            try:
                job = session.get(Job, job_id)
                assert job is not None
                outcome = _run(settings, session, job)
            except ControlPlaneError as exc:
                log.info("job %s failed: %s", job_id, exc.message, extra=about(job_id=job_id))
                finish_job(session, job_id, error=exc.message)
            except Exception as exc:
                log.exception("job %s crashed", job_id, extra=about(job_id=job_id))
                finish_job(session, job_id, error=f"internal error: {type(exc).__name__}: {exc}")
            else:
                if isinstance(outcome, Refused):
                    log.info("job %s: %s", job_id, outcome.reason, extra=about(job_id=job_id))
                    finish_job(session, job_id, refused=outcome.reason)
                else:
                    if settings.mlflow_tracking_uri:
                        set_progress(session, job_id, "mlflow", 0.99)
                        log_to_mlflow(settings, session, job.model_name, outcome)
                    finish_job(session, job_id, version=outcome)
    finally:
        engine.dispose()
