import numpy as np
import pytest

from control_plane.errors import JobFailedError
from control_plane.training.parity import (
    check_parity,
    feature_references,
    golden_vectors,
    quantile_edges,
)
from shared.stats import bin_counts


def test_parity_passes_within_tolerance_and_records_the_difference() -> None:
    sk = np.array([[0.2, 0.8], [0.6, 0.4]])
    parity = check_parity(
        sk_values=sk,
        onnx_values=(sk + 3e-7).astype(np.float32),
        sk_labels=np.array([1, 0]),
        onnx_labels=np.array([1, 0]),
        atol=1e-4,
        max_label_disagreement=0.001,
    )
    assert parity.max_abs_diff == pytest.approx(3e-7, rel=0.2)
    assert parity.label_disagreements == 0
    assert parity.rows == 2


def test_parity_fails_beyond_tolerance() -> None:
    sk = np.array([[0.2, 0.8]])
    with pytest.raises(JobFailedError, match="differ by 0.01"):
        check_parity(
            sk_values=sk,
            onnx_values=sk + 0.01,
            sk_labels=None,
            onnx_labels=None,
            atol=1e-4,
            max_label_disagreement=0.0,
        )


def test_parity_fails_on_label_disagreement() -> None:
    values = np.zeros((1000, 2))
    sk_labels = np.zeros(1000, dtype=np.int64)
    onnx_labels = sk_labels.copy()
    onnx_labels[:2] = 1  # 0.2% > 0.1%
    with pytest.raises(JobFailedError, match="2 of 1000"):
        check_parity(
            sk_values=values,
            onnx_values=values,
            sk_labels=sk_labels,
            onnx_labels=onnx_labels,
            atol=1e-4,
            max_label_disagreement=0.001,
        )
    onnx_labels[1] = 0  # 0.1% is allowed
    check_parity(
        sk_values=values,
        onnx_values=values,
        sk_labels=sk_labels,
        onnx_labels=onnx_labels,
        atol=1e-4,
        max_label_disagreement=0.001,
    )


def test_parity_fails_on_nan_output() -> None:
    with pytest.raises(JobFailedError, match="NaN"):
        check_parity(
            sk_values=np.array([1.0]),
            onnx_values=np.array([np.nan]),
            sk_labels=None,
            onnx_labels=None,
            atol=1e-4,
            max_label_disagreement=0,
        )


def test_quantile_edges_are_increasing_and_cover_the_data() -> None:
    column = np.random.default_rng(0).normal(size=1000).astype(np.float32).astype(np.float64)
    edges = quantile_edges(column, 10)
    assert len(edges) == 11
    assert all(b > a for a, b in zip(edges, edges[1:], strict=False))
    counted = bin_counts(column, edges)
    assert counted.counts.sum() == 1000 and counted.below == counted.above == 0


def test_constant_and_empty_columns_get_one_bin() -> None:
    assert quantile_edges(np.full(10, 3.0), 10) == [2.5, 3.5]
    assert quantile_edges(np.full(10, np.nan), 10) == [-0.5, 0.5]


def test_feature_references_count_missing_values() -> None:
    X = np.array([[1.0, np.nan], [2.0, 1.0], [3.0, 2.0]], dtype=np.float32)
    refs = feature_references(X, ["a", "b"], 4)
    assert refs[1].missing == 1
    assert sum(refs[1].counts) == 2
    assert refs[0].mean == pytest.approx(2.0)


def test_bin_counts_edges_and_out_of_range() -> None:
    counted = bin_counts([0.0, 0.5, 1.0, 1.5, -1, np.nan], [0.0, 0.5, 1.0])
    assert list(counted.counts) == [1, 2]  # the last edge belongs to the last bin
    assert (counted.below, counted.above, counted.missing) == (1, 1, 1)


def test_golden_vectors_keep_missing_as_null() -> None:
    X = np.array([[np.nan, 1.0]], dtype=np.float32)
    vectors = golden_vectors(
        X, values=np.array([[0.3, 0.7]], dtype=np.float32), labels=np.array([1]), count=5
    )
    assert vectors[0].input == [None, 1.0]
    assert vectors[0].label == 1


def test_latency_histogram_merges_and_reads_quantiles() -> None:
    from shared.stats import LATENCY_BUCKETS, histogram_quantile, latency_bucket, latency_counts

    rng = np.random.default_rng(1)
    a, b = rng.lognormal(5, 0.5, 5000), rng.lognormal(5, 0.5, 5000)
    merged = latency_counts(a) + latency_counts(b)
    assert merged.shape == (LATENCY_BUCKETS,)
    assert (merged == latency_counts(np.concatenate([a, b]))).all()
    true_p95 = float(np.percentile(np.concatenate([a, b]), 95))
    estimate = histogram_quantile(merged, 0.95)
    assert estimate is not None
    assert true_p95 / 1.19 <= estimate <= true_p95 * 1.19  # within a bucket's width
    assert abs(estimate / true_p95 - 1) < 0.05  # and, interpolated, much closer
    assert histogram_quantile(np.zeros(LATENCY_BUCKETS), 0.95) is None
    assert latency_bucket(5.0) == 0
    assert latency_bucket(1e9) == LATENCY_BUCKETS - 1
    assert latency_counts([1e9])[-1] == 1
