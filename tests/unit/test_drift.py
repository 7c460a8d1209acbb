"""Drift math: PSI and JS against hand and scipy values, exact merging, and the verdicts on
simulated fleets (reference bins built exactly as export builds them)."""

import math

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError
from scipy.spatial.distance import jensenshannon
from scipy.stats import norm

from control_plane.config import ServerSettings
from control_plane.monitoring.drift import (
    DriftPolicy,
    DriftState,
    FeatureDrift,
    Verdict,
    WindowDrift,
    advance,
    evaluate_window,
    js_distance,
    merge_windows,
    psi,
    thresholds,
    window_fits,
)
from control_plane.training.parity import feature_references, prediction_reference_classes
from shared.manifest import PredictionReference, Reference
from shared.messages import FeatureWindow, ModelWindow
from shared.stats import LATENCY_BUCKETS, bin_counts
from simulator.data import CLASSES, FEATURES, model_window, sensor_rows

BINS = ServerSettings.model_fields["reference_bins"].default  # what export uses
TRAIN_ROWS = 4000  # 5,000 rows with the default 20% held out
POLICY = DriftPolicy()
SHIFTED = FEATURES.index("current_a")


@pytest.fixture(scope="module")
def reference() -> Reference:
    X, y = sensor_rows(TRAIN_ROWS, seed=0)
    return Reference(
        rows=TRAIN_ROWS,
        features=feature_references(X.astype(np.float32), FEATURES, BINS),
        # The true classes stand in for a model's predictions: same distribution, no model.
        prediction=prediction_reference_classes(y, len(CLASSES)),
    )


def sigma(reference: Reference, j: int) -> float:
    return math.sqrt(reference.features[j].variance)


def fleet_window(
    reference: Reference,
    index: int,
    *,
    devices: int = 8,
    shift: npt.NDArray[np.float64] | None = None,
) -> list[ModelWindow]:
    """One telemetry window of a fleet: ``devices`` devices with 90–175 rows each (~1,000
    rows in all by default), ``shift`` added to the raw feature values."""
    rng = np.random.default_rng(10_000 + index)
    windows = []
    for d in range(devices):
        X, y = sensor_rows(int(rng.integers(90, 176)), seed=1_000_000 + 100 * index + d)
        if shift is not None:
            X = X + shift
        windows.append(model_window(reference, X, y, seed=index * 100 + d))
    return windows


def judge(reference: Reference, windows: list[ModelWindow]) -> WindowDrift:
    merged = merge_windows(windows, n_features=len(reference.features))
    assert merged is not None
    return evaluate_window(reference, merged, POLICY)


# --- PSI and JS ----------------------------------------------------------------------------


def test_psi_of_identical_distributions_is_zero() -> None:
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0
    assert psi([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0, abs=1e-3)  # same shares
    assert psi([10, 20, 30], [20, 40, 60], smoothing=0) == pytest.approx(0.0, abs=1e-15)


def test_psi_matches_hand_computation() -> None:
    # Shares r = .5 .3 .2, c = .3 .3 .4; the last bin is empty on both sides and dropped.
    # (.3 − .5)·ln(.3/.5) + 0 + (.4 − .2)·ln(.4/.2) = .2·0.510826 + .2·0.693147 = 0.240795
    assert psi([50, 30, 20, 0], [30, 30, 40, 0], smoothing=0) == pytest.approx(0.240795, abs=1e-6)


def test_psi_smooths_a_bin_empty_on_one_side() -> None:
    # 4 bins kept, α = 0.5, both totals 100 → denominators 100 + 4·0.5 = 102.
    # r = (40.5, 40.5, 20.5, 0.5)/102, c = (40.5, 40.5, 10.5, 10.5)/102
    # PSI = (−10/102)·ln(10.5/20.5) + (10/102)·ln(10.5/0.5)
    #     = (10/102)·(0.669050 + 3.044522) = 0.364076
    assert psi([40, 40, 20, 0], [40, 40, 10, 10], smoothing=0.5) == pytest.approx(
        0.364076, abs=1e-6
    )
    assert math.isinf(psi([40, 40, 20, 0], [40, 40, 10, 10], smoothing=0))


def test_psi_refuses_bad_histograms() -> None:
    with pytest.raises(ValueError, match="differ in bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        psi([1, -2], [1, 2])
    with pytest.raises(ValueError, match="empty"):
        psi([0, 0], [1, 2])


def test_js_distance_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    pairs = [([40, 40, 20, 0], [40, 40, 10, 10]), ([5, 0, 5], [0, 10, 0])]
    pairs += [
        (rng.integers(0, 50, 12).tolist(), rng.integers(0, 50, 12).tolist()) for _ in range(5)
    ]
    for p, q in pairs:
        expected = jensenshannon(np.asarray(p, float), np.asarray(q, float), base=2)
        assert js_distance(p, q) == pytest.approx(expected, abs=1e-12)
    assert js_distance([0, 0], [1, 1]) is None


def test_half_sigma_shift_is_borderline_for_psi_and_clear_for_js() -> None:
    """Population values (10⁷ rows, exact normal shares) over 10 quantile bins of 4,000
    training rows: the reason both tests are applied, JS carrying the 0.5σ detection."""
    train = np.random.default_rng(0).normal(size=TRAIN_ROWS)
    ref = feature_references(train[:, None].astype(np.float32), ["x"], BINS)[0]
    reference = np.array([ref.below, *ref.counts, ref.above])
    edges = np.asarray(ref.bin_edges)
    readings = {}
    for delta in (0.25, 0.5, 1.0):
        cdf = norm.cdf(edges - delta)
        shares = np.concatenate(([cdf[0]], np.diff(cdf), [1 - cdf[-1]]))
        current = np.round(shares * 1e7)
        readings[delta] = (psi(reference, current), js_distance(reference, current))
    assert readings[0.5][0] == pytest.approx(0.25, abs=0.03)  # PSI ≈ δ², on the 0.25 line
    assert readings[0.5][1] == pytest.approx(0.21, abs=0.02)  # JS ≈ 0.42·δ, twice 0.1
    assert readings[1.0][0] == pytest.approx(1.0, abs=0.1)
    assert readings[0.25][1] == pytest.approx(0.11, abs=0.02)  # near the JS detection limit


# --- merging -------------------------------------------------------------------------------


def test_merge_is_exact_addition(reference: Reference) -> None:
    X, y = sensor_rows(900, seed=5)
    parts = [(0, 250), (250, 400), (400, 900)]
    windows = [model_window(reference, X[a:b], y[a:b], seed=a) for a, b in parts]
    merged = merge_windows(windows)
    assert merged is not None
    whole = model_window(reference, X, y, seed=0)
    assert merged.windows == 3
    assert merged.requests == 900
    assert merged.errors == 0
    assert merged.latency_counts.sum() == 900
    expected_latency = np.sum([w.latency_counts for w in windows], axis=0)
    assert merged.latency_counts.tolist() == expected_latency.tolist()
    assert merged.predictions.tolist() == whole.predictions
    for got, want in zip(merged.features, whole.features, strict=True):
        assert got.counts.dtype == np.int64
        assert got.counts.tolist() == want.counts
        assert (got.below, got.above, got.missing, got.n) == (
            want.below,
            want.above,
            want.missing,
            want.n,
        )
        assert got.sum == pytest.approx(want.sum, rel=1e-12)
        assert got.sum_sq == pytest.approx(want.sum_sq, rel=1e-12)


def test_merge_of_nothing_is_none() -> None:
    assert merge_windows([]) is None
    assert merge_windows(iter(())) is None


def test_merge_refuses_shape_mismatches(reference: Reference) -> None:
    X, y = sensor_rows(200, seed=6)
    good = model_window(reference, X, y, seed=1)
    fewer = good.model_copy(update={"features": good.features[:-1]})
    other_bins = good.model_copy(
        update={
            "features": [
                good.features[0].model_copy(update={"counts": [*good.features[0].counts, 0]}),
                *good.features[1:],
            ]
        }
    )
    other_classes = good.model_copy(update={"predictions": [*good.predictions, 0]})
    negative = good.model_copy(
        update={
            "features": [
                good.features[0].model_copy(update={"counts": [-1, *good.features[0].counts[1:]]}),
                *good.features[1:],
            ]
        }
    )
    with pytest.raises(ValueError, match="window 1 has 5 features, window 0 6"):
        merge_windows([good, fewer])
    with pytest.raises(ValueError, match="other bin counts"):
        merge_windows([good, other_bins])
    with pytest.raises(ValueError, match="predictions"):
        merge_windows([good, other_classes])
    with pytest.raises(ValueError, match="window 1 has a negative count"):
        merge_windows([good, negative])
    with pytest.raises(ValueError, match="expected 7"):
        merge_windows([good], n_features=7)
    assert window_fits(good, reference)
    for bad in (fewer, other_bins, other_classes, negative):
        assert not window_fits(bad, reference)
    merged = merge_windows([fewer])
    assert merged is not None
    with pytest.raises(ValueError, match="window has 5 features, reference 6"):
        evaluate_window(reference, merged, POLICY)


# --- verdicts on simulated fleets ----------------------------------------------------------


def test_stationary_stream_rarely_raises_drift(reference: Reference) -> None:
    """200 windows of 6 devices × 90–175 rows (540–1,050, ~800 rows per window: close to
    min_rows, where noise is largest), same distribution as training: count windows with
    any drift verdict (feature, prediction or dataset)."""
    state: DriftState | None = None
    false_verdicts = drift_readings = 0
    for index in range(200):
        reading = judge(reference, fleet_window(reference, index, devices=6))
        assert all(f.verdict != "insufficient" for f in reading.features)
        drift_readings += sum(f.verdict == "drift" for f in reading.features)
        state, verdict = advance(state, reading, POLICY)
        if verdict.drifted_features or verdict.prediction_drift or verdict.dataset_drift:
            false_verdicts += 1
    rate = false_verdicts / 200
    single = drift_readings / (200 * len(FEATURES))
    print(f"stationary: false verdict rate {rate:.1%}, single-window drift readings {single:.2%}")
    assert rate <= 0.01, f"false drift verdicts in {rate:.1%} of windows"


def test_half_sigma_mean_shift_is_detected_at_the_second_window(reference: Reference) -> None:
    shift = np.zeros(len(FEATURES))
    shift[SHIFTED] = 0.5 * sigma(reference, SHIFTED)
    state: DriftState | None = None
    verdicts = []
    for index in range(5):
        moved = shift if index >= 3 else None
        reading = judge(reference, fleet_window(reference, 500 + index, shift=moved))
        state, verdict = advance(state, reading, POLICY)
        verdicts.append(verdict)
        if index >= 3:
            assert reading.features[SHIFTED].verdict == "drift"
            assert reading.features[SHIFTED].mean_shift == pytest.approx(0.5, abs=0.15)
    assert verdicts[2].drifted_features == ()
    assert verdicts[3].drifted_features == ()  # one window is not enough (consecutive = 2)
    assert verdicts[4].drifted_features == ("current_a",)  # the 2nd shifted window
    assert verdicts[4].newly_drifted_features == ("current_a",)
    assert not verdicts[4].dataset_drift
    assert not verdicts[4].prediction_drift


def one_feature_run(
    train_rows: int, rows: int, shift: float, seed: int, policy: DriftPolicy
) -> int:
    """Buckets of ``rows`` rows (20 at most) until a drift verdict on one N(0, 1) feature
    whose reference came from ``train_rows`` rows; 0 when none came."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=train_rows).astype(np.float32)[:, None]
    ref = Reference(
        rows=train_rows,
        features=feature_references(train, ["x"], BINS),
        prediction=PredictionReference(),
    )
    state = None
    for bucket in range(1, 21):
        values = rng.normal(shift, 1, rows).astype(np.float32)
        counted = bin_counts(values, ref.features[0].bin_edges)
        window = ModelWindow(
            name="m",
            version=1,
            sha256="ab" * 32,
            requests=rows,
            errors=0,
            latency_counts=[0] * LATENCY_BUCKETS,
            features=[
                FeatureWindow(
                    counts=[int(c) for c in counted.counts],
                    below=counted.below,
                    above=counted.above,
                    missing=0,
                    n=rows,
                    sum=float(values.sum()),
                    sum_sq=float(np.square(values).sum()),
                )
            ],
            predictions=[],
        )
        merged = merge_windows([window])
        assert merged is not None
        state, verdict = advance(state, evaluate_window(ref, merged, policy), policy)
        if verdict.drifted_features:
            return bucket
    return 0


def test_thresholds_are_raised_for_small_training_sets_and_buckets_only() -> None:
    small = thresholds([0, *[50] * 10, 0], 500, POLICY)
    assert 0.13 < small.js_drift < 0.2  # noise alone reaches JS ~0.08 here
    assert small == thresholds([0, *[50] * 10, 0], 500, POLICY)  # reproducible
    large = thresholds([0, *[2000] * 10, 0], 10_000, POLICY)
    assert (large.psi_watch, large.psi_drift, large.js_drift) == (0.1, 0.25, 0.1)
    fixed = thresholds([0, *[50] * 10, 0], 500, DriftPolicy(calibrate=False))
    assert (fixed.psi_drift, fixed.js_drift) == (0.25, 0.1)


def test_a_small_training_set_does_not_cry_wolf_and_still_finds_half_a_sigma() -> None:
    """500 training rows, 500-row buckets: with the fixed thresholds most stationary runs
    get a false verdict within 20 buckets (the reference's own error repeats in every
    bucket); calibrated, none, and a 0.5σ shift is still found at the second bucket."""
    fixed = DriftPolicy(calibrate=False)
    stationary = [one_feature_run(500, 500, 0.0, seed, POLICY) for seed in range(30)]
    assert stationary.count(0) == 30
    assert sum(one_feature_run(500, 500, 0.0, seed, fixed) > 0 for seed in range(30)) >= 10
    shifted = [one_feature_run(500, 500, 0.5, seed, POLICY) for seed in range(20)]
    assert shifted.count(2) >= 18 and 0 not in shifted


def test_a_reading_names_the_thresholds_it_was_judged_against(reference: Reference) -> None:
    X, y = sensor_rows(600, seed=3)
    drift = judge(reference, [model_window(reference, X, y, seed=3)])
    first = drift.features[0]
    assert first.js_threshold is not None and first.js_threshold >= POLICY.js_drift
    assert first.psi_threshold is not None and first.psi_threshold >= POLICY.psi_drift


def test_mass_moving_between_bins_of_a_discrete_feature_is_detected() -> None:
    rng = np.random.default_rng(11)
    train = rng.choice(4, size=TRAIN_ROWS, p=[0.4, 0.3, 0.2, 0.1]).astype(np.float64)
    features = feature_references(train[:, None].astype(np.float32), ["gear"], BINS)
    assert len(features[0].counts) < BINS  # quantile bins collapse on few distinct values
    reference = Reference(
        rows=TRAIN_ROWS,
        features=features,
        prediction=PredictionReference(class_counts=[TRAIN_ROWS // 2, TRAIN_ROWS // 2]),
    )
    predicted = rng.integers(0, 2, 1000)
    same = rng.choice(4, size=(1000, 1), p=[0.4, 0.3, 0.2, 0.1]).astype(np.float64)
    moved = rng.choice(4, size=(1000, 1), p=[0.25, 0.45, 0.2, 0.1]).astype(np.float64)
    for values, expected in ((same, "ok"), (moved, "drift")):
        reading = judge(reference, [model_window(reference, values, predicted, seed=1)])
        assert reading.features[0].verdict == expected
    reading = judge(reference, [model_window(reference, moved, predicted, seed=1)])
    assert reading.features[0].js is not None
    assert reading.features[0].js >= POLICY.js_drift


def test_small_windows_get_no_verdict_and_keep_streaks(reference: Reference) -> None:
    X, y = sensor_rows(POLICY.min_rows - 1, seed=7)
    wild = X + 50 * np.sqrt([f.variance for f in reference.features])  # all out of range
    small = judge(reference, [model_window(reference, wild, y, seed=1)])
    assert {f.verdict for f in small.features} == {"insufficient"}
    assert small.prediction.verdict == "insufficient"
    assert all(f.psi is None and f.js is None for f in small.features)
    assert small.features[0].rows == POLICY.min_rows - 1
    assert small.features[0].out_of_range_share == 1.0
    assert small.drifted_share == 0.0
    before = DriftState(streaks=(1, 0, 0, 0, 0, 0), prediction_streak=1, dataset_streak=1)
    after, verdict = advance(before, small, POLICY)
    assert after == before
    assert verdict.drifted_features == ()
    assert not verdict.dataset_drift
    assert not verdict.newly


def test_values_outside_the_training_range_are_drift(reference: Reference) -> None:
    X, y = sensor_rows(1000, seed=8)
    j = FEATURES.index("pressure_bar")
    top = reference.features[j].max
    X[:150, j] = top + np.abs(X[:150, j] - reference.features[j].mean)  # 15% above the max
    reading = judge(reference, [model_window(reference, X, y, seed=1)])
    assert reading.features[j].out_of_range_share == pytest.approx(0.15, abs=0.005)
    assert reading.features[j].verdict == "drift"
    assert [f.verdict for i, f in enumerate(reading.features) if i != j] == ["ok"] * 5


def test_prediction_drift_on_class_counts(reference: Reference) -> None:
    state: DriftState | None = None
    rng = np.random.default_rng(9)
    verdicts = []
    for index in range(3):
        X, _ = sensor_rows(1000, seed=100 + index)
        predicted = rng.choice(len(CLASSES), size=1000, p=[0.3, 0.25, 0.25, 0.2])
        reading = judge(reference, [model_window(reference, X, predicted, seed=index)])
        assert reading.prediction.verdict == "drift"
        assert reading.prediction.rows == 1000
        state, verdict = advance(state, reading, POLICY)
        verdicts.append(verdict)
    assert [v.prediction_drift for v in verdicts] == [False, True, True]
    assert [v.newly_prediction_drift for v in verdicts] == [False, True, False]
    assert all(v.drifted_features == () for v in verdicts)


# --- streaks and events --------------------------------------------------------------------


def reading(*verdicts: Verdict, prediction: Verdict = "ok") -> WindowDrift:
    features = tuple(
        FeatureDrift(name=f"f{i}", rows=1000, psi=0.0, js=0.0, verdict=v)
        for i, v in enumerate(verdicts)
    )
    judged = [f for f in features if f.verdict != "insufficient"]
    share = sum(f.verdict == "drift" for f in judged) / len(judged) if judged else 0.0
    return WindowDrift(
        features=features,
        prediction=FeatureDrift(name="prediction", rows=1000, psi=0.0, js=0.0, verdict=prediction),
        drifted_share=share,
    )


def test_an_episode_of_drift_fires_once_and_again_after_recovery() -> None:
    steps: list[tuple[Verdict, bool, bool]] = [
        # verdict of f0, drifted after it, newly after it
        ("drift", False, False),
        ("drift", True, True),
        ("drift", True, False),
        ("insufficient", True, False),  # no reading: the episode goes on
        ("drift", True, False),
        ("watch", False, False),  # back to normal
        ("drift", False, False),
        ("insufficient", False, False),
        ("drift", True, True),  # a new episode: fires again
    ]
    state: DriftState | None = None
    for verdict, drifted, newly in steps:
        state, result = advance(state, reading(verdict, "ok", "ok"), POLICY)
        assert (result.drifted_features == ("f0",)) is drifted
        assert (result.newly_drifted_features == ("f0",)) is newly
        assert result.newly is newly
        assert not result.dataset_drift  # 1 of 3 features < 0.5
    assert state is not None
    assert state.streaks == (2, 0, 0)


def test_dataset_drift_needs_the_share_for_consecutive_windows() -> None:
    state, first = advance(None, reading("drift", "drift", "ok", "ok"), POLICY)
    assert not first.dataset_drift
    state, second = advance(state, reading("drift", "insufficient", "drift", "ok"), POLICY)
    assert second.dataset_drift  # 2 of 3 judged features
    assert second.newly_dataset_drift
    assert second.newly_drifted_features == ("f0",)
    state, quiet = advance(
        state, reading("insufficient", "insufficient", "insufficient", "insufficient"), POLICY
    )
    assert quiet.dataset_drift
    assert not quiet.newly
    state, third = advance(state, reading("drift", "ok", "ok", "ok"), POLICY)
    assert not third.dataset_drift  # 1 of 4 < 0.5: streak reset
    assert third.drifted_features == ("f0",)
    assert state.dataset_streak == 0


def test_state_round_trips_through_json_and_must_match_the_features() -> None:
    state, _ = advance(None, reading("drift", "ok", prediction="drift"), POLICY)
    restored = DriftState.model_validate_json(state.model_dump_json())
    assert restored == state
    assert restored.streaks == (1, 0)
    assert restored.prediction_streak == 1
    with pytest.raises(ValueError, match="tracks 2 features, window has 3"):
        advance(restored, reading("ok", "ok", "ok"), POLICY)
    with pytest.raises(ValidationError, match="non-negative"):
        DriftState(streaks=(-1,))


def test_policy_refuses_inconsistent_thresholds() -> None:
    with pytest.raises(ValidationError, match=r"psi_drift \(0.05\) must be at least psi_watch"):
        DriftPolicy(psi_watch=0.1, psi_drift=0.05)
    with pytest.raises(ValidationError, match="consecutive"):
        DriftPolicy(consecutive=0)
    for share in (0.0, 1.5):
        with pytest.raises(ValidationError, match="dataset_share"):
            DriftPolicy(dataset_share=share)
    with pytest.raises(ValidationError, match="extra"):
        DriftPolicy.model_validate({"psi_watch": 0.1, "unknown": 1})
    assert DriftPolicy(dataset_share=1.0, psi_watch=0.2, psi_drift=0.2).consecutive == 2
    schema = DriftPolicy.model_json_schema()["properties"]
    assert all(field.get("description") for field in schema.values())
