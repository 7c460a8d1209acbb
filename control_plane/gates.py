"""Rollout gates (pure): merged telemetry of a stage's devices on the new version against
devices still on the previous version, over the same span, judged against a ``GateSpec``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from control_plane.plans import GateSpec
from shared.messages import ModelWindow
from shared.stats import LATENCY_BUCKETS, histogram_quantile, js_distance

Verdict = Literal["pass", "fail", "wait"]


class GateResult(BaseModel):
    """One gate's reading."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="install, reporting, error_rate, latency_p95_ratio, prediction_js."
    )
    status: Verdict = Field(description="`pass`, `fail` or `wait` (not enough data yet).")
    value: float | None = Field(description="Measured value, if any.")
    threshold: float = Field(description="The limit it is judged against.")
    detail: str = Field(description="Human-readable reading.")


@dataclass
class Traffic:
    """Windows of one model version merged across devices (exact: counts add)."""

    devices: set[str] = field(default_factory=set)
    requests: int = 0
    errors: int = 0
    latency: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(LATENCY_BUCKETS, dtype=np.int64)
    )
    predictions: npt.NDArray[np.int64] | None = None

    def add(self, device_id: str, window: ModelWindow) -> None:
        self.devices.add(device_id)
        self.requests += window.requests
        self.errors += window.errors
        self.latency += np.asarray(window.latency_counts, dtype=np.int64)
        counts = np.asarray(window.predictions, dtype=np.int64)
        if self.predictions is None or self.predictions.shape != counts.shape:
            self.predictions = counts.copy()
        else:
            self.predictions += counts

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def p95_us(self) -> float | None:
        return histogram_quantile(self.latency, 0.95)


def merge(windows: Iterable[tuple[str, ModelWindow]]) -> Traffic:
    traffic = Traffic()
    for device_id, window in windows:
        traffic.add(device_id, window)
    return traffic


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
    candidate: Traffic,
    baseline: Traffic,
) -> list[GateResult]:
    """Every gate of a stage. A failed install share beyond the threshold fails at once
    (mid-stage); behaviour gates wait until enough devices and requests reported."""
    results = [_install_gate(spec, installs, elapsed_seconds)]
    enough = (
        len(candidate.devices) >= spec.min_devices_reporting
        and candidate.requests >= spec.min_requests
    )
    results.append(
        GateResult(
            name="reporting",
            status="pass" if enough else "wait",
            value=float(candidate.requests),
            threshold=float(spec.min_requests),
            detail=f"{len(candidate.devices)} devices (need {spec.min_devices_reporting}), "
            f"{candidate.requests} requests (need {spec.min_requests})",
        )
    )
    if not enough:
        return results
    rate = candidate.error_rate or 0.0
    base_rate = baseline.error_rate
    limit = (
        spec.max_error_rate
        if base_rate is None
        else min(spec.max_error_rate, base_rate + spec.max_error_rate_increase)
    )
    results.append(
        GateResult(
            name="error_rate",
            status="pass" if rate <= limit else "fail",
            value=rate,
            threshold=limit,
            detail=f"{candidate.errors}/{candidate.requests} errors"
            + (f"; baseline {base_rate:.4f}" if base_rate is not None else "; no baseline"),
        )
    )
    cand_p95, base_p95 = candidate.p95_us, baseline.p95_us
    if cand_p95 is not None and base_p95 is not None and baseline.requests:
        ratio = cand_p95 / base_p95
        results.append(
            GateResult(
                name="latency_p95_ratio",
                status="pass" if ratio <= spec.max_latency_p95_ratio else "fail",
                value=ratio,
                threshold=spec.max_latency_p95_ratio,
                detail=f"p95 {cand_p95:.0f} µs vs baseline {base_p95:.0f} µs",
            )
        )
    else:
        results.append(
            GateResult(
                name="latency_p95_ratio",
                status="pass",
                value=None,
                threshold=spec.max_latency_p95_ratio,
                detail="no baseline traffic to compare with",
            )
        )
    distance = (
        js_distance(candidate.predictions, baseline.predictions)
        if candidate.predictions is not None and baseline.predictions is not None
        else None
    )
    results.append(
        GateResult(
            name="prediction_js",
            status="pass" if distance is None or distance <= spec.max_prediction_js else "fail",
            value=distance,
            threshold=spec.max_prediction_js,
            detail="no baseline predictions to compare with"
            if distance is None
            else f"JS distance {distance:.3f}",
        )
    )
    return results


def _install_gate(spec: GateSpec, installs: Installs, elapsed: float) -> GateResult:
    assigned = max(1, installs.assigned)
    failed_share = installs.failed / assigned
    success = installs.installed / assigned
    detail = f"{installs.installed}/{installs.assigned} installed, {installs.failed} failed"
    if failed_share > spec.max_failure_ratio:
        return GateResult(
            name="install",
            status="fail",
            value=failed_share,
            threshold=spec.max_failure_ratio,
            detail=detail + " (failure threshold exceeded)",
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
        )
    return GateResult(
        name="install",
        status="wait",
        value=success,
        threshold=spec.min_install_success,
        detail=detail,
    )
