"""Rollout gates (pure).

Behaviour gates are *paired*: each stage device is judged against its own windows on the
previous version just before its update, not against other devices. Devices differ in
hardware, load and temperature (a `hw=rpi3` next to a `hw=jetson`), so comparing the stage's
devices with the rest measures the hardware; comparing a device with itself measures the
version. The per-device readings are aggregated (the median of per-device p50 and p95
ratios; errors and predictions pooled over the same devices before and after), a verdict
needs enough evidence (devices, and requests per device on both sides: more for a p95) and,
for latency, a minimum effect (a ratio over the limit *and* an increase of at least
``min_latency_increase_ms``), so that noise alone cannot fail a good version while a 2×
regression still fails within one stage (thresholds derived in ``benchmarks/gates.py``).
The cross-device comparison (stage devices against devices still on the previous version
over the same span) is kept as a secondary reading in the details.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from control_plane.rollouts.plans import GateSpec
from shared.messages import ModelWindow
from shared.stats import LATENCY_BUCKETS, histogram_quantile, js_distance

Verdict = Literal["pass", "fail", "wait"]


class GateResult(BaseModel):
    """One gate's reading, with the evidence it rests on."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="install, reporting, error_rate, latency_p50_ratio, latency_p95_ratio, "
        "prediction_js."
    )
    status: Verdict = Field(description="`pass`, `fail` or `wait` (not enough evidence yet).")
    value: float | None = Field(description="Measured value, if any.")
    threshold: float = Field(description="The limit it is judged against.")
    detail: str = Field(description="Human-readable reading.")
    devices: int | None = Field(default=None, description="Devices the reading rests on.")
    requests: int | None = Field(default=None, description="Requests it rests on.")


@dataclass
class Traffic:
    """Windows of one model version merged (exact: counts add)."""

    devices: set[str] = field(default_factory=set)
    requests: int = 0
    errors: int = 0
    latency: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(LATENCY_BUCKETS, dtype=np.int64)
    )
    predictions: npt.NDArray[np.float64] | None = None
    # Latency quantiles read so far, until the next window: a stage's gates read every
    # device's p50 and p95 on every tick, and most devices had no new window since the last.
    _quantiles: dict[float, float | None] = field(default_factory=dict, repr=False)

    def add(
        self,
        device_id: str,
        requests: int,
        errors: int,
        latency: npt.ArrayLike,
        predictions: npt.ArrayLike,
    ) -> None:
        """One window's counts; ``predictions`` on the caller's common bins (re-binned for a
        regression model whose versions bin on different edges), or per class index."""
        self._quantiles.clear()
        self.devices.add(device_id)
        self.requests += requests
        self.errors += errors
        self.latency += np.asarray(latency, dtype=np.int64)
        counts = np.asarray(predictions, dtype=np.float64)
        if self.predictions is None:
            self.predictions = counts.copy()
            return
        size = max(len(self.predictions), len(counts))  # a class the other version lacks
        self.predictions = _padded(self.predictions, size) + _padded(counts, size)

    def copy(self) -> Traffic:
        return Traffic(
            set(self.devices),
            self.requests,
            self.errors,
            self.latency.copy(),
            None if self.predictions is None else self.predictions.copy(),
        )

    def add_window(self, device_id: str, window: ModelWindow) -> None:
        self.add(
            device_id, window.requests, window.errors, window.latency_counts, window.predictions
        )

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def quantile(self, q: float) -> float | None:
        """Latency quantile ``q`` in µs (None when empty)."""
        if q not in self._quantiles:
            self._quantiles[q] = histogram_quantile(self.latency, q)
        return self._quantiles[q]

    @property
    def p95_us(self) -> float | None:
        return self.quantile(0.95)


def _padded(counts: npt.NDArray[np.float64], size: int) -> npt.NDArray[np.float64]:
    return np.pad(counts, (0, size - len(counts))) if len(counts) < size else counts


def merge(windows: Iterable[tuple[str, ModelWindow]]) -> Traffic:
    traffic = Traffic()
    for device_id, window in windows:
        traffic.add_window(device_id, window)
    return traffic


@dataclass
class Pair:
    """One stage device: its own traffic on the previous version just before its update
    (``before``) and on the new version since (``after``)."""

    device_id: str
    before: Traffic = field(default_factory=Traffic)
    after: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class Installs:
    assigned: int
    installed: int
    failed: int


def evaluate(
    spec: GateSpec,
    *,
    installs: Installs,
    elapsed_seconds: float,
    pairs: list[Pair],
    baseline: Traffic,
) -> list[GateResult]:
    """Every gate of a stage. A failed install share beyond the threshold fails at once
    (mid-stage); behaviour gates wait until enough devices and requests reported.
    ``baseline``: devices still on the previous version over the stage's span (the
    secondary, cross-device reading)."""
    results = [_install_gate(spec, installs, elapsed_seconds)]
    candidate = Traffic()
    for pair in pairs:
        _fold(candidate, pair.after)
    reporting = [p for p in pairs if p.after.requests >= spec.min_requests_per_device]
    enough = (
        len(reporting) >= spec.min_devices_reporting and candidate.requests >= spec.min_requests
    )
    results.append(
        GateResult(
            name="reporting",
            status="pass" if enough else "wait",
            value=float(candidate.requests),
            threshold=float(spec.min_requests),
            detail=f"{len(reporting)} devices with ≥ {spec.min_requests_per_device} requests "
            f"(need {spec.min_devices_reporting}), {candidate.requests} requests "
            f"(need {spec.min_requests})",
            devices=len(reporting),
            requests=candidate.requests,
        )
    )
    if not enough:
        return results
    paired = [p for p in reporting if p.before.requests >= spec.min_requests_per_device]
    results.append(_error_gate(spec, candidate, paired, baseline))
    results.extend(_latency_gates(spec, pairs, candidate, baseline))
    results.append(_prediction_gate(spec, paired, candidate, baseline))
    return results


def _fold(into: Traffic, other: Traffic) -> None:
    into._quantiles.clear()
    into.devices |= other.devices
    into.requests += other.requests
    into.errors += other.errors
    into.latency += other.latency
    if other.predictions is not None:
        if into.predictions is None:
            into.predictions = other.predictions.copy()
        else:
            size = max(len(into.predictions), len(other.predictions))
            into.predictions = _padded(into.predictions, size) + _padded(other.predictions, size)


def _pooled(pairs: list[Pair], side: Literal["before", "after"]) -> Traffic:
    pooled = Traffic()
    for pair in pairs:
        _fold(pooled, getattr(pair, side))
    return pooled


def _secondary(candidate: Traffic, baseline: Traffic, what: str) -> str:
    if what == "latency":
        base = baseline.p95_us
        if base is None or candidate.p95_us is None:
            return ""
        return f"; across devices: p95 {candidate.p95_us:.0f} µs vs {base:.0f} µs on the rest"
    if baseline.error_rate is None:
        return ""
    return f"; across devices: {baseline.error_rate:.4f} on the rest"


def _error_gate(
    spec: GateSpec, candidate: Traffic, paired: list[Pair], baseline: Traffic
) -> GateResult:
    rate = candidate.error_rate or 0.0
    after, before = _pooled(paired, "after"), _pooled(paired, "before")
    if paired and before.error_rate is not None and after.error_rate is not None:
        limit = min(spec.max_error_rate, before.error_rate + spec.max_error_rate_increase)
        increase = after.error_rate - before.error_rate
        failed = rate > spec.max_error_rate or (
            increase > spec.max_error_rate_increase and _significant(after, before)
        )
        detail = (
            f"{candidate.errors}/{candidate.requests} errors; the same {len(paired)} devices: "
            f"{after.error_rate:.4f} after vs {before.error_rate:.4f} before"
        )
    else:
        limit, failed = spec.max_error_rate, rate > spec.max_error_rate
        detail = f"{candidate.errors}/{candidate.requests} errors; no paired baseline"
    return GateResult(
        name="error_rate",
        status="fail" if failed else "pass",
        value=rate,
        threshold=limit,
        detail=detail + _secondary(candidate, baseline, "errors"),
        devices=len(paired) or len(candidate.devices),
        requests=candidate.requests,
    )


def _significant(after: Traffic, before: Traffic, z_limit: float = 2.33) -> bool:
    """A one-sided two-proportion z-test (p < 0.01): the error rate after is higher than
    before by more than chance, so a handful of errors on few requests fails nothing."""
    pooled = (after.errors + before.errors) / (after.requests + before.requests)
    if pooled in (0.0, 1.0):  # no errors, or nothing but errors, on both sides
        return False
    spread = math.sqrt(pooled * (1 - pooled) * (1 / after.requests + 1 / before.requests))
    increase = after.errors / after.requests - before.errors / before.requests
    return increase / spread > z_limit


@dataclass(frozen=True)
class _Quantile:
    """One latency reading: which quantile, its gate's name, limit and evidence needed."""

    q: float
    name: str
    limit: float
    min_requests: int


def _latency_gates(
    spec: GateSpec, pairs: list[Pair], candidate: Traffic, baseline: Traffic
) -> list[GateResult]:
    """The median (p50: the model's own cost, which a busy CPU hardly moves) and the tail
    (p95: needs more requests per device to be more than one burst of contention)."""
    return [
        _latency_gate(spec, reading, pairs, candidate, baseline)
        for reading in (
            _Quantile(
                0.5, "latency_p50_ratio", spec.max_latency_p50_ratio, spec.min_requests_per_device
            ),
            _Quantile(
                0.95,
                "latency_p95_ratio",
                spec.max_latency_p95_ratio,
                max(spec.min_requests_per_device, spec.min_requests_per_device_p95),
            ),
        )
    ]


def _latency_gate(
    spec: GateSpec, reading: _Quantile, pairs: list[Pair], candidate: Traffic, baseline: Traffic
) -> GateResult:
    """The median over the stage's devices of each device's quantile after its update over
    the same quantile before it. A device with too little traffic before its update (it was
    idle, or the previous version came just before) is read against the rest of the fleet
    on the previous version instead, when there is enough of that: the only cross-device
    readings, and named as such."""
    label = f"p{round(reading.q * 100)}"
    secondary = _secondary(candidate, baseline, "latency")
    readings: list[tuple[float, float]] = []  # (after, before) in µs
    crossed = evidence = 0
    for pair in pairs:
        after = pair.after.quantile(reading.q)
        if after is None or pair.after.requests < reading.min_requests:
            continue
        if pair.before.requests >= reading.min_requests:
            before = pair.before.quantile(reading.q)
            evidence += pair.before.requests
        elif baseline.requests >= reading.min_requests:
            before, crossed = baseline.quantile(reading.q), crossed + 1
        else:
            continue
        assert before is not None
        readings.append((after, before))
        evidence += pair.after.requests
    if not readings:
        return GateResult(
            name=reading.name,
            status="pass",
            value=None,
            threshold=reading.limit,
            detail=f"not judged: no device has {reading.min_requests} requests on each side "
            f"for a {label}" + secondary,
            devices=0,
            requests=0,
        )
    ratio = statistics.median(after / before for after, before in readings)
    increase = statistics.median(after - before for after, before in readings)
    regressed = ratio > reading.limit and increase >= spec.min_latency_increase_ms * 1000
    against = f"{len(readings) - crossed} against themselves before their update" + (
        f", {crossed} against the rest of the fleet" if crossed else ""
    )
    return GateResult(
        name=reading.name,
        status="fail" if regressed else "pass",
        value=ratio,
        threshold=reading.limit,
        detail=f"median {label} ratio over {len(readings)} devices ({against}): {ratio:.2f} "
        f"({increase / 1000:+.2f} ms; a failure needs > {reading.limit:g} "
        f"and ≥ +{spec.min_latency_increase_ms:g} ms)" + secondary,
        devices=len(readings),
        requests=evidence + (baseline.requests if crossed else 0),
    )


def _prediction_gate(
    spec: GateSpec, paired: list[Pair], candidate: Traffic, baseline: Traffic
) -> GateResult:
    after, before = _pooled(paired, "after"), _pooled(paired, "before")
    distance = None
    if after.predictions is not None and before.predictions is not None:
        size = max(len(after.predictions), len(before.predictions))
        distance = js_distance(_padded(after.predictions, size), _padded(before.predictions, size))
    if distance is None:
        return GateResult(
            name="prediction_js",
            status="pass",
            value=None,
            threshold=spec.max_prediction_js,
            detail="no paired predictions to compare with",
            devices=0,
            requests=0,
        )
    return GateResult(
        name="prediction_js",
        status="pass" if distance <= spec.max_prediction_js else "fail",
        value=distance,
        threshold=spec.max_prediction_js,
        detail=f"JS distance {distance:.3f}, the same {len(paired)} devices after vs before",
        devices=len(paired),
        requests=after.requests + before.requests,
    )


def _install_gate(spec: GateSpec, installs: Installs, elapsed: float) -> GateResult:
    assigned = max(1, installs.assigned)
    failed_share = installs.failed / assigned
    success = installs.installed / assigned
    detail = f"{installs.installed}/{installs.assigned} installed, {installs.failed} failed"
    evidence = {"devices": installs.assigned, "requests": None}
    if failed_share > spec.max_failure_ratio:
        return GateResult(
            name="install",
            status="fail",
            value=failed_share,
            threshold=spec.max_failure_ratio,
            detail=detail + " (failure threshold exceeded)",
            **evidence,
        )
    if (
        installs.installed + installs.failed >= installs.assigned
        or elapsed >= spec.install_timeout_seconds
    ):
        ok = success >= spec.min_install_success
        return GateResult(
            name="install",
            status="pass" if ok else "fail",
            value=success,
            threshold=spec.min_install_success,
            detail=detail
            + ("" if installs.installed + installs.failed >= installs.assigned else " (timed out)"),
            **evidence,
        )
    return GateResult(
        name="install",
        status="wait",
        value=success,
        threshold=spec.min_install_success,
        detail=detail,
        **evidence,
    )
