"""Telemetry windows as numbers (pure): how one model's part of a window is stored, read
back exactly, and added up over many windows without building a pydantic model per window.

One ``ModelWindow`` is three byte strings, in the layout ``merge_windows`` sums:

- ``shape``: int32 ``[latency buckets, prediction counts, bins of feature 1, …]``;
- ``counts``: int64 ``[requests, errors, latency…, predictions…, then per feature
  counts…, below, above, missing, n]``;
- ``moments``: float64 ``[sum, sum_sq]`` per feature.

Windows with the same ``shape`` add up as one numpy sum over their stacked ``counts`` (and
``moments``): the monitor reads a bucket of 100,000 windows as a few byte strings each and
one ``frombuffer``, and the wire's JSON is parsed once, at ingest.
"""

from __future__ import annotations

import functools
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from control_plane.monitoring.drift import MergedWindow, unflatten
from shared.messages import FeatureWindow, ModelWindow


@dataclass(frozen=True)
class Encoded:
    """One model's part of one window, as stored."""

    shape: bytes
    counts: bytes
    moments: bytes


def encode(window: ModelWindow) -> Encoded:
    shape = array("i", (len(window.latency_counts), len(window.predictions)))
    ints = array("q", (window.requests, window.errors))
    ints.extend(window.latency_counts)
    ints.extend(window.predictions)
    floats = array("d")
    for f in window.features:
        shape.append(len(f.counts))
        ints.extend(f.counts)
        ints.extend((f.below, f.above, f.missing, f.n))
        floats.extend((f.sum, f.sum_sq))
    if sys.byteorder != "little":  # stored little-endian on every machine
        for values in (shape, ints, floats):
            values.byteswap()
    return Encoded(shape=shape.tobytes(), counts=ints.tobytes(), moments=floats.tobytes())


@functools.lru_cache(maxsize=1024)  # a fleet's windows come in a few shapes
def shape_of(stored: bytes) -> tuple[int, int, list[int]]:
    """(latency buckets, prediction counts, bins per feature) of a stored ``shape``; the
    list is shared: do not change it."""
    values = np.frombuffer(stored, dtype="<i4").tolist()
    return values[0], values[1], values[2:]


def decode(name: str, version: int, sha256: str, stored: Encoded) -> ModelWindow:
    """The ``ModelWindow`` that ``encode`` stored, exactly."""
    n_latency, n_predictions, bins = shape_of(stored.shape)
    ints = np.frombuffer(stored.counts, dtype="<i8").tolist()
    floats = np.frombuffer(stored.moments, dtype="<f8").tolist()
    at = 2 + n_latency + n_predictions
    features = []
    for j, k in enumerate(bins):
        below, above, missing, n = ints[at + k : at + k + 4]
        features.append(
            FeatureWindow(
                counts=ints[at : at + k],
                below=below,
                above=above,
                missing=missing,
                n=n,
                sum=floats[2 * j],
                sum_sq=floats[2 * j + 1],
            )
        )
        at += k + 4
    return ModelWindow(
        name=name,
        version=version,
        sha256=sha256,
        requests=ints[0],
        errors=ints[1],
        latency_counts=ints[2 : 2 + n_latency],
        features=features,
        predictions=ints[2 + n_latency : 2 + n_latency + n_predictions],
    )


def counts_matrix(rows: Sequence[bytes]) -> npt.NDArray[np.int64]:
    """Stored ``counts`` of windows of one shape, one row each."""
    flat = np.frombuffer(b"".join(rows), dtype="<i8")
    return flat.reshape(len(rows), -1)


def merge_stored(
    shape: bytes, counts: Sequence[bytes], moments: Sequence[bytes]
) -> MergedWindow | None:
    """Add up stored windows that all have ``shape`` (their ``counts`` and ``moments``, in
    the same order; exact for counts); None for none."""
    if not counts:
        return None
    n_latency, n_predictions, bins = shape_of(shape)
    totals = counts_matrix(counts).sum(axis=0)
    floats = np.frombuffer(b"".join(moments), dtype="<f8")
    moment_totals = floats.reshape(len(moments), -1).sum(axis=0)
    return unflatten(totals, moment_totals, bins, n_latency, n_predictions, len(counts))
