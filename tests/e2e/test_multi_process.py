"""Two control-plane processes on one PostgreSQL: both serve the API and split device
messages (shared subscription); exactly one drives rollouts, and when it is killed with -9
the other takes over within seconds and finishes the rollout."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from control_plane.auth.keys import load_keys
from control_plane.config import load_settings
from control_plane.fleet.deployments import sign_desired
from control_plane.store.db import create_db_engine
from shared.topics import Channel, Topics
from simulator.broker import MosquittoBroker, free_port
from simulator.data import write_sensor_csv
from simulator.rig.agents import CP_PASSWORD, AgentThread, Publisher, agent_settings, wait_until
from simulator.rig.server import ServerProcess, start_server, stop_server

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
OPEN = {"min_requests": 0, "min_devices_reporting": 0}


def leader_flags(urls: list[str]) -> list[bool]:
    flags = []
    for url in urls:
        try:
            flags.append(bool(httpx.get(url + "/api/v1/healthz", timeout=2).json()["leader"]))
        except httpx.HTTPError:
            flags.append(False)
    return flags


@dataclasses.dataclass
class Pair:
    broker: MosquittoBroker
    leader: ServerProcess
    follower: ServerProcess


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[Pair]:
    """Two control-plane processes on one database and one broker, once one of them leads;
    whatever is still running is stopped afterwards."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.add_control_plane_user(CP_PASSWORD)
    broker.start()
    env = {
        "EDGEFLEET_DATABASE_URL": postgres_url,
        "EDGEFLEET_MQTT_SHARED_GROUP": "cp",
        **broker.control_plane_env(CP_PASSWORD),
        "EDGEFLEET_ROLLOUT_TICK_SECONDS": "0.2",
    }
    first = start_server(tmp_path / "cp", env=env)
    second = start_server(
        tmp_path / "cp",
        env=env,
        restart=dataclasses.replace(first, url=f"http://127.0.0.1:{free_port()}"),
    )
    servers = [first, second]
    try:
        wait_until(
            lambda: sorted(leader_flags([first.url, second.url])) == [False, True],
            what="exactly one leader",
        )
        leader_index = leader_flags([first.url, second.url]).index(True)
        yield Pair(broker, servers[leader_index], servers[1 - leader_index])
    finally:
        for server in servers:
            if server.process.poll() is None:
                stop_server(server)
        broker.stop()


def test_leader_killed_mid_rollout_is_replaced(tmp_path: Path, pair: Pair) -> None:
    broker, leader, follower = pair.broker, pair.leader, pair.follower
    agents: list[AgentThread] = []
    try:
        api = follower.client()
        csv = write_sensor_csv(tmp_path / "s.csv", 300, seed=1)
        dataset = api.post(
            "/datasets", params={"name": "s", "label": "fault"}, content=csv.read_bytes()
        ).json()
        versions = []
        for seed in (0, 1):
            job = api.post(
                "/models/fault/train",
                json={"dataset_id": dataset["id"], "algorithm": "logreg", "seed": seed},
            )
            job_id = job.json()["id"]

            def trained(job_id: int = job_id) -> bool:
                return bool(api.get(f"/jobs/{job_id}").json()["status"] == "succeeded")

            wait_until(trained, timeout=120, what="training")
            versions.append(api.get(f"/jobs/{job_id}").json()["result_version"])
        trust = tmp_path / "trust.json"
        trust.write_text(api.get("/keys").text)
        for i in range(4):
            token = api.post("/devices", json={"id": f"dev-{i}"}).json()["token"]
            broker.add_user(f"dev-{i}", token)
            agents.append(
                AgentThread(
                    agent_settings(
                        tmp_path,
                        device_id=f"dev-{i}",
                        broker=broker,
                        token=token,
                        control_plane_url=follower.url,
                        trust_store=trust,
                        window_seconds=0.5,
                    )
                )
            )
        first_rollout = api.post(
            "/rollouts",
            json={
                "model": "fault",
                "version": str(versions[0]),
                "plan": {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN},
            },
        ).json()
        wait_until(
            lambda: api.get(f"/rollouts/{first_rollout['id']}").json()["status"] == "succeeded",
            timeout=60,
            what="v1 rollout",
        )
        rollout = api.post(
            "/rollouts",
            json={
                "model": "fault",
                "version": str(versions[1]),
                "plan": {
                    "stages": [{"count": 1, "soak_seconds": 3}, {"percent": 50, "soak_seconds": 3}],
                    "gates": OPEN,
                },
            },
        ).json()
        wait_until(
            lambda: api.get(f"/rollouts/{rollout['id']}").json()["assigned"] >= 1, what="canary"
        )
        leader.process.kill()  # kill -9 of the leader mid-rollout
        leader.process.wait(10)
        wait_until(
            lambda: leader_flags([follower.url]) == [True],
            timeout=15,
            what="the follower takes over",
        )
        wait_until(
            lambda: api.get(f"/rollouts/{rollout['id']}").json()["status"] == "succeeded",
            timeout=60,
            what="rollout finished by the new leader",
        )
        events = [e["type"] for e in api.get(f"/rollouts/{rollout['id']}/events").json()]
        assert events.count("stage_started") == 3
        wait_until(
            lambda: all(
                a.a.updater.slots["fault"].current is not None
                and a.a.updater.slots["fault"].current.manifest.version == versions[1]
                for a in agents
            ),
            what="v2 everywhere",
        )
        api.close()
    finally:
        for agent in agents:
            agent.stop()


def test_a_new_leader_publishes_what_the_old_one_stored_but_did_not(
    pair: Pair, postgres_url: str
) -> None:
    """A leader killed between storing a desired state and publishing it: the process
    that takes over publishes it (it was connected to the broker long before, so its own
    connect-time republish does not)."""
    leader, follower = pair.leader, pair.follower
    watcher = Publisher(pair.broker)
    engine = create_db_engine(postgres_url)
    try:
        with follower.client() as api:
            assert api.post("/devices", json={"id": "dev-0"}).status_code == 201
        # What the leader leaves behind when killed after its commit, before its publish.
        keys = load_keys(load_settings(leader.data_dir).keys_dir)
        with Session(engine) as session:
            stored = sign_desired(session, keys.deployment, "dev-0", [], timedelta(days=1))
            session.commit()
        leader.process.kill()
        leader.process.wait(10)
        wait_until(lambda: leader_flags([follower.url]) == [True], what="the follower leads")
        watcher.client.subscribe(Topics().device("dev-0", Channel.DESIRED), qos=1)
        wait_until(
            lambda: any(
                topic.endswith("/desired") and json.loads(payload)["seq"] == stored.seq
                for topic, payload in list(watcher.received)
            ),
            what="the stored desired state on the broker",
        )
    finally:
        watcher.close()
        engine.dispose()
