"""Drift monitoring: the cost of judging one fleet window, and how fast a mean shift is found.

1. Cost per window. 1,000 devices × ~100 rows (50–150) × 20 features, reference bins built
   by ``control_plane.training.parity`` from 4,000 training rows (the simulator's 6 sensor features,
   repeated from independent draws to make 20), 4 classes. Medians over repeats of:
   parsing the 1,000 ``TelemetryWindow`` JSON payloads (as the monitor read them from the
   database until windows were stored as numbers); ``merge_windows``; a naive merge (one
   numpy add per window and feature) as the baseline; ``merge_stored`` on the windows as
   ``telemetry_model`` holds them (what the monitor reads now); ``evaluate_window`` +
   ``advance``.
2. Detection. One N(0, 1) feature, a fresh 4,000-row training draw (10 quantile bins) per
   run, then windows of a stated size with the mean moved by δσ from the first window, the
   default ``DriftPolicy``: windows until the feature's drift verdict (median, p90; at least
   2 with ``consecutive = 2``) and the share of runs flagged within 2 / 5 / all windows.
   δ = 0 is the false-alarm row: share of runs with any verdict, and of single windows
   reading ``drift``.
3. Calibration, by training rows × bucket rows: false verdicts (δ = 0) and 0.5σ found
   within 2 buckets, with the fixed thresholds and with the calibrated ones (the default:
   each feature's thresholds raised to what unchanged data reaches with
   ``false_alarm_rate``, see ``control_plane.monitoring.drift.thresholds``). The reference's own
   sampling error is the same in every window, so ``consecutive`` does not average it
   away: fixed thresholds cry wolf on small training sets.

    .venv/bin/python benchmarks/drift.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from results import Results, add_json_argument

from control_plane.config import ServerSettings
from control_plane.monitoring.drift import (
    DriftPolicy,
    DriftState,
    MergedFeature,
    MergedWindow,
    advance,
    evaluate_window,
    merge_windows,
    thresholds,
)
from control_plane.monitoring.windows import encode, merge_stored
from control_plane.training.parity import feature_references, prediction_reference_classes
from shared.manifest import PredictionReference, Reference
from shared.messages import ModelWindow, TelemetryWindow
from shared.stats import LATENCY_BUCKETS, bin_counts
from simulator.data import CLASSES, FEATURES, model_window, sensor_rows

BINS = ServerSettings.model_fields["reference_bins"].default
TRAIN_ROWS = 4000
N_FEATURES = 20
DEVICES = 1000
SHIFTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def wide_rows(n: int, seed: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """``n`` rows of 20 features: sensor features from independent draws, side by side."""
    draws = [sensor_rows(n, seed=seed * 10 + k) for k in range(-(-N_FEATURES // len(FEATURES)))]
    X = np.hstack([d[0] for d in draws])[:, :N_FEATURES]
    return X, draws[0][1]


def naive_merge(windows: list[ModelWindow]) -> list[npt.NDArray[np.int64]]:
    """Baseline: one numpy add per window and feature."""
    first = windows[0]
    latency = np.zeros(LATENCY_BUCKETS, dtype=np.int64)
    predictions = np.zeros(len(first.predictions), dtype=np.int64)
    features = [np.zeros(len(f.counts) + 4, dtype=np.int64) for f in first.features]
    for w in windows:
        latency += np.asarray(w.latency_counts, dtype=np.int64)
        predictions += np.asarray(w.predictions, dtype=np.int64)
        for j, f in enumerate(w.features):
            features[j] += np.asarray([*f.counts, f.below, f.above, f.missing, f.n], dtype=np.int64)
    return [latency, predictions, *features]


def median_ms(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(samples))


def cost(repeats: int, results: Results) -> None:
    X, y = wide_rows(TRAIN_ROWS, seed=0)
    names = [f"{FEATURES[j % len(FEATURES)]}_{j // len(FEATURES)}" for j in range(N_FEATURES)]
    reference = Reference(
        rows=TRAIN_ROWS,
        features=feature_references(X.astype(np.float32), names, BINS),
        prediction=prediction_reference_classes(y, len(CLASSES)),
    )
    rng = np.random.default_rng(1)
    sizes = rng.integers(50, 151, DEVICES)
    X, y = wide_rows(int(sizes.sum()), seed=1)
    starts = np.concatenate(([0], np.cumsum(sizes)))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    payloads = [
        TelemetryWindow(
            device_id=f"dev-{d:04d}",
            seq=1,
            window_start=now,
            window_end=now + timedelta(minutes=1),
            models=[model_window(reference, X[a:b], y[a:b], seed=a)],
            outbox_dropped=0,
        ).model_dump_json()
        for d, (a, b) in enumerate(itertools.pairwise(starts))
    ]
    windows = [TelemetryWindow.model_validate_json(p).models[0] for p in payloads]
    merged = merge_windows(windows)
    assert merged is not None
    policy = DriftPolicy()
    check = naive_merge(windows)
    assert np.array_equal(check[0], merged.latency_counts)
    assert np.array_equal(check[2][:-4], merged.features[0].counts)

    def parse() -> list[ModelWindow]:
        return [TelemetryWindow.model_validate_json(p).models[0] for p in payloads]

    def judge() -> object:
        return advance(None, evaluate_window(reference, merged, policy), policy)

    def whole() -> object:
        m = merge_windows(parse())
        assert m is not None
        return advance(None, evaluate_window(reference, m, policy), policy)

    encoded = [encode(w) for w in windows]
    stored = (encoded[0].shape, [e.counts for e in encoded], [e.moments for e in encoded])

    def from_numbers() -> object:
        m = merge_stored(*stored)
        assert m is not None
        return advance(None, evaluate_window(reference, m, policy), policy)

    t_parse = median_ms(parse, repeats)
    t_stored = median_ms(lambda: merge_stored(*stored), repeats)
    t_numbers = median_ms(from_numbers, repeats)
    t_merge = median_ms(lambda: merge_windows(windows), repeats)
    t_naive = median_ms(lambda: naive_merge(windows), repeats)
    t_judge = median_ms(judge, repeats)
    t_whole = median_ms(whole, repeats)
    kib = sum(len(p) for p in payloads) / 1024 / DEVICES
    print(
        f"1. cost per fleet window: {DEVICES} devices × {int(sizes.mean())} rows × "
        f"{N_FEATURES} features × {BINS} bins, {kib:.1f} KiB JSON per device; "
        f"median of {repeats}"
    )
    print(f"   {'step':<44}{'ms':>9}{'ratio':>10}")
    rows = [
        ("parse 1,000 TelemetryWindow JSON", t_parse, ""),
        ("naive merge (numpy add per window × feature)", t_naive, "1.0×"),
        ("merge_windows", t_merge, f"{t_naive / t_merge:.1f}× faster"),
        ("evaluate_window + advance", t_judge, ""),
        ("parse + merge + evaluate + advance", t_whole, f"{t_whole / t_parse:.2f}× parse"),
        ("merge_stored (windows as stored numbers)", t_stored, f"{t_naive / t_stored:.1f}× faster"),
        ("merge_stored + evaluate + advance", t_numbers, f"{t_whole / t_numbers:.1f}× faster"),
    ]
    for label, ms, ratio in rows:
        print(f"   {label:<44}{ms:>9.2f}{ratio:>14}")
    group = f"one fleet window, {DEVICES:,} devices × {N_FEATURES} features"
    parsing = results.add(group, rows[0][0], t_parse, "ms")
    naive = results.add(group, rows[1][0], t_naive, "ms")
    results.add(group, rows[2][0], t_merge, "ms", baseline=naive, headline=True)
    results.add(group, rows[3][0], t_judge, "ms")
    from_json = results.add(group, rows[4][0], t_whole, "ms", baseline=parsing)
    results.add(group, rows[5][0], t_stored, "ms", baseline=naive)
    results.add(group, rows[6][0], t_numbers, "ms", baseline=from_json, headline=True)


def normal_reference(train: npt.NDArray[np.float64]) -> Reference:
    return Reference(
        rows=train.size,
        features=feature_references(train[:, None].astype(np.float32), ["x"], BINS),
        prediction=PredictionReference(),
    )


def merged_values(reference: Reference, values: npt.NDArray[np.float64]) -> MergedWindow:
    counted = bin_counts(values.astype(np.float32), reference.features[0].bin_edges)
    feature = MergedFeature(
        counts=counted.counts,
        below=counted.below,
        above=counted.above,
        missing=counted.missing,
        n=values.size,
        sum=float(values.sum()),
        sum_sq=float(np.square(values).sum()),
    )
    return MergedWindow(
        requests=values.size,
        errors=0,
        latency_counts=np.zeros(LATENCY_BUCKETS, dtype=np.int64),
        features=(feature,),
        predictions=np.zeros(0, dtype=np.int64),
        windows=1,
    )


def run(
    shift: float,
    rows: int,
    horizon: int,
    seed: int,
    train_rows: int = TRAIN_ROWS,
    policy: DriftPolicy | None = None,
) -> tuple[int | None, int]:
    """(first window with a drift verdict or None, single windows reading `drift`)."""
    policy = policy or DriftPolicy()
    rng = np.random.default_rng(seed)
    reference = normal_reference(rng.normal(size=train_rows))
    state: DriftState | None = None
    first, readings = None, 0
    for window in range(1, horizon + 1):
        reading = evaluate_window(
            reference, merged_values(reference, rng.normal(shift, 1, rows)), policy
        )
        readings += reading.features[0].verdict == "drift"
        state, verdict = advance(state, reading, policy)
        if verdict.drifted_features and first is None:
            first = window
    return first, readings


def detection(runs: int, horizon: int, results: Results) -> None:
    print(
        f"\n2. detection of a mean shift δσ on one N(0,1) feature: {TRAIN_ROWS:,} training "
        f"rows, {BINS} quantile bins, default policy, {runs} runs × {horizon} windows"
    )
    print(
        f"   {'rows/window':>11}{'δ':>6}{'median':>8}{'p90':>6}{'≤2 win':>9}{'≤5 win':>9}"
        f"{f'≤{horizon} win':>9}{'windows reading drift':>23}"
    )
    for rows in (500, 2000):
        for shift in SHIFTS:
            outcomes = [run(shift, rows, horizon, seed) for seed in range(runs)]
            delays = np.array([np.inf if f is None else f for f, _ in outcomes])
            readings = sum(r for _, r in outcomes) / (runs * horizon)

            def share(n: int, delays: npt.NDArray[np.float64] = delays) -> str:
                return f"{np.mean(delays <= n):.1%}"

            if shift == 0:
                median = p90 = "—"
            else:
                # a sample value, not an interpolation: runs never flagged count as infinite
                m, p = (np.quantile(delays, q, method="inverted_cdf") for q in (0.5, 0.9))
                median = "never" if np.isinf(m) else f"{m:.0f}"
                p90 = f">{horizon}" if np.isinf(p) else f"{p:.0f}"
            print(
                f"   {rows:>11}{shift:>5.2f}σ{median:>8}{p90:>6}{share(2):>9}{share(5):>9}"
                f"{share(horizon):>9}{readings:>23.2%}"
            )
            group = f"detection, {rows:,} rows a window"
            if shift == 0:
                found = float(np.mean(delays <= horizon)) * 100
                results.add(group, f"δ = 0, false verdicts within {horizon}", found, "%")
            else:
                found = float(np.mean(delays <= 5)) * 100
                name = f"δ = {shift:g}σ, found within 5 windows"
                results.add(group, name, found, "%", better="higher")


def calibration(runs: int, horizon: int, results: Results) -> None:
    """Fixed thresholds against calibrated ones, by training rows × bucket rows."""
    fixed = DriftPolicy(calibrate=False)
    calibrated = DriftPolicy()
    sizes, buckets = (500, 1000, 4000, 20000), (500, 2000, 10000)
    print(
        f"\n3. training rows × bucket rows: δ = 0, share of {runs} runs with a false drift "
        f"verdict within {horizon} buckets; δ = 0.5σ, share of {runs // 2} runs found within "
        "2 buckets [median delay]; fixed thresholds (PSI 0.25 / JS 0.1) → calibrated "
        f"(false_alarm_rate {calibrated.false_alarm_rate:g})"
    )
    print(
        f"   {'training':>9}{'bucket':>8}{'false, fixed':>14}{'calibrated':>12}"
        f"{'0.5σ ≤ 2, fixed':>19}{'calibrated':>16}{'JS threshold':>14}"
    )
    for train_rows in sizes:
        for rows in buckets:
            cells, shares = [], []
            for policy in (fixed, calibrated):
                verdicts = [
                    run(0.0, rows, horizon, seed, train_rows, policy) for seed in range(runs)
                ]
                shares.append(float(np.mean([f is not None for f, _ in verdicts])) * 100)
                cells.append(f"{shares[-1] / 100:.1%}")
            for policy in (fixed, calibrated):
                delays = np.array(
                    [
                        np.inf if f is None else f
                        for f, _ in (
                            run(0.5, rows, horizon, seed, train_rows, policy)
                            for seed in range(runs // 2)
                        )
                    ]
                )
                median = np.quantile(delays, 0.5, method="inverted_cdf")
                shown = "never" if np.isinf(median) else f"{median:.0f}"
                cells.append(f"{np.mean(delays <= 2):.1%} [{shown}]")
                shares.append(float(np.mean(delays <= 2)) * 100)
            reference = normal_reference(np.random.default_rng(0).normal(size=train_rows))
            ref = reference.features[0]
            limit = thresholds([ref.below, *ref.counts, ref.above], rows, calibrated)
            print(
                f"   {train_rows:>9,}{rows:>8,}{cells[0]:>14}{cells[1]:>12}{cells[2]:>19}"
                f"{cells[3]:>16}{limit.js_drift:>14.3f}"
            )
            group = f"calibration, {train_rows:,} training rows, {rows:,}-row buckets"
            fixed_false = results.add(group, "false verdicts, fixed thresholds", shares[0], "%")
            results.add(group, "false verdicts, calibrated", shares[1], "%", baseline=fixed_false)
            name = "0.5σ found within 2 buckets"
            fixed_found = results.add(group, f"{name}, fixed", shares[2], "%", better="higher")
            results.add(
                group, f"{name}, calibrated", shares[3], "%", better="higher", baseline=fixed_found
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and runs (~40 s)")
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("drift")
    print(f"# .venv/bin/python benchmarks/drift.py{' --quick' if args.quick else ''}")
    cost(repeats=5 if args.quick else 20, results=results)
    detection(runs=100 if args.quick else 500, horizon=20, results=results)
    calibration(runs=100 if args.quick else 400, horizon=20, results=results)
    results.write(args.json)


if __name__ == "__main__":
    main()
