"""Assembling a version's manifest from what training produced (pure: arrays and specs in,
an unsigned ``ModelManifest`` out), so that training, retraining, tests and benchmarks
describe a model the same way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from agent.inference import Outputs
from control_plane.training.conversion import opset_of, output_schema
from control_plane.training.parity import (
    feature_references,
    golden_vectors,
    prediction_reference_classes,
    prediction_reference_values,
)
from shared.hashing import sha256_bytes
from shared.manifest import (
    Golden,
    InputSchema,
    Lineage,
    ModelManifest,
    NanPolicy,
    Reference,
    Task,
    TensorSpec,
)

GOLDEN_ATOL = 1e-4  # same reasoning as the parity tolerance: float32 noise is ~1e-7


@dataclass(frozen=True)
class Trained:
    """An exported model and the rows it was trained and checked on."""

    model_bytes: bytes
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    task: Task
    classes: list[str]
    features: list[str]
    nan_policy: NanPolicy
    X_train: npt.NDArray[np.float32]
    X_check: npt.NDArray[np.float32]  # rows the export ran on: golden vectors come from them
    check_outputs: Outputs  # the export's outputs on ``X_check``


def build_manifest(
    trained: Trained,
    *,
    name: str,
    version: int,
    lineage: Lineage,
    created_at: datetime,
    reference_bins: int,
    golden_count: int,
) -> ModelManifest:
    """The unsigned manifest: schemas, reference statistics (features over the training
    rows, predictions over the checked rows) and golden vectors."""
    out = trained.check_outputs
    if out.labels is not None:
        prediction = prediction_reference_classes(out.labels, len(trained.classes))
    else:
        prediction = prediction_reference_values(out.values, reference_bins)
    return ModelManifest(
        name=name,
        version=version,
        sha256=sha256_bytes(trained.model_bytes),
        size=len(trained.model_bytes),
        opset=opset_of(trained.model_bytes),
        input=InputSchema(
            tensor=trained.inputs[0], features=trained.features, nan_policy=trained.nan_policy
        ),
        output=output_schema(trained.task, trained.outputs, trained.classes),
        reference=Reference(
            rows=int(trained.X_train.shape[0]),
            features=feature_references(trained.X_train, trained.features, reference_bins),
            prediction=prediction,
        ),
        golden=Golden(
            atol=GOLDEN_ATOL,
            vectors=golden_vectors(
                trained.X_check, values=out.values, labels=out.labels, count=golden_count
            ),
        ),
        created_at=created_at,
        lineage=lineage,
        key_id="",
        signature="",
    )
