"""Small valid objects for unit tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from shared.manifest import (
    FeatureReference,
    Golden,
    GoldenVector,
    InputSchema,
    Lineage,
    ModelManifest,
    OutputSchema,
    Parity,
    PredictionReference,
    Reference,
    TensorSpec,
)
from shared.signing import SigningKey
from simulator.data import FEATURES, sensor_rows


def make_manifest(
    key: SigningKey, *, sha256: str = "ab" * 32, size: int = 1234, version: int = 1
) -> ModelManifest:
    unsigned = ModelManifest(
        name="fault",
        version=version,
        sha256=sha256,
        size=size,
        opset={"": 17, "ai.onnx.ml": 3},
        input=InputSchema(
            tensor=TensorSpec(name="input", dtype="float32", shape=[None, 2]),
            features=["a", "b"],
            nan_policy="reject",
        ),
        output=OutputSchema(
            task="classification",
            outputs=[
                TensorSpec(name="label", dtype="int64", shape=[None]),
                TensorSpec(name="probabilities", dtype="float32", shape=[None, 2]),
            ],
            label_output="label",
            probabilities_output="probabilities",
            classes=["no", "yes"],
        ),
        reference=Reference(
            rows=10,
            features=[
                FeatureReference(
                    name=n,
                    bin_edges=[0.0, 0.5, 1.0],
                    counts=[5, 5],
                    below=0,
                    above=0,
                    missing=0,
                    mean=0.5,
                    variance=0.08,
                    min=0.0,
                    max=1.0,
                )
                for n in ("a", "b")
            ],
            prediction=PredictionReference(class_counts=[6, 4]),
        ),
        golden=Golden(
            atol=1e-4,
            vectors=[
                GoldenVector(input=[0.1, 0.30000001192092896], label=1, probabilities=[0.25, 0.75])
            ],
        ),
        created_at=datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC),
        lineage=Lineage(
            dataset_id=1,
            dataset_name="d",
            dataset_version=1,
            dataset_sha256="cd" * 32,
            label_column="y",
            algorithm="logreg",
            params={"C": 1.0, "max_iter": 100},
            seed=0,
            validation_fraction=0.2,
            train_rows=8,
            validation_rows=2,
            metrics={"accuracy": 0.9},
            parity=Parity(
                rows=2,
                max_abs_diff=1e-7,
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
    return unsigned.signed_with(key)


def trained_elsewhere(*, zipmap: bool = False, features: int = len(FEATURES)) -> bytes:
    """A classifier fitted and converted the way a notebook would: scikit-learn, skl2onnx."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = sensor_rows(400, seed=4)
    classifier = LogisticRegression()
    model = make_pipeline(StandardScaler(), classifier)
    model.fit(X[:, :features].astype(np.float32), y)
    proto = convert_sklearn(
        model,
        initial_types=[("x", FloatTensorType([None, features]))],
        options={id(classifier): {"zipmap": zipmap}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return proto.SerializeToString()  # type: ignore[no-any-return]
