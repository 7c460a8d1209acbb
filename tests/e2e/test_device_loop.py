"""The whole device loop on one machine, as a user runs it: mosquitto, `edgefleet server
--mqtt-url`, `edgefleet devices add`, `edgefleet agent --config`, `edgefleet deploy`, local
inference in both protocols, and telemetry that survives broker and agent crashes."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.signing import KeyRole, SigningKey
from shared.trust import SignedTrustStore, TrustedKey, TrustStore
from simulator.broker import MosquittoBroker, free_port
from simulator.data import FEATURES, sensor_rows
from simulator.rig.agents import CP_PASSWORD, wait_until
from simulator.rig.server import (
    REPO,
    ServerProcess,
    edgefleet_cmd,
    run_cli,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration


@dataclass
class Loop:
    tmp: Path
    broker: MosquittoBroker
    server: ServerProcess
    trust: Path

    def add_device(self, device_id: str) -> str:
        result = run_cli("devices", "add", device_id, "--label", "site=berlin", env=self.server.env)
        token = result.stdout.strip().splitlines()[-1]
        self.broker.add_user(device_id, token)
        return token

    def agent_config(self, device_id: str, token: str, **extra: Any) -> Path:
        values: dict[str, Any] = {
            "device_id": device_id,
            "broker_url": f"mqtt://{device_id}:{token}@127.0.0.1:{self.broker.port}",
            "control_plane_url": self.server.url,
            "token": token,
            "trust_store": str(self.trust),
            "data_dir": str(self.tmp / device_id),
            "api_port": free_port(),
            # 1 s windows and 0.5 s probation (shipped: 60 s, 30 s or 50 requests): this test
            # is about the loop; tests/e2e/test_agent_defaults.py runs the shipped values.
            "window_seconds": 1,
            "probation_seconds": 0.5,
            "probation_requests": 0,
            "reconnect_max_seconds": 1,
        }
        values.update(extra)
        lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]  # JSON values are TOML
        path = self.tmp / f"{device_id}.toml"
        path.write_text("\n".join(lines) + '\n\n[labels]\nsite = "berlin"\n')
        return path

    def start_agent(self, config: Path) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{config.stem}.log").open("ab")
        return subprocess.Popen(
            edgefleet_cmd("agent", "--config", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def device(self, device_id: str) -> dict[str, Any]:
        with self.server.client() as client:
            result: dict[str, Any] = client.get(f"/devices/{device_id}").json()
            return result

    def stored_seqs(self, device_id: str) -> list[int]:
        with self.server.client() as client:
            windows = client.get(f"/devices/{device_id}/telemetry").json()
        return [w["window"]["seq"] for w in windows]


def stop_agent(agent: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as systemd stops it; a hang is a failure (and the process is killed)."""
    agent.send_signal(signal.SIGTERM)
    try:
        return agent.wait(20)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait(10)
        raise


def active_version(device: dict[str, Any]) -> int | None:
    state = device.get("state")
    if not state or not state["models"] or state["models"][0]["active"] is None:
        return None
    return int(state["models"][0]["active"]["version"])


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.add_control_plane_user(CP_PASSWORD)
    broker.start()
    mqtt_url = broker.control_plane_url(CP_PASSWORD)
    env = {"EDGEFLEET_MQTT_URL": mqtt_url, "EDGEFLEET_BROKER_ACCOUNTS": broker.accounts}
    server = start_server(tmp_path / "cp", env=env)
    csv = tmp_path / "sensors.csv"
    from simulator.data import write_sensor_csv

    write_sensor_csv(csv, 400, seed=1)
    dataset = (
        run_cli(
            "datasets", "upload", str(csv), "--name", "sensors", "--label", "fault", env=server.env
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    run_cli(
        "train", "--model", "fault", "--dataset", dataset, "--algorithm", "logreg", env=server.env
    )
    trust = tmp_path / "trust.json"
    trust.write_text(httpx.get(server.url + "/api/v1/keys").text)
    try:
        yield Loop(tmp_path, broker, server, trust)
    finally:
        stop_server(server)
        broker.stop()


def test_deploy_serve_and_report(loop: Loop) -> None:
    token = loop.add_device("dev-1")
    config = loop.agent_config("dev-1", token, api_metrics=True)
    agent = loop.start_agent(config)
    try:
        wait_until(lambda: loop.device("dev-1")["online"], what="agent online")
        deployed = run_cli("deploy", "fault:1", "--device", "dev-1", env=loop.server.env)
        assert deployed.stdout.strip().splitlines()[-1] == "1"
        assert "published" in deployed.stderr
        wait_until(lambda: active_version(loop.device("dev-1")) == 1, what="v1 active")

        port = int(
            next(
                line.split("=")[1]
                for line in config.read_text().splitlines()
                if line.startswith("api_port")
            )
        )
        base = f"http://127.0.0.1:{port}"
        X, _ = sensor_rows(2, seed=4)
        infer = httpx.post(
            f"{base}/v2/models/fault/infer",
            json={
                "inputs": [
                    {"name": "input", "shape": [2, 6], "datatype": "FP32", "data": X.tolist()}
                ]
            },
        )
        assert infer.status_code == 200, infer.text
        assert infer.json()["model_version"] == "1"
        named = httpx.post(
            f"{base}/v1/predict", json={"features": dict(zip(FEATURES, X[0].tolist(), strict=True))}
        )
        assert named.status_code == 200, named.text
        assert named.json()["request_id"]
        bad = httpx.post(f"{base}/v1/predict", json={"features": {"temperature_c": 1.0}})
        assert bad.status_code == 422
        scraped = httpx.get(f"{base}/metrics")
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
        v1 = {"model": "fault", "version": "1"}
        requests = families["edgefleet_agent_inference_requests"].samples
        assert [s.value for s in requests if s.labels == v1] == [2]  # infer and predict
        latency = families["edgefleet_agent_inference_seconds"].samples
        count = [s.value for s in latency if s.name.endswith("_count") and s.labels == v1]
        assert count == [2]
        (info,) = families["edgefleet_agent_model_info"].samples
        assert info.labels in ({**v1, "phase": "probation"}, {**v1, "phase": "serving"})
        assert "edgefleet_agent_outbox_messages" in families

        wait_until(lambda: len(loop.stored_seqs("dev-1")) >= 1, what="telemetry stored")
        listing = run_cli("devices", "list", env=loop.server.env).stdout
        assert "dev-1" in listing
        assert "fault v1" in listing
    finally:
        assert stop_agent(agent) == 0  # clean shutdown
    wait_until(lambda: not loop.device("dev-1")["online"], what="offline after SIGTERM")


def test_telemetry_survives_broker_and_agent_crashes(loop: Loop) -> None:
    token = loop.add_device("dev-2")
    config = loop.agent_config("dev-2", token, window_seconds=0.3)
    port = int(
        next(
            line.split("=")[1]
            for line in config.read_text().splitlines()
            if line.startswith("api_port")
        )
    )
    agent = loop.start_agent(config)
    stop_load = threading.Event()

    def load() -> None:  # keeps every window non-empty
        X, _ = sensor_rows(1, seed=5)
        body = {"features": dict(zip(FEATURES, X[0].tolist(), strict=True))}
        with httpx.Client(timeout=2) as client:
            while not stop_load.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    client.post(f"http://127.0.0.1:{port}/v1/predict", json=body)
                stop_load.wait(0.02)

    try:
        wait_until(lambda: loop.device("dev-2")["online"], what="agent online")
        run_cli("deploy", "fault:1", "--device", "dev-2", env=loop.server.env)
        wait_until(lambda: active_version(loop.device("dev-2")) == 1, what="v1 active")
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        wait_until(lambda: len(loop.stored_seqs("dev-2")) >= 3, what="first windows")

        loop.broker.kill()  # the broker dies; windows pile up in the agent's outbox
        threading.Event().wait(1.5)
        loop.broker.start()
        seen = len(loop.stored_seqs("dev-2"))
        wait_until(
            lambda: len(loop.stored_seqs("dev-2")) > seen + 2, what="windows after broker restart"
        )

        agent.send_signal(signal.SIGKILL)  # the agent dies without a goodbye
        agent.wait(10)
        agent = loop.start_agent(config)
        wait_until(lambda: loop.device("dev-2")["online"], timeout=30, what="agent back")
        seen = len(loop.stored_seqs("dev-2"))
        wait_until(
            lambda: len(loop.stored_seqs("dev-2")) > seen + 2, what="windows after agent restart"
        )
    finally:
        stop_load.set()
        stop_agent(agent)

    outbox = sqlite3.connect(loop.tmp / "dev-2" / "outbox.db")
    produced = outbox.execute("SELECT value FROM counters WHERE name = 'seq:telemetry'").fetchone()[
        0
    ]
    pending = {
        seq for (seq,) in outbox.execute("SELECT seq FROM outbox WHERE channel = 'telemetry'")
    }
    outbox.close()
    stored = loop.stored_seqs("dev-2")
    assert len(stored) == len(set(stored))  # each window stored exactly once
    # Every window the agent produced is stored, or still waits in its outbox (the last
    # ones, whose ack had not arrived when it stopped): none was lost.
    assert set(stored) | pending == set(range(1, produced + 1))
    assert len(pending) <= 2


def test_a_device_follows_key_rotations_and_refuses_a_forged_trust_store(loop: Loop) -> None:
    """`edgefleet keys rotate` and `retire` while the server and the agent run: the device
    moves one trust-store version at a time, keeps serving through the window, takes the
    re-signed manifest of what it serves, still verifies it after a restart; a version
    signed by an unknown key changes nothing."""
    data_dir = str(loop.server.data_dir)
    token = loop.add_device("dev-k")
    config = loop.agent_config("dev-k", token)
    followed = loop.tmp / "dev-k" / "trust-store.json"
    env = loop.server.env

    def followed_version() -> int:
        return json.loads(followed.read_text()).get("version", 1) if followed.exists() else 1

    agent = loop.start_agent(config)
    try:
        wait_until(lambda: loop.device("dev-k")["online"], what="agent online")
        run_cli("deploy", "fault:1", "--device", "dev-k", env=env)
        wait_until(lambda: active_version(loop.device("dev-k")) == 1, what="v1 active")

        rotated = run_cli("keys", "rotate", "--role", "model", "--data-dir", data_dir)
        assert rotated.stdout.strip().splitlines()[-1] == "2"
        again = run_cli("keys", "rotate", "--role", "model", "--data-dir", data_dir, check=False)
        assert again.returncode == 1 and "retire the old key first" in again.stderr
        v2 = (
            run_cli("train", "--model", "fault", "--dataset", "1", "--algorithm", "logreg", env=env)
            .stdout.strip()
            .splitlines()[-1]
        )
        run_cli("deploy", f"fault:{v2}", "--device", "dev-k", env=env)
        wait_until(lambda: active_version(loop.device("dev-k")) == 2, what="v2 (new key)")
        assert followed_version() == 2

        run_cli("keys", "rotate", "--role", "deployment", "--data-dir", data_dir)
        run_cli("deploy", "fault:1", "--device", "dev-k", env=env)
        wait_until(lambda: active_version(loop.device("dev-k")) == 1, what="v1 back")
        assert followed_version() == 3

        retired = run_cli("keys", "retire", "--role", "model", "--data-dir", data_dir)
        assert retired.stdout.strip().splitlines()[-1] == "4"
        with loop.server.client() as api:
            v1 = api.get("/models/fault/versions/1").json()
            keys = api.get("/keys").json()
        new_model_key = v1["manifest"]["key_id"]
        assert [k["key_id"] for k in keys["keys"] if k["role"] == "model"] == [new_model_key]
        stored = loop.tmp / "dev-k" / "models" / "fault" / f"{v1['sha256']}.manifest.json"
        wait_until(  # the leader publishes the re-issued desired states at its next tick
            lambda: (
                followed_version() == 4
                and json.loads(stored.read_text())["key_id"] == new_model_key
            ),
            what="trust store 4 and v1's manifest signed again",
        )
    finally:
        assert stop_agent(agent) == 0
    agent = loop.start_agent(config)  # v1 verifies again from disk, under version 4 only
    try:
        wait_until(lambda: loop.device("dev-k")["online"], what="back online")
        device = loop.device("dev-k")
        assert active_version(device) == 1
        assert device["state"]["models"][0]["last_error"] is None

        # A version 5 signed by a key no version trusts: refused, nothing changes.
        stranger = SigningKey.generate()
        current = TrustStore.model_validate_json(followed.read_text())
        forged = SignedTrustStore.sign(
            TrustStore(
                version=5,
                keys=[
                    *current.keys,
                    TrustedKey.from_verify_key(KeyRole.MODEL, stranger.verify_key),
                ],
            ),
            [stranger],
        )
        with sqlite3.connect(loop.server.data_dir / "edgefleet.db") as db:
            db.execute(
                "INSERT INTO trust_store_version (version, document, created_at) "
                "VALUES (5, ?, CURRENT_TIMESTAMP)",
                (forged.model_dump_json(),),
            )
        run_cli("deploy", "fault:2", "--device", "dev-k", env=env)
        wait_until(
            lambda: (
                (loop.device("dev-k")["state"]["last_error"] or {}).get("reason")
                == "trust_store_unsigned"
            ),
            what="the forged version refused",
        )
        assert followed_version() == 4
        assert active_version(loop.device("dev-k")) == 1
    finally:
        assert stop_agent(agent) == 0
