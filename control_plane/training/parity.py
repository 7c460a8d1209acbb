"""Pure numeric checks and statistics for export: the parity gate, reference statistics and
golden vectors. numpy in, manifest parts out; no I/O."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from control_plane.errors import JobFailedError
from shared.manifest import FeatureReference, GoldenVector, Parity, PredictionReference
from shared.stats import bin_counts


def check_parity(
    *,
    sk_values: npt.ArrayLike,
    onnx_values: npt.ArrayLike,
    sk_labels: npt.NDArray[np.int64] | None,
    onnx_labels: npt.NDArray[np.int64] | None,
    atol: float,
    max_label_disagreement: float,
    source: str = "sklearn",
) -> Parity:
    """Compare scikit-learn and onnxruntime outputs on the same rows.

    ``*_values`` are probabilities (classification) or predicted values (regression).
    Raises ``JobFailedError`` when the largest difference exceeds ``atol`` or the share of
    rows with a different class exceeds ``max_label_disagreement``; returns the measurement.
    """
    sk = np.asarray(sk_values, dtype=np.float64)
    ox = np.asarray(onnx_values, dtype=np.float64).reshape(sk.shape)
    rows = int(sk.shape[0])
    if not np.all(np.isfinite(ox)):
        raise JobFailedError(
            "parity gate: onnxruntime returned NaN or infinite outputs", code="parity_failed"
        )
    max_diff = float(np.max(np.abs(sk - ox))) if sk.size else 0.0
    disagreements = 0
    if sk_labels is not None and onnx_labels is not None:
        disagreements = int(np.count_nonzero(np.asarray(sk_labels) != np.asarray(onnx_labels)))
    parity = Parity(
        rows=rows,
        max_abs_diff=max_diff,
        label_disagreements=disagreements,
        atol=atol,
        max_label_disagreement=max_label_disagreement,
    )
    if max_diff > atol:
        raise JobFailedError(
            f"parity gate: {source} and onnxruntime differ by {max_diff:.3g} "
            f"(tolerance {atol:g}) on {rows} validation rows; not registered",
            code="parity_failed",
        )
    if rows and disagreements / rows > max_label_disagreement:
        raise JobFailedError(
            f"parity gate: {disagreements} of {rows} validation rows get a "
            f"different class (allowed share {max_label_disagreement:g}); "
            "not registered",
            code="parity_failed",
        )
    return parity


def quantile_edges(column: npt.NDArray[np.float64], bins: int) -> list[float]:
    """Quantile bin edges over the non-missing values, strictly increasing, float32-exact
    (devices bin float32 inputs). A constant column gets one bin of width 1 around it."""
    present = column[~np.isnan(column)]
    if present.size == 0:
        return [-0.5, 0.5]
    edges = np.quantile(present, np.linspace(0.0, 1.0, bins + 1))
    unique = np.unique(edges.astype(np.float32)).astype(np.float64)
    if unique.size < 2:
        return [float(unique[0]) - 0.5, float(unique[0]) + 0.5]
    return [float(e) for e in unique]


def feature_references(
    X: npt.NDArray[np.float32], names: list[str], bins: int
) -> list[FeatureReference]:
    refs = []
    for j, name in enumerate(names):
        column = np.asarray(X[:, j], dtype=np.float64)
        edges = quantile_edges(column, bins)
        counted = bin_counts(column, edges)
        present = column[~np.isnan(column)]
        refs.append(
            FeatureReference(
                name=name,
                bin_edges=edges,
                counts=[int(c) for c in counted.counts],
                below=counted.below,
                above=counted.above,
                missing=counted.missing,
                mean=float(present.mean()) if present.size else 0.0,
                variance=float(present.var()) if present.size else 0.0,
                min=float(present.min()) if present.size else 0.0,
                max=float(present.max()) if present.size else 0.0,
            )
        )
    return refs


def prediction_reference_classes(
    labels: npt.NDArray[np.int64], n_classes: int
) -> PredictionReference:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    return PredictionReference(class_counts=[int(c) for c in counts])


def prediction_reference_values(values: npt.ArrayLike, bins: int) -> PredictionReference:
    column = np.asarray(values, dtype=np.float64).ravel()
    edges = quantile_edges(column, bins)
    return PredictionReference(
        bin_edges=edges, counts=[int(c) for c in bin_counts(column, edges).counts]
    )


def golden_vectors(
    X: npt.NDArray[np.float32],
    *,
    values: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64] | None,
    count: int,
) -> list[GoldenVector]:
    """The first ``count`` rows with the outputs the exported model gave for them:
    probabilities and class index (``labels`` given) or predicted values."""
    vectors = []
    for i in range(min(count, X.shape[0])):
        row: list[float | None] = [None if math.isnan(v) else float(v) for v in X[i]]
        if labels is not None:
            vectors.append(
                GoldenVector(
                    input=row,
                    label=int(labels[i]),
                    probabilities=[float(p) for p in values[i]],
                )
            )
        else:
            vectors.append(GoldenVector(input=row, value=float(values[i])))
    return vectors
