"""One simulation: a private broker, a real control plane, a fleet of real agents in this
process, and the world around them — apps sending sensor rows to the agents' inference and
the true labels back through the feedback API after a delay.

    async with Simulation(workdir, SimOptions(devices=50, seed=1)) as sim:
        await sim.add_devices(50)
        v1 = await sim.train()
        await sim.rollout(v1, ALL_AT_ONCE)
        ...

Everything is deterministic from the seed except timing: device labels (site, hardware),
cohort order (rollout ids are derived from the seed), and the data each device sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import numpy as np

from shared.trust import TrustStore
from simulator.broker import InProcessBroker, MosquittoBroker, start_broker
from simulator.control import ControlPlane
from simulator.data import CLASSES, sensor_csv, sensor_rows
from simulator.faults import StallProxy
from simulator.fleet import SimulatedFleet, device_settings, raise_fd_limit
from simulator.report import Marker, Sample

log = logging.getLogger(__name__)
MODEL = "fault"
SITES = ("berlin", "paris", "madrid", "oslo", "rome", "vienna", "lisbon", "warsaw")
HARDWARE = ("rpi4", "jetson-nano", "x86-gateway")
TICK_SECONDS = 0.2
OPEN_GATES: dict[str, Any] = {"min_requests": 0, "min_devices_reporting": 0}


@dataclass(frozen=True)
class SimOptions:
    devices: int = 50
    seed: int = 1
    rows_per_second: float = 10.0  # per device, while it serves a model
    window_seconds: float = 1.0  # agents' telemetry window
    bucket_seconds: float | None = None  # drift/accuracy bucket; None: see ``bucket``
    label_delay: float = 1.0  # seconds until an app knows the true label
    samples_per_window: int = 20  # rows each agent samples to the control plane per window
    training_rows: int = 4000

    @property
    def bucket(self) -> float:
        """The control plane's drift/accuracy bucket: as given, else at least 3 s and long
        enough for ~1,200 requests across the fleet (drift needs 500 rows per bucket)."""
        if self.bucket_seconds is not None:
            return self.bucket_seconds
        rate = self.devices * self.rows_per_second
        return max(3.0, 1200 / rate) if rate > 0 else 3.0  # no app traffic: any will do


@dataclass
class Simulation:
    workdir: Path
    options: SimOptions = field(default_factory=SimOptions)
    drifted_sites: set[str] = field(default_factory=set)
    markers: list[Marker] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    feedback_posted: int = 0
    started: float = 0.0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    async def __aenter__(self) -> Simulation:
        raise_fd_limit()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker: MosquittoBroker | InProcessBroker = await asyncio.to_thread(
            start_broker, self.workdir / "broker"
        )
        try:  # a start that fails half way leaves nothing running
            keys = await self._start_control_plane()
        except BaseException:
            await asyncio.to_thread(self.broker.stop)
            raise
        self.trust_path = self.workdir / "trust-store.json"
        self.trust_path.write_text(keys)
        self.fleet = SimulatedFleet(TrustStore.model_validate_json(keys))
        self.proxy: StallProxy | None = None
        self._proxied_every = 0
        self.tokens: dict[str, str] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self._batch = 0
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self._tasks = [
            asyncio.create_task(self._traffic(), name="traffic"),
            asyncio.create_task(self._post_labels(), name="labels"),
            asyncio.create_task(self._record(), name="recorder"),
        ]
        return self

    async def _start_control_plane(self) -> str:
        """The control plane on the broker, and its API client; the trust store it answers."""
        cp_password = "simulator-control-plane"  # noqa: S105  (a private broker's)
        await asyncio.to_thread(self.broker.add_control_plane_user, cp_password)
        self.control = ControlPlane(
            self.workdir / "control-plane",
            env={
                "EDGEFLEET_MQTT_URL": self.broker.control_plane_url(cp_password),
                "EDGEFLEET_BROKER_ACCOUNTS": self.broker.accounts,
                "EDGEFLEET_ROLLOUT_TICK_SECONDS": "0.2",
                "EDGEFLEET_MONITOR_BUCKET_SECONDS": str(self.options.bucket),
                "EDGEFLEET_MONITOR_GRACE_SECONDS": str(self.options.window_seconds + 0.5),
            },
        )
        await asyncio.to_thread(self.control.start)
        self.api = self.control.async_client()
        try:
            return (await self.api.get("/keys")).raise_for_status().text
        except BaseException:
            await self.api.aclose()
            await asyncio.to_thread(self.control.stop)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.fleet.stop()
        finally:
            if self.proxy is not None:
                await self.proxy.stop()
            await self.api.aclose()
            await asyncio.to_thread(self.control.stop)
            await asyncio.to_thread(self.broker.stop)

    # --- time and markers ----------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the simulation started."""
        return time.monotonic() - self.started

    def mark(self, label: str, kind: Any = "info") -> None:
        self.markers.append(Marker(t=round(self.now(), 2), label=label, kind=kind))
        log.info("t=%.1f s: %s", self.now(), label)

    # --- devices -------------------------------------------------------------------------------

    def device_id(self, index: int) -> str:
        return f"dev-{index:04d}"

    async def add_devices(self, indices: range | list[int]) -> list[str]:
        """Register devices (labels: site and hardware, from their index), give them broker
        users, and start their agents."""
        ids = [self.device_id(i) for i in indices]
        semaphore = asyncio.Semaphore(16)

        async def register(index: int, device_id: str) -> None:
            labels = {"site": SITES[index % len(SITES)], "hw": HARDWARE[index % len(HARDWARE)]}
            async with semaphore:
                response = await self.api.post("/devices", json={"id": device_id, "labels": labels})
            response.raise_for_status()
            self.tokens[device_id] = response.json()["token"]
            self.labels[device_id] = labels

        await asyncio.gather(
            *(register(i, d) for i, d in zip(indices, ids, strict=True) if d not in self.tokens)
        )
        await asyncio.to_thread(self.broker.add_users, {d: self.tokens[d] for d in ids})
        await self.start_agents(ids)
        return ids

    async def start_agents(self, ids: list[str]) -> None:
        """Start (or restart, as after a reboot: same data directory) these devices' agents."""
        await self.fleet.start([self.settings_for(d) for d in ids])

    async def stall_through_proxy(self, every: int) -> StallProxy:
        """Devices added from now on whose index is a multiple of ``every`` reach the broker
        through a relay that can stall (``StallProxy``)."""
        self.proxy = StallProxy(self.broker.host, self.broker.port)
        await self.proxy.start()
        self._proxied_every = every
        return self.proxy

    def proxied(self, device_id: str) -> bool:
        every = self._proxied_every
        return bool(every) and int(device_id.rsplit("-", 1)[1]) % every == 0

    def settings_for(self, device_id: str) -> Any:
        via: StallProxy | MosquittoBroker | InProcessBroker = self.broker
        if self.proxy is not None and self.proxied(device_id):
            via = self.proxy
        return device_settings(
            device_id,
            broker_host=via.host,
            broker_port=via.port,
            token=self.tokens[device_id],
            control_plane_url=self.control.url,
            trust_store=self.trust_path,
            data_dir=self.workdir / "devices",
            window_seconds=self.options.window_seconds,
            sample_rate=1.0,
            samples_per_window=self.options.samples_per_window,
            labels=self.labels[device_id],
            # Time is compressed in a scenario (1 s windows, buckets of seconds): a new version
            # is committed after 0.5 s, not the shipped 30 s (or 50 requests).
            probation_seconds=0.5,
            probation_requests=0,
            reconnect_max_seconds=2.0,
        )

    def serving(self) -> dict[str, int | None]:
        return self.fleet.serving(MODEL)

    async def wait_serving(self, version: int, timeout: float) -> float:  # noqa: ASYNC109
        """Seconds until every running agent serves ``version``."""
        start = time.monotonic()
        while True:
            behind = [
                d for d, v in self.serving().items() if v != version and self.fleet.is_running(d)
            ]
            if not behind:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{len(behind)} devices not on v{version}: {behind[:5]}")
            await asyncio.sleep(0.1)

    # --- the API -------------------------------------------------------------------------------

    async def get(self, path: str, **params: Any) -> Any:
        """GET and decode JSON, retrying for up to 30 s while the control plane is away (a
        restart in the chaos scenario, or a keep-alive connection it closed meanwhile)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                response = await self.api.get(path, params=params or None)
                if response.status_code < 500:
                    return response.raise_for_status().json()
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                response.raise_for_status()
            await asyncio.sleep(0.5)

    # --- models and rollouts -------------------------------------------------------------------

    async def train(self, seed: int | None = None) -> int:
        """Upload a sensor dataset and train a logistic regression on it; the new version."""
        seed = self.options.seed if seed is None else seed
        csv = sensor_csv(self.options.training_rows, seed=seed)
        response = await self.api.post(
            "/datasets",
            params={"name": "sensors", "label": "fault"},
            content=csv.encode(),
            headers={"Content-Type": "text/csv"},
        )
        response.raise_for_status()
        job = (
            (
                await self.api.post(
                    f"/models/{MODEL}/train",
                    json={"dataset_id": response.json()["id"], "algorithm": "logreg", "seed": seed},
                )
            )
            .raise_for_status()
            .json()
        )
        done = await self.wait_job(job["id"])
        if done["status"] != "succeeded" or done["result_version"] is None:
            raise RuntimeError(f"training failed: {done['error']}")
        return int(done["result_version"])

    async def wait_job(self, job_id: int, timeout: float = 300) -> dict[str, Any]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = await self.get(f"/jobs/{job_id}")
            if job["status"] in ("succeeded", "failed"):
                return job
            await asyncio.sleep(0.2)
        raise TimeoutError(f"job {job_id} did not finish in {timeout} s")

    def rollout_id(self, name: str) -> str:
        """Rollout ids from the seed: the same seed gives the same cohorts."""
        return f"sim{self.options.seed:06d}{name}"[:32]

    async def rollout(
        self, version: int, plan: dict[str, Any], name: str, selector: str = ""
    ) -> dict[str, Any]:
        response = await self.api.post(
            "/rollouts",
            json={
                "model": MODEL,
                "version": str(version),
                "selector": selector,
                "plan": plan,
                "id": self.rollout_id(name),
            },
        )
        if response.status_code != 201:
            raise RuntimeError(f"rollout refused: {response.text}")
        self.mark(f"rollout of v{version} ({name})", "rollout")
        result: dict[str, Any] = response.json()
        return result

    async def wait_rollout(
        self,
        rollout_id: str,
        statuses: tuple[str, ...],
        timeout: float,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Poll until the rollout reaches one of ``statuses``; stage starts become markers."""
        deadline = time.monotonic() + timeout
        stage = -1
        while True:
            rollout: dict[str, Any] = await self.get(f"/rollouts/{rollout_id}")
            if rollout["stage"] > stage:
                stage = rollout["stage"]
                if stage >= 0:
                    total = len(rollout["stages"])
                    self.mark(f"v{rollout['version']} stage {stage + 1}/{total}", "stage")
            if rollout["status"] in statuses:
                return rollout
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout {rollout_id} is {rollout['status']} after {timeout} s")
            await asyncio.sleep(0.2)

    async def events(self, kind: str) -> list[dict[str, Any]]:
        """Events of one type, oldest first."""
        result: list[dict[str, Any]] = await self.get("/events", type=kind, limit=10_000)
        return result[::-1]

    async def drift(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.get(f"/models/{MODEL}/drift", limit=10_000)
        return result

    # --- the world -----------------------------------------------------------------------------

    async def _traffic(self) -> None:
        """Each tick, every running agent that serves a model predicts a few rows, one
        request each (as an app would call it), from its site's world."""
        carry = 0.0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            carry += self.options.rows_per_second * TICK_SECONDS
            per_device, carry = int(carry), carry - int(carry)
            if per_device == 0:
                continue
            with contextlib.suppress(Exception):  # a bad tick must not end the world
                self._tick(per_device)

    def _tick(self, per_device: int) -> None:
        serving = [
            (d, a)
            for d, a in self.fleet.agents.items()
            if self.fleet.is_running(d) and (s := a.updater.slots.get(MODEL)) and s.current
        ]
        if not serving:
            return
        due = time.monotonic() + self.options.label_delay
        for drifted in (False, True):
            group = [
                (d, a)
                for d, a in serving
                if (self.labels[d]["site"] in self.drifted_sites) == drifted
            ]
            if not group:
                continue
            self._batch += 1
            X, y = sensor_rows(
                len(group) * per_device,
                self.options.seed * 1_000_003 + self._batch,
                drifted=drifted,
            )
            X32 = X.astype(np.float32)
            for i, (device_id, agent) in enumerate(group):
                for j in range(i * per_device, (i + 1) * per_device):
                    try:
                        prediction = agent.predict(MODEL, X32[j : j + 1])
                    except Exception:  # noqa: S112  (a model swap under way; the app retries)
                        continue
                    labels = prediction.outputs.labels
                    if labels is None:
                        continue
                    self._pending.append(
                        (
                            due,
                            {
                                "request_id": prediction.request_id,
                                "label": CLASSES[int(y[j])],
                                "prediction": int(labels[0]),
                                "version": prediction.model.manifest.version,
                                "device_id": device_id,
                            },
                        )
                    )

    async def _post_labels(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            ready = [item for t, item in self._pending if t <= now]
            self._pending = [(t, item) for t, item in self._pending if t > now]
            for start in range(0, len(ready), 5000):
                chunk = ready[start : start + 5000]
                try:
                    response = await self.api.post(
                        "/feedback", json={"model": MODEL, "items": chunk}
                    )
                    if response.is_success:
                        self.feedback_posted += len(chunk)
                except httpx.HTTPError:  # the control plane may be restarting (chaos)
                    pass

    async def _record(self) -> None:
        while True:
            connected = self.fleet.connected()
            versions = Counter(
                v or 0 for d, v in self.serving().items() if self.fleet.is_running(d)
            )
            self.samples.append(
                Sample(
                    t=round(self.now(), 2),
                    versions=dict(versions),
                    online=sum(up for d, up in connected.items() if self.fleet.is_running(d)),
                )
            )
            await asyncio.sleep(0.5)
