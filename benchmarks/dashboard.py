"""The dashboard's fleet page with 1,000 devices, against 10 in the same run.

A real `edgefleet server` (SQLite) and a private mosquitto; N devices registered through the
API, each reporting a retained state (one model serving) over MQTT on its own topic, as an
agent does, and ingested by the server's bridge. Then Debian's headless Chromium opens
`/ui/#/fleet` K times: the time from navigation until the first page of 50 devices and the
per-version counts are on screen (median), and the medians of the two API calls the page
makes (`GET /devices?limit=50`, `GET /devices/summary`). Reported as the 1,000-device figures
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


def page_load(driver: Any, url: str, token: str, loads: int, rows: int) -> float:
    driver.get(url + "/ui/")
    driver.execute_script("sessionStorage.setItem('edgefleet-token', arguments[0])", token)
    ready = (
        "return document.querySelectorAll('#fleet tbody tr').length >= arguments[0] && "
        "document.querySelectorAll('#fleet .version-count').length > 0"
    )
    spent = []
    for _ in range(loads):
        driver.get("about:blank")
        began = time.perf_counter()
        driver.get(url + "/ui/#/fleet")
        deadline = began + 60
        while not driver.execute_script(ready, rows):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the fleet page did not show {rows} devices in 60 s")
            time.sleep(0.005)
        spent.append(time.perf_counter() - began)
    return statistics.median(spent)


def measure(devices: int, loads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-dashboard-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "broker")
        broker.add_control_plane_user(CP_PASSWORD)
        broker.start()
        env = {
            "EDGEFLEET_MQTT_URL": broker.control_plane_url(CP_PASSWORD),
            "EDGEFLEET_BROKER_ACCOUNTS": broker.accounts,
        }
        server = start_server(root / "cp", env=env)
        try:
            csv = write_sensor_csv(root / "s.csv", 300, seed=1)
            env = server.env
            run_cli("datasets", "upload", str(csv), "--name", "s", "--label", "fault", env=env)
            run_cli("train", "--model", "fault", "--dataset", "1", "--algorithm", "logreg", env=env)
            populate(server, broker, devices)
            headers = {"Authorization": f"Bearer {server.token}"}
            with httpx.Client(base_url=server.url + "/api/v1", headers=headers) as api:
                listing = median_seconds(lambda: api.get("/devices?limit=50"), loads * 3)
                summary = median_seconds(lambda: api.get("/devices/summary"), loads * 3)
            driver = open_chromium()
            try:
                page = page_load(driver, server.url, server.token, loads, min(devices, PAGE_ROWS))
            finally:
                driver.quit()
        finally:
            stop_server(server)
            broker.stop()
    return {"page_s": page, "list_s": listing, "summary_s": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000")
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {n: measure(n, args.loads) for n in sizes}
    base = results[sizes[0]]
    columns = ("page (median)", "GET /devices?limit=50", "GET /devices/summary")
    print(f"{'devices':>8} {columns[0]:>14} {columns[1]:>22} {columns[2]:>21}")
    for n, r in results.items():
        print(
            f"{n:>8} {r['page_s'] * 1000:>11.0f} ms"
            f" {r['list_s'] * 1000:>19.1f} ms {r['summary_s'] * 1000:>18.1f} ms"
            f"   (× {r['page_s'] / base['page_s']:.2f}, × {r['list_s'] / base['list_s']:.2f},"
            f" × {r['summary_s'] / base['summary_s']:.2f} of {sizes[0]})"
        )


if __name__ == "__main__":
    main()
