"""A device on the shipped defaults, as a field device runs it: `edgefleet agent` with a config
that sets only the keys `--print-config` marks as required (probation 50 requests or 30 s,
60 s windows, the local API on 8500), no inference traffic, a real mosquitto from
`deploy/mosquitto/`, a real `edgefleet server`, downloads over a slow link, and `kill -9`
at every step. Every update and every rollback is taken; the state never says what is not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import DEFAULT_CONFIG
from shared.broker_address import CONTROL_PLANE_USER
from shared.topics import Channel, Topics
from simulator.broker import MosquittoBroker
from simulator.data import sensor_rows, write_sensor_csv
from simulator.faults import StallProxy
from simulator.rig.agents import CP_PASSWORD, AgentThread, wait_until
from simulator.rig.fleet import open_fleet
from simulator.rig.server import REPO, ServerProcess, edgefleet_cmd, start_server, stop_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICE = "dev-field"
SHIPPED_PROBATION_SECONDS = 30  # what the test waits for: the default, not a test setting
LINK_BYTES_PER_SECOND = 256 * 1024  # a slow uplink: the large model takes ~10 s


class SlowLink:
    """The device's HTTP path to the control plane, through a rate-limited relay running in
    its own thread and event loop."""

    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = StallProxy("127.0.0.1", port, rate_bytes_per_second=LINK_BYTES_PER_SECOND)
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Field:
    tmp: Path
    broker: MosquittoBroker
    server: ServerProcess
    api: httpx.Client
    link: SlowLink
    config: Path
    desired: list[bytes] = field(default_factory=list)  # every desired state published
    agent: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.tmp / "agent"

    def start_agent(self) -> None:
        log = (self.tmp / "agent.log").open("ab")
        self.agent = subprocess.Popen(
            edgefleet_cmd("agent", "--config", str(self.config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def kill_and_restart(self) -> None:
        assert self.agent is not None
        self.agent.send_signal(signal.SIGKILL)
        self.agent.wait(10)
        self.start_agent()

    def deploy(self, version: int) -> None:
        response = self.api.post(
            "/deployments", json={"device_id": DEVICE, "model": "fault", "version": str(version)}
        )
        assert response.status_code == 201, response.text
        assert response.json()["published"]

    def status(self) -> dict[str, Any]:
        state = self.api.get(f"/devices/{DEVICE}").json()["state"]
        return dict(state["models"][0]) if state and state["models"] else {}

    def serving(self, version: int, phase: str = "serving") -> bool:
        status = self.status()
        active = status.get("active")
        return bool(active and active["version"] == version and status["phase"] == phase)

    def log(self) -> str:
        return (self.tmp / "agent.log").read_text()


def train(api: httpx.Client, dataset: int, algorithm: str, seed: int, **params: Any) -> int:
    job = api.post(
        "/models/fault/train",
        json={"dataset_id": dataset, "algorithm": algorithm, "seed": seed, "params": params},
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    wait_until(
        lambda: api.get(f"/jobs/{job_id}").json()["status"] in ("succeeded", "failed"),
        timeout=180,
        what="training",
    )
    result = api.get(f"/jobs/{job_id}").json()
    assert result["status"] == "succeeded", result
    return int(result["result_version"])


def required_only_config(tmp: Path, token: str, broker_port: int, control_plane_url: str) -> Path:
    """The printed config's required keys, filled in; nothing else."""
    import tomllib

    printed = tomllib.loads(DEFAULT_CONFIG)
    values = {
        "device_id": DEVICE,
        "broker_url": f"mqtt://{DEVICE}:{token}@127.0.0.1:{broker_port}",
        "control_plane_url": control_plane_url,
        "token": token,
        "trust_store": str(tmp / "trust.json"),
        "data_dir": str(tmp / "agent"),
    }
    required = {
        line.split("=")[0].strip() for line in DEFAULT_CONFIG.splitlines() if "# required" in line
    }
    assert set(values) == required and required <= set(printed)
    config = tmp / "agent.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return config


@pytest.fixture
def field_rig(tmp_path: Path) -> Iterator[Field]:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.add_control_plane_user(CP_PASSWORD)
    broker.start()
    env = broker.control_plane_env(CP_PASSWORD)
    server = start_server(tmp_path / "cp", env=env)
    api = server.client()
    link = SlowLink(int(server.url.rsplit(":", 1)[1]))
    registered = api.post("/devices", json={"id": DEVICE, "labels": {"site": "field"}})
    token = registered.json()["token"]
    broker.add_user(DEVICE, token)
    (tmp_path / "trust.json").write_text(api.get("/keys").text)
    config = required_only_config(tmp_path, token, broker.port, link.url)
    rig = Field(tmp_path, broker, server, api, link, config)
    # What the broker delivers to the device, seen from the control plane's account.
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-desired-watcher")
    watcher.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
    watcher.on_message = lambda _c, _u, m: rig.desired.append(bytes(m.payload))
    watcher.connect(broker.host, broker.cp_port)
    watcher.loop_start()
    watcher.subscribe(Topics().device(DEVICE, Channel.DESIRED), qos=1)
    try:
        yield rig
    finally:
        try:
            if rig.agent is not None and rig.agent.poll() is None:
                rig.agent.send_signal(signal.SIGTERM)
                try:
                    rig.agent.wait(20)
                except subprocess.TimeoutExpired:
                    rig.agent.kill()
        finally:
            watcher.loop_stop()
            watcher.disconnect()
            link.close()
            api.close()
            stop_server(server)
            broker.stop()


def test_a_device_on_the_shipped_defaults_takes_every_update_and_rollback(
    field_rig: Field,
) -> None:
    rig, api = field_rig, field_rig.api
    csv = write_sensor_csv(rig.tmp / "sensors.csv", 3000, seed=1)
    upload = api.post(
        "/datasets",
        params={"name": "sensors", "label": "fault"},
        content=csv.read_bytes(),
        headers={"Content-Type": "text/csv"},
    )
    dataset = int(upload.json()["id"])
    v1, v2, v3 = (train(api, dataset, "logreg", seed) for seed in (1, 2, 3))
    v4 = train(api, dataset, "random_forest", 4, n_estimators=60, max_depth=None)
    v5 = train(api, dataset, "logreg", 5)
    big = api.get(f"/models/fault/versions/{v4}").json()
    assert big["size"] > 4 * LINK_BYTES_PER_SECOND, big["size"]  # seconds on the slow link

    # 1. v1: installed, on probation; killed there; on probation again; committed on time.
    rig.start_agent()
    wait_until(lambda: rig.api.get(f"/devices/{DEVICE}").json()["online"], what="online")
    rig.deploy(v1)
    wait_until(lambda: rig.serving(v1, "probation"), timeout=60, what="v1 on probation")
    rig.kill_and_restart()
    wait_until(lambda: rig.serving(v1, "probation"), timeout=60, what="v1 on probation again")
    wait_until(lambda: rig.serving(v1), timeout=SHIPPED_PROBATION_SECONDS * 3, what="v1 committed")
    assert rig.status()["verdict"] == "unjudged" and rig.status()["probation_requests"] == 0

    # 2. v2: committed on time with no traffic; killed after; serves from disk.
    rig.deploy(v2)
    wait_until(lambda: rig.serving(v2, "probation"), timeout=60, what="v2 on probation")
    wait_until(lambda: rig.serving(v2), timeout=SHIPPED_PROBATION_SECONDS * 3, what="v2 committed")
    assert rig.status()["previous"]["version"] == v1
    rig.kill_and_restart()
    wait_until(
        lambda: rig.serving(v2) and rig.api.get(f"/devices/{DEVICE}").json()["online"],
        timeout=60,
        what="v2 after restart",
    )

    # 3. v3 on probation, then a rollback to v2 (a newer desired state): v2 serves again at
    # once, without waiting out v3's probation; killed after, it stays so.
    rig.deploy(v3)
    wait_until(lambda: rig.serving(v3, "probation"), timeout=60, what="v3 on probation")
    rig.deploy(v2)
    wait_until(lambda: rig.serving(v2), timeout=SHIPPED_PROBATION_SECONDS * 0.8, what="v2 back")
    assert "set aside for a rollback" in rig.log()
    rig.kill_and_restart()
    wait_until(lambda: rig.serving(v2), timeout=60, what="v2 after restart")

    # 4. v4, large, over the slow link: killed mid-download, resumed; then a rollback (v2
    # again) while the download is in flight calls it off at once.
    part = rig.data_dir / "staging" / f"{big['sha256']}.part"
    rig.deploy(v4)
    wait_until(lambda: part.exists() and part.stat().st_size > 100_000, what="v4 in flight")
    assert rig.status()["phase"] == "downloading"
    assert rig.status()["target"]["version"] == v4
    rig.kill_and_restart()
    had = part.stat().st_size
    wait_until(lambda: part.stat().st_size > had + 100_000, timeout=60, what="v4 resumed")
    assert part.stat().st_size < big["size"]
    rig.deploy(v2)
    wait_until(
        lambda: rig.status().get("phase") == "serving" and rig.status().get("target") is None,
        timeout=20,
        what="the download called off",
    )
    assert rig.serving(v2)
    assert part.exists()  # kept for a later resume
    rig.kill_and_restart()
    wait_until(lambda: rig.serving(v2), timeout=60, what="v2 after restart")

    # 5. v5, whose artifact is corrupted on the control plane: refused with its reason;
    # v2 serves byte-identical; after kill -9 the refusal is still reported, not retried.
    corrupted = api.get(f"/models/fault/versions/{v5}").json()["sha256"]
    blob = next((rig.tmp / "cp").rglob(corrupted))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    v2_sha = api.get(f"/models/fault/versions/{v2}").json()["sha256"]
    rig.deploy(v5)
    wait_until(lambda: rig.status().get("phase") == "failed", timeout=60, what="v5 refused")
    assert rig.status()["last_error"]["reason"] == "sha256_mismatch"
    assert rig.status()["active"]["version"] == v2
    served = rig.data_dir / "models" / "fault" / f"{v2_sha}.onnx"
    assert served.read_bytes() == next((rig.tmp / "cp").rglob(v2_sha)).read_bytes()
    rig.kill_and_restart()
    wait_until(lambda: rig.api.get(f"/devices/{DEVICE}").json()["online"], what="back online")
    wait_until(lambda: rig.status().get("phase") == "failed", timeout=30, what="still refused")
    assert rig.status()["last_error"]["reason"] == "sha256_mismatch"
    assert rig.status()["active"]["version"] == v2
    assert rig.log().count(f"model fault v{v5} refused") == 1  # not tried again

    # 6. The data dir wiped: the device learns its floor from the control plane, takes the
    # newest desired state (v2 again), and refuses a replay of an older genuine one (v1's).
    rig.deploy(v2)
    wait_until(lambda: rig.serving(v2), timeout=60, what="v2 wanted again")
    assert rig.agent is not None
    rig.agent.send_signal(signal.SIGKILL)
    rig.agent.wait(10)
    shutil.rmtree(rig.data_dir)
    rig.start_agent()
    wait_until(lambda: rig.serving(v2, "probation"), timeout=60, what="v2 after the wipe")
    old = next(p for p in rig.desired if json.loads(p)["models"][0]["manifest"]["version"] == v1)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-replayer")
    publisher.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
    publisher.connect(rig.broker.host, rig.broker.cp_port)
    publisher.loop_start()
    try:
        publisher.publish(Topics().device(DEVICE, Channel.DESIRED), old, qos=1).wait_for_publish(10)
        wait_until(
            lambda: (
                (api.get(f"/devices/{DEVICE}").json()["state"]["last_error"] or {}).get("reason")
                == "replay"
            ),
            timeout=30,
            what="the replay refused",
        )
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    assert rig.status()["active"]["version"] == v2
    with contextlib.suppress(FileNotFoundError):
        assert not list((rig.data_dir / "staging").glob("*.part"))


def test_a_wiped_device_numbers_its_telemetry_above_what_was_stored(tmp_path: Path) -> None:
    # Half-second windows (not the shipped 60 s): this test is about numbering.
    with open_fleet(tmp_path) as fleet:
        agent = fleet.add("dev-wiped", "field")
        dataset = fleet.api.post(
            "/datasets",
            params={"name": "sensors", "label": "fault"},
            content=write_sensor_csv(tmp_path / "s.csv", 400, seed=2).read_bytes(),
            headers={"Content-Type": "text/csv"},
        ).json()["id"]
        version = fleet.train(int(dataset), seed=1)
        fleet.api.post(
            "/deployments",
            json={"device_id": "dev-wiped", "model": "fault", "version": str(version)},
        )
        wait_until(lambda: fleet.serving("dev-wiped") == version, what="serving")

        def stored() -> list[int]:
            windows = fleet.api.get("/devices/dev-wiped/telemetry").json()
            return [int(w["window"]["seq"]) for w in windows]

        def traffic_until(predicate: Callable[[], bool]) -> None:
            X, _ = sensor_rows(2, seed=3)
            deadline = time.monotonic() + 30
            while not predicate():
                assert time.monotonic() < deadline, "no telemetry stored"
                fleet.agents["dev-wiped"].a.predict_rows("fault", X.tolist())
                time.sleep(0.05)

        traffic_until(lambda: len(stored()) >= 3)
        agent.stop()  # its last window is published on the way out
        with contextlib.closing(sqlite3.connect(agent.settings.data_dir / "outbox.db")) as db:
            (before,) = db.execute(
                "SELECT value FROM counters WHERE name = 'seq:telemetry'"
            ).fetchone()
        wait_until(lambda: max(stored()) == before, what="every window stored")
        shutil.rmtree(agent.settings.data_dir)
        again = fleet.agents["dev-wiped"] = AgentThread(agent.settings)
        wait_until(lambda: fleet.serving("dev-wiped") == version, what="serving after wipe")
        assert again.a.updater.floor == fleet.api.get("/devices/dev-wiped").json()["deployment_seq"]
        traffic_until(lambda: max(stored()) > before)
        after = [seq for seq in stored() if seq > before]
        assert after[0] == before + 1  # numbered on from the stored ones: none lost as dups
