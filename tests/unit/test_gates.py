import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from control_plane.gates import GateResult, Installs, Traffic, evaluate
from control_plane.plans import GateSpec
from shared.messages import ModelWindow
from shared.stats import LATENCY_BUCKETS, js_distance, latency_bucket

SPEC = GateSpec(min_requests=10, min_devices_reporting=1)


def window(
    requests: int, errors: int = 0, latency_us: float = 100.0, predictions: tuple[int, ...] = (5, 5)
) -> ModelWindow:
    latency = [0] * LATENCY_BUCKETS
    latency[latency_bucket(latency_us)] = requests
    return ModelWindow(
        name="m",
        version=1,
        sha256="0" * 64,
        requests=requests,
        errors=errors,
        latency_counts=latency,
        features=[],
        predictions=list(predictions),
    )


def traffic(*windows: ModelWindow) -> Traffic:
    merged = Traffic()
    for i, w in enumerate(windows):
        merged.add(f"dev-{i}", w)
    return merged


def status(results: list[GateResult], name: str) -> str:
    return next(r.status for r in results if r.name == name)


def test_js_distance_matches_scipy() -> None:
    p, q = [10, 20, 30, 0], [15, 15, 10, 5]
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2))
    assert js_distance(p, p) == pytest.approx(0.0)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance([0, 0], [1, 1]) is None


def test_all_pass() -> None:
    results = evaluate(
        SPEC,
        installs=Installs(2, 2, 0),
        elapsed_seconds=1,
        candidate=traffic(window(20), window(20)),
        baseline=traffic(window(50)),
    )
    assert {r.name: r.status for r in results} == {
        "install": "pass",
        "reporting": "pass",
        "error_rate": "pass",
        "latency_p95_ratio": "pass",
        "prediction_js": "pass",
    }


def test_install_waits_then_times_out_and_failures_halt_at_once() -> None:
    idle = traffic()
    assert (
        status(
            evaluate(
                SPEC, installs=Installs(10, 5, 0), elapsed_seconds=1, candidate=idle, baseline=idle
            ),
            "install",
        )
        == "wait"
    )
    assert (
        status(
            evaluate(
                SPEC,
                installs=Installs(10, 5, 0),
                elapsed_seconds=10_000,
                candidate=idle,
                baseline=idle,
            ),
            "install",
        )
        == "fail"
    )
    assert (
        status(
            evaluate(
                SPEC, installs=Installs(10, 5, 3), elapsed_seconds=1, candidate=idle, baseline=idle
            ),
            "install",
        )
        == "fail"
    )


def test_behaviour_gates_wait_for_data_then_judge() -> None:
    few = evaluate(
        SPEC,
        installs=Installs(1, 1, 0),
        elapsed_seconds=1,
        candidate=traffic(window(3, errors=3)),
        baseline=traffic(window(50)),
    )
    assert [r.name for r in few] == ["install", "reporting"]
    assert status(few, "reporting") == "wait"
    errors = evaluate(
        SPEC,
        installs=Installs(1, 1, 0),
        elapsed_seconds=1,
        candidate=traffic(window(100, errors=10)),
        baseline=traffic(window(100)),
    )
    assert status(errors, "error_rate") == "fail"
    slow = evaluate(
        SPEC,
        installs=Installs(1, 1, 0),
        elapsed_seconds=1,
        candidate=traffic(window(100, latency_us=5000)),
        baseline=traffic(window(100, latency_us=100)),
    )
    assert status(slow, "latency_p95_ratio") == "fail"
    drift = evaluate(
        SPEC,
        installs=Installs(1, 1, 0),
        elapsed_seconds=1,
        candidate=traffic(window(100, predictions=(10, 0))),
        baseline=traffic(window(100, predictions=(0, 10))),
    )
    assert status(drift, "prediction_js") == "fail"


def test_merged_traffic_is_exact() -> None:
    merged = traffic(window(10, errors=1), window(30, errors=2))
    assert (merged.requests, merged.errors, len(merged.devices)) == (40, 3, 2)
    assert merged.predictions is not None
    assert np.asarray(merged.predictions).tolist() == [10, 10]
