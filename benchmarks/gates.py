"""False verdicts of the rollout gates with the CPU busy: the paired gates (each device against
itself before its update) beside the cross-device rule they replaced (the stage's devices
against the rest of the fleet), over simulated stages built from real latencies.

1. Real latencies. A model of ~1-2 ms a row (``simulator.faults.slow_variant``: the sensor
   model with a compute branch that does not change its outputs) runs single rows with
   onnxruntime (one intra-op thread) while one CPU-hog process per core competes. The
   recording keeps its order, so bursts of contention stay together as they do on a device.
2. Simulated stages. A fleet of 20 devices of mixed hardware (factors: ``rpi3`` 3×, ``rpi4``
   1.6×, ``jetson`` 1×: latency scales with the device); each stage updates 2 of them
   (the 10% stage), picked at random. Each device serves ``--requests`` requests before its
   update and as many after; the rest of the fleet serves the same number on the previous
   version over the stage. A device's requests are a contiguous run of the recording
   (from a random place), times its factor. Cases, for the stage's devices after the update:
   ``good`` (another version of the same cost: an independent run of the recording),
   ``2x slower`` (each request costs two consecutive recorded runs: twice the compute under
   the same contention), ``20% errors`` (good latency, one request in five fails).
3. Each stage is judged by ``control_plane.rollouts.gates.evaluate`` with the default
   ``GateSpec`` and by the old rule (merged p95 of the stage's devices over the rest's > 2;
   error rate over min(5%, the rest's + 2%)). The table gives the share of stages each failed.

Wanted: a good version failed ≤ 1%, a 2× regression or 20% errors passed ≤ 1%. One table
per ``--requests`` level (requests per device on each side); below the shipped
``min_requests_per_device`` the gates are judged on what there is, to show why it is 300.

How the shipped thresholds follow from it (one run here, 40,000 recorded inferences, p50
2.2 ms, p95 6.4 ms with the hogs; 300 stages per case):

- Under contention the p95 is the scheduler's, not the model's: doubling the compute moved
  the median per-device p95 ratio to 1.6 only (0.5th percentile 1.27), so a p95 gate alone
  cannot catch a 2× regression. The p50 ratio moved to 3.0 (0.5th percentile 2.0): the
  middle of the distribution is the model's own cost. Both are gates; the p50 one catches.
- Noise: a good version's median p50 ratio stays within 0.80–1.24 (0.5th–99.5th
  percentile) on 300 requests a side, but 0.59–2.07 on 100. So a limit of 1.5 sits between
  good (≤ 1.24) and 2× (≥ 2.0) at 300 requests: ``max_latency_p50_ratio`` 1.5,
  ``min_requests_per_device`` 300.
- A p95 rests on the requests above it: 400 a side puts 20 there, and at 600 a good
  version's p95 ratio stays ≤ 1.14; ``max_latency_p95_ratio`` 1.5,
  ``min_requests_per_device_p95`` 400 (not judged on fewer).
- Errors: the paired z-test with the +2% minimum fails 20% errors in every stage and a good
  version in none.

    .venv/bin/python benchmarks/gates.py [--stages 300] [--requests 200] [--no-hog]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import numpy.typing as npt
from results import Better, Results, add_json_argument

from agent.inference import session_for
from control_plane.rollouts.gates import GateResult, Installs, Pair, Traffic, evaluate
from control_plane.rollouts.plans import GateSpec
from shared.messages import ModelWindow
from shared.signing import SigningKey
from shared.stats import histogram_quantile, latency_counts
from simulator.data import sensor_rows
from simulator.faults import slow_variant
from simulator.rig.models import make_model

HARDWARE = {"rpi3": 3.0, "rpi4": 1.6, "jetson": 1.0}
FLEET = [name for name in HARDWARE for _ in range(7)][:20]
STAGE_DEVICES = 2
CASES = ("good", "2x slower", "20% errors")


def record(runs: int, hog: bool) -> npt.NDArray[np.float64]:
    """Latencies (µs) of ``runs`` single-row inferences, in order, with hogs beside."""
    _, base = make_model(SigningKey.generate())
    session = session_for(slow_variant(base), threads=1)
    name = session.get_inputs()[0].name
    rows = sensor_rows(256, seed=4)[0].astype(np.float32)
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while 1: pass"])
        for _ in range(os.cpu_count() or 2)
        if hog
    ]
    try:
        time.sleep(0.5 if hog else 0)
        out = np.empty(runs)
        for i in range(runs):
            row = rows[i % len(rows)][None, :]
            started = time.perf_counter()
            session.run(None, {name: row})
            out[i] = (time.perf_counter() - started) * 1e6
        return out
    finally:
        for process in hogs:
            process.kill()
            process.wait()


def run_of(
    recording: npt.NDArray[np.float64], n: int, rng: random.Random, double: bool = False
) -> npt.NDArray[np.float64]:
    """``n`` consecutive requests from a random place (two runs per request if ``double``)."""
    width = 2 * n if double else n
    start = rng.randrange(0, len(recording) - width)
    chunk = recording[start : start + width]
    return chunk.reshape(n, 2).sum(axis=1) if double else chunk


def window(latencies: npt.NDArray[np.float64], errors: int = 0) -> ModelWindow:
    return ModelWindow(
        name="m",
        version=1,
        sha256="0" * 64,
        requests=len(latencies),
        errors=errors,
        latency_counts=[int(c) for c in latency_counts(latencies)],
        features=[],
        predictions=[len(latencies)],
    )


def stage(
    recording: npt.NDArray[np.float64], case: str, requests: int, rng: random.Random
) -> tuple[list[Pair], Traffic]:
    updated = set(rng.sample(range(len(FLEET)), STAGE_DEVICES))
    pairs, rest = [], Traffic()
    for i, hardware in enumerate(FLEET):
        factor = HARDWARE[hardware]
        device = f"{hardware}-{i}"
        before = run_of(recording, requests, rng) * factor
        if i not in updated:
            rest.add_window(device, window(before))
            continue
        after = run_of(recording, requests, rng, double=case == "2x slower") * factor
        errors = sum(rng.random() < 0.2 for _ in range(requests)) if case == "20% errors" else 0
        pair = Pair(device)
        pair.before.add_window(device, window(before))
        pair.after.add_window(device, window(after, errors))
        pairs.append(pair)
    return pairs, rest


def paired(pairs: list[Pair], rest: Traffic, requests: int) -> dict[str, GateResult]:
    """The shipped gates; on fewer requests than they need, judged on what there is."""
    spec = GateSpec()
    if requests < spec.min_requests_per_device:
        spec = spec.model_copy(update={"min_requests_per_device": requests})
    results = evaluate(
        spec,
        installs=Installs(len(pairs), len(pairs), 0),
        elapsed_seconds=1e9,
        pairs=pairs,
        baseline=rest,
    )
    return {r.name: r for r in results}


def cross_device_fails(pairs: list[Pair], rest: Traffic) -> bool:
    """The rule the paired gates replaced (its defaults: p95 ratio 2, errors +2% or 5%)."""
    stage_traffic = Traffic()
    for pair in pairs:
        stage_traffic.latency += pair.after.latency
        stage_traffic.requests += pair.after.requests
        stage_traffic.errors += pair.after.errors
    p95, base = (
        histogram_quantile(stage_traffic.latency, 0.95),
        histogram_quantile(rest.latency, 0.95),
    )
    assert p95 is not None
    assert base is not None
    rate, base_rate = stage_traffic.errors / stage_traffic.requests, rest.errors / rest.requests
    return p95 / base > 2.0 or rate > min(0.05, base_rate + 0.02)


GATES = ("latency_p50_ratio", "latency_p95_ratio", "error_rate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=300)
    parser.add_argument(
        "--requests",
        type=int,
        nargs="+",
        default=[100, 300, 600],
        help="Requests per device on each side (one table each).",
    )
    parser.add_argument("--runs", type=int, default=40_000, help="Recorded inferences.")
    parser.add_argument("--no-hog", action="store_true")
    add_json_argument(parser)
    args = parser.parse_args()
    figures = Results("gates")
    recording = record(args.runs, hog=not args.no_hog)
    p50, p95, p99 = np.percentile(recording, [50, 95, 99])
    print(
        f"recording: {len(recording)} single-row runs "
        f"({'with' if not args.no_hog else 'without'} a CPU hog per core): "
        f"p50 {p50:.0f} µs, p95 {p95:.0f} µs, p99 {p99:.0f} µs"
    )
    rng = random.Random(7)
    print(
        f"{args.stages} stages per case; {len(FLEET)} devices "
        f"(rpi3 ×3, rpi4 ×1.6, jetson ×1), {STAGE_DEVICES} updated per stage"
    )
    for requests in args.requests:
        print(f"\n{requests} requests per device on each side: share of stages failed")
        print(
            f"| case | {' | '.join(GATES)} | paired gates | cross-device rule | wanted |\n"
            f"|---|{'---|' * len(GATES)}---|---|---|"
        )
        readings: dict[str, dict[str, list[float]]] = {}
        for case in CASES:
            failed = dict.fromkeys((*GATES, "paired", "cross"), 0)
            values = readings.setdefault(case, {"latency_p50_ratio": [], "latency_p95_ratio": []})
            for _ in range(args.stages):
                pairs, rest = stage(recording, case, requests, rng)
                results = paired(pairs, rest, requests)
                for name in GATES:
                    failed[name] += results[name].status == "fail"
                failed["paired"] += any(r.status == "fail" for r in results.values())
                failed["cross"] += cross_device_fails(pairs, rest)
                for name, kept in values.items():
                    if results[name].value is not None:
                        kept.append(results[name].value or 0.0)
            wanted = "≤ 1%" if case == "good" else "≥ 99%"
            shares = " | ".join(
                f"{failed[k] / args.stages:.1%}" for k in (*GATES, "paired", "cross")
            )
            print(f"| {case} | {shares} | {wanted} |")
            group = f"{case}, {requests} requests a device: stages failed"
            better: Better = "lower" if case == "good" else "higher"
            cross = figures.add(
                group, "cross-device rule", failed["cross"] / args.stages * 100, "%", better=better
            )
            figures.add(
                group,
                "paired gates",
                failed["paired"] / args.stages * 100,
                "%",
                better=better,
                baseline=cross,
                target=wanted,
                headline=requests == 300 and case != "20% errors",
            )
        print("\nthe readings behind the thresholds (median over the stage of per-device ratios):")
        for case, values in readings.items():
            for name, kept in values.items():
                if not kept:
                    print(f"  {case:<11} {name}: not judged on {requests} requests")
                    continue
                low, high = np.percentile(kept, [0.5, 99.5])
                print(
                    f"  {case:<11} {name}: 0.5th percentile {low:.2f}, "
                    f"median {np.median(kept):.2f}, 99.5th percentile {high:.2f}"
                )
    figures.write(args.json)


if __name__ == "__main__":
    main()
