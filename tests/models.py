"""Real signed models for agent tests, made the way the control plane makes them
(same pipelines, export, golden vectors and reference statistics), without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from agent.inference import describe, session_for
from control_plane.training.algorithms import ALGORITHMS, build_pipeline
from control_plane.training.conversion import export_onnx, opset_of, run_onnx
from control_plane.training.parity import (
    feature_references,
    golden_vectors,
    prediction_reference_classes,
)
from shared.hashing import sha256_bytes
from shared.manifest import (
    Golden,
    InputSchema,
    Lineage,
    ModelManifest,
    OutputSchema,
    Parity,
    Reference,
)
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
    outputs = run_onnx(session, X[:50], "classification")
    assert outputs.labels is not None
    inputs, output_specs = describe(session)
    manifest = ModelManifest(
        name=name,
        version=version,
        sha256=sha256_bytes(model_bytes),
        size=len(model_bytes),
        opset=opset_of(model_bytes),
        input=InputSchema(tensor=inputs[0], features=FEATURES, nan_policy="reject"),
        output=OutputSchema(
            task="classification",
            outputs=output_specs,
            classes=CLASSES,
            label_output="label",
            probabilities_output="probabilities",
        ),
        reference=Reference(
            rows=rows,
            features=feature_references(X, FEATURES, 10),
            prediction=prediction_reference_classes(outputs.labels, len(CLASSES)),
        ),
        golden=Golden(
            atol=1e-4,
            vectors=golden_vectors(X, values=outputs.values, labels=outputs.labels, count=4),
        ),
        created_at=datetime(2026, 11, 22, tzinfo=UTC),
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
        key_id="",
        signature="",
    )
    return manifest.signed_with(key), model_bytes
