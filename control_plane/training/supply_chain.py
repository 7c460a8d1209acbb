"""The model supply chain, run as a job in a worker process:
dataset → training → ONNX export → parity gate → reference statistics and golden vectors →
signed manifest → registry. Each step reports stage and progress on the job row; any
failure leaves the job ``failed`` with a clear message and nothing registered."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from sqlmodel import Session

from agent.inference import Outputs, describe, session_for
from control_plane.api.schemas import TrainRequest
from control_plane.auth.keys import load_keys
from control_plane.config import ServerSettings
from control_plane.errors import JobFailedError
from control_plane.registry.datasets import DatasetLimits, ParsedDataset, parse_csv
from control_plane.registry.versions import latest_version, register_version
from control_plane.store.blobs import BlobStore
from control_plane.store.tables import Dataset, Job, JobStatus, utcnow
from control_plane.training.algorithms import (
    Algorithm,
    build_pipeline,
    classification_metrics,
    get_algorithm,
    regression_metrics,
    split,
    validate_params,
)
from control_plane.training.conversion import export_onnx, run_onnx
from control_plane.training.manifest import Trained, build_manifest
from control_plane.training.parity import check_parity
from control_plane.training.search import search
from edgefleet import __version__
from shared.hashing import sha256_bytes
from shared.manifest import (
    Lineage,
    ModelManifest,
    NanPolicy,
    ParamValue,
    Parity,
    Task,
    utc_seconds,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    """A job that registered nothing on purpose (a challenger that did not win, too little
    data to judge one): an outcome, not a failure."""

    reason: str


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    return {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def set_progress(session: Session, job_id: int, stage: str, progress: float) -> None:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    job.stage, job.progress = stage, progress
    session.add(job)
    session.commit()


def finish_job(
    session: Session,
    job_id: int,
    *,
    error: str | None = None,
    version: int | None = None,
    refused: str | None = None,
) -> None:
    """Mark a job finished (failed when ``error``; succeeded without a version, stage
    ``refused``, when a challenger lost); a job already finished is left alone."""
    session.rollback()
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        return
    job.status = JobStatus.FAILED if error else JobStatus.SUCCEEDED
    job.stage = "failed" if error else "refused" if refused else "done"
    job.progress = job.progress if error else 1.0
    job.error = error or refused
    job.result_version = version
    job.finished_at = utcnow()
    session.add(job)
    session.commit()


def load_dataset(blobs: BlobStore, dataset: Dataset) -> ParsedDataset:
    """A stored dataset, checked against its sha256 and parsed as it was at upload."""
    data = blobs.read_bytes(dataset.sha256)
    if sha256_bytes(data) != dataset.sha256:
        raise JobFailedError(f"dataset {dataset.id}'s stored file is corrupt (sha256 mismatch)")
    nan_policy: Any = dataset.nan_policy
    return parse_csv(
        data,
        label=dataset.label_column,
        nan_policy=nan_policy,
        limits=DatasetLimits(max_rows=10**9, max_columns=10**6, min_rows=2),
    )


def train_version(
    settings: ServerSettings,
    session: Session,
    job: Job,
    request: TrainRequest,
    challenge: Callable[[bytes], Refused | None] | None = None,
) -> int | Refused:
    """Train, export, check and register: the version's number. ``challenge`` sees the
    exported model before it is registered and may refuse it (then nothing is)."""
    assert job.id is not None
    job_id = job.id
    dataset = session.get(Dataset, request.dataset_id)
    if dataset is None or dataset.id is None:
        raise JobFailedError(f"dataset {request.dataset_id} does not exist")
    algorithm = get_algorithm(request.task, request.algorithm)
    params = validate_params(algorithm, request.params)
    blobs = BlobStore(settings.blobs_dir)
    parsed = load_dataset(blobs, dataset)
    check_features_match(session, job.model_name, parsed.features)
    classes, y = encode_labels(parsed, request.task, settings.max_classes)

    set_progress(session, job_id, "training", 0.1)
    nan_policy = cast("NanPolicy", dataset.nan_policy)  # checked at upload
    fit = _fit(request, algorithm, params, nan_policy, parsed.X, y, classes, session, job)
    params = fit.params

    set_progress(session, job_id, "exporting", 0.6)
    model_bytes = export_onnx(fit.pipeline, fit.X_train.shape[1], request.task)
    onnx_out = run_onnx(onnx_session := session_for(model_bytes), fit.X_val, request.task)

    set_progress(session, job_id, "parity", 0.75)
    metrics, parity = _evaluate(
        settings, fit.pipeline, fit.X_val, fit.y_val, onnx_out, request.task, classes
    )

    set_progress(session, job_id, "signing", 0.9)
    inputs, outputs = describe(onnx_session)
    trained = Trained(
        model_bytes=model_bytes,
        inputs=inputs,
        outputs=outputs,
        task=request.task,
        classes=classes,
        features=parsed.features,
        nan_policy="impute" if nan_policy == "impute" else "reject",
        X_train=fit.X_train,
        X_check=fit.X_val,
        check_outputs=onnx_out,
    )
    lineage = _lineage(dataset, request, algorithm.name, params, fit, metrics, parity, job_id)
    if challenge is not None:
        set_progress(session, job_id, "challenge", 0.85)
        refused = challenge(model_bytes)
        if refused is not None:
            return refused
    return register_trained(
        settings, session, blobs, job, trained, lineage, algorithm.name, dataset.id
    )


@dataclass(frozen=True)
class _Fit:
    pipeline: Any
    params: dict[str, ParamValue]  # what it was fitted with (a search's best, if any)
    X_train: npt.NDArray[np.float32]
    X_val: npt.NDArray[np.float32]
    y_train: npt.NDArray[Any]
    y_val: npt.NDArray[Any]


def _fit(
    request: TrainRequest,
    algorithm: Algorithm,
    params: dict[str, ParamValue],
    nan_policy: NanPolicy,
    X: npt.NDArray[Any],
    y: npt.NDArray[Any],
    classes: list[str],
    session: Session,
    job: Job,
) -> _Fit:
    """Split off the validation rows and fit the pipeline on the rest (with a search's best
    parameters, its result kept on the job)."""
    X_train, X_val, y_train, y_val = split(
        X.astype(np.float32),
        y,
        task=request.task,
        fraction=request.validation_fraction,
        seed=request.seed,
    )
    if request.task == "classification" and len(np.unique(y_train)) != len(classes):
        raise JobFailedError(
            "every class needs rows in the training split; some class has too few rows"
        )
    if request.search is not None:
        assert job.id is not None
        job_id = job.id

        def progress(done: int, total: int) -> None:
            set_progress(session, job_id, f"search {done}/{total}", 0.1 + 0.4 * done / total)

        found = search(
            request.search, algorithm, params, nan_policy, request.seed, request.task,
            X_train, y_train, progress,
        )  # fmt: skip
        params = validate_params(algorithm, {**params, **found.best})
        job.result = found
        session.add(job)
        session.commit()
    pipeline = build_pipeline(algorithm, params, nan_policy, request.seed).fit(X_train, y_train)
    return _Fit(pipeline, params, X_train, X_val, y_train, y_val)


def _lineage(
    dataset: Dataset,
    request: TrainRequest,
    algorithm: str,
    params: dict[str, ParamValue],
    fit: _Fit,
    metrics: dict[str, float],
    parity: Parity,
    job_id: int,
) -> Lineage:
    """Where the version came from: dataset, algorithm and parameters, code and libraries."""
    return lineage_of(
        dataset,
        job_id,
        algorithm=algorithm,
        params=params,
        seed=request.seed,
        validation_fraction=request.validation_fraction,
        train_rows=int(fit.X_train.shape[0]),
        validation_rows=int(fit.X_val.shape[0]),
        metrics=metrics,
        parity=parity,
    )


def lineage_of(dataset: Dataset, job_id: int, **fields: Any) -> Lineage:
    """A lineage with the dataset, this code's and its libraries' versions and the job
    filled in; ``fields`` are the rest (how the model was made)."""
    assert dataset.id is not None
    return Lineage(
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        dataset_version=dataset.version,
        dataset_sha256=dataset.sha256,
        label_column=dataset.label_column,
        code_version=__version__,
        library_versions=library_versions(),
        job_id=job_id,
        **fields,
    )


def gate_parity(
    settings: ServerSettings,
    values: npt.ArrayLike,
    labels: npt.NDArray[np.int64] | None,
    onnx_out: Outputs,
    source: str = "sklearn",
) -> Parity:
    """The parity gate with the settings' tolerances: the source model's outputs against
    the ONNX conversion's on the same rows."""
    return check_parity(
        sk_values=values,
        onnx_values=onnx_out.values,
        sk_labels=labels,
        onnx_labels=onnx_out.labels,
        atol=settings.parity_atol,
        max_label_disagreement=settings.parity_max_label_disagreement,
        source=source,
    )


def encode_labels(
    parsed: ParsedDataset, task: Task, max_classes: int
) -> tuple[list[str], npt.NDArray[Any]]:
    """The label column as class indices (classification, with the class names) or
    numbers (regression)."""
    if task == "regression":
        if parsed.label_kind == "string":
            raise JobFailedError("regression needs a numeric label column")
        return [], np.asarray([float(v) for v in parsed.labels], dtype=np.float64)
    classes = parsed.classes or []
    if not 2 <= len(classes) <= max_classes:
        raise JobFailedError(
            f"classification needs 2 to {max_classes} classes; the "
            f"label has {len(set(parsed.labels))} distinct values"
        )
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.asarray([index[v] for v in parsed.labels], dtype=np.int64)


def _evaluate(
    settings: ServerSettings,
    pipeline: Any,
    X_val: npt.NDArray[np.float32],
    y_val: npt.NDArray[Any],
    onnx_out: Outputs,
    task: Task,
    classes: list[str],
) -> tuple[dict[str, float], Parity]:
    """Validation metrics of the fitted pipeline, and the parity gate: the export must give
    the pipeline's answers."""
    if task == "classification":
        sk_values = pipeline.predict_proba(X_val)
        sk_labels = pipeline.predict(X_val)
        metrics = classification_metrics(y_val, sk_labels, sk_values, len(classes))
    else:
        sk_values = pipeline.predict(X_val)
        sk_labels = None
        metrics = regression_metrics(y_val, sk_values)
    return metrics, gate_parity(settings, sk_values, sk_labels, onnx_out)


def register_trained(
    settings: ServerSettings,
    session: Session,
    blobs: BlobStore,
    job: Job,
    trained: Trained,
    lineage: Lineage,
    algorithm: str,
    dataset_id: int,
) -> int:
    """Sign the manifest and register the version; its number."""
    created_at = utc_seconds(datetime.now(UTC))

    def make_manifest(version: int) -> ModelManifest:
        return build_manifest(
            trained,
            name=job.model_name,
            version=version,
            lineage=lineage,
            created_at=created_at,
            reference_bins=settings.reference_bins,
            golden_count=settings.golden_vectors,
        )

    row = register_version(
        session,
        blobs,
        load_keys(settings.keys_dir).model,
        name=job.model_name,
        task=trained.task,
        model_bytes=trained.model_bytes,
        make_manifest=make_manifest,
        algorithm=algorithm,
        dataset_id=dataset_id,
        job_id=job.id,
    )
    return row.version


def check_features_match(session: Session, model_name: str, features: list[str]) -> None:
    """A model keeps one input interface across versions, so apps on devices keep working."""
    latest = latest_version(session, model_name)
    if latest is None:
        return
    current = ModelManifest.model_validate_json(latest.manifest).input.features
    if current != features:
        raise JobFailedError(
            f"model {model_name!r} takes features {current}; this dataset has {features}. "
            "Train under a new model name to change the inputs.",
            code="feature_mismatch",
        )
