"""Histograms over fixed bin edges, identical on the control plane and on devices.

Bin i holds values in [edges[i], edges[i+1]); the last bin also holds edges[-1].
Values below edges[0] or above edges[-1] are counted apart (out of range), NaN as missing.
Counts over the same edges merge by addition, exactly.
"""

from __future__ import annotations

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
