"""An operator's routine, through the CLI only, against a real `edgefleet server`: jobs,
the audit log, a model's policy, labels, drift readings, retraining and approvals, and
watching a rollout — with `--output json` for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.rig.server import ServerProcess, run_cli, start_server, stop_server

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server(tmp_path / "data")
    yield running
    stop_server(running)


def cli_json(server: ServerProcess, *args: str) -> Any:
    return json.loads(run_cli(*args, "--output", "json", env=server.env).stdout)


def test_operator_routine(server: ServerProcess, sensor_csv: Path, tmp_path: Path) -> None:
    env = server.env
    run_cli("datasets", "upload", str(sensor_csv), "--name", "s", "--label", "fault", env=env)
    run_cli("train", "--model", "fault", "--dataset", "1", "--algorithm", "logreg", env=env)

    jobs = cli_json(server, "jobs", "list")
    assert isinstance(jobs, list) and jobs[0]["status"] == "succeeded"
    assert json.loads(run_cli("jobs", "show", "1", env=env).stdout)["result_version"] == 1
    assert run_cli("jobs", "wait", "1", env=env).stdout.strip() == "1"
    for command in (("models", "list"), ("datasets", "list"), ("tokens", "list")):
        assert isinstance(cli_json(server, *command), list), command
    assert cli_json(server, "models", "drift", "fault") == []  # no telemetry yet

    policy_file = tmp_path / "policy.json"
    policy = json.loads(run_cli("models", "policy", "get", "fault", env=env).stdout)
    policy["retrain"]["min_labelled_rows"] = 10
    policy_file.write_text(json.dumps(policy))
    run_cli("models", "policy", "set", "fault", str(policy_file), env=env)
    changed = json.loads(run_cli("models", "policy", "get", "fault", env=env).stdout)
    assert changed["retrain"]["min_labelled_rows"] == 10
    policy_file.write_text('{"retrain": {"min_labelled_rows": -1}}')
    bad = run_cli("models", "policy", "set", "fault", str(policy_file), env=env, check=False)
    assert bad.returncode == 2 and "retrain.min_labelled_rows" in bad.stderr

    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label,version\nr-1,normal,1\nr-2,overheating,1\n")
    posted = run_cli("feedback", "post", str(labels), "--model", "fault", env=env)
    assert "2 labels stored" in posted.stderr
    labels.write_text("request_id,label\nr-3,no-such-class\n")
    refused = run_cli("feedback", "post", str(labels), "--model", "fault", env=env, check=False)
    assert refused.returncode == 1 and "items.0.label" in refused.stderr

    # Retraining now: too few labelled rows from the fleet, so the challenger is refused.
    retrained = run_cli("models", "retrain", "fault", env=env)
    assert "refused" in retrained.stderr and retrained.stdout.strip() == ""
    approve = run_cli("models", "approve", "fault", "1", env=env, check=False)
    assert approve.returncode == 1 and "not awaiting approval" in approve.stderr
    events = cli_json(server, "events", "--model", "fault")
    assert isinstance(events, list)
    assert {"retrain_started", "challenger_refused"} <= {e["type"] for e in events}

    # A rollout to a device that never comes: aborted, and watch says so and exits 1.
    run_cli("devices", "add", "dev-away", env=env)
    rollout_id = run_cli("rollout", "create", "fault:1", env=env).stdout.strip().splitlines()[-1]
    assert cli_json(server, "rollout", "show", rollout_id)["status"] == "running"
    run_cli("rollout", "abort", rollout_id, env=env)
    watched = run_cli("rollout", "watch", rollout_id, env=env, check=False)
    assert watched.returncode == 1 and f"rollout {rollout_id} aborted" in watched.stderr
    listed = cli_json(server, "rollout", "list")
    assert [r["id"] for r in listed] == [rollout_id]
    devices = cli_json(server, "devices", "list")
    assert [d["id"] for d in devices] == ["dev-away"]
