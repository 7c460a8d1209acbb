"""Histograms over fixed bin edges, identical on the control plane and on devices.

Bin i holds values in [edges[i], edges[i+1]); the last bin also holds edges[-1].
Values below edges[0] or above edges[-1] are counted apart (out of range), NaN as missing.
Counts over the same edges merge by addition, exactly.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class BinCounts:
    counts: npt.NDArray[np.int64]
    below: int
    above: int
    missing: int


def bin_counts(values: npt.ArrayLike, edges: npt.ArrayLike) -> BinCounts:
    """Count ``values`` into the bins of ``edges`` (see the module docstring)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    e = np.asarray(edges, dtype=np.float64)
    n_bins = len(e) - 1
    missing_mask = np.isnan(x)
    present = x[~missing_mask]
    below = int(np.count_nonzero(present < e[0]))
    above = int(np.count_nonzero(present > e[-1]))
    inside = present[(present >= e[0]) & (present <= e[-1])]
    idx = np.searchsorted(e, inside, side="right") - 1
    idx = np.minimum(idx, n_bins - 1)  # the last edge belongs to the last bin
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    return BinCounts(counts=counts, below=below, above=above, missing=int(missing_mask.sum()))


# Latency buckets: 4 per doubling from 10 µs to ~10.5 s, plus one overflow bucket, so a
# p95 read from merged counts is within 19% of the true value; every device uses the same
# bounds, so histograms of many devices merge by addition.
LATENCY_BOUNDS_US: tuple[float, ...] = tuple(10.0 * 2 ** (i / 4) for i in range(81))
LATENCY_BUCKETS = len(LATENCY_BOUNDS_US) + 1


def latency_counts(latencies_us: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Counts per latency bucket: bucket i holds (bounds[i-1], bounds[i]]; the last, overflow."""
    x = np.asarray(latencies_us, dtype=np.float64).ravel()
    idx = np.searchsorted(np.asarray(LATENCY_BOUNDS_US), x, side="left")
    return np.bincount(idx, minlength=LATENCY_BUCKETS).astype(np.int64)


def latency_bucket(latency_us: float) -> int:
    """The bucket of one latency (same rule as ``latency_counts``); bisect, not numpy: this
    runs once per request."""
    return bisect.bisect_left(LATENCY_BOUNDS_US, latency_us)


def histogram_quantile(counts: npt.ArrayLike, q: float) -> float | None:
    """Quantile ``q`` (µs) of a latency histogram, interpolated within its bucket on a log
    scale (latencies spread evenly in log inside a bucket): a reading that moves smoothly
    with the data rather than in steps of 19%, within the bucket's bounds either way;
    ``None`` when empty. The overflow bucket reports infinity."""
    c = np.asarray(counts, dtype=np.int64)
    total = int(c.sum())
    if total == 0:
        return None
    cumulative = np.cumsum(c)
    target = q * total
    index = int(np.searchsorted(cumulative, target, side="left"))
    if index >= len(LATENCY_BOUNDS_US):
        return float("inf")
    upper = LATENCY_BOUNDS_US[index]
    lower = LATENCY_BOUNDS_US[index - 1] if index else upper / 2 ** (1 / 4)
    below = int(cumulative[index - 1]) if index else 0
    share = (target - below) / int(c[index])
    return float(lower * (upper / lower) ** share)


def rebin(
    counts: npt.ArrayLike, from_edges: npt.ArrayLike, to_edges: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Counts over the bins of ``from_edges`` spread onto the bins of ``to_edges``, each
    bin's rows taken as uniform within it (all that is known of rows binned elsewhere);
    what falls outside ``to_edges`` is dropped. Two versions of a regression model bin their
    predictions on their own reference edges: compared, they must share one set."""
    c = np.asarray(counts, dtype=np.float64)
    f = np.asarray(from_edges, dtype=np.float64)
    t = np.asarray(to_edges, dtype=np.float64)
    if f.shape == t.shape and np.array_equal(f, t):
        return c.copy()
    out = np.zeros(len(t) - 1)
    for i, count in enumerate(c):
        if count == 0:
            continue
        low, high = f[i], f[i + 1]
        if high <= low:  # a zero-width bin: all its rows at one value
            j = int(np.searchsorted(t, low, side="right")) - 1
            if 0 <= j < len(out):
                out[j] += count
            continue
        overlap = np.clip(np.minimum(high, t[1:]) - np.maximum(low, t[:-1]), 0.0, None)
        out += count * overlap / (high - low)
    return out


def js_distance(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike) -> float | None:
    """Jensen–Shannon distance (base 2, so within [0, 1]) between two histograms over the
    same bins; ``None`` when either is empty."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        return None
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: npt.NDArray[np.float64]) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))
