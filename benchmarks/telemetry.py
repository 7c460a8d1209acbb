"""Telemetry at fleet scale, stored as numbers: ingest, the drift monitor's bucket and a
rollout stage's gate reading, on real SQLite and PostgreSQL, in this process (the MQTT path
around them is measured by ``benchmarks/scale.py``).

Windows are what a device sends for the sensor model (``simulator/rig/models.make_model``:
6 features × 10 bins, 4 classes, 82 latency buckets), made from real rows by
``simulator.data.model_window``.

1. Ingest: JSON windows parsed with the wire model (as the MQTT bridge does) and stored by
   ``store_batch`` in batches of 500, every (device, seq) new: windows/s per database, and
   on PostgreSQL with 1 and 2 processes storing at once (disjoint devices, as two control
   planes splitting ingest would); CPU per window in the storing processes and, for
   PostgreSQL, in its server processes (SQLite works inside the storing process).
2. Monitor: N devices' windows in one bucket; ``Monitor.tick`` judging it (read, merge,
   drift, write the reading) beside what the monitor did before windows were numbers
   (parse N JSON windows, ``merge_windows``).
   The first bucket of a size also simulates its drift thresholds (cached afterwards).
3. Gates: a stage of N devices, each with a window on the old version before its update
   and one on the new version after; ``StageTraffic.read`` on the first tick (reads every
   window) and on a later one (running sums: nothing new to read).

    .venv/bin/python benchmarks/telemetry.py [--sizes 10000,100000] [--ingest 20000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's packages, whatever the working directory
sys.path.insert(0, str(REPO / "benchmarks"))

from fleet import postgres_database  # noqa: E402
from results import Results, add_json_argument  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402
from sqlmodel import Session  # noqa: E402

from control_plane.app import freeze_startup_objects  # noqa: E402
from control_plane.fleet.ingestion import Incoming, store_batch  # noqa: E402
from control_plane.monitoring.drift import merge_windows  # noqa: E402
from control_plane.monitoring.monitor import Monitor  # noqa: E402
from control_plane.rollouts.machine import RolloutStatus  # noqa: E402
from control_plane.rollouts.traffic import Member, StageTraffic  # noqa: E402
from control_plane.store.db import create_db_engine, migrate  # noqa: E402
from control_plane.store.tables import (  # noqa: E402
    Dataset,
    Model,
    ModelVersion,
    Rollout,
    RolloutDevice,
)
from shared.manifest import ModelManifest  # noqa: E402
from shared.messages import ModelWindow, TelemetryWindow  # noqa: E402
from shared.signing import SigningKey  # noqa: E402
from simulator.data import model_window, sensor_rows  # noqa: E402
from simulator.rig.models import make_model  # noqa: E402
from simulator.rig.procs import named_cpu_seconds  # noqa: E402

BATCH = 500
BUCKET = timedelta(minutes=1)
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def model_windows(manifest: ModelManifest, count: int, version: int) -> list[ModelWindow]:
    """``count`` distinct windows of ~100 rows each, ready to stamp with device and seq."""
    X, y = sensor_rows(100 * 64, seed=version)
    distinct = [
        model_window(manifest.reference, X[i * 100 : (i + 1) * 100], y[i * 100 : (i + 1) * 100], i)
        for i in range(64)
    ]
    return [
        distinct[i % 64].model_copy(update={"name": manifest.name, "version": version})
        for i in range(count)
    ]


def window(device: str, seq: int, end: datetime, model: ModelWindow) -> TelemetryWindow:
    return TelemetryWindow(
        device_id=device,
        seq=seq,
        window_start=end - timedelta(seconds=50),
        window_end=end,
        models=[model],
        outbox_dropped=0,
    )


# --- 1. ingest ---------------------------------------------------------------------------------


def ingest_worker(
    url: str,
    worker: int,
    payloads: list[bytes],
    out: multiprocessing.Queue,  # type: ignore[type-arg]
    measured: Any,
) -> None:
    engine = create_db_engine(url)
    freeze_startup_objects()  # as the server does once it is up
    parse = TelemetryWindow.model_validate_json
    start, cpu = time.perf_counter(), time.process_time()
    stored = 0
    for at in range(0, len(payloads), BATCH):
        messages: list[Incoming] = [parse(p) for p in payloads[at : at + BATCH]]
        stored += store_batch(engine, messages).inserted
    out.put((worker, stored, time.perf_counter() - start, time.process_time() - cpu))
    measured.wait()  # the database's backends live as long as their connections
    engine.dispose()


def payloads_for(manifest: ModelManifest, worker: int, count: int, devices: int) -> list[bytes]:
    models = model_windows(manifest, 64, 1)
    return [
        window(
            f"w{worker}-dev-{i % devices:06d}",
            1 + i // devices,
            T0 + timedelta(minutes=i // devices),
            models[i % 64],
        )
        .model_dump_json()
        .encode()
        for i in range(count)
    ]


def bench_ingest(url: str, label: str, manifest: ModelManifest, count: int, procs: int) -> float:
    """Windows/s with ``procs`` processes each storing ``count`` windows at once."""
    loads = [payloads_for(manifest, w, count, 10_000) for w in range(procs)]
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    measured = multiprocessing.Event()
    workers = [
        multiprocessing.Process(target=ingest_worker, args=(url, w, loads[w], out, measured))
        for w in range(procs)
    ]
    database_cpu = named_cpu_seconds("postgres")
    start = time.perf_counter()
    for p in workers:
        p.start()
    results = [out.get() for _ in workers]
    wall = time.perf_counter() - start
    database_cpu = named_cpu_seconds("postgres") - database_cpu
    measured.set()
    for p in workers:
        p.join()
    stored = sum(r[1] for r in results)
    if stored != count * procs:
        raise RuntimeError(f"{label}: {stored} of {count * procs} windows stored")
    rate = float(stored / max(r[2] for r in results))
    ours = sum(r[3] for r in results) / stored * 1e6
    theirs = database_cpu / stored * 1e6 if label == "PostgreSQL" else 0.0
    print(
        f"   {label:<14}{procs:>6}{stored:>10,}{wall:>9.2f}{rate:>13,.0f}"
        f"{ours:>14.0f}{theirs:>14.0f}"
    )
    return rate


# --- 2. monitor ----------------------------------------------------------------------------------


def register(engine: Engine, manifest: ModelManifest) -> None:
    with Session(engine) as session:
        dataset = Dataset(
            name="sensors",
            version=1,
            sha256="0" * 64,
            size=1,
            rows=1,
            label_column="fault",
            label_kind="class",
            nan_policy="reject",
            features=manifest.input.features,
        )
        session.add(dataset)
        session.add(Model(name=manifest.name, task="classification", latest_version=1))
        session.flush()
        assert dataset.id is not None
        session.add(
            ModelVersion(
                model_name=manifest.name,
                version=manifest.version,
                sha256=manifest.sha256,
                size=manifest.size,
                algorithm="logreg",
                dataset_id=dataset.id,
                metrics={},
                parity_max_abs_diff=0.0,
                parity_label_disagreements=0,
                manifest=manifest.model_dump_json(),
            )
        )
        session.commit()


def fill(engine: Engine, windows: list[TelemetryWindow]) -> None:
    for at in range(0, len(windows), 5_000):
        store_batch(engine, list[Incoming](windows[at : at + 5_000]))


def bench_monitor(engine: Engine, manifest: ModelManifest, n: int) -> tuple[float, float, float]:
    """Seconds for the monitor to judge a bucket of ``n`` windows: the first (which also
    simulates the drift thresholds' null distribution for that bucket size, then cached)
    and the next; and for the old way (parse ``n`` JSON windows, merge) on the same windows."""
    models = model_windows(manifest, n, manifest.version)
    buckets = []
    for b in range(2):
        end = T0 + b * BUCKET + timedelta(seconds=30)
        buckets.append([window(f"dev-{i:06d}", 1 + b, end, m) for i, m in enumerate(models)])
        fill(engine, buckets[-1])
    monitor = Monitor(engine, bucket_seconds=60, grace_seconds=0, submit=lambda _job: None)
    timings = []
    for b in range(2):
        start = time.perf_counter()
        monitor.tick(T0 + (b + 1) * BUCKET + timedelta(seconds=1))
        timings.append(time.perf_counter() - start)
    with engine.connect() as conn:
        readings = conn.execute(text("SELECT count(*), min(windows) FROM drift_result")).one()
    if tuple(readings) != (2, n):
        raise RuntimeError(f"the monitor judged {tuple(readings)} (buckets, windows) of (2, {n})")
    payloads = [w.model_dump_json() for w in buckets[1]]
    start = time.perf_counter()
    merge_windows(TelemetryWindow.model_validate_json(p).models[0] for p in payloads)
    before = time.perf_counter() - start
    return timings[0], timings[1], before


# --- 3. gates ------------------------------------------------------------------------------------


def bench_gates(engine: Engine, manifest: ModelManifest, n: int) -> tuple[float, float]:
    """Seconds for a stage's gate reading over ``n`` devices: first tick, later tick."""
    assigned_at = T0 + timedelta(minutes=10)
    rollout = Rollout(
        id="bench",
        model_name=manifest.name,
        version=2,
        selector="",
        plan={},
        status=RolloutStatus.RUNNING,
        stage=0,
        stage_started_at=assigned_at,
        created_by="bench",
    )
    old = model_windows(manifest, n, 1)
    new = model_windows(manifest, n, 2)
    with Session(engine, expire_on_commit=False) as session:
        session.add(rollout)
        session.flush()
        for i in range(n):
            session.add(
                RolloutDevice(
                    rollout_id="bench",
                    device_id=f"stage-{i:06d}",
                    rank=i,
                    assigned_stage=0,
                    assigned_at=assigned_at,
                    previous_version=1,
                )
            )
        session.commit()
    before = assigned_at - timedelta(minutes=1)
    after = assigned_at + timedelta(minutes=1)
    fill(engine, [window(f"stage-{i:06d}", 1, before, old[i]) for i in range(n)])
    fill(engine, [window(f"stage-{i:06d}", 2, after, new[i]) for i in range(n)])
    members = {f"stage-{i:06d}": Member(assigned_at, 1) for i in range(n)}
    clock = [0.0]
    traffic = StageTraffic(settle_seconds=30, clock=lambda: clock[0])
    timings = []
    for advance in (0.0, 60.0, 1.0):
        clock[0] += advance
        with Session(engine) as session:
            start = time.perf_counter()
            pairs, _ = traffic.read(
                session, rollout, members, assigned_at, timedelta(hours=1), None
            )
            timings.append(time.perf_counter() - start)
        assert sum(p.after.requests for p in pairs) == sum(w.requests for w in new)
    return timings[0], timings[2]


# --- main ----------------------------------------------------------------------------------------


def fresh_engine(url: str) -> Engine:
    engine = create_db_engine(url)
    migrate(engine)
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000", help="devices, comma-separated")
    parser.add_argument("--ingest", type=int, default=20_000, help="windows per process")
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("telemetry")
    sizes = [int(s) for s in args.sizes.split(",")]
    manifest, _ = make_model(SigningKey.generate(), name="sensor", version=1)
    print(f"# .venv/bin/python benchmarks/telemetry.py --sizes {args.sizes}")
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as pg:
        urls: list[tuple[str, Callable[[], str]]] = []
        counter = iter(range(1000))
        urls.append(("SQLite", lambda: f"sqlite:///{Path(tmp) / f'db-{next(counter)}.db'}"))
        if pg is not None:
            urls.append(("PostgreSQL", lambda: recreate(pg)))
        print("\n## 1. ingest: parse + store_batch, batches of 500")
        print(
            f"   {'database':<14}{'procs':>6}{'windows':>10}{'wall s':>9}{'windows/s':>13}"
            f"{'CPU µs/window':>14}{'database µs':>14}"
        )
        for label, make in urls:
            one = None
            for procs in (1, 2) if label == "PostgreSQL" else (1,):
                url = make()
                fresh_engine(url).dispose()
                rate = bench_ingest(url, label, manifest, args.ingest, procs)
                figure = results.add(
                    f"ingest, {label}, batches of {BATCH}",
                    f"{procs} process{'es' if procs > 1 else ''}",
                    rate,
                    "windows/s",
                    better="higher",
                    baseline=one,
                )
                one = one or figure
        print("\n## 2. monitor: a bucket of N windows, judged (read, merge, drift, write)")
        print(
            f"   {'database':<14}{'N':>9}{'first s':>10}{'next s':>10}"
            f"{'JSON parse+merge s':>20}{'ratio':>8}"
        )
        for label, make in urls:
            for n in sizes:
                engine = fresh_engine(make())
                register(engine, manifest)
                cold, warm, before = bench_monitor(engine, manifest, n)
                print(
                    f"   {label:<14}{n:>9,}{cold:>10.3f}{warm:>10.3f}{before:>20.3f}"
                    f"{before / warm:>7.1f}×"
                )
                engine.dispose()
                group = f"monitor, a bucket of {n:,} windows, {label}"
                old = results.add(group, "JSON parse + merge_windows (before)", before, "s")
                results.add(group, "Monitor.tick, first (simulates thresholds)", cold, "s")
                results.add(
                    group,
                    "Monitor.tick, next",
                    warm,
                    "s",
                    baseline=old,
                    headline=label == urls[-1][0] and n == max(sizes),
                )
        print("\n## 3. gates: a stage of N devices, one window before and one after each")
        print(f"   {'database':<14}{'N':>9}{'first tick s':>14}{'later tick s':>14}")
        for label, make in urls:
            for n in sizes:
                engine = fresh_engine(make())
                first, later = bench_gates(engine, manifest, n)
                print(f"   {label:<14}{n:>9,}{first:>14.3f}{later:>14.3f}")
                engine.dispose()
                group = f"gate reading, a stage of {n:,} devices, {label}"
                tick = results.add(group, "StageTraffic.read, first tick", first, "s")
                results.add(
                    group,
                    "StageTraffic.read, later tick",
                    later,
                    "s",
                    baseline=tick,
                    headline=label == urls[-1][0] and n == max(sizes),
                )
    results.write(args.json)


def recreate(url: str) -> str:
    """The throw-away PostgreSQL database emptied (a fresh schema per measurement)."""
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


if __name__ == "__main__":
    main()
