"""Two versions of a model side by side: metrics on one holdout, size, latency on this
machine (onnxruntime, as devices run it), lineage."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlmodel import Session

from agent.inference import session_for
from control_plane.api.schemas import ComparedVersion, Comparison, Holdout
from control_plane.errors import InvalidInputError
from control_plane.store.blobs import BlobStore
from control_plane.store.tables import Dataset, ModelVersion
from control_plane.training.algorithms import classification_metrics, regression_metrics, split
from control_plane.training.conversion import run_onnx
from control_plane.training.supply_chain import encode_labels, load_dataset
from shared.manifest import Lineage, ModelManifest

LATENCY_RUNS = {1: 200, 64: 50}  # rows → timed runs (after as many warm-up runs)


def compare(
    session: Session, blobs: BlobStore, a: ModelVersion, b: ModelVersion, max_classes: int
) -> Comparison:
    """Both on the holdout of the newer one: its validation rows when it was trained here
    (the rows it never saw), else its whole reference dataset."""
    newer = max(a, b, key=lambda v: v.version)
    manifests = {v.version: ModelManifest.model_validate_json(v.manifest) for v in (a, b)}
    if manifests[a.version].input.features != manifests[b.version].input.features:
        raise InvalidInputError("the two versions take different features", loc=("query",))
    lineage = manifests[newer.version].lineage
    dataset = session.get(Dataset, lineage.dataset_id)
    if dataset is None:
        raise InvalidInputError(f"dataset {lineage.dataset_id} is gone", loc=("query",))
    parsed = load_dataset(blobs, dataset)
    _, y = encode_labels(parsed, manifests[newer.version].output.task, max_classes)
    X = parsed.X.astype(np.float32)
    task = manifests[newer.version].output.task
    if lineage.source is None:  # trained here: its own validation split
        _, X, _, y = split(X, y, task=task, fraction=lineage.validation_fraction, seed=lineage.seed)
    complete = ~np.isnan(X).any(axis=1)
    X, y = X[complete], y[complete]
    holdout = Holdout(
        dataset_id=dataset.id or 0,
        rows=len(X),
        of_version=newer.version,
        unseen_by_both=all(_unseen(manifests[v.version].lineage, lineage) for v in (a, b)),
    )
    return Comparison(
        holdout=holdout,
        a=_figures(blobs, a, manifests[a.version], X, y),
        b=_figures(blobs, b, manifests[b.version], X, y),
    )


def _unseen(lineage: Lineage, holdout: Lineage) -> bool:
    """The holdout rows were not trained on: a version trained here on the same dataset
    with the same split, or the version the holdout belongs to."""
    return lineage.source is None and (
        lineage.dataset_sha256,
        lineage.seed,
        lineage.validation_fraction,
    ) == (holdout.dataset_sha256, holdout.seed, holdout.validation_fraction)


def _figures(
    blobs: BlobStore,
    row: ModelVersion,
    manifest: ModelManifest,
    X: npt.NDArray[np.float32],
    y: npt.NDArray[Any],
) -> ComparedVersion:
    session = session_for(blobs.read_bytes(row.sha256))
    task = manifest.output.task
    out = run_onnx(session, X, task)
    if task == "classification":
        assert out.labels is not None
        metrics = classification_metrics(
            y, out.labels, out.values.astype(np.float64), len(manifest.output.classes)
        )
    else:
        metrics = regression_metrics(y, out.values.astype(np.float64))
    return ComparedVersion(
        version=row.version,
        algorithm=row.algorithm,
        size=row.size,
        metrics=metrics,
        latency_us={str(n): _median_us(session, manifest, X, n) for n in LATENCY_RUNS},
        lineage=manifest.lineage,
    )


def _median_us(
    session: Any, manifest: ModelManifest, X: npt.NDArray[np.float32], rows: int
) -> float:
    """Median µs of ``session.run`` on ``rows`` rows (one intra-op thread, as on devices)."""
    batch = np.ascontiguousarray(np.resize(X, (rows, X.shape[1])), dtype=np.float32)
    feed = {manifest.input.tensor.name: batch}
    runs = LATENCY_RUNS[rows]
    for _ in range(runs):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return float(np.median(samples))
