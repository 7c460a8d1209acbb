"""How fast a newer desired state pre-empts what the agent is doing.

A real agent (in a thread), a private mosquitto and an HTTP artifact server
(``simulator.rig.agent_rig``): the time from publishing a rollback (a desired state naming
the rollback slot's version) to that version serving again,

* while the device is on probation with the version being rolled back (shipped probation:
  50 requests or 30 s, no traffic), and
* while it is mid-download of a large artifact (a random forest of several MB over a
  320 KiB/s link),

next to what the device would have waited had the rollback queued behind the probation or
the download (their remaining time at the moment of the rollback). Medians and p90 of
``--runs`` rounds.

    .venv/bin/python benchmarks/preemption.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results import Results, add_json_argument

from agent.slot import ModelSlot
from shared.manifest import ModelManifest
from shared.messages import Phase
from simulator.data import sensor_rows
from simulator.rig.agent_rig import DEVICE, Rig, open_rig, serving
from simulator.rig.agents import AgentThread, sign_desired, wait_until
from simulator.rig.models import make_model

SLOW_BYTES_PER_SECOND = 320 * 1024  # the artifact server's "slow" mode


def until(predicate: Callable[[], bool], timeout: float = 120.0) -> float:
    """Seconds until ``predicate()`` holds, polled every millisecond."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError
        time.sleep(0.001)
    return time.perf_counter() - start


class Round:
    """Versions numbered by the desired-state sequence, so every round has new ones."""

    def __init__(self, rig: Rig, agent: AgentThread) -> None:
        self.rig, self.agent, self.seq = rig, agent, 0
        self.rows = sensor_rows(1, seed=0)[0].tolist()

    def publish(self, manifest: ModelManifest) -> None:
        self.seq += 1
        self.rig.publish(sign_desired(self.rig.deploy_key, DEVICE, self.seq, [manifest]))

    def small(self) -> ModelManifest:
        manifest, data = make_model(self.rig.model_key, version=self.seq + 1, seed=self.seq)
        self.rig.artifacts.add(manifest.sha256, data)
        return manifest

    def committed(self, manifest: ModelManifest) -> None:
        """Installed, then judged by the 50 requests the shipped probation asks for."""
        self.publish(manifest)
        wait_until(lambda: serving(self.agent) == manifest.version, what="installed")
        for _ in range(50):
            self.agent.a.predict_rows("fault", self.rows)
        wait_until(lambda: self.slot().phase is Phase.SERVING, what="committed")

    def slot(self) -> ModelSlot:
        return self.agent.a.updater.slots["fault"]


def during_probation(run: Round) -> tuple[float, float]:
    v1 = run.small()
    run.committed(v1)
    v2 = run.small()
    run.publish(v2)
    wait_until(lambda: serving(run.agent) == v2.version, what="v2 on probation")
    probation = run.slot().probation
    assert probation is not None
    run.publish(v1)
    waited = probation.remaining()
    return until(lambda: serving(run.agent) == v1.version), waited


def during_download(run: Round, big: tuple[ModelManifest, bytes]) -> tuple[float, float]:
    v1 = run.small()
    run.committed(v1)
    v2 = run.small()
    run.committed(v2)
    manifest, data = big
    run.rig.artifacts.add(manifest.sha256, data, mode="slow")
    run.agent.a.store.discard_staging(manifest.sha256)  # from the start, every round
    run.publish(manifest)
    part = run.agent.a.store.staging_path(manifest.sha256)
    wait_until(lambda: part.exists() and part.stat().st_size > 256 * 1024, what="in flight")
    run.publish(v1)
    waited = (len(data) - part.stat().st_size) / SLOW_BYTES_PER_SECOND
    return until(lambda: serving(run.agent) == v1.version), waited


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def summary(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:9.1f} {p90(values) * 1000:9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    add_json_argument(parser)
    args = parser.parse_args()
    results: dict[str, tuple[list[float], list[float]]] = {
        "on probation": ([], []),
        "mid-download": ([], []),
    }
    with tempfile.TemporaryDirectory() as tmp, open_rig(Path(tmp)) as rig:
        big = make_model(
            rig.model_key,
            version=1_000_000,
            algorithm="random_forest",
            params={"n_estimators": 100, "max_depth": None},
            rows=4000,
            seed=99,
        )
        print(
            f"large artifact: {len(big[1]) / 1e6:.1f} MB at {SLOW_BYTES_PER_SECOND // 1024} KiB/s"
        )
        # The shipped probation (50 requests or 30 s); no local API, one-hour windows.
        run = Round(rig, rig.start_agent(probation_requests=50, probation_seconds=30))
        for _ in range(args.runs):
            for name, (took, waited) in (
                ("on probation", during_probation(run)),
                ("mid-download", during_download(run, big)),
            ):
                results[name][0].append(took)
                results[name][1].append(waited)
    print(f"\nrollback: publish → the rollback slot's version serving ({args.runs} runs)")
    figures = Results("preemption")
    print(f"{'while':14} {'p50 ms':>9} {'p90 ms':>9}   {'queued behind it, p50 ms':>24}")
    for name, (times, queued) in results.items():
        print(f"{name:14} {summary(times)}   {statistics.median(queued) * 1000:24.0f}")
        group = f"rollback while {name}, publish → serving"
        behind = figures.add(group, "queued behind it", statistics.median(queued) * 1000, "ms")
        figures.add(
            group,
            "pre-empted",
            statistics.median(times) * 1000,
            "ms",
            baseline=behind,
            headline=True,
            note=f"p90 {p90(times) * 1000:.1f} ms, {args.runs} runs",
        )
    figures.write(args.json)


if __name__ == "__main__":
    main()
