"""scikit-learn `predict_proba` vs onnxruntime on the model edgefleet exports, per algorithm,
single row and 64 rows: medians and p99 in one run, with the speed-up ratio.

    .venv/bin/python benchmarks/inference.py [--repeats N]

The models are trained and exported exactly as the control plane does it (same pipelines,
same skl2onnx options), on the simulator's sensor dataset.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from results import Results, add_json_argument

from agent.inference import session_for
from control_plane.training.algorithms import ALGORITHMS, build_pipeline
from control_plane.training.conversion import INPUT_NAME, export_onnx
from simulator.data import sensor_rows


def timings_us(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    for _ in range(min(50, repeats)):  # warm-up
        call()
    samples = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter_ns()
        call()
        samples[i] = (time.perf_counter_ns() - start) / 1000
    return float(np.median(samples)), float(np.percentile(samples, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("inference")

    X, y = sensor_rows(5000, seed=0)
    X = X.astype(np.float32)
    print(
        f"{'model':<14}{'rows':>5}{'sklearn µs':>22}{'onnxruntime µs':>22}{'speed-up':>10}"
        f"{'ONNX size':>12}"
    )
    print(f"{'':<19}{'median [p99]':>22}{'median [p99]':>22}")
    for name in ("logreg", "random_forest", "hist_gb"):
        algorithm = ALGORITHMS[("classification", name)]
        pipeline = build_pipeline(algorithm, dict(algorithm.defaults), "reject", seed=0)
        pipeline.fit(X, y)
        model_bytes = export_onnx(pipeline, X.shape[1], "classification")
        session = session_for(model_bytes, threads=1)
        for rows in (1, 64):
            batch = np.ascontiguousarray(X[:rows])
            repeats = args.repeats if rows == 1 else max(200, args.repeats // 4)
            sk_med, sk_p99 = timings_us(partial(pipeline.predict_proba, batch), repeats)
            ox_med, ox_p99 = timings_us(partial(session.run, None, {INPUT_NAME: batch}), repeats)
            print(
                f"{name:<14}{rows:>5}{sk_med:>12.1f} [{sk_p99:>7.1f}]"
                f"{ox_med:>12.1f} [{ox_p99:>7.1f}]{sk_med / ox_med:>9.1f}x"
                f"{len(model_bytes):>12,}"
            )
            group = f"{name}, {rows} row{'s' if rows > 1 else ''}"
            sklearn = results.add(group, "scikit-learn predict_proba", sk_med, "µs", p99=sk_p99)
            results.add(
                group,
                "onnxruntime session.run",
                ox_med,
                "µs",
                p99=ox_p99,
                baseline=sklearn,
                headline=rows == 1 and name in ("logreg", "random_forest"),
                note=f"ONNX {len(model_bytes):,} bytes",
            )
    results.write(args.json)


if __name__ == "__main__":
    main()
