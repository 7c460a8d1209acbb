"""The device-agent rig for integration tests: a private mosquitto (the project's config), an
HTTP artifact server with fault modes standing in for the control plane's artifact route,
the control plane's broker identity to publish desired states, test signing keys, and agents
in threads (``start_agent``) or as ``edgefleet agent`` processes (``start_agent_process``)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import AgentSettings
from shared.manifest import ModelManifest
from shared.messages import DesiredState, Phase
from shared.signing import SigningKey
from simulator.broker import MosquittoBroker
from simulator.data import sensor_rows
from simulator.rig.agents import (
    CP_PASSWORD,
    AgentThread,
    ArtifactServer,
    Publisher,
    agent_settings,
    sign_desired,
    trusted_keys,
    wait_until,
)
from simulator.rig.models import make_model
from simulator.rig.server import REPO, edgefleet_cmd

DEVICE = "dev-a"
TOKEN = "ef_device-token-a"  # noqa: S105  (a test rig's throw-away secret)


@dataclass
class Rig:
    tmp: Path
    broker: MosquittoBroker
    artifacts: ArtifactServer
    publisher: Publisher
    model_key: SigningKey
    deploy_key: SigningKey
    trust_path: Path
    agents: list[AgentThread] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    seq: dict[str, int] = field(default_factory=dict)  # the last one signed, per device

    def settings(self, device_id: str = DEVICE, **overrides: Any) -> AgentSettings:
        """A device of the rig against its broker, artifact server and trust store."""
        return agent_settings(
            self.tmp,
            device_id=device_id,
            broker=self.broker,
            token=TOKEN,
            control_plane_url=self.artifacts.url,
            trust_store=self.trust_path,
            **overrides,
        )

    def start_agent(self, **overrides: Any) -> AgentThread:
        agent = AgentThread(self.settings(**overrides))
        self.agents.append(agent)
        return agent

    def config_file(self, settings: AgentSettings) -> Path:
        """``settings`` as the TOML file ``edgefleet agent --config`` reads."""
        config = self.tmp / f"{settings.device_id}.toml"
        values = settings.model_dump(mode="json", exclude={"labels"})
        values["token"] = TOKEN
        config.write_text(  # JSON strings and numbers are TOML
            "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if v is not None)
        )
        return config

    def start_agent_process(self, **overrides: Any) -> subprocess.Popen[bytes]:
        """``edgefleet agent --config`` in its own process, so it can be killed with -9."""
        config = self.config_file(self.settings(**overrides))
        log = (self.tmp / "agent.log").open("ab")
        process = subprocess.Popen(
            edgefleet_cmd("agent", "--config", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        self.processes.append(process)
        return process

    def reported_version(self) -> int | None:
        """The active version in the device's latest state message."""
        states = [json.loads(p) for t, p in self.publisher.received if t.endswith("/state")]
        if not states or not states[-1]["models"]:
            return None
        active = states[-1]["models"][0]["active"]
        return int(active["version"]) if active else None

    def publish(self, desired: DesiredState | bytes | str) -> None:
        """A desired state to its device (raw bytes or text: to the rig's first device)."""
        if isinstance(desired, DesiredState):
            self.publisher.desired(desired.device_id, desired.model_dump_json())
        else:
            self.publisher.desired(DEVICE, desired)

    def next_desired(self, device_id: str, models: list[ModelManifest]) -> DesiredState:
        """``models`` for ``device_id``, signed with the device's next sequence number."""
        self.seq[device_id] = self.seq.get(device_id, 0) + 1
        return sign_desired(self.deploy_key, device_id, self.seq[device_id], models)


@contextlib.contextmanager
def open_rig(tmp_path: Path, devices: Sequence[str] = (DEVICE,)) -> Iterator[Rig]:
    """Broker (with an account per device), artifact server and publisher up; agents
    started on the rig are stopped (and agent processes killed) on the way out."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.add_control_plane_user(CP_PASSWORD)
    for device in devices:
        broker.add_user(device, TOKEN)
    broker.start()
    model_key, deploy_key, trust_path = trusted_keys(tmp_path)
    artifacts = ArtifactServer(token=TOKEN)
    publisher = Publisher(broker)
    rig = Rig(tmp_path, broker, artifacts, publisher, model_key, deploy_key, trust_path)
    try:
        yield rig
    finally:  # the broker and servers go even if an agent fails to stop
        try:
            for agent in rig.agents:
                agent.stop()
        finally:
            for process in rig.processes:
                process.kill()
                process.wait(10)
            publisher.close()
            artifacts.close()
            broker.stop()


def serving(agent: AgentThread, name: str = "fault") -> int | None:
    slot = agent.a.updater.slots.get(name)
    if slot is None or slot.current is None:
        return None
    return slot.current.manifest.version


def install_v1(rig: Rig, agent: AgentThread) -> bytes:
    manifest, data = make_model(rig.model_key, version=1)
    rig.artifacts.add(manifest.sha256, data)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [manifest]))
    wait_until(
        lambda: serving(agent) == 1 and agent.a.updater.slots["fault"].phase is Phase.SERVING,
        what="v1 serving",
    )
    return data


def active_bytes(agent: AgentThread) -> bytes:
    slot = agent.a.updater.slots["fault"]
    assert slot.current is not None
    return agent.a.store.artifact_path("fault", slot.current.manifest.sha256).read_bytes()


def refused(agent: AgentThread, reason: str, *, model_level: bool) -> bool:
    updater = agent.a.updater
    error = updater.slots["fault"].last_error if model_level else updater.last_error
    return error is not None and error.reason == reason


def predict_ok(agent: AgentThread) -> None:
    X, _ = sensor_rows(3, seed=9)
    prediction = agent.a.predict_rows("fault", X.tolist())
    assert prediction.outputs.labels is not None
    assert len(prediction.outputs.labels) == 3
