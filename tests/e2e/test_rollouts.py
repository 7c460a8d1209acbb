"""Staged rollouts end to end: a real `edgefleet server`, a real mosquitto, real agents
(in-process, each with its own loop) downloading over HTTP."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.data import sensor_rows, write_sensor_csv
from simulator.faults import register_slow_version
from simulator.rig.agents import AgentThread, wait_until
from simulator.rig.fleet import OPEN_GATES, Fleet, open_fleet
from simulator.rig.server import start_server

pytestmark = pytest.mark.integration
FLEET = 20


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with open_fleet(tmp_path) as fleet:
        yield fleet


def test_staged_rollout_converges_and_late_joiners_follow(fleet: Fleet) -> None:
    csv = write_sensor_csv(fleet.tmp / "s.csv", 400, seed=1)
    dataset = fleet.api.post(
        "/datasets", params={"name": "s", "label": "fault"}, content=csv.read_bytes()
    ).json()
    v1, v2 = fleet.train(dataset["id"], 0), fleet.train(dataset["id"], 1)
    for i in range(FLEET):
        fleet.add(f"dev-{i}", "berlin" if i % 2 else "paris")

    first = fleet.rollout(v1, {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES})
    fleet.wait_status(first["id"], "succeeded")
    wait_until(lambda: all(fleet.serving(d) == v1 for d in fleet.agents), what="v1 everywhere")

    plan = {
        "stages": [{"count": 1}, {"percent": 50}],
        # The away device never installs: its stage goes on once the others have and 10 s
        # have passed.
        "gates": {**OPEN_GATES, "install_timeout_seconds": 10, "min_install_success": 0.8},
    }
    dry = fleet.api.post(
        "/rollouts",
        params={"dry_run": "true"},
        json={"model": "fault", "version": str(v2), "plan": plan},
    )
    assert dry.status_code == 200, dry.text
    planned = dry.json()
    assert [s["target"] for s in planned["stages"]] == [1, FLEET // 2, FLEET]
    assert all(d["current_version"] == v1 for s in planned["stages"] for d in s["devices"])
    assert fleet.api.get("/rollouts", params={"status": "running"}).json() == []  # nothing ran
    # A device of the last stage is away for the whole rollout (not the canary: a canary
    # that never installs stops the rollout, as it should).
    away = planned["stages"][-1]["devices"][0]["id"]
    offline = fleet.agents[away]
    offline.stop()

    second = fleet.rollout(v2, plan, id=planned["rollout_id"])
    done = fleet.wait_status(second["id"], "succeeded")
    assert done["assigned"] == FLEET
    # A finished rollout shows its last stage's readings, each with its threshold.
    final = {g["name"]: g for g in done["gates"]}
    assert {"install", "reporting", "latency_p50_ratio", "latency_p95_ratio"} <= set(final)
    assert {g["status"] for g in final.values()} == {"pass"}
    assert "installed" in final["install"]["detail"] and final["install"]["devices"]
    events = fleet.api.get(f"/rollouts/{second['id']}/events").json()
    started = [e["message"] for e in events if e["type"] == "stage_started"]
    assert len(started) == 3
    online = [d for d in fleet.agents if d != away]
    wait_until(lambda: all(fleet.serving(d) == v2 for d in online), what="v2 everywhere")
    # The device that was away comes back and converges to what the rollout gave it.
    fleet.agents[away] = AgentThread(offline.settings)
    wait_until(lambda: fleet.serving(away) == v2, timeout=30, what="returning device")
    # Rollout and device changes are in the audit log.
    audit = fleet.api.get("/events", params={"rollout_id": second["id"]}).json()
    assert {"created", "stage_started", "stage_passed", "succeeded"} <= {e["type"] for e in audit}
    offline_events = fleet.api.get("/events", params={"type": "device_offline"}).json()
    assert any(e["device_id"] == away for e in offline_events)
    # (the device serves v2 before the control plane has stored its report: wait for that)
    wait_until(
        lambda: any(
            f"v{v1} → v{v2}" in e["message"]
            for e in fleet.api.get(
                "/events", params={"type": "device_model", "device_id": away}
            ).json()
        ),
        what="the returning device's version change in the audit log",
    )
    # The dry run showed the cohorts that actually ran: the canary was its first device.
    canary = planned["stages"][0]["devices"][0]["id"]
    state = fleet.agents[canary].a.updater.slots["fault"]
    assert state.stage == "1 device"

    # A device joining after the rollout gets the version it made the default.
    late = fleet.add("dev-late", "berlin")
    wait_until(lambda: fleet.serving("dev-late") == v2, timeout=30, what="late joiner")
    del late

    # Rolled back after it finished: every device goes back to v1, and so does the default:
    # a device joining now gets v1, not the version the fleet was rolled back from.
    assert fleet.api.post(f"/rollouts/{second['id']}/rollback").status_code == 200
    wait_until(
        lambda: all(fleet.serving(d) == v1 for d in fleet.agents),  # dev-late too
        timeout=60,
        what="v1 everywhere again",
    )
    fleet.add("dev-later", "berlin")
    wait_until(lambda: fleet.serving("dev-later") == v1, timeout=30, what="a later joiner")
    restored = fleet.api.get("/events", params={"type": "default_restored"}).json()
    assert [e["rollout_id"] for e in restored] == [second["id"]]

    # Overlapping rollouts and bad requests are refused with reasons.
    busy = fleet.rollout(v1, {"preset": "canary", "soak_seconds": 3600}, selector="site=paris")
    conflict = fleet.api.post(
        "/rollouts", json={"model": "fault", "version": str(v1), "selector": "site=paris"}
    )
    assert conflict.status_code == 409
    assert fleet.api.post(f"/rollouts/{busy['id']}/abort").status_code == 200
    for body, status in [
        ({"model": "fault", "version": "99"}, 404),
        ({"model": "fault", "version": str(v1), "selector": "site=mars"}, 422),
        ({"model": "fault", "version": str(v1), "selector": "site=="}, 422),
        (
            {
                "model": "fault",
                "version": str(v1),
                "plan": {"stages": [{"percent": 50}, {"percent": 10}]},
            },
            422,
        ),
        ({"model": "fault", "version": str(v1), "plan": {"stages": [{"percent": 150}]}}, 422),
        (
            {
                "model": "fault",
                "version": str(v1),
                "plan": {"preset": "canary", "soak_seconds": -5},
            },
            422,
        ),
    ]:
        response = fleet.api.post("/rollouts", json=body)
        assert response.status_code == status, (body, response.text)
    finished = fleet.api.post(f"/rollouts/{second['id']}/promote")
    assert finished.status_code == 409
    assert "cannot promote" in finished.text


def keep_busy(fleet: Fleet, stop: threading.Event) -> None:
    """Traffic on every device, so every window has requests on both versions."""
    X, _ = sensor_rows(1, seed=3)
    rows = X.tolist()
    while not stop.is_set():
        for agent in list(fleet.agents.values()):
            with contextlib.suppress(LookupError, ValueError):
                agent.a.predict_rows("fault", rows)
        stop.wait(0.005)


def test_latency_regression_is_stopped_at_the_canary_and_rolled_back(fleet: Fleet) -> None:
    csv = write_sensor_csv(fleet.tmp / "s.csv", 400, seed=1)
    dataset = fleet.api.post(
        "/datasets", params={"name": "s", "label": "fault"}, content=csv.read_bytes()
    ).json()
    v1 = fleet.train(dataset["id"], 0)
    for i in range(6):
        fleet.add(f"dev-{i}", "berlin")
    first = fleet.rollout(v1, {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES})
    fleet.wait_status(first["id"], "succeeded")
    wait_until(lambda: all(fleet.serving(d) == v1 for d in fleet.agents), what="v1 everywhere")

    bad = register_slow_version(fleet.api, v1)
    stop = threading.Event()
    load = threading.Thread(target=keep_busy, args=(fleet, stop), daemon=True)
    load.start()

    def served_on_v1(device_id: str) -> int:
        windows = fleet.api.get(f"/devices/{device_id}/telemetry").json()
        return sum(m["requests"] for w in windows for m in w["window"]["models"])

    try:
        # Each device's own past on v1 is what its update is judged against (paired gates).
        wait_until(
            lambda: all(served_on_v1(d) >= 100 for d in fleet.agents),
            timeout=60,
            what="traffic on v1 first",
        )
        rollout = fleet.rollout(
            bad,
            {
                "stages": [{"count": 1, "soak_seconds": 60}, {"percent": 50, "soak_seconds": 60}],
                "gates": {
                    "min_requests": 20,
                    "min_devices_reporting": 1,
                    # a ~100× regression: 20 requests a side are evidence enough
                    "min_requests_per_device": 20,
                    "max_latency_p50_ratio": 2.0,
                },
            },
        )
        done = fleet.wait_status(rollout["id"], "rolled_back", timeout=60)
    finally:
        stop.set()
        load.join(10)
    assert "latency_p50_ratio" in (done["reason"] or "")
    assert "against themselves before their update" in done["reason"]
    assert done["assigned"] == 1  # only the canary ever got it
    events = [e["type"] for e in fleet.api.get(f"/rollouts/{rollout['id']}/events").json()]
    assert events.count("stage_started") == 1
    assert "gate_failed" in events
    assert "rolled_back" in events
    wait_until(lambda: all(fleet.serving(d) == v1 for d in fleet.agents), what="all on v1")
    bad_sha = fleet.api.get(f"/models/fault/versions/{bad}").json()["sha256"]
    holders = [
        d
        for d, a in fleet.agents.items()
        if (a.settings.data_dir / "models" / "fault" / f"{bad_sha}.onnx").exists()
        or (a.settings.data_dir / "staging" / f"{bad_sha}.part").exists()
    ]
    canary = [
        d for d, a in fleet.agents.items() if a.a.updater.slots["fault"].rollout_id == rollout["id"]
    ]
    assert len(canary) == 1
    assert set(holders) <= set(canary)  # nobody outside the canary downloaded it


def test_control_plane_killed_mid_rollout_resumes_without_repeating_a_stage(fleet: Fleet) -> None:
    csv = write_sensor_csv(fleet.tmp / "s.csv", 400, seed=1)
    dataset = fleet.api.post(
        "/datasets", params={"name": "s", "label": "fault"}, content=csv.read_bytes()
    ).json()
    v1, v2 = fleet.train(dataset["id"], 0), fleet.train(dataset["id"], 1)
    for i in range(6):
        fleet.add(f"dev-{i}", "berlin")
    first = fleet.rollout(v1, {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES})
    fleet.wait_status(first["id"], "succeeded")
    rollout = fleet.rollout(
        v2,
        {
            "stages": [{"count": 1, "soak_seconds": 3}, {"percent": 50, "soak_seconds": 3}],
            "gates": OPEN_GATES,
        },
    )
    wait_until(
        lambda: fleet.api.get(f"/rollouts/{rollout['id']}").json()["assigned"] >= 1,
        what="canary started",
    )
    fleet.server.process.kill()  # kill -9 mid-rollout
    fleet.server.process.wait(10)
    fleet.server = start_server(fleet.server.data_dir, env=fleet.env, restart=fleet.server)
    fleet.wait_status(rollout["id"], "succeeded", timeout=60)
    events = [e["type"] for e in fleet.api.get(f"/rollouts/{rollout['id']}/events").json()]
    assert events.count("stage_started") == 3  # each stage started exactly once
    assert events.count("stage_passed") == 3
    wait_until(lambda: all(fleet.serving(d) == v2 for d in fleet.agents), what="v2 everywhere")


def test_operator_cli(fleet: Fleet) -> None:
    from simulator.rig.server import run_cli

    env = fleet.server.env
    csv = write_sensor_csv(fleet.tmp / "s.csv", 300, seed=1)
    dataset = run_cli(
        "datasets", "upload", str(csv), "--name", "s", "--label", "fault", env=env
    ).stdout.split()[-1]
    run_cli("train", "--model", "fault", "--dataset", dataset, "--algorithm", "logreg", env=env)
    for i in range(3):
        fleet.add(f"dev-{i}", "berlin")
    run_cli("devices", "label", "dev-2", "site=paris", "hw=rpi4", env=env)
    paris = run_cli("devices", "list", "--selector", "site=paris", env=env).stdout
    assert "dev-2" in paris
    assert "dev-0" not in paris

    create = (
        "rollout",
        "create",
        "fault:1",
        "--stages",
        "1,50%",
        "--soak",
        "0",
        "--min-requests",
        "0",
    )
    dry = run_cli(*create, "--dry-run", env=env)
    rollout_id = dry.stdout.split()[-1]
    assert "stage 1 (1 device" in dry.stdout
    created = run_cli(*create, env=env)
    assert created.stdout.split()[-1] != rollout_id  # a new id unless the dry run's is passed
    fleet.wait_status(created.stdout.split()[-1], "succeeded")
    shown = run_cli("rollout", "show", created.stdout.split()[-1], env=env).stdout
    assert "succeeded" in shown
    events = run_cli("rollout", "events", created.stdout.split()[-1], env=env).stdout
    assert "stage_started" in events
    assert "succeeded" in events

    run_cli(
        "train",
        "--model",
        "fault",
        "--dataset",
        dataset,
        "--algorithm",
        "logreg",
        "--seed",
        "2",
        env=env,
    )
    slow = run_cli(
        "rollout",
        "create",
        "fault:2",
        "--preset",
        "canary",
        "--soak",
        "3600",
        "--min-requests",
        "0",
        env=env,
    ).stdout.split()[-1]
    assert "paused" in run_cli("rollout", "pause", slow, env=env).stdout
    refused = run_cli("rollout", "pause", slow, env=env, check=False)
    assert refused.returncode == 1
    assert "already paused" in refused.stderr
    assert "running" in run_cli("rollout", "resume", slow, env=env).stdout
    assert "rolled_back" in run_cli("rollout", "rollback", slow, env=env).stdout
    assert slow in run_cli("rollout", "list", env=env).stdout
