"""A swarm against a real control plane: a private mosquitto (accounts in a password file,
``broker_accounts = "manual"``: dynsec rewrites its JSON file per account, minutes at
10,000), a real ``edgefleet server`` subprocess, N devices registered in lists of 10,000,
their broker users added in one reload, and the swarm connected.

    async with SwarmRig(workdir, devices=10_000) as rig:
        v1 = await rig.train()
        began = time.monotonic()
        await rig.rollout(v1, {"preset": "all-at-once", "soak_seconds": 0})
        await rig.swarm.wait_serving("fault", v1, timeout=600)   # every device installed it
        await rig.wait_reported(v1, timeout=600)                 # the control plane knows

Shared by ``edgefleet simulate --swarm``, ``benchmarks/scale.py`` and the tests.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from shared.trust import TrustStore
from simulator.broker import MosquittoBroker
from simulator.control import ControlPlane
from simulator.data import sensor_csv
from simulator.rig.agents import CP_PASSWORD  # the rig's: its Publisher logs in with it
from simulator.rig.procs import proc_cpu_seconds, proc_rss_mib
from simulator.swarm.edges import EdgeBrokers
from simulator.swarm.runner import Swarm, raise_fd_limit
from simulator.swarm.settings import SwarmSettings
from simulator.swarm.shards import SwarmShards

MODEL = "fault"
REGISTER_BATCH = 10_000  # POST /devices takes a list of at most this many
SITES = ("berlin", "paris", "madrid", "oslo", "rome", "vienna", "lisbon", "warsaw")
# Gates that a swarm can pass: it serves no requests (telemetry counts are synthetic).
OPEN_GATES: dict[str, Any] = {"min_requests": 0, "min_devices_reporting": 0}
FD_HEADROOM = 4096


def placed(ids: list[str], broker: int, brokers: int) -> list[str]:
    """The devices of ``ids`` on broker ``broker`` of ``brokers``: every brokers-th."""
    return ids[broker::brokers]


def edge_brokers_for(devices: int) -> int:
    """Edge brokers a swarm of ``devices`` needs here: 0 while one broker (and one swarm
    process) may hold a descriptor per session, else enough that each may."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if devices + FD_HEADROOM <= hard:
        return 0
    return math.ceil(devices / (hard - FD_HEADROOM))


@dataclass
class Usage:
    """CPU seconds and RSS of the broker, the control plane and this (swarm) process."""

    broker_cpu: float
    control_plane_cpu: float
    swarm_cpu: float
    broker_rss: float
    control_plane_rss: float
    swarm_rss: float

    def minus(self, before: Usage) -> Usage:
        """CPU used since ``before``; RSS as now."""
        return Usage(
            self.broker_cpu - before.broker_cpu,
            self.control_plane_cpu - before.control_plane_cpu,
            self.swarm_cpu - before.swarm_cpu,
            self.broker_rss,
            self.control_plane_rss,
            self.swarm_rss,
        )


@dataclass
class SwarmRig:
    workdir: Path
    devices: int
    swarm_options: dict[str, Any] = field(default_factory=dict)  # SwarmSettings fields
    server_env: dict[str, str] = field(default_factory=dict)
    broker_options: dict[str, str] = field(default_factory=dict)  # MosquittoBroker options
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    # 0: the devices on the control plane's broker, in this process. N: on N edge brokers
    # bridged to it, in one swarm process per edge (simulator.swarm.edges, .shards).
    edge_brokers: int = 0
    tokens: dict[str, str] = field(default_factory=dict)
    # More control-plane processes beside ``control`` (``run_control_planes``).
    siblings: list[ControlPlane] = field(default_factory=list)
    connect_seconds: float = 0.0
    register_seconds: float = 0.0

    async def __aenter__(self) -> SwarmRig:
        # The broker inherits this limit: it holds a descriptor per session, as we do.
        raise_fd_limit(self.devices + FD_HEADROOM)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker = MosquittoBroker(self.workdir / "broker", options=self.broker_options)
        await asyncio.to_thread(self.broker.add_control_plane_user, CP_PASSWORD)
        ids = [self.device_id(i) for i in range(self.devices)]
        self.edges = EdgeBrokers(
            self.broker,
            self.workdir / "edges",
            self.edge_brokers,
            options=self.broker_options,
            devices=[placed(ids, i, self.edge_brokers) for i in range(self.edge_brokers)],
        )
        await asyncio.to_thread(self.broker.start)
        await asyncio.to_thread(self.edges.start)
        self.control = ControlPlane(
            self.workdir / "control-plane",
            env={
                **self.broker.control_plane_env(CP_PASSWORD),
                "EDGEFLEET_ROLLOUT_TICK_SECONDS": "0.2",
                **self.server_env,
            },
        )
        try:
            await asyncio.to_thread(self.control.start)
            self.api = self.control.async_client(timeout=1800)
            keys = (await self.api.get("/keys")).raise_for_status().text
            self.trust = TrustStore.model_validate_json(keys)
            self.swarm = Swarm(
                self.trust,
                SwarmSettings(self.broker.host, self.broker.port, **self.swarm_options),
            )
            self.sessions: Swarm | SwarmShards = self.swarm
            if self.edges.brokers:
                # Every shard connects at once, beside the control plane taking in each
                # device's first reports: a bound for 100,000 sessions on two cores. A
                # shard's event loop runs every ready session in one pass, and 14,000
                # sessions' desired states arriving together made a pass minutes long on
                # a shard's share of two cores: its PINGREQs came too late, every edge
                # dropped every session once (mosquitto's 1.5 x 60 s), and the reconnect
                # storm stalled the rollout. A device of its own would ping on time.
                options = {
                    "connect_timeout_seconds": 600.0,
                    "keepalive_seconds": 900,
                    **self.swarm_options,
                }
                self.sessions = SwarmShards(
                    self.trust,
                    [SwarmSettings(b.host, b.port, **options) for b in self.edges.brokers],
                    self.workdir / "shards",
                )
            began = time.monotonic()
            await self.register(ids)
            self.register_seconds = time.monotonic() - began
            self.connect_seconds = await self.sessions.start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        try:
            if hasattr(self, "sessions"):
                await self.sessions.stop()
        finally:
            if hasattr(self, "api"):
                await self.api.aclose()
            await self.run_control_planes(1)
            await asyncio.to_thread(self.control.stop)
            await asyncio.to_thread(self.edges.stop, 60)
            await asyncio.to_thread(self.broker.stop, 60)

    @staticmethod
    def device_id(index: int) -> str:
        return f"swarm-{index:06d}"

    async def register(self, ids: list[str]) -> None:
        """Register devices with the control plane (lists of 10,000), give each a broker
        user (one reload), and add them to the swarm (not connected: ``swarm.start``). On
        edge brokers, the devices of ``self.devices`` (the bridges carry their channels)."""
        for start in range(0, len(ids), REGISTER_BATCH):
            body = []
            for device_id in ids[start : start + REGISTER_BATCH]:
                index = int(device_id.rsplit("-", 1)[1])
                labels = {"site": SITES[index % len(SITES)], "swarm": "true"}
                self.labels[device_id] = labels
                body.append({"id": device_id, "labels": labels})
            response = await self.api.post("/devices", json=body)
            response.raise_for_status()
            for item in response.json():
                self.tokens[item["device"]["id"]] = item["token"]
        brokers = self.edges.brokers or [self.broker]
        for i, broker in enumerate(brokers):
            mine = placed(ids, i, len(brokers))
            await asyncio.to_thread(broker.add_users, {d: self.tokens[d] for d in mine}, 600)
            for device_id in mine:
                token, labels = self.tokens[device_id], self.labels[device_id]
                if isinstance(self.sessions, SwarmShards):
                    self.sessions.add(i, device_id, token, labels)
                else:
                    self.sessions.add(device_id, token, labels)

    # --- the control plane ---------------------------------------------------------------

    async def run_control_planes(self, processes: int) -> None:
        """``processes`` control-plane processes on this rig's data directory: siblings of
        ``control`` started or stopped. They share the work only on a shared database with
        a shared subscription (``EDGEFLEET_DATABASE_URL`` and ``EDGEFLEET_MQTT_SHARED_GROUP``
        in ``server_env``): then they split telemetry and one of them leads rollouts."""
        while len(self.siblings) + 1 < processes:
            sibling = ControlPlane(self.control.data_dir, env=self.control.env)
            await asyncio.to_thread(sibling.start)
            self.siblings.append(sibling)
        while self.siblings and len(self.siblings) + 1 > processes:
            await asyncio.to_thread(self.siblings.pop().stop)

    async def set_window(self, seconds: float) -> None:
        """The swarm's telemetry windows are ``seconds`` long from now on."""
        if isinstance(self.sessions, SwarmShards):
            await self.sessions.set_window(seconds)
        else:
            self.sessions.set_window(seconds)

    async def train(self, seed: int = 1, rows: int = 2000) -> int:
        """Upload a sensor dataset and train a logistic regression on it; the new version."""
        response = await self.api.post(
            "/datasets",
            params={"name": f"sensors-{seed}", "label": "fault"},
            content=sensor_csv(rows, seed=seed).encode(),
            headers={"Content-Type": "text/csv"},
        )
        response.raise_for_status()
        job = await self.api.post(
            f"/models/{MODEL}/train",
            json={"dataset_id": response.json()["id"], "algorithm": "logreg", "seed": seed},
        )
        job_id = job.raise_for_status().json()["id"]
        while True:
            done = (await self.api.get(f"/jobs/{job_id}")).raise_for_status().json()
            if done["status"] == "succeeded":
                return int(done["result_version"])
            if done["status"] == "failed":
                raise RuntimeError(f"training failed: {done['error']}")
            await asyncio.sleep(0.2)

    async def rollout(self, version: int, plan: dict[str, Any], selector: str = "") -> str:
        plan = {**plan, "gates": {**OPEN_GATES, **plan.get("gates", {})}}
        response = await self.api.post(
            "/rollouts",
            json={"model": MODEL, "version": str(version), "selector": selector, "plan": plan},
        )
        if response.status_code != 201:
            raise RuntimeError(f"rollout refused: {response.text}")
        return str(response.json()["id"])

    async def reported(self, version: int) -> int:
        """Devices whose last state stored by the control plane has ``version`` active."""
        summary = (await self.api.get("/devices/summary")).raise_for_status().json()
        return sum(
            s["devices"]
            for s in summary["serving"]
            if s["model"] == MODEL and s["version"] == version
        )

    async def wait_reported(
        self,
        version: int,
        timeout: float,  # noqa: ASYNC109  (the error says how many reported)
        devices: int | None = None,
    ) -> float:
        """Seconds until the control plane holds ``version`` in the state of ``devices``
        (default: every swarm device)."""
        wanted = self.devices if devices is None else devices
        began = time.monotonic()
        while (count := await self.reported(version)) < wanted:
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"the control plane has v{version} on {count} of {wanted}")
            await asyncio.sleep(0.1)
        return time.monotonic() - began

    async def wait_status(self, rollout_id: str, status: str, timeout: float) -> float:  # noqa: ASYNC109
        began = time.monotonic()
        while True:
            rollout = (await self.api.get(f"/rollouts/{rollout_id}")).raise_for_status().json()
            if rollout["status"] == status:
                return time.monotonic() - began
            if rollout["status"] in ("rolled_back", "aborted", "paused"):
                raise RuntimeError(f"rollout {rollout_id} {rollout['status']}: {rollout['reason']}")
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"rollout {rollout_id} is {rollout['status']} after {timeout} s")
            await asyncio.sleep(0.2)

    def broker_drops(self) -> int:
        """Times mosquitto logged that it drops messages for a client (its queue for that
        client is full: ``max_queued_messages``), e.g. state reports to the control plane."""
        dropped = self.broker.log_text().count("Outgoing messages are being dropped")
        return dropped + self.edges.drops()

    # --- resources -----------------------------------------------------------------------

    def usage(self) -> Usage:
        """The broker's figures are the central one's and every edge's, added up; the
        control plane's every process's; the swarm's this process's and every shard's."""
        brokers = [b.pid for b in (self.broker, *self.edges.brokers)]
        cps = [c.process for c in (self.control, *self.siblings)]
        assert None not in brokers
        swarm = [os.getpid()]
        if isinstance(self.sessions, SwarmShards):
            swarm += self.sessions.pids
        return Usage(
            sum(proc_cpu_seconds(pid) for pid in brokers if pid is not None),
            sum(proc_cpu_seconds(cp.pid) for cp in cps if cp is not None),
            sum(proc_cpu_seconds(pid) for pid in swarm),
            sum(proc_rss_mib(pid) for pid in brokers if pid is not None),
            sum(proc_rss_mib(cp.pid) for cp in cps if cp is not None),
            sum(proc_rss_mib(pid) for pid in swarm),
        )
