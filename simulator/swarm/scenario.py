"""Rollouts measured on a swarm: from ``POST /rollouts`` until every swarm device has
installed and reported the version, with the broker's, the control plane's and the swarm's
CPU and memory. Every figure here is a swarm figure (protocol-level devices, artifacts
counted as cached); ``benchmarks/fleet.py`` measures real agents."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from simulator.control import ControlPlane
from simulator.rig.procs import named_cpu_seconds, proc_cpu_seconds
from simulator.swarm.rig import MODEL, SwarmRig, Usage

ALL_AT_ONCE: dict[str, Any] = {"preset": "all-at-once", "soak_seconds": 0}
CANARY: dict[str, Any] = {"preset": "canary", "soak_seconds": 0}


@dataclass
class RolloutFigures:
    """One rollout on a swarm of ``devices``; None: not within the bound."""

    plan: str
    devices: int
    version: int
    desired_s: float  # POST → the last device accepted its desired state
    installed_s: float  # POST → every swarm device has the version active (state published)
    reported_s: float | None  # POST → the control plane holds the version for every device
    succeeded_s: float | None  # POST → the rollout is "succeeded"
    usage: Usage  # CPU seconds from POST to the last of these; RSS at its end
    broker_drops: int  # mosquitto's "outgoing messages are being dropped" so far

    @property
    def desired_per_second(self) -> float:
        """Desired states signed, published and delivered per second."""
        return self.devices / self.desired_s if self.desired_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "desired_per_second": self.desired_per_second}


async def measure_rollout(
    rig: SwarmRig,
    version: int,
    plan: dict[str, Any],
    timeout: float,  # noqa: ASYNC109  (each wait's bound, named in its error)
    settle: float | None = None,
) -> RolloutFigures:
    """``timeout`` bounds the wait for every swarm device to install the version (an
    error); ``settle`` (default: ``timeout``) bounds, after that, the waits for the control
    plane to hold every report and for ``succeeded`` (None in the figures when not met:
    e.g. the broker dropped reports)."""
    swarm = rig.sessions
    settle = timeout if settle is None else settle
    before = rig.usage()
    began = time.monotonic()
    rollout_id = await rig.rollout(version, plan)
    try:
        await swarm.wait_serving(MODEL, version, timeout)
        installed = time.monotonic() - began  # from before the POST, as the others
    except TimeoutError as exc:
        rollout = (await rig.api.get(f"/rollouts/{rollout_id}")).json()
        detail = {k: rollout.get(k) for k in ("status", "stage", "reason", "gates", "assigned")}
        raise TimeoutError(f"{exc}; rollout {rollout_id}: {detail}") from exc
    desired = swarm.counters.last_accepted - began
    reported: float | None = None
    succeeded: float | None = None
    try:
        await rig.wait_reported(version, settle)
        reported = time.monotonic() - began
        await rig.wait_status(rollout_id, "succeeded", settle)
        succeeded = time.monotonic() - began
    except TimeoutError:
        pass
    return RolloutFigures(
        plan=str(plan.get("preset", "stages")),
        devices=len(swarm.devices),
        version=version,
        desired_s=desired,
        installed_s=installed,
        reported_s=reported,
        succeeded_s=succeeded,
        usage=rig.usage().minus(before),
        broker_drops=rig.broker_drops(),
    )


@dataclass
class IngestFigures:
    """Telemetry from a swarm of ``devices`` over ``seconds``, split over ``processes``
    control-plane processes: windows made (the offered load), windows stored and refused
    as duplicates (resent ones already stored) by each process, per second; the swarm's
    windows waiting for an ack before and after; CPU seconds per second of each control
    plane process, of PostgreSQL, of the brokers and of the swarm."""

    devices: int
    window_seconds: float
    processes: int
    seconds: float
    made_per_second: float
    stored_per_second: list[float]
    duplicates_per_second: list[float]
    unacked_before: int
    unacked_after: int
    accepted: int  # desired states the swarm accepted (again) meanwhile
    control_plane_cpu: list[float]
    database_cpu: float
    broker_cpu: float
    swarm_cpu: float

    @property
    def keeps_up(self) -> bool:
        """Stores what is made, with no growing backlog (within one window's worth)."""
        backlog = self.unacked_after - self.unacked_before
        return backlog <= self.made_per_second * self.window_seconds


async def ingest_counts(control: ControlPlane) -> tuple[float, float]:
    """Telemetry windows this control-plane process has stored and found duplicate, from
    its ``/metrics``."""
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.get(
            f"{control.url}/metrics", headers={"Authorization": f"Bearer {control.token}"}
        )
    outcomes = {}
    for family in text_string_to_metric_families(response.raise_for_status().text):
        if family.name == "edgefleet_telemetry_windows":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcomes[sample.labels["outcome"]] = sample.value
    return outcomes["stored"], outcomes["duplicate"]


async def measure_ingest(rig: SwarmRig, window: float, seconds: float) -> IngestFigures:
    """Ingest over ``seconds`` at the swarm's current windows (``window`` long) with the
    rig's control-plane processes as they run now. Starts after two windows: the first
    window of a new length closes within the second."""
    controls = [rig.control, *rig.siblings]
    pids = [c.process.pid for c in controls if c.process is not None]
    await asyncio.sleep(2 * window)

    async def snapshot() -> tuple[Any, ...]:
        counts = await asyncio.gather(*(ingest_counts(c) for c in controls))
        cpu = [proc_cpu_seconds(pid) for pid in pids]
        counters = rig.sessions.counters
        return (
            time.monotonic(),
            (counters.windows, counters.accepted),
            rig.sessions.unacked(),
            counts,
            cpu,
            named_cpu_seconds("postgres"),
            rig.usage(),
        )

    t0, swarm0, unacked0, counts0, cpu0, db0, usage0 = await snapshot()
    await asyncio.sleep(seconds)
    t1, swarm1, unacked1, counts1, cpu1, db1, usage1 = await snapshot()
    elapsed = t1 - t0
    usage = usage1.minus(usage0)
    return IngestFigures(
        devices=len(rig.sessions.devices),
        window_seconds=window,
        processes=len(controls),
        seconds=elapsed,
        made_per_second=(swarm1[0] - swarm0[0]) / elapsed,
        stored_per_second=[(b[0] - a[0]) / elapsed for a, b in zip(counts0, counts1, strict=True)],
        duplicates_per_second=[
            (b[1] - a[1]) / elapsed for a, b in zip(counts0, counts1, strict=True)
        ],
        unacked_before=unacked0,
        unacked_after=unacked1,
        accepted=swarm1[1] - swarm0[1],
        control_plane_cpu=[(b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True)],
        database_cpu=(db1 - db0) / elapsed,
        broker_cpu=usage.broker_cpu / elapsed,
        swarm_cpu=usage.swarm_cpu / elapsed,
    )


async def swarm_rollouts(
    workdir: Path,
    devices: int,
    *,
    timeout: float,  # noqa: ASYNC109
    settle: float | None = None,
    window_seconds: float | None = 60.0,
    plans: tuple[dict[str, Any], ...] = (ALL_AT_ONCE, CANARY),
    on_ready: Callable[[SwarmRig], None] | None = None,
    on_rollout: Callable[[RolloutFigures], None] | None = None,
    broker_options: dict[str, str] | None = None,
    edge_brokers: int = 0,
) -> list[RolloutFigures]:
    """Train a version per plan and roll each out to the whole swarm, one after another."""
    figures = []
    async with SwarmRig(
        workdir,
        devices,
        swarm_options={"window_seconds": window_seconds},
        broker_options=broker_options or {},
        edge_brokers=edge_brokers,
    ) as rig:
        if on_ready is not None:
            on_ready(rig)
        for seed, plan in enumerate(plans, start=1):
            version = await rig.train(seed=seed)
            figures.append(await measure_rollout(rig, version, plan, timeout, settle))
            if on_rollout is not None:
                on_rollout(figures[-1])
    return figures


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def describe(figures: RolloutFigures) -> str:
    u = figures.usage
    return (
        f"swarm of {figures.devices:,}, {figures.plan} (v{figures.version}): "
        f"desired states delivered in {figures.desired_s:.1f} s "
        f"({figures.desired_per_second:,.0f}/s), every swarm device on it "
        f"{figures.installed_s:.1f} s, control plane has every report "
        f"{seconds(figures.reported_s)}, succeeded {seconds(figures.succeeded_s)}; "
        f"broker dropped messages {figures.broker_drops} times; CPU s broker {u.broker_cpu:.1f}, "
        f"control plane {u.control_plane_cpu:.1f}, swarm {u.swarm_cpu:.1f}; RSS MiB broker "
        f"{u.broker_rss:.0f}, control plane {u.control_plane_rss:.0f}, swarm {u.swarm_rss:.0f}"
    )
