from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine

from control_plane.app import create_app
from control_plane.config import ServerSettings, load_settings
from control_plane.fleet.bridge import MqttBridge
from control_plane.store.datadir import init_data_dir
from control_plane.store.db import create_db_engine, migrate
from shared.messages import DeviceState, TelemetryWindow
from simulator.broker import MosquittoBroker
from simulator.rig.agent_rig import Rig, open_rig


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A migrated database, empty: the test runs once on SQLite and once on PostgreSQL."""
    if request.param == "postgres":
        url = str(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'edgefleet.db'}"
    engine = create_db_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


@dataclass
class Api:
    client: TestClient
    settings: ServerSettings
    token: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def get(self, path: str, **kw: Any) -> Any:
        kw.setdefault("headers", self.auth())
        return self.client.get("/api/v1" + path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        kw.setdefault("headers", self.auth())
        return self.client.post("/api/v1" + path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        kw.setdefault("headers", self.auth())
        return self.client.put("/api/v1" + path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        kw.setdefault("headers", self.auth())
        return self.client.delete("/api/v1" + path, **kw)

    def upload(
        self,
        data: bytes | str,
        *,
        name: str = "sensors",
        label: str = "fault",
        nan_policy: str = "reject",
        token: str | None = None,
    ) -> Any:
        body = data.encode() if isinstance(data, str) else data
        return self.post(
            "/datasets",
            params={"name": name, "label": label, "nan_policy": nan_policy},
            content=body,
            headers={**self.auth(token), "Content-Type": "text/csv"},
        )

    def token_for(self, role: str) -> str:
        response = self.post("/tokens", json={"name": f"test-{role}", "role": role})
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def train(self, model: str, **body: Any) -> Any:
        return self.post(f"/models/{model}/train", json=body)

    def wait_job(self, job_id: int, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.get(f"/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed"):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")

    def train_ok(self, model: str, **body: Any) -> dict[str, Any]:
        response = self.train(model, **body)
        assert response.status_code == 202, response.text
        job = self.wait_job(response.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        return job

    def blob_files(self) -> list[Path]:
        root = self.settings.blobs_dir
        return [p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp"]


MakeApi = Callable[..., Api]


class MqttDevice:
    """A device's broker connection (paho, as any client would)."""

    def __init__(self, broker: MosquittoBroker, device_id: str, token: str) -> None:
        self.id = device_id
        self.received: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.username_pw_set(device_id, token)
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, bytes(m.payload)))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        for channel in ("desired", "ack"):
            self.client.subscribe(f"edgefleet/v1/devices/{device_id}/{channel}", qos=1)

    def send(self, channel: str, payload: str | bytes) -> None:
        self.client.publish(
            f"edgefleet/v1/devices/{self.id}/{channel}", payload, qos=1
        ).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def window(device_id: str, seq: int) -> str:
    now = datetime.now(UTC)
    return TelemetryWindow(
        device_id=device_id, seq=seq, window_start=now, window_end=now, models=[], outbox_dropped=0
    ).model_dump_json()


def state(device_id: str, seq: int = 1) -> str:
    """A device's state report with nothing installed."""
    return DeviceState(
        device_id=device_id,
        seq=seq,
        agent_version="test",
        labels={},
        deployment_seq=0,
        models=[],
        dropped_messages=0,
        outbox_dropped=0,
        updated_at=datetime.now(UTC),
    ).model_dump_json()


def bridge_of(api: Api) -> MqttBridge:
    bridge = api.client.app.state.bridge  # type: ignore[attr-defined]
    assert isinstance(bridge, MqttBridge)
    return bridge


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return None


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[MakeApi]:
    """Build a control plane (real app, real worker processes) with settings overrides."""
    clients: list[TestClient] = []

    def make(database_url: str | None = None, **overrides: Any) -> Api:
        settings = load_settings(
            tmp_path / f"data{len(clients)}", database_url=database_url, **overrides
        )
        token = init_data_dir(settings).token
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return Api(client, settings, token)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def api(make_api: MakeApi) -> Api:
    return make_api()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A private mosquitto, an artifact server and test keys for agent tests."""
    with open_rig(tmp_path) as opened:
        yield opened
