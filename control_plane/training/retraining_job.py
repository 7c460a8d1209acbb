"""The retraining job (runs in a training worker process like any training job):

recent labelled rows (sampled rows from devices joined with feedback labels) are split into
a training part and a holdout; the challenger trains on the training part plus a sample of
the champion's training data, stored first as a new dataset version (``{model}-retrain``) so
its lineage is as complete as any other version's; champion and challenger are then both
run with onnxruntime — as on devices — on the same holdout, and the challenger is
registered and signed only when it beats the champion by the policy's margin.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlmodel import Session, col, select

from agent.inference import session_for
from control_plane.api.schemas import RetrainRequest, TrainRequest
from control_plane.audit.record import record_event
from control_plane.audit.types import ChallengeData, EventType
from control_plane.config import ServerSettings
from control_plane.errors import JobFailedError
from control_plane.monitoring import release
from control_plane.monitoring.monitor import labelled_since
from control_plane.monitoring.policy import RetrainPolicy, compare, metric_for
from control_plane.registry.datasets import DatasetLimits, parse_csv, store_dataset
from control_plane.registry.versions import resolve_version
from control_plane.store.blobs import BlobStore
from control_plane.store.tables import (
    Dataset,
    Feedback,
    Job,
    ModelVersion,
    SampleRowRecord,
    utcnow,
)
from control_plane.training.conversion import run_onnx
from control_plane.training.supply_chain import (
    Refused,
    load_dataset,
    set_progress,
    train_version,
)
from shared.hashing import sha256_bytes
from shared.manifest import ModelManifest, Task


def recent_labelled(
    session: Session, model: str, since: Any, limit: int
) -> list[tuple[SampleRowRecord, Feedback]]:
    """Sampled rows of ``model`` received since ``since`` that have a label, newest first."""
    rows = session.exec(
        labelled_since(select(SampleRowRecord, Feedback), model, since)
        .order_by(col(SampleRowRecord.received_at).desc())
        .limit(limit)
    ).all()
    return [(s, f) for s, f in rows]


def score(
    model_bytes: bytes, X: npt.NDArray[np.float32], y: npt.NDArray[Any], task: Task, metric: str
) -> float:
    """``metric`` of a model on labelled rows, run by onnxruntime."""
    out = run_onnx(session_for(model_bytes), X, task)
    if metric == "accuracy":
        assert out.labels is not None
        return float(np.mean(out.labels == y))
    if metric == "f1_macro":
        from sklearn.metrics import f1_score

        assert out.labels is not None
        return float(f1_score(y, out.labels, average="macro"))
    error = out.values.astype(np.float64) - y.astype(np.float64)
    return float(np.sqrt(np.mean(error**2)) if metric == "rmse" else np.mean(np.abs(error)))


def _csv(features: list[str], label: str, X: npt.NDArray[np.float32], labels: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*features, label])
    for row, value in zip(X.tolist(), labels, strict=True):
        writer.writerow(["" if math.isnan(v) else repr(v) for v in row] + [value])
    return buffer.getvalue().encode("utf-8")


@dataclass
class _Retraining:
    """One retraining job's inputs, read once."""

    session: Session
    job: Job
    request: RetrainRequest
    champion: ModelVersion
    manifest: ModelManifest
    blobs: BlobStore

    @property
    def policy(self) -> RetrainPolicy:
        return self.request.policy

    def refuse(self, reason: str, result: ChallengeData, message: str) -> Refused:
        """Record the refusal: the job ends ``refused``, nothing registered."""
        record_event(
            self.session,
            EventType.CHALLENGER_REFUSED,
            f"{self.job.model_name}: {message}",
            data=result,
            model_name=self.job.model_name,
            version=self.champion.version,
            job_id=self.job.id,
            cause_id=self.request.trigger_event_id,
        )
        self.session.commit()
        return Refused(reason)


def retrain(settings: ServerSettings, session: Session, job: Job) -> int | Refused:
    assert job.id is not None
    request = RetrainRequest.model_validate(job.request)
    champion = resolve_version(session, job.model_name, str(request.champion_version))
    run = _Retraining(
        session,
        job,
        request,
        champion,
        ModelManifest.model_validate_json(champion.manifest),
        BlobStore(settings.blobs_dir),
    )
    set_progress(session, job.id, "collecting", 0.02)
    recent = _recent_rows(run)
    if isinstance(recent, Refused):
        return recent
    X_recent, y_recent = recent
    rng = np.random.default_rng(run.policy.seed)
    order = rng.permutation(len(y_recent))
    n_holdout = max(1, round(len(y_recent) * run.policy.holdout_fraction))
    hold, fit = order[:n_holdout], order[n_holdout:]
    training = _training_dataset(run, X_recent[fit], y_recent[fit], rng)
    if isinstance(training, Refused):
        return training
    dataset, reference_rows = training
    outcome: list[ChallengeData] = []  # what the challenge found, once it ran
    challenge = _challenge(
        run,
        X_recent[hold],
        y_recent[hold],
        ChallengeData(
            decision="refused",
            holdout_rows=len(hold),
            recent_training_rows=len(fit),
            reference_rows=reference_rows,
            dataset_id=dataset.id,
        ),
        outcome,
    )
    version = train_version(settings, session, job, _train_request(run, dataset), challenge)
    if isinstance(version, Refused):
        return version
    (result,) = outcome
    _release(run, version, result)
    return version


def _train_request(run: _Retraining, dataset: Dataset) -> TrainRequest:
    """Train the challenger as the champion was, on the dataset built for it (the policy
    may name another algorithm or parameters)."""
    assert dataset.id is not None
    policy, manifest = run.policy, run.manifest
    return TrainRequest(
        dataset_id=dataset.id,
        task=manifest.output.task,
        algorithm=policy.algorithm or run.champion.algorithm,
        params=policy.params if policy.params is not None else manifest.lineage.params,
        seed=policy.seed,
        validation_fraction=manifest.lineage.validation_fraction,
    )


def _release(run: _Retraining, version: int, result: ChallengeData) -> None:
    """The registered challenger waits for approval or for its rollout, as the policy says."""
    session, job, auto_rollout = run.session, run.job, run.policy.auto_rollout
    row = resolve_version(session, job.model_name, str(version))
    row.release = release.registered(auto_rollout)
    session.add(row)
    record_event(
        session,
        EventType.CHALLENGER_REGISTERED,
        f"{job.model_name} v{version} registered: {result.reason}; "
        + ("rolling out next" if auto_rollout else "awaiting approval"),
        data=result,
        model_name=job.model_name,
        version=version,
        job_id=job.id,
        cause_id=run.request.trigger_event_id,
    )
    session.commit()


def _recent_rows(
    run: _Retraining,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]] | Refused:
    """Recent labelled rows that fit the champion's inputs (and classes); too few end the
    job with a refusal."""
    policy, output = run.policy, run.manifest.output
    task, classes, features = output.task, output.classes, run.manifest.input.features
    since = run.request.since or utcnow() - timedelta(seconds=policy.recent_seconds)
    pairs = recent_labelled(run.session, run.job.model_name, since, policy.max_recent_rows)
    usable = [
        (s, f)
        for s, f in pairs
        if len(s.features) == len(features)
        and (task != "classification" or (0 <= f.label < len(classes) and f.label.is_integer()))
    ]
    if len(usable) < policy.min_labelled_rows:
        reason = (
            f"{len(usable)} recent labelled rows, {policy.min_labelled_rows} needed; "
            "nothing trained"
        )
        return run.refuse(
            reason, ChallengeData(decision="insufficient_data", labelled_rows=len(usable)), reason
        )
    X = np.array(
        [[math.nan if v is None else v for v in s.features] for s, _ in usable], dtype=np.float32
    )
    return X, np.array([f.label for _, f in usable], dtype=np.float64)


def _training_dataset(
    run: _Retraining,
    X_fit: npt.NDArray[np.float32],
    y_fit: npt.NDArray[np.float64],
    rng: np.random.Generator,
) -> tuple[Dataset, int] | Refused:
    """The challenger's training rows (recent ones plus a sample of the champion's training
    data), stored as a new dataset version so its lineage is complete; and how many came
    from the champion's data."""
    policy, output = run.policy, run.manifest.output
    task, classes = output.task, output.classes
    reference = run.session.get(Dataset, run.champion.dataset_id)
    if reference is None:
        raise JobFailedError(f"the champion's dataset {run.champion.dataset_id} is gone")
    X_parts, label_parts = [X_fit], [_label_texts(y_fit, classes)]
    reference_rows = 0
    if policy.max_reference_rows:
        parsed = load_dataset(run.blobs, reference)
        keep = [i for i, v in enumerate(parsed.labels) if task != "classification" or v in classes]
        if len(keep) > policy.max_reference_rows:
            keep = sorted(rng.choice(keep, policy.max_reference_rows, replace=False).tolist())
        X_parts.append(parsed.X[keep].astype(np.float32))
        label_parts.append([parsed.labels[i] for i in keep])
        reference_rows = len(keep)
    if task == "classification":
        missing = set(classes) - {v for part in label_parts for v in part}
        if missing:
            return Refused(
                f"the training data has no rows of class(es) {sorted(missing)}; a challenger "
                "must know every class of the champion (raise max_reference_rows)"
            )
    features, label = run.manifest.input.features, reference.label_column
    data = _csv(features, label, np.concatenate(X_parts), [v for p in label_parts for v in p])
    nan_policy: Any = reference.nan_policy
    dataset, _ = store_dataset(
        run.session,
        run.blobs,
        name=f"{run.job.model_name}-retrain",
        label=label,
        nan_policy=nan_policy,
        data=data,
        parsed=parse_csv(
            data,
            label=label,
            nan_policy=nan_policy,
            limits=DatasetLimits(max_rows=10**9, max_columns=10**6, min_rows=2),
        ),
    )
    return dataset, reference_rows


def _challenge(
    run: _Retraining,
    X_hold: npt.NDArray[np.float32],
    y_hold: npt.NDArray[np.float64],
    evidence: ChallengeData,
    outcome: list[ChallengeData],
) -> Callable[[bytes], Refused | None]:
    """The check the exported challenger must pass before it is registered: beat the
    champion on the holdout, both run by onnxruntime. Its result goes to the job, to
    ``outcome`` and, for a refusal, to the audit log."""
    champion = run.champion
    champion_bytes = run.blobs.read_bytes(champion.sha256)
    if sha256_bytes(champion_bytes) != champion.sha256:
        raise JobFailedError(f"the champion's stored artifact {champion.sha256[:12]} is corrupt")
    task = run.manifest.output.task
    metric = metric_for(run.policy, task)
    labels: npt.NDArray[Any] = y_hold.astype(np.int64) if task == "classification" else y_hold

    def challenge(model_bytes: bytes) -> Refused | None:
        comparison = compare(
            metric,
            champion=score(champion_bytes, X_hold, labels, task, metric),
            challenger=score(model_bytes, X_hold, labels, task, metric),
            margin=run.policy.min_improvement,
        )
        result = evidence.model_copy(
            update={
                "decision": "registered" if comparison.better else "refused",
                "reason": comparison.describe(),
                "metric": metric,
                "champion_version": champion.version,
                "champion": comparison.champion,
                "challenger": comparison.challenger,
                "required": comparison.required,
            }
        )
        outcome.append(result)
        run.job.result = result
        run.session.add(run.job)
        if not comparison.better:
            return run.refuse(
                comparison.describe(), result, f"{comparison.describe()}; nothing registered"
            )
        run.session.commit()
        return None

    return challenge


def _label_texts(y: npt.NDArray[np.float64], classes: list[str]) -> list[str]:
    if classes:
        return [classes[int(v)] for v in y]
    return [repr(float(v)) for v in y]
