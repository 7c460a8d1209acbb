"""The swarm: N ``SwarmDevice`` sessions on one asyncio loop against a real broker.

    swarm = Swarm(trust, SwarmSettings(broker_host=..., broker_port=...))
    swarm.add("dev-000001", token, {"site": "a"})
    await swarm.start()              # connects everyone, raising the fd limit first
    await swarm.wait_serving("fault", 3, timeout=120)
    await swarm.stop()               # each device says offline, then DISCONNECT

Sessions connect ``connect_concurrency`` at a time (a CONNECT waits for its CONNACK), from
127.0.0.2, 127.0.0.3, … once there are more than ``sessions_per_address`` of them: one
source address has ~28,000 ephemeral ports towards one broker port. One timer per device
closes its telemetry windows (spread over the window); one task sends PINGREQ for sessions
that sent nothing for half their keepalive; a lost session reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from shared.manifest import ModelManifest
from shared.messages import FeatureWindow, ModelWindow, OnlineStatus
from shared.stats import LATENCY_BUCKETS, latency_bucket
from shared.topics import Channel, Topics
from shared.trust import TrustStore
from simulator.swarm.codec import MqttSession
from simulator.swarm.device import SwarmDevice, jitter
from simulator.swarm.settings import SwarmCounters, SwarmSettings

log = logging.getLogger(__name__)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux ≥ 4.2
WAIT_POLL_SECONDS = 0.05
DESCRIPTORS_PER_SESSION = 1


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE to ``wanted`` if this process may (root may raise the hard limit
    up to fs.nr_open), else to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def source_addresses(count: int, per_address: int) -> list[str | None]:
    """Where each session connects from: any address while one suffices, else 127.0.0.2, …"""
    if count <= per_address:
        return [None] * count
    return [f"127.0.0.{2 + i // per_address}" for i in range(count)]


def synthetic_window(manifest: ModelManifest, requests: int) -> ModelWindow:
    """Counts consistent with the manifest and what its training data looked like: every
    feature binned over its reference edges in the reference's proportions, means and
    variances the reference's, predictions in the reference's class (or bin) proportions."""
    features = []
    for ref in manifest.reference.features:
        counts = _spread(requests, ref.counts)
        features.append(
            FeatureWindow(
                counts=counts,
                below=0,
                above=0,
                missing=0,
                n=requests,
                sum=ref.mean * requests,
                sum_sq=(ref.variance + ref.mean**2) * requests,
            )
        )
    prediction = manifest.reference.prediction
    if manifest.output.task == "classification":
        weights = prediction.class_counts or [1] * len(manifest.output.classes)
    else:
        weights = prediction.counts
    latency = [0] * LATENCY_BUCKETS
    latency[latency_bucket(500.0)] = requests
    return ModelWindow(
        name=manifest.name,
        version=manifest.version,
        sha256=manifest.sha256,
        requests=requests,
        errors=0,
        latency_counts=latency,
        features=features,
        predictions=_spread(requests, weights),
    )


def _spread(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders), summing to it."""
    weight = sum(weights)
    if weight <= 0:
        return [total] + [0] * (len(weights) - 1) if weights else []
    exact = [total * w / weight for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


async def wait_changed(
    changed: asyncio.Event,
    done: Callable[[], bool],
    timeout: float,  # noqa: ASYNC109  (the error names what is missing)
    what: Callable[[], str],
    poll: float,
    failed: Callable[[], str | None] = lambda: None,
) -> float:
    """Seconds until ``done()``, checked whenever ``changed`` is set and at least every
    ``poll`` seconds; TimeoutError with ``what()``, RuntimeError with ``failed()``."""
    began = time.monotonic()
    while not done():
        if failure := failed():
            raise RuntimeError(failure)
        left = timeout - (time.monotonic() - began)
        if left <= 0:
            raise TimeoutError(f"{what()} after {timeout:g} s")
        changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, poll)):
                await changed.wait()
    return time.monotonic() - began


def all_serving(
    serving: Callable[[], Counter[tuple[str, int]]], n: int, model: str, version: int
) -> tuple[Callable[[], bool], Callable[[], str]]:
    """Whether all ``n`` devices serve ``model`` ``version``, and how many do not."""
    return (
        lambda: serving()[(model, version)] >= n,
        lambda: f"{n - serving()[(model, version)]} of {n} swarm devices not on {model} v{version}",
    )


@dataclass
class Swarm:
    """N device sessions on the running loop."""

    trust: TrustStore
    settings: SwarmSettings
    devices: dict[str, SwarmDevice] = field(default_factory=dict)
    counters: SwarmCounters = field(default_factory=SwarmCounters)
    serving: Counter[tuple[str, int]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.topics = Topics(self.settings.topic_root)
        self._windows: dict[str, ModelWindow] = {}
        self._manifests: dict[tuple[str, str], ModelManifest] = {}
        self._connect_slots = asyncio.Semaphore(self.settings.connect_concurrency)
        self._connacks: dict[str, asyncio.Future[int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self.connected = 0

    # --- devices -----------------------------------------------------------------------------

    def add(self, device_id: str, token: str, labels: dict[str, str]) -> SwarmDevice:
        device = SwarmDevice(self, device_id, token, labels)
        self.devices[device_id] = device
        return device

    async def start(self) -> float:
        """Connect every device added; return the seconds it took. Raises TimeoutError
        naming how many are still not connected after ``connect_timeout_seconds``."""
        raise_fd_limit(len(self.devices) * DESCRIPTORS_PER_SESSION + 4096)
        sources = source_addresses(len(self.devices), self.settings.sessions_per_address)
        began = time.monotonic()
        for device, source in zip(self.devices.values(), sources, strict=True):
            device.source = source
            self._spawn(self._keep_connected(device, first=True))
        self._spawn(self._keepalive())
        await self.wait_for(
            lambda: self.connected >= len(self.devices),
            self.settings.connect_timeout_seconds,
            lambda: f"{len(self.devices) - self.connected} swarm devices not connected",
        )
        self._schedule_windows()
        return time.monotonic() - began

    def _schedule_windows(self) -> None:
        """Each device's first window closes within the second window from now, the
        devices spread over it (as agents started at different times)."""
        if self.settings.window_seconds is None:
            return
        loop = asyncio.get_running_loop()
        n = max(1, len(self.devices))
        for i, device in enumerate(self.devices.values()):
            delay = self.settings.window_seconds * (1 + i / n)
            self._timers[device.device_id] = loop.call_later(delay, self._window, device)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep_connected(self, device: SwarmDevice, *, first: bool = False) -> None:
        delay = self.settings.reconnect_min_seconds
        while not self._stopping:
            if not first:
                await asyncio.sleep(jitter(delay))
                delay = min(delay * 2, self.settings.reconnect_max_seconds)
            first = False
            async with self._connect_slots:
                try:
                    code = await self._connect(device)
                except (OSError, TimeoutError) as exc:
                    log.info("%s: connect failed: %s", device.device_id, exc)
                    continue
            if code == 0:
                return

    async def _connect(self, device: SwarmDevice) -> int:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if device.source is not None:
                # The port is chosen at connect(), per destination: ~28k per source address.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((device.source, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, (self.settings.broker_host, self.settings.broker_port))
            session = MqttSession(device)
            await loop.create_connection(lambda: session, sock=sock)
        except BaseException:
            sock.close()
            raise
        device.session = session
        connack = self._connacks[device.device_id] = loop.create_future()
        session.write(device.connect_packet())
        try:
            async with asyncio.timeout(self.settings.connect_timeout_seconds):
                code: int = await connack
                return code
        except TimeoutError:
            session.close()
            raise
        finally:
            self._connacks.pop(device.device_id, None)

    def connack(self, device: SwarmDevice, code: int) -> None:
        if code == 0:
            self.counters.connects += 1
            self.connected += 1
            self._changed.set()
        else:
            self.counters.refused_connects += 1
            log.warning("%s: the broker refused it (CONNACK %d)", device.device_id, code)
        future = self._connacks.get(device.device_id)
        if future is not None and not future.done():
            future.set_result(code)

    def lost(self, device: SwarmDevice, was_connected: bool) -> None:
        if was_connected:
            self.connected -= 1
            self.counters.lost += 1
        future = self._connacks.get(device.device_id)
        if future is not None and not future.done():
            future.set_exception(ConnectionError("connection lost before CONNACK"))
        elif was_connected and not self._stopping:
            self._spawn(self._keep_connected(device))

    async def _keepalive(self) -> None:
        """PINGREQ for every session that sent nothing for half its keepalive."""
        half = self.settings.keepalive_seconds / 2
        while True:
            await asyncio.sleep(half / 4)
            quiet = time.monotonic() - half
            for device in self.devices.values():
                session = device.session
                if session is not None and device.connected and session.last_write < quiet:
                    session.ping()

    # --- telemetry ---------------------------------------------------------------------------

    def intern(self, manifest: ModelManifest) -> ModelManifest:
        """One object for equal manifests: each device parsed (and verified) its own copy of
        the same manifest, tens of KiB of objects that 100,000 devices need not hold."""
        key = (manifest.sha256, manifest.signature)
        known = self._manifests.get(key)
        if known is not None and known == manifest:
            return known
        self._manifests[key] = manifest
        return manifest

    def model_window(self, manifest: ModelManifest) -> ModelWindow:
        window = self._windows.get(manifest.sha256)
        if window is None:
            window = synthetic_window(manifest, self.settings.requests_per_window)
            self._windows[manifest.sha256] = window
        return window

    def _window(self, device: SwarmDevice) -> None:
        if self._stopping or self.settings.window_seconds is None:
            return
        loop = asyncio.get_running_loop()
        self._timers[device.device_id] = loop.call_later(
            self.settings.window_seconds, self._window, device
        )
        try:
            device.close_window()
        except Exception:  # one device's window must not stop the others'
            log.exception("%s: closing a telemetry window failed", device.device_id)

    # --- observing ---------------------------------------------------------------------------

    def serving_changed(
        self, model: str, before: ModelManifest | None, after: ModelManifest | None
    ) -> None:
        if before is not None:
            self.serving[(model, before.version)] -= 1
        if after is not None:
            self.serving[(model, after.version)] += 1
        self._changed.set()

    async def wait_for(
        self,
        done: Callable[[], bool],
        timeout: float,  # noqa: ASYNC109  (the error names what is missing)
        what: Callable[[], str],
    ) -> float:
        """Seconds until ``done()``, woken by every change the swarm sees (connections,
        versions) and at least every 50 ms; TimeoutError with ``what()``."""
        return await wait_changed(self._changed, done, timeout, what, WAIT_POLL_SECONDS)

    async def wait_serving(self, model: str, version: int, timeout: float) -> float:  # noqa: ASYNC109
        """Seconds until every device has installed (and reported) ``model`` ``version``."""
        done, what = all_serving(lambda: self.serving, len(self.devices), model, version)
        return await self.wait_for(done, timeout, what)

    def unacked(self) -> int:
        """Telemetry windows waiting for the control plane's ack, over all devices."""
        return sum(len(d.outbox) for d in self.devices.values())

    def stop_telemetry(self) -> None:
        """No more windows (those in the outboxes are still sent until acknowledged)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def set_window(self, seconds: float) -> None:
        """Telemetry windows of ``seconds`` from now on (the offered load: a benchmark
        measures ingest at a fleet's rate and past it without a new swarm)."""
        self.stop_telemetry()
        self.settings = dataclasses.replace(self.settings, window_seconds=seconds)
        self._schedule_windows()

    # --- stopping ----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Every device says offline (retained, as the agent does on a clean shutdown) and
        disconnects, so the broker sends no Last Will."""
        self._stopping = True
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for device in self.devices.values():
            session = device.session
            if session is not None and device.connected:
                offline = OnlineStatus(device_id=device.device_id, online=False)
                device.publish(Channel.ONLINE, offline.model_dump_json().encode(), retain=True)
                session.close(disconnect=True)
            device.connected, device.session = False, None
        self.connected = 0
        await asyncio.sleep(0)  # let the transports flush and close
