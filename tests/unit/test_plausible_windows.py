"""A telemetry window whose counts one device cannot have served is refused at ingest, and
what the real agent reports is never refused: so no device can wrap the int64 sums the
gates and the drift monitor add up, or turn their float sums into infinity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from agent.inference import load_model
from agent.telemetry import WindowAccumulator
from control_plane.fleet.ingestion import (
    FLOAT32_MAX,
    MAX_ROWS_PER_SECOND,
    implausible,
)
from shared.messages import MAX_WINDOW, ModelWindow, TelemetryWindow
from shared.signing import SigningKey
from simulator.data import sensor_rows
from simulator.rig.models import make_model

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def agent_window() -> ModelWindow:
    """What the agent's own accumulator reports for real inference: errors, missing values
    and values outside the reference bins included."""
    manifest, artifact = make_model(SigningKey.generate())
    model = load_model(artifact, manifest)
    accumulator = WindowAccumulator(manifest)
    X = sensor_rows(500, seed=3)[0].astype(np.float32)
    X[::7, 1] = np.nan
    X[::11, 0] = 3.4e38
    X[::13, 2] = -3.4e38
    for start in range(0, len(X), 50):
        rows = X[start : start + 50]
        accumulator.record(rows, model.run(np.nan_to_num(rows)), 250.0)
    accumulator.record_error(9)
    window = accumulator.close()
    assert window is not None
    return window


def telemetry(*models: ModelWindow, seconds: float = 60.0) -> TelemetryWindow:
    return TelemetryWindow(
        device_id="dev-1",
        seq=1,
        window_start=NOW - timedelta(seconds=seconds),
        window_end=NOW,
        models=list(models),
        outbox_dropped=0,
    )


def test_the_agents_own_window_is_plausible(agent_window: ModelWindow) -> None:
    assert agent_window.errors == 9
    assert implausible(telemetry(agent_window), NOW) is None
    assert implausible(telemetry(agent_window, seconds=0), NOW) is None


def replace_feature(window: ModelWindow, **changes: object) -> ModelWindow:
    features = [window.features[0].model_copy(update=changes), *window.features[1:]]
    return window.model_copy(update={"features": features})


def test_counts_one_device_cannot_have_served_are_refused(agent_window: ModelWindow) -> None:
    w = agent_window
    most = 60 * MAX_ROWS_PER_SECOND
    bad = {
        "rows beyond the window's length": w.model_copy(update={"requests": most + 1}),
        "more errors than rows": w.model_copy(update={"errors": w.requests + 1}),
        "more latencies than rows": w.model_copy(
            update={"latency_counts": [w.requests, *w.latency_counts[1:]]}
        ),
        "more predictions than rows": w.model_copy(
            update={"predictions": [w.requests, *w.predictions[1:]]}
        ),
        "more values than rows": replace_feature(w, missing=w.requests),
        "more binned than values": replace_feature(w, below=w.features[0].n + 1),
        "a sum past float32": replace_feature(w, sum=(w.features[0].n + 1) * FLOAT32_MAX),
        "squares past float32": replace_feature(w, sum_sq=1e308),
        "negative squares": replace_feature(w, sum_sq=-1.0),
    }
    for what, model in bad.items():
        problem = implausible(telemetry(w, model), NOW)
        assert problem is not None, what
        assert problem.startswith("fault v1: "), problem
    # The largest counts the wire allows (2**53 - 1) in a window of a minute.
    huge = w.model_copy(update={"requests": 2**53 - 1, "errors": 2**53 - 1})
    assert implausible(telemetry(huge), NOW) is not None


def test_sums_of_the_largest_plausible_windows_stay_in_int64() -> None:
    """The bound the constant promises: ten million of the largest windows a device may
    send (7 days long, every count at its most) still add up inside int64."""
    largest = int(MAX_WINDOW.total_seconds()) * MAX_ROWS_PER_SECOND
    assert largest * 10_000_000 < 2**63
    assert largest * FLOAT32_MAX**2 * 10_000_000 < float("inf")
