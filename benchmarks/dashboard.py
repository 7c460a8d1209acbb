"""The dashboard's fleet and rollout pages with 1,000 devices, against 10 in the same run.

A real `edgefleet server` (SQLite) and a private mosquitto; N devices registered through the
API, each reporting a retained state (one model serving) over MQTT on its own topic, as an
agent does, and ingested by the server's bridge. Then Debian's headless Chromium opens
`/ui/#/fleet` K times: the time from navigation until the first page of 50 devices and the
per-version counts are on screen (median), and the medians of the two API calls the page
makes (`GET /devices?limit=50`, `GET /devices/summary`). Then a canary rollout of a second
version to every device, held on its first stage: the same for `/ui/#/rollouts/{id}` (until
gates, cohorts and the devices-per-version chart show) and its heaviest calls
(`GET /rollouts/{id}`, `GET /rollouts/{id}/versions`). Reported as the 1,000-device figures
and their ratio to the 10-device ones: this machine is noisy, ratios travel.

    .venv/bin/python benchmarks/dashboard.py [--sizes 10,1000] [--loads 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's packages, whatever the working directory

import httpx  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from results import Results, add_json_argument  # noqa: E402

from shared.broker_address import CONTROL_PLANE_USER  # noqa: E402
from shared.messages import DeviceState, ModelRef, ModelStatus, Phase  # noqa: E402
from shared.topics import Channel, Topics  # noqa: E402
from simulator.broker import MosquittoBroker  # noqa: E402
from simulator.data import write_sensor_csv  # noqa: E402
from simulator.rig.agents import CP_PASSWORD, wait_until  # noqa: E402
from simulator.rig.browser import open_chromium  # noqa: E402
from simulator.rig.server import ServerProcess, run_cli, start_server, stop_server  # noqa: E402

PAGE_ROWS = 50


def state(device_id: str, sha256: str) -> str:
    return DeviceState(
        device_id=device_id,
        seq=1,
        agent_version="bench",
        labels={"site": f"site-{hash(device_id) % 7}"},
        deployment_seq=1,
        models=[
            ModelStatus(
                name="fault",
                active=ModelRef(name="fault", version=1, sha256=sha256),
                previous=None,
                phase=Phase.SERVING,
            )
        ],
        dropped_messages=0,
        outbox_dropped=0,
        updated_at=datetime.now(UTC),
    ).model_dump_json()


def populate(server: ServerProcess, broker: MosquittoBroker, devices: int) -> None:
    with server.client() as api:
        sha256 = api.get("/models/fault/versions/1").json()["sha256"]
        for i in range(devices):
            response = api.post("/devices", json={"id": f"dev-{i:05d}", "labels": {}})
            response.raise_for_status()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-states")
    publisher.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
    publisher.connect(broker.host, broker.cp_port)
    publisher.loop_start()
    topics = Topics()
    for i in range(devices):
        device = f"dev-{i:05d}"
        info = publisher.publish(
            topics.device(device, Channel.STATE), state(device, sha256), qos=1, retain=True
        )
        info.wait_for_publish(30)
    publisher.loop_stop()
    publisher.disconnect()
    with server.client() as api:
        wait_until(
            lambda: (
                sum(s["devices"] for s in api.get("/devices/summary").json()["serving"]) == devices
            ),
            timeout=300,
            what=f"{devices} states ingested",
        )


def median_seconds(call: Any, times: int) -> float:
    spent = []
    for _ in range(times):
        began = time.perf_counter()
        call()
        spent.append(time.perf_counter() - began)
    return statistics.median(spent)


FLEET_READY = (
    "return document.querySelectorAll('#fleet tbody tr').length >= arguments[0] && "
    "document.querySelectorAll('#fleet .version-count').length > 0"
)
ROLLOUT_READY = (
    "return document.querySelectorAll('#gates tbody tr').length > 0 && "
    "document.querySelectorAll('#versions-chart polyline').length > 0 && "
    "document.querySelectorAll('.cohort a').length >= arguments[0]"
)


def page_load(
    driver: Any, url: str, token: str, loads: int, page: str, ready: str, n: int
) -> float:
    """Median seconds from navigating to ``page`` until the script ``ready`` (given ``n``)
    says the page shows what it should."""
    driver.get(url + "/ui/")
    driver.execute_script("sessionStorage.setItem('edgefleet-token', arguments[0])", token)
    spent = []
    for _ in range(loads):
        driver.get("about:blank")
        began = time.perf_counter()
        driver.get(f"{url}/ui/{page}")
        deadline = began + 60
        while not driver.execute_script(ready, n):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{page} was not ready in 60 s")
            time.sleep(0.005)
        spent.append(time.perf_counter() - began)
    return statistics.median(spent)


def measure(devices: int, loads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-dashboard-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "broker")
        broker.add_control_plane_user(CP_PASSWORD)
        broker.start()
        env = broker.control_plane_env(CP_PASSWORD)
        server = start_server(root / "cp", env=env)
        try:
            csv = write_sensor_csv(root / "s.csv", 300, seed=1)
            env = server.env
            run_cli("datasets", "upload", str(csv), "--name", "s", "--label", "fault", env=env)
            run_cli("train", "--model", "fault", "--dataset", "1", "--algorithm", "logreg", env=env)
            populate(server, broker, devices)
            run_cli("train", "--model", "fault", "--dataset", "1", "--algorithm", "logreg", env=env)
            headers = {"Authorization": f"Bearer {server.token}"}
            with httpx.Client(base_url=server.url + "/api/v1", headers=headers) as api:
                listing = median_seconds(lambda: api.get("/devices?limit=50"), loads * 3)
                summary = median_seconds(lambda: api.get("/devices/summary"), loads * 3)
                plan = {"preset": "canary", "soak_seconds": 3600}  # stays on its first stage
                created = api.post(
                    "/rollouts", json={"model": "fault", "version": "2", "plan": plan}
                )
                created.raise_for_status()
                rollout = created.json()
                path = f"/rollouts/{rollout['id']}"
                one = median_seconds(lambda: api.get(path), loads * 3)
                history = median_seconds(lambda: api.get(path + "/versions"), loads * 3)
            driver = open_chromium()
            try:
                fleet = page_load(
                    driver,
                    server.url,
                    server.token,
                    loads,
                    "#/fleet",
                    FLEET_READY,
                    min(devices, PAGE_ROWS),
                )
                cohort = min(6, rollout["stages"][0]["target"])
                rollout_page = page_load(
                    driver, server.url, server.token, loads, f"#{path}", ROLLOUT_READY, cohort
                )
            finally:
                driver.quit()
        finally:
            stop_server(server)
            broker.stop()
    return {
        "fleet page": fleet,
        "GET /devices?limit=50": listing,
        "GET /devices/summary": summary,
        "rollout page": rollout_page,
        "GET /rollouts/{id}": one,
        "GET /rollouts/{id}/versions": history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000")
    parser.add_argument("--loads", type=int, default=7)
    add_json_argument(parser)
    args = parser.parse_args()
    figures = Results("dashboard")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {n: measure(n, args.loads) for n in sizes}
    base = results[sizes[0]]
    print(f"{'median, ms':<30}" + "".join(f"{n:>10} devices" for n in sizes) + "   ratio")
    for name in base:
        cells = "".join(f"{results[n][name] * 1000:>18.1f}" for n in sizes)
        ratio = results[sizes[-1]][name] / base[name]
        print(f"{name:<30}{cells}   × {ratio:.2f}")
        smallest = figures.add(name, f"{sizes[0]:,} devices", base[name] * 1000, "ms")
        for n in sizes[1:]:
            figures.add(
                name,
                f"{n:,} devices",
                results[n][name] * 1000,
                "ms",
                baseline=smallest,
                headline=name in ("fleet page", "rollout page") and n == sizes[-1],
            )
    figures.write(args.json)


if __name__ == "__main__":
    main()
