"""The fleet on a three-node broker cluster (NATS with JetStream's MQTT, every stream on all
three nodes): a real `edgefleet server` and real agents spread over the nodes, the node the
control plane and a third of the devices are connected to killed -9 in the middle of a
staged rollout. Every device converges on the new version, and every telemetry window each
agent produced is stored exactly once. The rig runs the control plane and the agents with
``mqtt_subscribe_qos = 0``: on nats-server 2.9 a QoS 1 subscription is a JetStream consumer,
and one granted again after the kill could deliver nothing (docs/broker-cluster.md)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from simulator.data import sensor_rows, write_sensor_csv
from simulator.rig.agents import AgentThread, wait_until
from simulator.rig.cluster import NatsCluster, nats_server_path
from simulator.rig.fleet import OPEN_GATES, Fleet, open_cluster_fleet

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        nats_server_path() is None,
        reason="nats-server is not installed (apt-get install "
        "nats-server): the broker-cluster test runs on a three-node NATS cluster",
    ),
]
DEVICES = 9  # three on each node (each lists every node, its own first)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with open_cluster_fleet(tmp_path) as fleet:
        yield fleet


class Load:
    """Inference on every agent, on the agent's own loop, so that every window has requests
    (an empty window is not sent)."""

    def __init__(self, agents: list[AgentThread]) -> None:
        self.agents = agents
        self.row = np.asarray(sensor_rows(1, seed=5)[0], dtype=np.float32)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _predict(self, agent: AgentThread) -> None:
        with contextlib.suppress(Exception):  # nothing serving yet, or a swap under way
            agent.a.predict("fault", self.row)

    def _run(self) -> None:
        while not self.stopped.wait(0.05):
            for agent in self.agents:
                agent.loop.call_soon_threadsafe(self._predict, agent)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


def stored_seqs(fleet: Fleet, device_id: str) -> list[int]:
    windows = fleet.api.get(f"/devices/{device_id}/telemetry", params={"limit": 10_000}).json()
    return [w["window"]["seq"] for w in windows]


def test_a_node_killed_mid_rollout_loses_no_device_and_no_window(fleet: Fleet) -> None:
    cluster = fleet.broker
    assert isinstance(cluster, NatsCluster)
    csv = write_sensor_csv(fleet.tmp / "s.csv", 400, seed=1)
    dataset = fleet.api.post(
        "/datasets", params={"name": "s", "label": "fault"}, content=csv.read_bytes()
    ).json()
    v1, v2 = fleet.train(dataset["id"], 0), fleet.train(dataset["id"], 1)
    for i in range(DEVICES):
        fleet.add(f"dev-{i}", "berlin", node=i % 3)
    agents = list(fleet.agents.values())
    wait_until(lambda: all(a.a.session.connected.is_set() for a in agents), what="all online")
    ports = [node.mqtt_port for node in cluster.nodes]

    def nodes() -> list[int]:
        return [ports.index(a.a.session.broker.port) for a in agents]

    # Each on its first node, unless that one was slow to answer on a busy machine.
    assert len(set(nodes())) > 1

    first = fleet.rollout(v1, {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES})
    fleet.wait_status(first["id"], "succeeded", timeout=120)
    wait_until(lambda: all(fleet.serving(d) == v1 for d in fleet.agents), what="v1 everywhere")
    load = Load(agents)
    try:
        wait_until(
            lambda: all(len(stored_seqs(fleet, d)) >= 2 for d in fleet.agents),
            timeout=60,
            what="telemetry from every device",
        )
        # A canary, then everyone: the canary soaks 3 s, and the node dies in that soak.
        plan = {"stages": [{"count": 1, "soak_seconds": 3}, {"percent": 100}], "gates": OPEN_GATES}
        second = fleet.rollout(v2, plan)
        wait_until(
            lambda: any(fleet.serving(d) == v2 for d in fleet.agents), what="the canary on v2"
        )
        # The node the control plane is on dies (its own ingest and publishing move too).
        killed = next(
            i
            for i in range(len(cluster.nodes))
            if any(c.startswith("edgefleet-cp-") for c in cluster.mqtt_clients(i))
        )
        on_killed = nodes().count(killed)
        cluster.kill_node(killed)
        assert fleet.api.get(f"/rollouts/{second['id']}").json()["status"] == "running"
        assert sum(fleet.serving(d) == v2 for d in fleet.agents) < DEVICES

        fleet.wait_status(second["id"], "succeeded", timeout=180)
        wait_until(
            lambda: all(fleet.serving(d) == v2 for d in fleet.agents),
            timeout=60,
            what="v2 everywhere",
        )
        # Every device on a surviving node: those of the dead node moved.
        assert on_killed and killed not in nodes()
        assert all(a.a.session.connected.is_set() for a in agents)
        # Telemetry keeps flowing after the switch.
        after = {d: len(stored_seqs(fleet, d)) for d in fleet.agents}
        wait_until(
            lambda: all(len(stored_seqs(fleet, d)) > after[d] + 1 for d in fleet.agents),
            timeout=60,
            what="telemetry after the node died",
        )
    finally:
        load.stop()

    # The load has stopped (a last window may still close with the requests it had): wait
    # until, for every agent, what it produced is exactly what the control plane stored and
    # its outbox is empty. A lost window would keep this from ever holding.
    def settled(device_id: str, agent: AgentThread) -> bool:
        produced = agent.a.outbox.last_seq("telemetry")
        stored = stored_seqs(fleet, device_id)
        return len(agent.a.outbox) == 0 and sorted(set(stored)) == list(range(1, produced + 1))

    try:
        wait_until(
            lambda: all(settled(d, a) for d, a in fleet.agents.items()),
            timeout=60,
            what="every produced window stored",
        )
    except AssertionError as exc:
        detail = {
            d: (a.a.outbox.last_seq("telemetry"), len(a.a.outbox), stored_seqs(fleet, d))
            for d, a in fleet.agents.items()
            if not settled(d, a)
        }
        raise AssertionError(f"{exc}: (produced, pending, stored) {detail}") from exc
    for device_id, agent in fleet.agents.items():
        stored = stored_seqs(fleet, device_id)
        assert len(stored) == len(set(stored)), f"{device_id}: a window stored twice"
        assert agent.a.outbox.last_seq("telemetry") > 4
