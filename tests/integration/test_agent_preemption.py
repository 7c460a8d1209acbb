"""The agent takes every update: probation ends on its own, a newer desired state pre-empts a
download or a probation at once, a wiped device learns its floor, a crashed part is seen.
Real mosquitto, real HTTP downloads, real ONNX models, real signatures."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from pathlib import Path

import pytest

from agent.runtime import CRASH_FILE, AgentCrashedError
from agent.slot import ModelSlot
from shared.manifest import ModelManifest
from shared.messages import Phase, SequenceFloor, Verdict
from simulator.rig.agent_rig import DEVICE, Rig, predict_ok, refused, serving
from simulator.rig.agents import AgentThread, sign_desired, wait_until
from simulator.rig.models import make_model

pytestmark = pytest.mark.integration

# Probation settings the tests use instead of the shipped 50 requests / 30 s, each for a
# reason: the shipped defaults run end to end in tests/e2e/test_agent_defaults.py.
COMMIT_AT_ONCE = {"probation_seconds": 0}  # about downloads, not probation
NEVER_ON_TIME = {"probation_seconds": 3600, "probation_requests": 1}  # one request commits


def slot_of(agent: AgentThread, name: str = "fault") -> ModelSlot:
    return agent.a.updater.slots[name]


def phase_of(agent: AgentThread, name: str = "fault") -> Phase | None:
    slot = agent.a.updater.slots.get(name)
    return slot.phase if slot is not None else None


def states(rig: Rig) -> list[dict[str, object]]:
    return [json.loads(p) for t, p in rig.publisher.received if t.endswith("/state")]


def last_status(rig: Rig, name: str = "fault") -> dict[str, object] | None:
    for state in reversed(states(rig)):
        for model in state["models"]:  # type: ignore[attr-defined]
            if model["name"] == name:
                return dict(model)
    return None


def big_model(rig: Rig, version: int, seed: int) -> tuple[ModelManifest, bytes]:
    """~1 MB: seconds to download at the artifact server's ``slow`` 320 KiB/s."""
    manifest, data = make_model(
        rig.model_key,
        version=version,
        algorithm="random_forest",
        params={"n_estimators": 40, "max_depth": 10},
        rows=2000,
        seed=seed,
    )
    assert len(data) > 500_000
    rig.artifacts.add(manifest.sha256, data, mode="slow")
    return manifest, data


def small_model(rig: Rig, version: int, seed: int = 0) -> ModelManifest:
    manifest, data = make_model(rig.model_key, version=version, seed=seed)
    rig.artifacts.add(manifest.sha256, data)
    return manifest


def install_committed(rig: Rig, agent: AgentThread, manifests: list[ModelManifest]) -> None:
    """v1, v2, …, each committed (judged by one request), seq = position."""
    for seq, manifest in enumerate(manifests, start=1):
        rig.publish(sign_desired(rig.deploy_key, DEVICE, seq, [manifest]))
        wait_until(
            functools.partial(lambda v: serving(agent) == v, manifest.version),
            what=f"v{manifest.version}",
        )
        predict_ok(agent)
        wait_until(lambda: phase_of(agent) is Phase.SERVING, what="committed")


def part_of(rig: Rig, manifest: ModelManifest) -> Path:
    return rig.tmp / DEVICE / "staging" / f"{manifest.sha256}.part"


# --- probation that ends -------------------------------------------------------------------


def test_with_no_traffic_probation_commits_on_time_unjudged(rig: Rig) -> None:
    # 1 s instead of 30: the rule, not the shipped duration (the e2e defaults test runs that).
    agent = rig.start_agent(probation_requests=50, probation_seconds=1.0)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [small_model(rig, 1)]))
    wait_until(lambda: phase_of(agent) is Phase.PROBATION, what="v1 on probation")
    wait_until(lambda: phase_of(agent) is Phase.SERVING, what="v1 committed on time")
    status = slot_of(agent).status()
    assert (status.verdict, status.probation_requests) == (Verdict.UNJUDGED, 0)
    wait_until(lambda: (last_status(rig) or {}).get("verdict") == "unjudged", what="reported")
    # Committed on disk too: after a restart it serves without a new probation.
    agent.stop()
    again = rig.start_agent(probation_requests=50, probation_seconds=1.0)
    assert slot_of(again).phase is Phase.SERVING
    assert slot_of(again).status().verdict is Verdict.UNJUDGED


def test_enough_requests_commit_before_the_time_is_up(rig: Rig) -> None:
    agent = rig.start_agent(probation_requests=3, probation_seconds=3600)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [small_model(rig, 1)]))
    wait_until(lambda: serving(agent) == 1, what="v1 on probation")
    for _ in range(3):
        predict_ok(agent)
    wait_until(lambda: phase_of(agent) is Phase.SERVING, what="v1 judged")
    status = slot_of(agent).status()
    assert (status.verdict, status.probation_requests) == (Verdict.JUDGED, 3)


def test_zero_zero_probation_commits_at_once(rig: Rig) -> None:
    agent = rig.start_agent(probation_requests=0, probation_seconds=0)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [small_model(rig, 1)]))
    wait_until(lambda: phase_of(agent) is Phase.SERVING, what="v1 committed")
    assert slot_of(agent).status().verdict is Verdict.UNJUDGED


def test_a_restart_during_probation_resumes_it(rig: Rig) -> None:
    agent = rig.start_agent(**NEVER_ON_TIME)
    v1, v2 = small_model(rig, 1), small_model(rig, 2, seed=1)
    install_committed(rig, agent, [v1])
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [v2]))
    wait_until(lambda: serving(agent) == 2, what="v2 on probation")
    agent.stop()
    again = rig.start_agent(**NEVER_ON_TIME)
    assert serving(again) == 2
    assert slot_of(again).phase is Phase.PROBATION
    predict_ok(again)
    wait_until(lambda: phase_of(again) is Phase.SERVING, what="v2 judged after restart")
    assert slot_of(again).status().previous.version == 1  # type: ignore[union-attr]


# --- newer wins, at once -------------------------------------------------------------------


def test_a_newer_state_during_probation_commits_it_unjudged_and_goes_on(rig: Rig) -> None:
    agent = rig.start_agent(**NEVER_ON_TIME)
    v1, v2, v3 = small_model(rig, 1), small_model(rig, 2, seed=1), small_model(rig, 3, seed=2)
    install_committed(rig, agent, [v1])
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [v2]))
    wait_until(lambda: phase_of(agent) is Phase.PROBATION, what="v2 on probation")
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 3, [v3]))
    wait_until(lambda: serving(agent) == 3, what="v3 active")
    status = slot_of(agent).status()
    assert status.phase is Phase.PROBATION
    assert status.previous is not None and status.previous.version == 2
    slots = agent.a.store.read_slots("fault")
    assert slots.previous is not None and slots.previous.verdict is Verdict.UNJUDGED


def test_a_rollback_during_probation_serves_the_previous_version_at_once(rig: Rig) -> None:
    agent = rig.start_agent(**NEVER_ON_TIME)
    v1, v2 = small_model(rig, 1), small_model(rig, 2, seed=1)
    install_committed(rig, agent, [v1])
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [v2]))
    wait_until(lambda: phase_of(agent) is Phase.PROBATION, what="v2 on probation")
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 3, [v1]))
    wait_until(lambda: serving(agent) == 1, timeout=5, what="v1 back")
    status = slot_of(agent).status()
    assert status.phase is Phase.SERVING and status.target is None
    assert status.last_error is None  # set aside, not failed
    assert status.verdict is Verdict.JUDGED  # v1's own verdict, from before
    assert not agent.a.store.artifact_path("fault", v2.sha256).exists()
    predict_ok(agent)


def test_a_rollback_during_a_large_download_cancels_it_and_keeps_the_part(rig: Rig) -> None:
    agent = rig.start_agent(**COMMIT_AT_ONCE)
    v1, v2 = small_model(rig, 1), small_model(rig, 2, seed=1)
    install_committed(rig, agent, [v1, v2])
    v3, v3_data = big_model(rig, 3, seed=3)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 3, [v3]))
    part = part_of(rig, v3)
    wait_until(lambda: part.exists() and part.stat().st_size > 64_000, what="v3 in flight")
    assert slot_of(agent).phase is Phase.DOWNLOADING
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 4, [v1]))  # the rollback slot
    wait_until(lambda: serving(agent) == 1, timeout=5, what="v1 back")
    status = slot_of(agent).status()
    assert status.phase is Phase.SERVING and status.target is None
    wait_until(
        lambda: (
            (last_status(rig) or {}).get("phase") == "serving"
            and (last_status(rig) or {}).get("target") is None
        ),
        what="a true phase reported",
    )
    had = part.stat().st_size
    assert 0 < had < len(v3_data)  # kept for a later resume
    time.sleep(0.5)  # the slow server writes every 0.1 s: a live download would grow it
    assert part.stat().st_size == had
    # Wanted again: resumed where it stopped.
    rig.artifacts.modes[v3.sha256] = "normal"
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 5, [v3]))
    wait_until(lambda: serving(agent) == 3, what="v3 after all")
    resumed = [r for s, r in rig.artifacts.requests if s == v3.sha256][-1]
    assert resumed is not None
    assert int(resumed.removeprefix("bytes=").rstrip("-")) >= had


def test_a_download_of_one_model_does_not_hold_up_another(rig: Rig) -> None:
    agent = rig.start_agent(**COMMIT_AT_ONCE)
    big, _ = big_model(rig, 1, seed=4)
    other1 = make_model(rig.model_key, name="other", version=1)
    other2 = make_model(rig.model_key, name="other", version=2, seed=5)
    for manifest, data in (other1, other2):
        rig.artifacts.add(manifest.sha256, data)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [big, other1[0]]))
    wait_until(lambda: serving(agent, "other") == 1, what="other v1")
    assert slot_of(agent).phase is Phase.DOWNLOADING  # the big one is still coming
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [big, other2[0]]))
    wait_until(lambda: serving(agent, "other") == 2, what="other v2")
    assert slot_of(agent).phase is Phase.DOWNLOADING  # same version still wanted: not restarted
    assert [r for s, r in rig.artifacts.requests if s == big.sha256] == [None]
    wait_until(lambda: serving(agent) == 1, timeout=30, what="the big one")


def test_a_flood_of_desired_states_converges_on_the_last_without_leaks(rig: Rig) -> None:
    """A newer desired state every 100 ms for a minute, alternating between two large
    versions and a small one: the agent ends on the last, with no task, descriptor or
    partial file left over from the superseded downloads."""
    agent = rig.start_agent(**COMMIT_AT_ONCE)
    install_committed(rig, agent, [small_model(rig, 1)])
    targets = [big_model(rig, 2, seed=6)[0], big_model(rig, 3, seed=7)[0], small_model(rig, 4, 8)]

    async def task_count() -> int:
        return len(asyncio.all_tasks())

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    tasks_before, fds_before = agent.call(task_count()), descriptors()
    seq, started = 2, time.monotonic()
    while time.monotonic() - started < 60:
        rig.publish(sign_desired(rig.deploy_key, DEVICE, seq, [targets[seq % 3]]))
        seq += 1
        time.sleep(0.1)
    last = targets[(seq - 1) % 3]
    for target in targets:
        rig.artifacts.modes[target.sha256] = "normal"  # let the last one finish quickly
    wait_until(lambda: serving(agent) == last.version, timeout=60, what="the last one")
    assert agent.a.updater.accepted is not None and agent.a.updater.accepted.seq == seq - 1
    wait_until(lambda: agent.call(task_count()) <= tasks_before, what="tasks back")
    wait_until(lambda: descriptors() <= fds_before + 1, what="descriptors back")
    parts = list((rig.tmp / DEVICE / "staging").glob("*.part"))
    assert len(parts) <= 1  # at most the latest superseded download, kept for a resume
    assert slot_of(agent).status().target is None


# --- a wiped device ------------------------------------------------------------------------


def test_a_wiped_device_learns_its_floor_before_accepting_anything(rig: Rig) -> None:
    rig.artifacts.floors[DEVICE] = SequenceFloor(
        device_id=DEVICE, deployment_seq=5, telemetry_seq=7, samples_seq=2, state_seq=9 << 32
    )
    v1 = small_model(rig, 1)
    agent = rig.start_agent(**COMMIT_AT_ONCE)
    wait_until(agent.a.updater.floor_known.is_set, what="floor learnt")
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 3, [v1]))  # genuine, but older
    wait_until(lambda: refused(agent, "replay", model_level=False), what="replay refused")
    assert serving(agent) is None
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 5, [v1]))  # the newest issued
    wait_until(lambda: serving(agent) == 1, what="v1")
    predict_ok(agent)
    window = agent.call(agent.a.close_window())
    assert window is not None and window.seq == 8  # above the 7 stored before the wipe
    assert agent.a.state().seq > 9 << 32  # its reports, too, outrank the stored ones


def test_with_the_control_plane_unreachable_nothing_is_accepted_until_it_answers(
    rig: Rig,
) -> None:
    rig.artifacts.floor_down = True
    agent = rig.start_agent(**COMMIT_AT_ONCE)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [small_model(rig, 1)]))
    wait_until(lambda: refused(agent, "floor_unknown", model_level=False), what="reported")
    wait_until(lambda: rig.artifacts.floor_requests >= 1, what="asked")
    assert agent.a.updater.accepted is None
    rig.artifacts.floor_down = False
    wait_until(lambda: serving(agent) == 1, timeout=30, what="v1 once it answers")
    assert agent.a.updater.last_error is None


# --- no silent deaths ----------------------------------------------------------------------


def test_a_crashed_part_is_reported_and_ends_the_agent(rig: Rig) -> None:
    agent = rig.start_agent(**COMMIT_AT_ONCE)
    install_committed(rig, agent, [small_model(rig, 1)])

    def broken_disk(*_: object) -> None:
        raise RuntimeError("the disk is on fire")

    agent.a.store.write_accepted = broken_disk  # type: ignore[method-assign,assignment]
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [small_model(rig, 2, seed=1)]))
    agent._thread.join(30)
    assert isinstance(agent.error, AgentCrashedError)
    assert agent.error.part == "updater"
    crash = rig.tmp / DEVICE / CRASH_FILE
    assert crash.exists()
    wait_until(
        lambda: any(
            (s.get("last_error") or {}).get("message")  # type: ignore[attr-defined]
            == "updater: RuntimeError: the disk is on fire"
            for s in states(rig)
        ),
        what="the crash reported",
    )
    rig.publisher.received.clear()
    again = rig.start_agent(**COMMIT_AT_ONCE)  # what systemd does
    assert serving(again) == 1
    wait_until(lambda: bool(states(rig)), what="a state after the restart")
    assert states(rig)[-1]["last_error"]["reason"] == "agent_crash"  # type: ignore[index]
    assert not crash.exists()  # reported once


def test_an_agent_process_whose_part_fails_exits_non_zero(rig: Rig) -> None:
    process = rig.start_agent_process(**COMMIT_AT_ONCE)
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 1, [small_model(rig, 1)]))
    wait_until(lambda: rig.reported_version() == 1, what="v1")
    state_file = rig.tmp / DEVICE / "state.json"
    state_file.unlink()
    state_file.mkdir()  # the next accepted desired state cannot be written
    rig.publish(sign_desired(rig.deploy_key, DEVICE, 2, [small_model(rig, 2, seed=1)]))
    assert process.wait(30) == 1
    log = (rig.tmp / "agent.log").read_text()
    assert "Traceback" in log and "updater" in log
