"""Real signed models for agent tests, made the way the control plane makes them
(same pipelines, export, golden vectors and reference statistics), without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from agent.inference import describe, session_for
from control_plane.training.algorithms import ALGORITHMS, build_pipeline
from control_plane.training.conversion import export_onnx, run_onnx
from control_plane.training.manifest import Trained, build_manifest
from shared.manifest import Lineage, ModelManifest, Parity
from shared.signing import SigningKey
from simulator.data import CLASSES, FEATURES, sensor_rows


def make_model(
    key: SigningKey,
    *,
    name: str = "fault",
    version: int = 1,
    algorithm: str = "logreg",
    rows: int = 300,
    seed: int = 0,
    params: dict[str, int | float | str | bool | None] | None = None,
) -> tuple[ModelManifest, bytes]:
    """A trained, exported classifier of the sensor task and its signed manifest."""
    X64, y = sensor_rows(rows, seed)
    X = X64.astype(np.float32)
    spec = ALGORITHMS[("classification", algorithm)]
    pipeline = build_pipeline(spec, {**spec.defaults, **(params or {})}, "reject", seed)
    pipeline.fit(X, y)
    model_bytes = export_onnx(pipeline, X.shape[1], "classification")
    session = session_for(model_bytes)
    inputs, outputs = describe(session)
    trained = Trained(
        model_bytes=model_bytes,
        inputs=inputs,
        outputs=outputs,
        task="classification",
        classes=CLASSES,
        features=FEATURES,
        nan_policy="reject",
        X_train=X,
        X_check=X[:50],
        check_outputs=run_onnx(session, X[:50], "classification"),
    )
    manifest = build_manifest(
        trained,
        name=name,
        version=version,
        lineage=Lineage(
            dataset_id=1,
            dataset_name="sensors",
            dataset_version=1,
            dataset_sha256="0" * 64,
            label_column="fault",
            algorithm=algorithm,
            params={},
            seed=seed,
            validation_fraction=0.2,
            train_rows=rows,
            validation_rows=0,
            metrics={},
            parity=Parity(
                rows=0,
                max_abs_diff=0.0,
                label_disagreements=0,
                atol=1e-4,
                max_label_disagreement=0.001,
            ),
            code_version="test",
            library_versions={},
            job_id=1,
        ),
        created_at=datetime(2026, 11, 22, tzinfo=UTC),
        reference_bins=10,
        golden_count=4,
    )
    return manifest.signed_with(key), model_bytes
