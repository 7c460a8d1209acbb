"""The signed model manifest: everything a device needs to trust, load, check and watch a model.

Signed by the model-signing (registry) key over ``canonical_json`` of every field except
``signature`` (``key_id`` included, so a signature cannot be re-attributed).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, Field, model_validator

from shared.wire import SCHEMA_VERSION, SignedDocument, WireModel

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
Task = Literal["classification", "regression"]
NanPolicy = Literal["reject", "drop", "impute"]
ParamValue = int | float | str | bool | None


def _check_model_name(value: str) -> str:
    if not MODEL_NAME_RE.fullmatch(value):
        raise ValueError("model names match ^[a-z0-9][a-z0-9_-]{0,63}$")
    return value


def _check_sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return value


ModelName = Annotated[str, AfterValidator(_check_model_name)]
Sha256Hex = Annotated[str, AfterValidator(_check_sha256)]


class TensorSpec(WireModel):
    """One ONNX input or output tensor."""

    name: str = Field(description="Tensor name in the ONNX graph.")
    dtype: Literal["float32", "float64", "int64", "string"] = Field(description="Element type.")
    shape: list[int | None] = Field(description="Shape; `null` marks the batch dimension.")


class InputSchema(WireModel):
    """The single float32 input tensor and the features it holds, in column order."""

    tensor: TensorSpec = Field(description="The ONNX input tensor.")
    features: list[str] = Field(min_length=1, description="Feature names, in column order.")
    nan_policy: NanPolicy = Field(
        description="`impute`: NaN (missing) inputs are accepted and imputed by the model; "
        "otherwise a request with a missing feature is refused."
    )


class OutputSchema(WireModel):
    """What the model returns."""

    task: Task = Field(description="`classification` or `regression`.")
    outputs: list[TensorSpec] = Field(description="All ONNX outputs, in graph order.")
    label_output: str | None = Field(
        default=None, description="Classification: int64 output holding class indices."
    )
    probabilities_output: str | None = Field(
        default=None, description="Classification: float32 [batch, n_classes] probabilities."
    )
    value_output: str | None = Field(
        default=None, description="Regression: float32 [batch, 1] predicted values."
    )
    classes: list[str] = Field(
        default_factory=list,
        description="Classification: class names; index i of a label or probability row is "
        "classes[i].",
    )


class FeatureReference(WireModel):
    """Reference distribution of one feature on the training rows (telemetry bins over these)."""

    name: str = Field(description="Feature name.")
    bin_edges: list[float] = Field(
        min_length=2,
        description="Increasing edges; bin i is [edges[i], edges[i+1]), the last bin closed. "
        "Values below the first or above the last edge count as out of range.",
    )
    counts: list[int] = Field(description="Training rows per bin (len(bin_edges) - 1 entries).")
    below: int = Field(ge=0, description="Rows below the first edge (0 on training data).")
    above: int = Field(ge=0, description="Rows above the last edge (0 on training data).")
    missing: int = Field(ge=0, description="Rows where the feature was missing (NaN).")
    mean: float = Field(description="Mean over non-missing training rows.")
    variance: float = Field(ge=0, description="Variance over non-missing training rows.")
    min: float = Field(description="Smallest training value.")
    max: float = Field(description="Largest training value.")

    @model_validator(mode="after")
    def _shape(self) -> FeatureReference:
        if len(self.counts) != len(self.bin_edges) - 1:
            raise ValueError("counts must have len(bin_edges) - 1 entries")
        if any(b <= a for a, b in zip(self.bin_edges, self.bin_edges[1:], strict=False)):
            raise ValueError("bin_edges must be strictly increasing")
        return self


class PredictionReference(WireModel):
    """Reference distribution of the model's predictions on the validation rows."""

    class_counts: list[int] = Field(
        default_factory=list, description="Classification: predicted rows per class index."
    )
    bin_edges: list[float] = Field(
        default_factory=list, description="Regression: edges over predicted values."
    )
    counts: list[int] = Field(default_factory=list, description="Regression: rows per bin.")


class Reference(WireModel):
    """Reference statistics for drift detection."""

    rows: int = Field(ge=1, description="Training rows the feature statistics come from.")
    features: list[FeatureReference] = Field(description="One entry per feature, in input order.")
    prediction: PredictionReference = Field(
        description="Distribution of predictions on the validation rows."
    )


class GoldenVector(WireModel):
    """An input row and the outputs the exported model gave for it on the control plane."""

    input: list[float | None] = Field(description="Feature values; `null` is a missing value.")
    label: int | None = Field(default=None, description="Classification: class index.")
    probabilities: list[float] | None = Field(default=None, description="Classification.")
    value: float | None = Field(default=None, description="Regression: predicted value.")


class Golden(WireModel):
    """Golden vectors a device reproduces before it activates the model."""

    atol: float = Field(gt=0, description="Absolute tolerance on probabilities and values.")
    vectors: list[GoldenVector] = Field(
        min_length=1, description="Input rows with their expected outputs."
    )


class Parity(WireModel):
    """The parity gate's measurement: scikit-learn vs onnxruntime on the validation rows."""

    rows: int = Field(description="Validation rows compared.")
    max_abs_diff: float = Field(description="Largest |sklearn − onnx| over probabilities/values.")
    label_disagreements: int = Field(description="Rows whose predicted class differs.")
    atol: float = Field(description="Tolerance the gate applied to max_abs_diff.")
    max_label_disagreement: float = Field(
        description="Largest share of disagreeing labels allowed."
    )


class ImportSource(WireModel):
    """A model trained elsewhere and imported: what was uploaded (or pulled) and how."""

    format: Literal["onnx", "sklearn", "xgboost", "lightgbm"] = Field(
        description="Format of what was imported (sklearn: a skops file; xgboost, "
        "lightgbm: their own model files)."
    )
    sha256: Sha256Hex = Field(description="sha256 of the file as uploaded.")
    filename: str | None = Field(
        default=None, max_length=255, description="The uploaded file's name, as given."
    )
    uri: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        max_length=512,
        description="Where it was pulled from (an MLflow model URI); absent for an upload.",
    )


class Lineage(WireModel):
    """Where the model came from, so training can be reproduced and audited. An imported
    model's ``source`` says what was imported; its metrics are measured on the reference
    dataset, and its parity rows are 0 when there was no source model to compare with."""

    dataset_id: int = Field(description="Dataset id.")
    dataset_name: str = Field(description="Dataset name.")
    dataset_version: int = Field(description="Dataset version.")
    dataset_sha256: Sha256Hex = Field(description="sha256 of the dataset CSV.")
    label_column: str = Field(description="Label column.")
    algorithm: str = Field(description="Training algorithm.")
    params: dict[str, ParamValue] = Field(description="Algorithm parameters, defaults included.")
    seed: int = Field(description="Seed of the split and the model.")
    validation_fraction: float = Field(description="Share of rows held out.")
    train_rows: int = Field(description="Rows trained on.")
    validation_rows: int = Field(description="Rows validated on.")
    metrics: dict[str, float] = Field(description="Validation metrics (scikit-learn model).")
    parity: Parity = Field(description="The parity gate's measurement.")
    code_version: str = Field(description="edgefleet version that trained and exported it.")
    library_versions: dict[str, str] = Field(description="scikit-learn, skl2onnx, onnx, ...")
    job_id: int = Field(description="Training (or import) job id.")
    # Absent, not null, for a model trained here: its manifest reads (and its signature
    # covers) the same bytes as before imports existed, and agents that predate them still
    # accept it.
    source: ImportSource | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Imported models: what was imported (absent: trained here).",
    )


class ModelManifest(SignedDocument):
    """A model version as devices see it. Signed by the model-signing key."""

    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Manifest format version."
    )
    name: ModelName = Field(description="Model name.")
    version: int = Field(ge=1, description="Version number, monotonic per model.")
    format: Literal["onnx"] = Field(default="onnx", description="Artifact format.")
    sha256: Sha256Hex = Field(description="sha256 of the ONNX file.")
    size: int = Field(ge=1, description="Size of the ONNX file in bytes.")
    opset: dict[str, int] = Field(description="ONNX opset per domain ('' is the default domain).")
    input: InputSchema = Field(description="Input tensor and features.")
    output: OutputSchema = Field(description="Outputs and classes.")
    reference: Reference = Field(
        description="Feature and prediction distributions of the training data (drift baseline)."
    )
    golden: Golden = Field(description="Golden vectors to reproduce before activation.")
    created_at: AwareDatetime = Field(description="Registration time (UTC, whole seconds).")
    lineage: Lineage = Field(description="Training lineage.")


def utc_seconds(moment: datetime) -> datetime:
    """Timestamps in signed documents carry whole seconds, so their JSON form is short."""
    return moment.replace(microsecond=0)
