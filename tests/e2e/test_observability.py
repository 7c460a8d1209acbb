"""What an operator watches, on a real server with real agents: Prometheus metrics of the
fleet, rollouts and ingest, and the server's JSON logs with what each line is about."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator.data import write_sensor_csv
from simulator.rig.agents import wait_until
from simulator.rig.fleet import OPEN_GATES, Fleet, open_fleet

pytestmark = pytest.mark.integration
DEVICES = 4


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with open_fleet(tmp_path, EDGEFLEET_LOG_LEVEL="info", EDGEFLEET_LOG_FORMAT="json") as fleet:
        yield fleet


def samples(fleet: Fleet) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(
        fleet.server.url + "/metrics",
        headers={"Authorization": f"Bearer {fleet.server.token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_and_logs_show_the_fleet_a_rollout_and_its_ingest(fleet: Fleet) -> None:
    csv = write_sensor_csv(fleet.tmp / "s.csv", 300, seed=1)
    dataset = fleet.api.post(
        "/datasets", params={"name": "s", "label": "fault"}, content=csv.read_bytes()
    ).json()
    v1 = fleet.train(dataset["id"], 0)
    for i in range(DEVICES):
        fleet.add(f"dev-{i}", "berlin")
    rollout = fleet.rollout(v1, {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES})
    fleet.wait_status(rollout["id"], "succeeded")
    serving = (
        "edgefleet_device_models",
        (("model", "fault"), ("phase", "serving"), ("version", str(v1))),
    )
    wait_until(
        lambda: samples(fleet).get(serving) == DEVICES, what="the devices serving v1 in /metrics"
    )
    seen = samples(fleet)
    assert seen[("edgefleet_devices", (("online", "true"),))] == DEVICES
    assert seen[("edgefleet_rollouts", (("status", "succeeded"),))] == 1
    assert seen[("edgefleet_jobs", (("status", "succeeded"),))] == 1
    assert seen[("edgefleet_leader", ())] == 1
    assert seen[("edgefleet_mqtt_messages_total", (("outcome", "received"),))] > 0
    assert seen[("edgefleet_mqtt_messages_total", (("outcome", "dropped"),))] == 0
    route = (("method", "GET"), ("route", "/rollouts/{rollout_id}"), ("status", "200"))
    counts = {k: v for k, v in seen.items() if k[0].startswith("edgefleet_http")}
    assert counts.get(("edgefleet_http_request_duration_seconds_count", route), 0) >= 1, counts
    assert httpx.get(fleet.server.url + "/metrics", timeout=10).status_code == 401

    # The server's log: one JSON object a line, the rollout's lines carrying its id.
    fleet.api.close()
    lines = [
        json.loads(line)
        for line in (fleet.server.data_dir / "server.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(entry["message"].startswith("control plane ready") for entry in lines)
    about_rollout = [e for e in lines if e.get("rollout_id") == rollout["id"]]
    assert about_rollout and all(e["model"] == "fault" for e in about_rollout)
    assert not any("ef_" in e["message"] for e in lines)  # no token ever logged
