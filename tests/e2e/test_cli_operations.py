"""An operator's routine, through the CLI only, against a real `edgefleet server`: jobs,
the audit log, a model's policy, labels, drift readings, retraining and approvals, and
watching a rollout — with `--output json` for scripts."""

from __future__ import annotations

import csv
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
    promoted = run_cli("rollout", "promote", rollout_id, env=env, check=False)
    assert promoted.returncode == 1 and "aborted" in promoted.stderr  # 409: it has ended
    watched = run_cli("rollout", "watch", rollout_id, env=env, check=False)
    assert watched.returncode == 1 and f"rollout {rollout_id} aborted" in watched.stderr
    listed = cli_json(server, "rollout", "list")
    assert [r["id"] for r in listed] == [rollout_id]
    devices = cli_json(server, "devices", "list")
    assert [d["id"] for d in devices] == ["dev-away"]

    alias = run_cli("models", "alias", "fault", "champion", "1", env=env)
    assert "champion" in alias.stderr + alias.stdout
    (v1,) = cli_json(server, "models", "show", "fault")
    assert v1["aliases"] == ["champion"]


def test_admission_and_keys_through_the_cli(server: ServerProcess, tmp_path: Path) -> None:
    """Bootstrap tokens, pre-authorized ids, reissue / reject / approve / remove, and the
    trust store, as an operator runs them (no broker here: accounts are not made)."""
    env = server.env
    issued = run_cli("bootstrap-tokens", "create", "--name", "line-2", "--uses", "3", env=env)
    assert issued.stdout.strip().splitlines()[-1].startswith("EDGEFLEET_BOOTSTRAP_TOKEN=efb_")
    (listed,) = cli_json(server, "bootstrap-tokens", "list")
    assert (listed["name"], listed["max_uses"], listed["uses"]) == ("line-2", 3, 0)
    assert "revoked" in run_cli("bootstrap-tokens", "revoke", str(listed["id"]), env=env).stderr
    assert cli_json(server, "bootstrap-tokens", "list")[0]["revoked_at"] is not None

    ids = tmp_path / "ids.csv"
    ids.write_text("id,labels\ndev-p1,site=lab;hw=rpi4\ndev-p2,\n")
    assert (
        "2 devices pre-authorized" in run_cli("devices", "preauthorize", str(ids), env=env).stderr
    )
    ids.write_text("id\ndev-p3\nDev-Bad\n")
    refused = run_cli("devices", "preauthorize", str(ids), env=env, check=False)
    said = " ".join(refused.stderr.split())  # the console wraps long lines
    assert refused.returncode == 2 and "ids.csv:3: String should match pattern '^[a-z0-9]" in said
    shown = {d["id"]: d for d in cli_json(server, "devices", "list")}
    assert set(shown) == {"dev-p1", "dev-p2"}  # nothing of the refused file
    assert shown["dev-p1"]["labels"] == {"site": "lab", "hw": "rpi4"}

    # Registered in bulk, tokens to a new 0600 file; nothing written when refused.
    ids.write_text("id,labels\ndev-b1,site=lab\ndev-b2,\ndev-b3,hw=rpi5\n")
    tokens = tmp_path / "tokens.csv"
    narrow = {**env, "COLUMNS": "40"}  # messages are not folded, however narrow the terminal
    imported = run_cli("devices", "import", str(ids), "--tokens", str(tokens), env=narrow)
    assert f"3 devices registered; tokens in {tokens}\n" in imported.stderr
    assert tokens.stat().st_mode & 0o777 == 0o600
    with tokens.open(newline="") as handle:
        written = {row["id"]: row["token"] for row in csv.DictReader(handle)}
    assert list(written) == ["dev-b1", "dev-b2", "dev-b3"]
    with server.client(written["dev-b2"]) as device:
        assert device.get("/devices/dev-b2/floor").status_code == 200
    exists = run_cli("devices", "import", str(ids), "--tokens", str(tokens), env=env, check=False)
    assert exists.returncode == 2 and "exists" in exists.stderr
    unwritten = tmp_path / "unwritten.csv"
    taken = run_cli("devices", "import", str(ids), "--tokens", str(unwritten), env=env, check=False)
    assert taken.returncode == 1 and "already registered" in " ".join(taken.stderr.split())
    assert not unwritten.exists()

    first = run_cli("devices", "add", "dev-c", env=env).stdout.strip().splitlines()[-1]
    second = run_cli("devices", "reissue", "dev-c", env=env).stdout.strip().splitlines()[-1]
    assert second.startswith("ef_") and second != first
    assert "rejected" in run_cli("devices", "reject", "dev-c", env=env).stderr
    assert "accepted" in run_cli("devices", "approve", "dev-c", env=env).stderr
    assert "decommissioned" in run_cli("devices", "remove", "dev-c", env=env).stderr
    again = run_cli("devices", "approve", "dev-c", env=env, check=False)
    assert again.returncode == 1 and "decommissioned" in again.stderr

    keys = run_cli("keys", "show", "--data-dir", str(server.data_dir)).stdout
    assert "trust store version 1" in keys
    assert keys.count("model") == 1 and keys.count("deployment") == 1
