"""Telemetry stored as numbers reads back as exactly the window that arrived, and adds up to
what the wire's windows add up to."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.monitoring.drift import merge_windows, shape_fits, window_fits
from control_plane.monitoring.windows import decode, encode, merge_stored, shape_of
from control_plane.training.parity import feature_references, prediction_reference_classes
from shared.manifest import Reference
from shared.messages import FeatureWindow, ModelWindow
from shared.stats import LATENCY_BUCKETS
from shared.wire import MAX_SAFE_INT
from simulator.data import CLASSES, FEATURES, model_window, sensor_rows

counts = st.integers(min_value=0, max_value=MAX_SAFE_INT)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def windows(
    draw: st.DrawFn,
    bins: list[int] | None = None,
    classes: int | None = None,
    counts: st.SearchStrategy[int] = counts,
    finite: st.SearchStrategy[float] = finite,
) -> ModelWindow:
    shape = bins if bins is not None else draw(st.lists(st.integers(0, 12), max_size=6))
    return ModelWindow(
        name="m",
        version=draw(st.integers(1, 10**6)),
        sha256="a" * 64,
        requests=draw(counts),
        errors=draw(counts),
        latency_counts=draw(st.lists(counts, min_size=LATENCY_BUCKETS, max_size=LATENCY_BUCKETS)),
        features=[
            FeatureWindow(
                counts=draw(st.lists(counts, min_size=k, max_size=k)),
                below=draw(counts),
                above=draw(counts),
                missing=draw(counts),
                n=draw(counts),
                sum=draw(finite),
                sum_sq=draw(finite),
            )
            for k in shape
        ],
        predictions=draw(
            st.lists(counts, min_size=classes or 0, max_size=classes if classes else 8)
        ),
    )


@settings(max_examples=300)
@given(windows())
def test_a_stored_window_reads_back_exactly(window: ModelWindow) -> None:
    stored = encode(window)
    back = decode(window.name, window.version, window.sha256, stored)
    assert back == window
    assert back.model_dump_json() == window.model_dump_json()
    n_latency, n_predictions, bins = shape_of(stored.shape)
    assert (n_latency, n_predictions) == (LATENCY_BUCKETS, len(window.predictions))
    assert bins == [len(f.counts) for f in window.features]


small = st.integers(min_value=0, max_value=10**9)  # n of them add up within 64 bits
moderate = st.floats(min_value=-1e12, max_value=1e12)


@settings(max_examples=100)
@given(st.data(), st.lists(st.integers(0, 6), max_size=4), st.integers(1, 20))
def test_stored_windows_add_up_as_the_wire_windows_do(
    data: st.DataObject, bins: list[int], n: int
) -> None:
    batch = [data.draw(windows(bins, 3, small, moderate)) for _ in range(n)]
    expected = merge_windows(batch)
    stored = [encode(w) for w in batch]
    merged = merge_stored(stored[0].shape, [e.counts for e in stored], [e.moments for e in stored])
    assert expected is not None and merged is not None
    assert merged.requests == expected.requests and merged.errors == expected.errors
    assert np.array_equal(merged.latency_counts, expected.latency_counts)
    assert np.array_equal(merged.predictions, expected.predictions)
    assert merged.windows == expected.windows == n
    for mine, theirs in zip(merged.features, expected.features, strict=True):
        assert np.array_equal(mine.counts, theirs.counts)
        assert (mine.below, mine.above, mine.missing, mine.n) == (
            theirs.below,
            theirs.above,
            theirs.missing,
            theirs.n,
        )
        assert np.isclose(mine.sum, theirs.sum) and np.isclose(mine.sum_sq, theirs.sum_sq)


def test_nothing_adds_up_to_none() -> None:
    assert merge_stored(b"", [], []) is None


def test_shape_fits_as_window_fits_does() -> None:
    X, y = sensor_rows(1000, seed=0)
    reference = Reference(
        rows=len(y),
        features=feature_references(X.astype(np.float32), FEATURES, 10),
        prediction=prediction_reference_classes(y, len(CLASSES)),
    )
    good = model_window(reference, X[:500], y[:500], seed=3)
    fewer = good.model_copy(update={"features": good.features[:-1]})
    other_bins = good.model_copy(
        update={
            "features": [
                good.features[0].model_copy(update={"counts": good.features[0].counts[:-1]}),
                *good.features[1:],
            ]
        }
    )
    other_classes = good.model_copy(update={"predictions": [*good.predictions, 0]})
    for window in (good, fewer, other_bins, other_classes):
        _, n_predictions, bins = shape_of(encode(window).shape)
        assert shape_fits(bins, n_predictions, reference) == window_fits(window, reference)
