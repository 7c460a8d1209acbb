"""Telemetry windows: what one model version saw and did over a window, in mergeable counts.

The hot path only appends (rows, outputs, latency) under a lock; counting and binning run
in bulk when the buffer fills or the window closes, so a single-row prediction pays well
under a microsecond here, not a numpy call per feature.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.inference import Outputs
from shared.manifest import ModelManifest
from shared.messages import FeatureWindow, ModelWindow
from shared.stats import LATENCY_BUCKETS, bin_counts, latency_counts

FLUSH_ROWS = 4096


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0
    latency: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(LATENCY_BUCKETS, dtype=np.int64)
    )
    features: list[list[int]] = field(default_factory=list)  # per feature: bins..., below,
    n: list[int] = field(default_factory=list)  # above, missing
    sums: list[float] = field(default_factory=list)
    sums_sq: list[float] = field(default_factory=list)
    predictions: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class WindowAccumulator:
    """Counts for one model version; thread-safe (HTTP threads and the event loop record)."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self._lock = threading.Lock()
        self._rows: list[npt.NDArray[np.float32]] = []
        self._predicted: list[npt.NDArray[np.float32] | npt.NDArray[np.int64]] = []
        self._latencies: list[float] = []  # µs, one per request
        self._buffered = 0
        self._counts = self._empty()

    def _empty(self) -> _Counts:
        refs = self.manifest.reference.features
        n_pred = (
            len(self.manifest.output.classes)
            if self.manifest.output.task == "classification"
            else len(self.manifest.reference.prediction.counts)
        )
        return _Counts(
            features=[[0] * (len(r.counts) + 3) for r in refs],
            n=[0] * len(refs),
            sums=[0.0] * len(refs),
            sums_sq=[0.0] * len(refs),
            predictions=np.zeros(n_pred, dtype=np.int64),
        )

    def record(self, X: npt.NDArray[np.float32], outputs: Outputs, latency_us: float) -> None:
        """One request's rows, outputs and latency (kept, not copied: neither may change)."""
        predicted = outputs.labels if outputs.labels is not None else outputs.values
        with self._lock:
            self._rows.append(X)
            self._predicted.append(predicted)
            self._latencies.append(latency_us)
            self._buffered += len(X)
            if self._buffered >= FLUSH_ROWS:
                self._flush()

    def record_error(self, rows: int = 1) -> None:
        with self._lock:
            self._counts.requests += rows
            self._counts.errors += rows

    def _flush(self) -> None:
        if not self._rows:
            return
        X = np.concatenate(self._rows).astype(np.float64)
        predicted = np.concatenate(self._predicted).astype(np.float64)
        c = self._counts
        c.requests += len(X)
        c.latency += latency_counts(self._latencies)
        self._rows, self._predicted, self._latencies, self._buffered = [], [], [], 0
        for j, ref in enumerate(self.manifest.reference.features):
            counted = bin_counts(X[:, j], ref.bin_edges)
            bins = c.features[j]
            for k, value in enumerate(counted.counts):
                bins[k] += int(value)
            bins[-3] += counted.below
            bins[-2] += counted.above
            bins[-1] += counted.missing
            present = X[:, j][~np.isnan(X[:, j])]
            c.n[j] += int(present.size)
            c.sums[j] += float(present.sum())
            c.sums_sq[j] += float(np.square(present).sum())
        if self.manifest.output.task == "classification":
            c.predictions += np.bincount(predicted.astype(np.int64), minlength=len(c.predictions))[
                : len(c.predictions)
            ]
        else:
            edges = self.manifest.reference.prediction.bin_edges
            c.predictions += bin_counts(predicted, edges).counts

    def close(self) -> ModelWindow | None:
        """The window so far (None when nothing happened), and start a new one."""
        with self._lock:
            self._flush()
            c, self._counts = self._counts, self._empty()
        if c.requests == 0:
            return None
        return ModelWindow(
            name=self.manifest.name,
            version=self.manifest.version,
            sha256=self.manifest.sha256,
            requests=c.requests,
            errors=c.errors,
            latency_counts=[int(v) for v in c.latency],
            features=[
                FeatureWindow(
                    counts=bins[:-3],
                    below=bins[-3],
                    above=bins[-2],
                    missing=bins[-1],
                    n=c.n[j],
                    sum=c.sums[j],
                    sum_sq=c.sums_sq[j],
                )
                for j, bins in enumerate(c.features)
            ],
            predictions=[int(v) for v in c.predictions],
        )
