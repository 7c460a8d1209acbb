"""A whole system for end-to-end tests: a private mosquitto (or a three-node NATS cluster),
a real `edgefleet server` subprocess talking to it, and real agents (each in its own thread
and event loop)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from simulator.broker import MosquittoBroker
from simulator.rig.agents import CP_PASSWORD, AgentThread, agent_settings, wait_until
from simulator.rig.cluster import NatsCluster
from simulator.rig.server import ServerProcess, start_server, stop_server

OPEN_GATES = {"min_requests": 0, "min_devices_reporting": 0, "install_timeout_seconds": 60}


@dataclass
class Fleet:
    tmp: Path
    broker: MosquittoBroker | NatsCluster
    server: ServerProcess
    api: httpx.Client
    trust: Path
    agents: dict[str, AgentThread]
    env: dict[str, str]

    def add(self, device_id: str, site: str, *, node: int = 0, **overrides: Any) -> AgentThread:
        """Register a device and start its agent; on a cluster, its broker_url lists every
        node starting with ``node``."""
        response = self.api.post("/devices", json={"id": device_id, "labels": {"site": site}})
        assert response.status_code == 201, response.text
        token = response.json()["token"]
        self.broker.add_user(device_id, token)
        values: dict[str, Any] = {"window_seconds": 0.5, "labels": {"site": site}}
        if isinstance(self.broker, NatsCluster):
            values["broker_url"] = self.broker.urls(node, device_id, token)
        agent = AgentThread(
            agent_settings(
                self.tmp,
                device_id=device_id,
                broker=self.broker,
                token=token,
                control_plane_url=self.server.url,
                trust_store=self.trust,
                **{**values, **overrides},
            )
        )
        self.agents[device_id] = agent
        return agent

    def train(self, dataset_id: int, seed: int) -> int:
        job = self.api.post(
            "/models/fault/train",
            json={"dataset_id": dataset_id, "algorithm": "logreg", "seed": seed},
        ).json()
        wait_until(
            lambda: self.api.get(f"/jobs/{job['id']}").json()["status"] == "succeeded",
            timeout=120,
            what="training",
        )
        return int(self.api.get(f"/jobs/{job['id']}").json()["result_version"])

    def rollout(
        self, version: int, plan: dict[str, Any], selector: str = "", **extra: Any
    ) -> dict[str, Any]:
        response = self.api.post(
            "/rollouts",
            json={
                "model": "fault",
                "version": str(version),
                "selector": selector,
                "plan": plan,
                **extra,
            },
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_status(self, rollout_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
        try:
            wait_until(
                lambda: self.api.get(f"/rollouts/{rollout_id}").json()["status"] == status,
                timeout=timeout,
                what=f"rollout {status}",
            )
        except AssertionError as exc:  # say what the rollout and its devices were doing
            rollout = self.api.get(f"/rollouts/{rollout_id}").json()
            devices = {
                d["id"]: [
                    (m["active"] or {}).get("version", None)
                    for m in (d["state"] or {}).get("models", [])
                ]
                + [(m["phase"], m["target"]) for m in (d["state"] or {}).get("models", [])]
                for d in self.api.get("/devices").json()
            }
            raise AssertionError(f"{exc}\nrollout: {rollout}\ndevices: {devices}") from exc
        result: dict[str, Any] = self.api.get(f"/rollouts/{rollout_id}").json()
        return result

    def serving(self, device_id: str) -> int | None:
        slot = self.agents[device_id].a.updater.slots.get("fault")
        return slot.current.manifest.version if slot and slot.current else None


def open_fleet(tmp_path: Path, **server_env: str) -> contextlib.AbstractContextManager[Fleet]:
    """Broker and server up (``server_env``: extra ``EDGEFLEET_*`` settings); agents are
    added with ``Fleet.add``; everything is stopped on the way out."""
    return _open(tmp_path, MosquittoBroker(tmp_path / "broker"), server_env)


def open_cluster_fleet(
    tmp_path: Path, **server_env: str
) -> contextlib.AbstractContextManager[Fleet]:
    """``open_fleet`` on a three-node NATS cluster instead of mosquitto; the control plane
    and the agents (``Fleet.add(node=…)``) list every node."""
    return _open(tmp_path, NatsCluster(tmp_path / "broker"), server_env)


@contextlib.contextmanager
def _open(
    tmp_path: Path, broker: MosquittoBroker | NatsCluster, server_env: dict[str, str]
) -> Iterator[Fleet]:
    broker.add_control_plane_user(CP_PASSWORD)
    broker.start()
    env = {
        **broker.control_plane_env(CP_PASSWORD),
        "EDGEFLEET_ROLLOUT_TICK_SECONDS": "0.2",
        **server_env,
    }
    try:
        server = start_server(tmp_path / "cp", env=env)
    except BaseException:
        broker.stop()  # not left running (a cluster is three processes)
        raise
    api = server.client()
    trust = tmp_path / "trust.json"
    trust.write_text(api.get("/keys").text)
    fleet = Fleet(tmp_path, broker, server, api, trust, {}, env)
    try:
        yield fleet
    finally:
        try:
            for agent in fleet.agents.values():
                agent.stop()
        finally:
            api.close()
            stop_server(fleet.server)
            broker.stop()
