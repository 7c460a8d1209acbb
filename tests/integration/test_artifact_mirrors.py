"""Artifacts from mirrors: a real nginx serving a blob-store-shaped directory, a real agent,
the rig's artifact server standing in for the control plane. A mirror is not trusted: the
manifest's sha256 decides, wrong bytes fall back to the control plane, and a mirror never
sees the device's token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.manifest import ModelManifest
from shared.messages import Phase
from simulator.broker import free_port
from simulator.rig.agent_rig import DEVICE, Rig, active_bytes, serving
from simulator.rig.agents import AgentThread, sign_desired, wait_until
from simulator.rig.models import make_model
from simulator.rig.nginx import NGINX, NginxMirror

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(NGINX is None, reason="needs Debian's nginx (scripts/test.sh installs it)"),
]


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[NginxMirror]:
    served = NginxMirror(tmp_path / "nginx", tmp_path / "blobs")
    served.start()
    try:
        yield served
    finally:
        served.stop()


def deploy(rig: Rig, seq: int, manifest: ModelManifest, mirrors: list[str]) -> None:
    rig.publish(sign_desired(rig.deploy_key, DEVICE, seq, [manifest], mirrors=mirrors))


def settled(agent: AgentThread, version: int) -> bool:
    slot = agent.a.updater.slots.get("fault")
    return serving(agent) == version and slot is not None and slot.phase is Phase.PROBATION


def asked_control_plane(rig: Rig, sha256: str) -> bool:
    return any(sha == sha256 for sha, _ in rig.artifacts.requests)


def test_a_device_fetches_from_the_mirror_and_never_shows_it_its_token(
    rig: Rig, mirror: NginxMirror
) -> None:
    agent = rig.start_agent()
    manifest, data = make_model(rig.model_key, version=1)
    mirror.place(manifest.sha256, data)
    rig.artifacts.add(manifest.sha256, data)  # the fallback: not needed
    deploy(rig, 1, manifest, [mirror.url + "/"])
    wait_until(lambda: settled(agent, 1), what="v1 from the mirror")
    assert active_bytes(agent) == data
    assert not asked_control_plane(rig, manifest.sha256)
    sha = manifest.sha256
    assert mirror.requests() == [f"GET /{sha[:2]}/{sha} 200 auth=[-] range=[-]"]  # no token


def test_wrong_bytes_from_a_mirror_are_refused_and_the_control_plane_serves(
    rig: Rig, mirror: NginxMirror
) -> None:
    agent = rig.start_agent()
    manifest, data = make_model(rig.model_key, version=1)
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0xFF  # same size, one byte changed
    mirror.place(manifest.sha256, bytes(tampered))
    rig.artifacts.add(manifest.sha256, data)
    deploy(rig, 1, manifest, [mirror.url])
    wait_until(lambda: settled(agent, 1), what="v1 from the control plane")
    assert active_bytes(agent) == data  # not one byte of the mirror's
    assert asked_control_plane(rig, manifest.sha256)
    assert [line.split()[2] for line in mirror.requests()] == ["200"]  # it was asked first
    assert agent.a.updater.slots["fault"].last_error is None  # the model was not refused
    assert not list(agent.a.store.staging_dir.iterdir())  # nothing of it left behind


def test_a_mirror_that_is_down_or_lacks_the_file_costs_one_attempt(
    rig: Rig, mirror: NginxMirror
) -> None:
    agent = rig.start_agent()
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    v1, data1 = make_model(rig.model_key, version=1)
    v2, data2 = make_model(rig.model_key, version=2, seed=1)
    mirror.place(v1.sha256, data1)  # the mirror has v1 only
    rig.artifacts.add(v1.sha256, data1)
    rig.artifacts.add(v2.sha256, data2)
    deploy(rig, 1, v1, [down, mirror.url])
    wait_until(lambda: settled(agent, 1), what="v1 from the second mirror")
    assert not asked_control_plane(rig, v1.sha256)
    deploy(rig, 2, v2, [down, mirror.url])
    wait_until(lambda: settled(agent, 2), what="v2 from the control plane")
    assert asked_control_plane(rig, v2.sha256)
    assert active_bytes(agent) == data2
    assert [line.split()[2] for line in mirror.requests()] == ["200", "404"]
