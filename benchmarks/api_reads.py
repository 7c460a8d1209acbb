"""API reads at fleet size: what the dashboard and operators ask for, against a real
`edgefleet server` holding N devices, each with a reported state, and an all-at-once
rollout to all of them (no broker: its desired states are signed and stored, not sent).

Per endpoint, 50 requests one after another: p50 and p95 in ms, on SQLite and (when
reachable) PostgreSQL. Pages are 50 devices, as the dashboard asks.

    .venv/bin/python benchmarks/api_reads.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's packages, whatever the working directory
sys.path.insert(0, str(REPO / "benchmarks"))

import httpx  # noqa: E402
from fleet import postgres_database  # noqa: E402
from results import Results, add_json_argument  # noqa: E402
from telemetry import recreate  # noqa: E402

from control_plane.fleet.ingestion import Incoming, store_batch  # noqa: E402
from control_plane.store.db import create_db_engine  # noqa: E402
from shared.messages import DeviceState, ModelRef, ModelStatus, Phase  # noqa: E402
from simulator.data import write_sensor_csv  # noqa: E402
from simulator.rig.fleet import OPEN_GATES  # noqa: E402
from simulator.rig.server import run_cli, start_server, stop_server  # noqa: E402

REQUESTS = 50
REGISTER_BATCH = 10_000  # POST /devices takes at most this many


def report(device_id: str, version: int) -> DeviceState:
    return DeviceState(
        device_id=device_id,
        seq=1,
        agent_version="bench",
        labels={},
        deployment_seq=1,
        models=[
            ModelStatus(
                name="fault",
                active=ModelRef(name="fault", version=version, sha256="a" * 64),
                previous=None,
                phase=Phase.SERVING,
            )
        ],
        dropped_messages=0,
        outbox_dropped=0,
        updated_at=datetime.now(UTC),
    )


def timed(get: Callable[[], httpx.Response]) -> tuple[float, float, float]:
    """p50, p95 and p99 in ms of ``REQUESTS`` calls."""
    times = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        get().raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p95, p99 = (times[int(q * len(times)) - 1] for q in (0.95, 0.99))
    return statistics.median(times), p95, p99


def populate(api: httpx.Client, devices: int, database_url: str) -> str:
    """N devices registered (lists of 10,000), each with a reported state (written to the
    server's database as ingest writes them), and a rollout to all; its path."""
    ids = [f"dev-{i:06d}" for i in range(devices)]
    for at in range(0, devices, REGISTER_BATCH):
        body = [
            {"id": d, "labels": {"site": f"s{i % 20}", "hw": "rpi4" if i % 3 else "jetson"}}
            for i, d in enumerate(ids[at : at + REGISTER_BATCH], start=at)
        ]
        api.post("/devices", json=body, timeout=600).raise_for_status()
    engine = create_db_engine(database_url)
    for at in range(0, devices, 1000):
        store_batch(engine, list[Incoming]([report(d, 1) for d in ids[at : at + 1000]]))
    engine.dispose()
    gates = {**OPEN_GATES, "install_timeout_seconds": 3600}
    plan = {"preset": "all-at-once", "soak_seconds": 0, "gates": gates}
    created = api.post("/rollouts", json={"model": "fault", "version": "1", "plan": plan})
    created.raise_for_status()
    rollout = f"/rollouts/{created.json()['id']}"
    while api.get(rollout).json()["assigned"] < devices:
        time.sleep(0.5)
    return rollout


def reads(api: httpx.Client, rollout: str, devices: int) -> dict[str, Callable[[], httpx.Response]]:
    page = {"limit": 50}
    return {
        "GET /devices?limit=50 (first page)": lambda: api.get("/devices", params=page),
        "GET /devices?limit=50 (last page)": lambda: api.get(
            "/devices", params={**page, "offset": devices - 50}
        ),
        "GET /devices?limit=50&after= (last page)": lambda: api.get(
            "/devices", params={**page, "after": f"dev-{devices - 51:06d}"}
        ),
        "GET /devices?selector=hw=jetson,site=s3": lambda: api.get(
            "/devices", params={**page, "selector": "hw=jetson,site=s3"}
        ),
        "GET /devices/summary": lambda: api.get("/devices/summary"),
        "GET /rollouts/{id}": lambda: api.get(rollout),
        "GET /rollouts/{id}/versions": lambda: api.get(f"{rollout}/versions"),
        "GET /rollouts/{id}/devices?stage=0": lambda: api.get(
            f"{rollout}/devices", params={**page, "stage": 0}
        ),
    }


def measure(
    label: str, devices: int, database_url: str | None, results: Results, largest: bool
) -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-api-") as tmp:
        root = Path(tmp)
        env = {"EDGEFLEET_DATABASE_URL": database_url} if database_url else {}
        server = start_server(root / "cp", env=env)
        cli = server.env
        try:
            csv = write_sensor_csv(root / "s.csv", 300, seed=1)
            run_cli("datasets", "upload", str(csv), "--name", "s", "--label", "fault", env=cli)
            run_cli("train", "--model", "fault", "--dataset", "1", "--algorithm", "logreg", env=cli)
            with server.client() as api:
                url = database_url or f"sqlite:///{root / 'cp' / 'edgefleet.db'}"
                rollout = populate(api, devices, url)
                for name, get in reads(api, rollout, devices).items():
                    p50, p95, p99 = timed(get)
                    print(f"   {label:<12}{devices:>9,}  {name:<42}{p50:>8.1f}{p95:>8.1f}")
                    group = f"{name}, {devices:,} devices"
                    # Against SQLite's figure for the same request and size, when measured.
                    sqlite = next((f for f in results.figures if f.group == group), None)
                    results.add(
                        group,
                        label,
                        p50,
                        "ms",
                        p99=p99,
                        baseline=sqlite,
                        headline=name == "GET /devices/summary" and largest,
                        note=f"p95 {p95:.1f} ms",
                    )
        finally:
            stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--databases", default="sqlite,postgresql")
    add_json_argument(parser)
    args = parser.parse_args()
    results = Results("api_reads")
    sizes = [int(s) for s in args.sizes.split(",")]
    databases = args.databases.split(",")
    print(f"# .venv/bin/python benchmarks/api_reads.py --sizes {args.sizes}", flush=True)
    print(f"   {'database':<12}{'devices':>9}  {'request':<42}{'p50 ms':>8}{'p95 ms':>8}")
    for n in sizes if "sqlite" in databases else []:
        measure("SQLite", n, None, results, n == max(sizes))
    with postgres_database() as pg:
        if pg is not None and "postgresql" in databases:
            for n in sizes:
                measure("PostgreSQL", n, recreate(pg), results, n == max(sizes))
    results.write(args.json)


if __name__ == "__main__":
    main()
