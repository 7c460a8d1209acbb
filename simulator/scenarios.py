"""Scenarios: each drives one ``Simulation`` and ends with pass/fail checks and figures.

- ``rollout``: train v1, canary rollout to the fleet, every device converges.
- ``bad-model``: a version ~100× slower (same answers) is stopped at the canary by the
  latency gate and rolled back; no device outside the canary ever downloads it.
- ``drift``: at time T three quarters of the sites see a concept drift; the monitor detects it, a
  retraining proves a challenger better on recent labelled rows, a staged rollout ships
  it, and accuracy recovers.
- ``chaos``: during a rollout the network of a fifth of the devices stalls, the broker is
  killed and restarted, the control plane is killed and restarted, agents are killed and
  restarted; every device converges and every
  telemetry window an agent produced is stored exactly once.
- ``churn``: devices leave and join during a rollout; late joiners and returning devices
  converge.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from simulator.broker import MosquittoBroker
from simulator.faults import register_slow_version
from simulator.report import Check
from simulator.run import MODEL, OPEN_GATES, SITES, Simulation

ALL_AT_ONCE: dict[str, Any] = {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES}
FINAL = ("succeeded", "rolled_back", "aborted", "paused")


@dataclass
class Outcome:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, passed: bool, detail: str, **figures: Any) -> bool:
        self.checks.append(Check(name=name, passed=bool(passed), detail=detail, figures=figures))
        return bool(passed)


def canary(soak: float, **gates: Any) -> dict[str, Any]:
    """The canary preset with gates judged on 50 requests per device instead of the shipped
    300, and latency ratios of 5 instead of 1.5: all agents share one process and its GIL
    here, so devices installing a model (hashing, loading, golden vectors) slow the measured
    latency of the others, which real devices do not do to each other. A real regression
    (``bad-model``: ~100×) is far above either."""
    return {
        "preset": "canary",
        "soak_seconds": soak,
        "gates": {
            "min_requests": 50,
            "min_devices_reporting": 1,
            "min_requests_per_device": 50,
            "max_latency_p50_ratio": 5.0,
            "max_latency_p95_ratio": 5.0,
            **gates,
        },
    }


async def _first_version(sim: Simulation) -> int:
    """Train v1 and put it on every device at once (the starting point of most scenarios)."""
    v1 = await sim.train()
    rollout = await sim.rollout(v1, ALL_AT_ONCE, "initial")
    await sim.wait_rollout(rollout["id"], FINAL, timeout=120)
    await sim.wait_serving(v1, timeout=120)
    return v1


# --- rollout -----------------------------------------------------------------------------------


async def rollout_scenario(sim: Simulation) -> Outcome:
    out = Outcome()
    await sim.add_devices(range(sim.options.devices))
    v1 = await sim.train()
    start = sim.now()
    rollout = await sim.rollout(v1, canary(2.0), "rollout")
    done = await sim.wait_rollout(rollout["id"], FINAL, timeout=300)
    finished = sim.now() - start
    converged = await _converged(sim, v1, timeout=60)
    starts = [e["type"] for e in await _rollout_events(sim, rollout["id"])].count("stage_started")
    out.check(
        "the rollout succeeded",
        done["status"] == "succeeded",
        f"status {done['status']} ({done['reason'] or 'no reason'}) after {finished:.1f} s",
        seconds=round(finished, 2),
    )
    out.check(
        f"every device serves v{v1}",
        converged,
        f"{_count(sim, v1)} of {sim.fleet.running} devices",
    )
    out.check(
        "each stage started once",
        starts == len(done["stages"]),
        f"{starts} stage starts for {len(done['stages'])} stages",
    )
    out.figures.update(
        rollout_seconds=round(finished, 2),
        devices_per_second=round(sim.options.devices / finished, 1),
        stages=len(done["stages"]),
    )
    return out


# --- bad model ---------------------------------------------------------------------------------


async def bad_model_scenario(sim: Simulation) -> Outcome:
    out = Outcome()
    await sim.add_devices(range(sim.options.devices))
    v1 = await _first_version(sim)
    with sim.control.client() as api:
        bad = await asyncio.to_thread(register_slow_version, api, v1)
    sim.mark(f"v{bad}: same answers, ~100× slower", "fault")
    plan = {
        "stages": [
            {"count": 1, "soak_seconds": 30},
            {"percent": 50, "soak_seconds": 5},
            {"percent": 100, "soak_seconds": 0},
        ],
        "gates": {
            "min_requests": 20,
            "min_devices_reporting": 1,
            "min_requests_per_device": 20,  # the regression is ~100×: evidence enough
            "max_latency_p50_ratio": 2.0,
            "max_latency_p95_ratio": 2.0,
        },
    }
    rollout = await sim.rollout(bad, plan, "badmodel")
    done = await sim.wait_rollout(rollout["id"], FINAL, timeout=120)
    back = await _converged(sim, v1, timeout=60)
    sha = (await sim.get(f"/models/{MODEL}/versions/{bad}"))["sha256"]
    holders = sorted(
        d
        for d, a in sim.fleet.agents.items()
        if (a.settings.data_dir / "models" / MODEL / f"{sha}.onnx").exists()
        or (a.settings.data_dir / "staging" / f"{sha}.part").exists()
    )
    canaries = sorted(
        d
        for d, a in sim.fleet.agents.items()
        if (slot := a.updater.slots.get(MODEL)) and slot.rollout_id == rollout["id"]
    )
    out.check(
        "the latency gate stopped it and rolled it back",
        done["status"] == "rolled_back" and "latency" in (done["reason"] or ""),
        f"status {done['status']}: {done['reason']}",
    )
    out.check(
        "only the canary got it",
        done["assigned"] == 1 and len(canaries) == 1,
        f"{done['assigned']} device(s) assigned: {canaries}",
    )
    out.check(
        "no device outside the canary downloaded it",
        set(holders) <= set(canaries),
        f"artifact on {holders or 'no device'}",
    )
    out.check(f"every device serves v{v1} again", back, f"{_count(sim, v1)} devices on v{v1}")
    out.figures.update(bad_version=bad, reason=done["reason"])
    return out


# --- drift -------------------------------------------------------------------------------------


async def drift_scenario(sim: Simulation, onset_after_buckets: int = 4) -> Outcome:
    out = Outcome()
    bucket = sim.options.bucket
    await sim.add_devices(range(sim.options.devices))
    policy = {
        "accuracy": {"min_labels": 100},
        "retrain": {
            "min_labelled_rows": 1500,
            "max_recent_rows": 3000,
            "max_reference_rows": 0,
            "plan": canary(2.0, max_prediction_js=1.0),
        },
    }
    v1 = await _first_version(sim)
    (await sim.api.put(f"/models/{MODEL}/policy", json=policy)).raise_for_status()
    sim.mark("monitoring on: warm-up", "info")
    await _wait(lambda: _judged(sim, v1, onset_after_buckets), 120, "warm-up buckets")
    before_onset = await sim.events("drift")

    rng = random.Random(sim.options.seed)  # noqa: S311  (a scenario, not security)
    sim.drifted_sites = set(rng.sample(SITES, len(SITES) * 3 // 4))
    onset = sim.now()
    onset_at = datetime.now(sim.started_at.tzinfo)
    sim.mark(f"drift onset at {', '.join(sorted(sim.drifted_sites))}", "drift")

    drift = await _wait_event(sim, "drift", 30 * bucket)
    if drift is not None:
        seen = datetime.fromisoformat(drift["data"]["bucket_end"]) - onset_at
        delay = seen.total_seconds() / bucket
        sim.mark(f"drift detected: {', '.join(drift['data']['features'])}", "drift")
    out.check(
        "no drift verdict before the onset",
        not before_onset,
        f"{len(before_onset)} drift events over {onset_after_buckets}+ stationary buckets",
    )
    if not out.check(
        "drift detected",
        drift is not None,
        f"{drift['message'] if drift else 'no drift event'}",
        buckets_after_onset=round(delay, 1) if drift else None,
    ):
        return out
    verdict = await _wait_any_event(sim, ("challenger_registered", "challenger_refused"), 300)
    registered = verdict is not None and verdict["type"] == "challenger_registered"
    job = await sim.get(f"/jobs/{verdict['job_id']}") if verdict else {}
    result = job.get("result") or {}
    out.check(
        "retrained: the challenger beats the champion on recent labelled rows",
        registered,
        result.get("reason") or (verdict["message"] if verdict else "no retraining ended"),
        champion=result.get("champion"),
        challenger=result.get("challenger"),
        holdout_rows=result.get("holdout_rows"),
    )
    if not registered or verdict is None:
        return out
    v2 = int(verdict["version"])
    sim.mark(f"v{v2} registered (job {job['id']})", "rollout")
    release = await _wait_event(sim, "release", 60)
    done = await sim.wait_rollout(release["rollout_id"], FINAL, timeout=300) if release else None
    converged = done is not None and await _converged(sim, v2, timeout=60)
    out.check(
        f"v{v2} rolled out in stages",
        done is not None and done["status"] == "succeeded" and converged,
        f"rollout {done['id'] if done else '—'}: {done['status'] if done else 'not started'}, "
        f"{len(done['stages']) if done else 0} stages, {_count(sim, v2)} devices on v{v2}",
    )
    done_at = sim.now()
    with contextlib.suppress(TimeoutError):  # then the check below says what is missing
        await _wait(
            lambda: _judged(sim, v2, 3, labelled=True, since=done_at), 30 * bucket, "v2 accuracy"
        )
    readings = await sim.drift()
    before = _accuracies(readings, v1, end=onset, sim=sim)
    during = _accuracies(readings, v1, start=onset + 2 * bucket, sim=sim)
    after = _accuracies(readings, v2, start=done_at, sim=sim)
    a_before, a_during, a_after = (_median(x) for x in (before, during, after))
    out.check(
        "accuracy recovers",
        a_after is not None and a_during is not None and a_after >= a_during + 0.03,
        f"median accuracy: v{v1} before the drift {_fmt(a_before)}, v{v1} during "
        f"{_fmt(a_during)}, v{v2} after {_fmt(a_after)}",
        before=a_before,
        during=a_during,
        after=a_after,
    )
    lineage = (await sim.events("retrain_started"))[-1]
    out.figures.update(
        drifted_sites=sorted(sim.drifted_sites),
        detection_buckets=round(delay, 1),
        bucket_seconds=bucket,
        challenger_version=v2,
        lineage=f"event {lineage['cause_id']} → job {lineage['job_id']} → v{v2} → "
        f"rollout {release['rollout_id'] if release else '—'}",
    )
    return out


# --- chaos -------------------------------------------------------------------------------------


async def chaos_scenario(sim: Simulation, rounds: int = 2) -> Outcome:
    out = Outcome()
    if not isinstance(sim.broker, MosquittoBroker):
        out.check("chaos needs mosquitto", False, "the in-process broker cannot be killed")
        return out
    broker = sim.broker
    proxy = await sim.stall_through_proxy(every=5)  # a fifth of the devices
    await sim.add_devices(range(sim.options.devices))
    await _first_version(sim)
    v2 = await sim.train(seed=sim.options.seed + 1)
    rollout = await sim.rollout(v2, canary(1.0, install_timeout_seconds=120), "chaos")
    rng = random.Random(sim.options.seed)  # noqa: S311  (a scenario, not security)
    restarts = {"broker": 0, "control plane": 0, "agents": 0}
    for round_ in range(rounds):
        proxy.stall()
        sim.mark("network stall for a fifth of the devices", "fault")
        await asyncio.sleep(4)
        proxy.resume()
        sim.mark("network back", "info")
        await asyncio.to_thread(broker.restart, kill=True)
        restarts["broker"] += 1
        sim.mark(f"broker killed and restarted ({round_ + 1})", "fault")
        victims = rng.sample(sorted(sim.fleet.agents), max(1, sim.options.devices // 10))
        for device_id in victims:
            await sim.fleet.kill(device_id)
        sim.mark(f"{len(victims)} agents killed", "fault")
        await asyncio.sleep(1)
        await sim.start_agents(victims)
        restarts["agents"] += len(victims)
        if round_ == 0:
            await asyncio.to_thread(sim.control.kill)
            sim.mark("control plane killed (-9)", "fault")
            await asyncio.to_thread(sim.control.start)
            restarts["control plane"] += 1
            sim.mark("control plane back", "info")
    done = await sim.wait_rollout(rollout["id"], FINAL, timeout=300)
    converged = await _converged(sim, v2, timeout=120)
    out.check(
        "the rollout succeeded through the faults",
        done["status"] == "succeeded",
        f"status {done['status']} ({done['reason'] or 'no reason'})",
    )
    out.check(f"every device serves v{v2}", converged, f"{_count(sim, v2)} devices on v{v2}")
    produced, stored, lost, duplicates = await _windows(sim)
    out.check(
        "every telemetry window stored exactly once",
        lost == 0 and duplicates == 0,
        f"{produced} windows produced, {stored} stored, {lost} lost, {duplicates} duplicated",
        produced=produced,
        stored=stored,
    )
    out.figures.update(
        restarts=restarts,
        network_stalls=proxy.stalls,
        stalled_devices=sum(sim.proxied(d) for d in sim.fleet.agents),
        windows_produced=produced,
        windows_stored=stored,
    )
    return out


async def _windows(sim: Simulation) -> tuple[int, int, int, int]:
    """Telemetry windows the agents produced (their outbox sequence), stored (those of them
    the control plane's API lists), lost (neither stored nor still waiting in an outbox) and
    stored twice. Agents are read before the API, and an outbox forgets a window only once
    the control plane acknowledged storing it, so a window in flight counts as waiting or
    as stored, never as lost; counted again (for up to a minute) while any is lost."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        counted = await _count_windows(sim)
        if counted[2] == 0 or asyncio.get_running_loop().time() > deadline:
            return counted
        await asyncio.sleep(0.5)


async def _count_windows(sim: Simulation) -> tuple[int, int, int, int]:
    produced: dict[str, int] = {}
    waiting: dict[str, set[int]] = {}
    for device_id, agent in sim.fleet.agents.items():
        produced[device_id] = agent.outbox.last_seq("telemetry")
        waiting[device_id] = {
            item.seq for item in agent.outbox.pending(10_000) if item.channel == "telemetry"
        }
    stored: dict[str, list[int]] = {}
    for device_id in produced:
        windows = await sim.get(f"/devices/{device_id}/telemetry", limit=10_000)
        stored[device_id] = [w["window"]["seq"] for w in windows]
    lost = duplicates = 0
    for device_id, last in produced.items():
        seqs = stored[device_id]
        duplicates += len(seqs) - len(set(seqs))
        lost += len(set(range(1, last + 1)) - set(seqs) - waiting[device_id])
    # Windows made after ``produced`` was read may be stored by the time the API is read:
    # counted as stored only those it names.
    stored_of_produced = sum(
        len({s for s in stored[d] if s <= last}) for d, last in produced.items()
    )
    return sum(produced.values()), stored_of_produced, lost, duplicates


# --- churn -------------------------------------------------------------------------------------


async def churn_scenario(sim: Simulation) -> Outcome:
    out = Outcome()
    n = sim.options.devices
    first = max(2, int(n * 0.7))
    await sim.add_devices(range(first))
    await _first_version(sim)
    v2 = await sim.train(seed=sim.options.seed + 1)
    plan = canary(1.5, min_install_success=0.8, install_timeout_seconds=20)
    rollout = await sim.rollout(v2, plan, "churn")
    rng = random.Random(sim.options.seed)  # noqa: S311  (a scenario, not security)
    leavers = rng.sample(sorted(sim.fleet.agents), max(1, first // 10))
    joiners = list(range(first, n))
    for i, device_id in enumerate(leavers):
        await sim.fleet.kill(device_id)
        if joiners[i :: len(leavers)]:
            await sim.add_devices(joiners[i :: len(leavers)])
        await asyncio.sleep(0.5)
    sim.mark(f"{len(leavers)} devices left, {len(joiners)} joined", "fault")
    done = await sim.wait_rollout(rollout["id"], FINAL, timeout=300)
    await sim.start_agents(leavers)
    sim.mark(f"{len(leavers)} devices returned", "info")
    converged = await _converged(sim, v2, timeout=120)
    late = [sim.device_id(i) for i in joiners]
    out.check(
        "the rollout succeeded while devices came and went",
        done["status"] == "succeeded",
        f"status {done['status']} ({done['reason'] or 'no reason'})",
    )
    out.check(
        "late joiners and returning devices converge",
        converged,
        f"{_count(sim, v2)} of {sim.fleet.running} devices on v{v2} "
        f"({len(late)} joined during the rollout, {len(leavers)} left and came back)",
    )
    out.figures.update(left=len(leavers), joined=len(late))
    return out


SCENARIOS: dict[str, Callable[[Simulation], Awaitable[Outcome]]] = {
    "rollout": rollout_scenario,
    "bad-model": bad_model_scenario,
    "drift": drift_scenario,
    "chaos": chaos_scenario,
    "churn": churn_scenario,
}


# --- helpers -----------------------------------------------------------------------------------


def _count(sim: Simulation, version: int) -> int:
    return sum(v == version for d, v in sim.serving().items() if sim.fleet.is_running(d))


async def _converged(sim: Simulation, version: int, timeout: float) -> bool:  # noqa: ASYNC109
    try:
        await sim.wait_serving(version, timeout)
    except TimeoutError:
        return False
    return True


async def _rollout_events(sim: Simulation, rollout_id: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await sim.get(f"/rollouts/{rollout_id}/events")
    return result


async def _wait(
    ready: Callable[[], Awaitable[bool]],
    timeout: float,  # noqa: ASYNC109
    what: str,
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await ready():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:g} s")
        await asyncio.sleep(0.5)


async def _wait_event(sim: Simulation, kind: str, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
    return await _wait_any_event(sim, (kind,), timeout)


async def _wait_any_event(
    sim: Simulation,
    kinds: tuple[str, ...],
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any] | None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for kind in kinds:
            found = await sim.events(kind)
            if found:
                return found[0]
        await asyncio.sleep(0.5)
    return None


async def _judged(
    sim: Simulation,
    version: int,
    buckets: int,
    labelled: bool = False,
    since: float | None = None,
) -> bool:
    """Whether the monitor has judged ``buckets`` buckets of ``version`` (with ≥ 100 labels
    if ``labelled``, starting at or after ``since`` seconds into the run): the readings a
    check is about to judge, counted as the check counts them."""
    readings = await sim.drift()
    if labelled:
        return len(_accuracies(readings, version, sim, start=since)) >= buckets
    return len([r for r in readings if r["version"] == version and r["requests"]]) >= buckets


def _accuracies(
    readings: list[dict[str, Any]],
    version: int,
    sim: Simulation,
    start: float | None = None,
    end: float | None = None,
) -> list[float]:
    out = []
    for r in readings:
        t = (datetime.fromisoformat(r["bucket_start"]) - sim.started_at).total_seconds()
        if r["version"] != version or r["accuracy"] is None or r["labels"] < 100:
            continue
        if (start is None or t >= start) and (end is None or t < end):
            out.append(float(r["accuracy"]))
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
