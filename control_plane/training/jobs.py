"""Runs training jobs in worker processes, off the API's event loop and out of its GIL."""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from control_plane.config import ServerSettings
from control_plane.coordination.leadership import Leadership
from control_plane.observability.logs import about
from control_plane.store.tables import Job, JobStatus
from control_plane.training.supply_chain import finish_job
from control_plane.training.worker import run_training_job, start_worker

log = logging.getLogger(__name__)
# Imported once by the fork server (a module that fails to import there is skipped).
TRAINING_MODULES = [
    "control_plane.training.worker",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.pipeline",
    "skl2onnx",
    "onnx",
    "onnxruntime",
]


class JobRunner:
    def __init__(self, settings: ServerSettings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        # forkserver: workers fork from a clean single-threaded server process (no copies of
        # the API's threads or sockets) that imported the training stack once, so a job
        # starts in ~0.1 s instead of the ~7 s a spawned interpreter spends importing
        # scikit-learn and skl2onnx for every new pool.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(TRAINING_MODULES)
        return ProcessPoolExecutor(
            max_workers=self._settings.training_workers,
            mp_context=context,
            initializer=start_worker,
            initargs=(self._settings.log_level, self._settings.log_format),
        )

    def submit(self, job_id: int) -> None:
        try:
            future = self._executor.submit(run_training_job, self._settings, job_id)
        except BrokenProcessPool:
            log.warning("training worker pool was broken; starting a new one")
            self._executor = self._new_executor()
            future = self._executor.submit(run_training_job, self._settings, job_id)
        future.add_done_callback(lambda f: self._on_done(job_id, f))

    def _on_done(self, job_id: int, future: Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:  # the worker died (killed, out of memory): the job must not hang
            log.error(
                "training worker for job %s died: %r", job_id, exc, extra=about(job_id=job_id)
            )
            with Session(self._engine) as session:
                finish_job(session, job_id, error=f"training worker died: {exc!r}")

    def recover(self) -> None:
        """On start: jobs left running by a stopped server failed; queued ones run now."""
        with Session(self._engine) as session:
            for job in session.exec(select(Job).where(Job.status == JobStatus.RUNNING)).all():
                assert job.id is not None
                finish_job(
                    session,
                    job.id,
                    error="interrupted: the server stopped while the job ran; submit it again",
                )
            queued = session.exec(select(Job.id).where(Job.status == JobStatus.QUEUED)).all()
        for job_id in queued:
            if job_id is not None:
                self.submit(job_id)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def recover_orphans(self, leadership: Leadership) -> None:
        """Several processes on PostgreSQL: jobs whose owning process stopped heartbeating
        failed (running) or move to this process (queued)."""
        with Session(self._engine) as session:
            alive = leadership.live_processes(session)
            orphans = session.exec(
                select(Job).where(col(Job.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            ).all()
            resubmit = []
            for job in orphans:
                if job.owner in alive or job.id is None:
                    continue
                if job.status == JobStatus.RUNNING:
                    finish_job(
                        session,
                        job.id,
                        error="interrupted: its control-plane process stopped; submit it again",
                    )
                else:
                    job.owner = leadership.process_id
                    session.add(job)
                    session.commit()
                    resubmit.append(job.id)
        for job_id in resubmit:
            self.submit(job_id)
