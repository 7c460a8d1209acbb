"""The agent's subscriptions against real brokers: the QoS it asks for (`mqtt_subscribe_qos`),
what that means on a NATS cluster (a JetStream consumer per subscription at 1, none at 0),
and subscribing again to a topic that stayed silent (`mqtt_resubscribe_seconds`)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.topics import Channel
from simulator.rig.agent_rig import DEVICE, Rig, install_v1, predict_ok, serving
from simulator.rig.agents import (
    AgentThread,
    ArtifactServer,
    agent_settings,
    sign_desired,
    trusted_keys,
    wait_until,
)
from simulator.rig.cluster import NatsCluster, nats_server_path
from simulator.rig.models import make_model

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("qos", [0, 1])
def test_the_agent_subscribes_at_the_configured_qos_and_still_converges(rig: Rig, qos: int) -> None:
    agent = rig.start_agent(mqtt_subscribe_qos=qos)
    wait_until(agent.a.session.connected.is_set, what="connected")
    # What mosquitto granted: it grants what is asked (up to 2).
    assert agent.a.session.granted == {Channel.DESIRED: qos, Channel.ACK: qos}
    install_v1(rig, agent)  # the retained desired state, published at QoS 1
    predict_ok(agent)
    window = agent.call(agent.a.close_window())
    assert window is not None
    wait_until(
        lambda: any(t.endswith("/telemetry") for t, _ in rig.publisher.received),
        what="telemetry published",
    )
    rig.publisher.client.publish(
        rig.publisher.topics.device(DEVICE, Channel.ACK),
        '{"schema_version": 1, "channel": "telemetry", "seqs": [1]}',
        qos=1,
    ).wait_for_publish(10)
    wait_until(lambda: len(agent.a.outbox) == 0, what="the ack delivered at this QoS")


@pytest.mark.parametrize("qos", [0, 1])
def test_a_silent_desired_subscription_is_renewed_and_the_repeat_changes_nothing(
    rig: Rig, qos: int
) -> None:
    """The broker forgets the agent's desired subscription while the connection stays up
    (as a nats-server 2.9 node did after another node died: granted, then silent). With
    `mqtt_resubscribe_seconds` the agent subscribes again and the retained desired state it
    missed arrives; the one already accepted, coming again each time, changes nothing."""
    agent = rig.start_agent(mqtt_subscribe_qos=qos, mqtt_resubscribe_seconds=1.0)
    install_v1(rig, agent)
    session = agent.a.session
    client = session._client  # the broker, not the agent, should lose it: unsubscribe for it
    assert client is not None
    agent.call(client.unsubscribe(rig.publisher.topics.device(DEVICE, Channel.DESIRED)))
    manifest2, data2 = make_model(rig.model_key, version=2)
    rig.artifacts.add(manifest2.sha256, data2)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [manifest2]))
    wait_until(lambda: serving(agent) == 2, timeout=15, what="v2 after subscribing again")
    assert session.connects == 1  # renewed on the same connection, not by reconnecting
    renewed = session.resubscriptions
    assert renewed >= 1
    # Each silent second brings seq 2 again: no refusal, no second install, no error.
    wait_until(lambda: session.resubscriptions >= renewed + 2, what="two more renewals")
    updater = agent.a.updater
    assert updater.last_error is None
    assert updater.dropped_messages == 0
    assert updater.accepted is not None and updater.accepted.seq == 2
    assert serving(agent) == 2
    predict_ok(agent)


def test_without_renewal_a_silent_subscription_stays_silent(rig: Rig) -> None:
    """The control for the test above: the default (0) subscribes again only on reconnect."""
    agent = rig.start_agent()
    install_v1(rig, agent)
    client = agent.a.session._client
    assert client is not None
    agent.call(client.unsubscribe(rig.publisher.topics.device(DEVICE, Channel.DESIRED)))
    manifest2, data2 = make_model(rig.model_key, version=2)
    rig.artifacts.add(manifest2.sha256, data2)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [manifest2]))
    with pytest.raises(AssertionError):
        wait_until(lambda: serving(agent) == 2, timeout=3, what="v2")
    assert agent.a.session.resubscriptions == 0


# --- NATS ---------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    if nats_server_path() is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    with NatsCluster(tmp_path / "nats") as started:
        yield started


def consumer_subjects(cluster: NatsCluster, stream: str) -> list[str]:
    """The filter subjects of the JetStream consumers on ``stream`` (monitoring port)."""
    node = cluster.nodes[0]
    url = (
        f"http://{cluster.host}:{node.http_port}/jsz"
        "?accounts=true&streams=true&consumers=true&config=true"
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        report = json.load(response)
    return [
        consumer["config"].get("filter_subject", "")
        for account in report.get("account_details") or []
        for detail in account.get("stream_detail") or []
        if detail["name"] == stream
        for consumer in detail.get("consumer_detail") or []
    ]


@pytest.mark.skipif(nats_server_path() is None, reason="nats-server is not installed")
def test_on_nats_only_qos_1_subscriptions_are_jetstream_consumers(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """What `mqtt_subscribe_qos = 0` is for: a QoS 1 MQTT subscription on nats-server is a
    JetStream consumer (which a node's death can leave granted but silent), a QoS 0 one is a
    plain NATS subscription. The cluster rig's agents get 0."""
    _, _, trust = trusted_keys(tmp_path)
    tokens = {"dev-q0": "ef_token-q0", "dev-q1": "ef_token-q1"}
    cluster.add_users(tokens)
    artifacts = ArtifactServer()
    agents: list[AgentThread] = []
    try:
        for device_id, overrides in (("dev-q0", {}), ("dev-q1", {"mqtt_subscribe_qos": 1})):
            settings = agent_settings(
                tmp_path,
                device_id=device_id,
                broker=cluster,
                token=tokens[device_id],
                control_plane_url=artifacts.url,
                trust_store=trust,
                **overrides,
            )
            agents.append(AgentThread(settings))
        for agent in agents:
            wait_until(agent.a.session.connected.is_set, timeout=60, what="connected")
        q0, q1 = (agent.a.session for agent in agents)
        assert q0.granted == {Channel.DESIRED: 0, Channel.ACK: 0}
        assert q1.granted == {Channel.DESIRED: 1, Channel.ACK: 1}
        subjects = consumer_subjects(cluster, "$MQTT_msgs")
        assert sorted(s for s in subjects if "dev-q" in s) == [
            "$MQTT.msgs.edgefleet.v1.devices.dev-q1.ack",
            "$MQTT.msgs.edgefleet.v1.devices.dev-q1.desired",
        ]
    finally:
        for agent in agents:
            agent.stop()
        artifacts.close()
