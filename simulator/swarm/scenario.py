"""Rollouts measured on a swarm: from ``POST /rollouts`` until every swarm device has
installed and reported the version, with the broker's, the control plane's and the swarm's
CPU and memory. Every figure here is a swarm figure (protocol-level devices, artifacts
counted as cached); ``benchmarks/fleet.py`` measures real agents."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
