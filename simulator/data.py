"""Synthetic tabular data: sensor readings of a machine → fault class, with noise.

Deterministic from a seed. ``shift`` moves feature means (in units of each feature's
standard deviation): covariate drift; ``drifted=True`` changes how a fault shows in the
readings: concept drift. ``model_window``: what a device reports for such rows.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shared.manifest import Reference
from shared.messages import FeatureWindow, ModelWindow
from shared.stats import bin_counts, latency_counts

FEATURES = ["temperature_c", "vibration_mm_s", "current_a", "pressure_bar", "rpm", "humidity_pct"]
CLASSES = ["normal", "overheating", "bearing_wear", "clogged_filter"]
_BASE_MEAN = np.array([60.0, 2.0, 12.0, 4.0, 1500.0, 45.0])
_BASE_STD = np.array([6.0, 0.6, 1.5, 0.4, 60.0, 10.0])
# Mean offset per class, in standard deviations of each feature.
_CLASS_OFFSET = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # normal
        [2.2, 0.3, 1.2, 0.0, -0.3, 0.0],  # overheating
        [0.6, 2.5, 0.4, 0.0, -0.8, 0.0],  # bearing_wear
        [0.5, 0.2, 0.8, -2.4, -0.4, 0.0],  # clogged_filter
    ]
)
_CLASS_WEIGHTS = np.array([0.55, 0.15, 0.15, 0.15])
# The world after the drift (at some sites): machines got a new cooling system and new
# bearings. An overheating machine barely runs hot any more, its coolant loop steams up
# instead (humidity); a worn bearing hardly vibrates but slows the spindle (rpm). A model
# trained before misses those faults; one trained on recent labelled rows learns both
# signatures.
_DRIFTED_OFFSET = _CLASS_OFFSET.copy()
_DRIFTED_OFFSET[1] = [0.2, 0.3, 1.2, 0.0, -0.3, 3.5]
_DRIFTED_OFFSET[2] = [0.6, 0.4, 0.4, 0.0, -3.0, 0.0]


def sensor_rows(
    n: int, seed: int, shift: npt.ArrayLike | None = None, *, drifted: bool = False
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """``n`` rows of (features, class index); ``drifted``: the world after the concept
    drift (see ``_DRIFTED_OFFSET``)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(CLASSES), size=n, p=_CLASS_WEIGHTS)
    offsets = _DRIFTED_OFFSET if drifted else _CLASS_OFFSET
    z = rng.normal(size=(n, len(FEATURES))) * 1.1 + offsets[y]
    if shift is not None:
        z = z + np.asarray(shift, dtype=np.float64)
    X = _BASE_MEAN + z * _BASE_STD
    return np.round(X, 3), y.astype(np.int64)


def sensor_csv(n: int, seed: int, shift: npt.ArrayLike | None = None) -> str:
    """A dataset CSV with a ``fault`` label column."""
    X, y = sensor_rows(n, seed, shift)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*FEATURES, "fault"])
    for row, label in zip(X, y, strict=True):
        writer.writerow([*(f"{v:.3f}" for v in row), CLASSES[label]])
    return buffer.getvalue()


def write_sensor_csv(path: Path, n: int, seed: int) -> Path:
    path.write_text(sensor_csv(n, seed))
    return path


def model_window(
    reference: Reference, X: npt.NDArray[np.float64], predicted: npt.NDArray[np.int64], seed: int
) -> ModelWindow:
    """What a device's WindowAccumulator reports for these rows (float32 inputs)."""
    X = X.astype(np.float32).astype(np.float64)
    features = []
    for j, ref in enumerate(reference.features):
        counted = bin_counts(X[:, j], ref.bin_edges)
        present = X[:, j][~np.isnan(X[:, j])]
        features.append(
            FeatureWindow(
                counts=[int(c) for c in counted.counts],
                below=counted.below,
                above=counted.above,
                missing=counted.missing,
                n=int(present.size),
                sum=float(present.sum()),
                sum_sq=float(np.square(present).sum()),
            )
        )
    latencies = np.random.default_rng(seed).lognormal(np.log(300.0), 0.4, size=X.shape[0])
    n_classes = len(reference.prediction.class_counts)
    return ModelWindow(
        name="fault",
        version=1,
        sha256="ab" * 32,
        requests=X.shape[0],
        errors=0,
        latency_counts=[int(c) for c in latency_counts(latencies)],
        features=features,
        predictions=[int(c) for c in np.bincount(predicted, minlength=n_classes)[:n_classes]],
    )
