"""The drift loop end to end: real agents serve traffic and sample rows, an "app" posts the
true labels back through the feedback API, the server's monitor notices a drift, retrains,
proves the challenger better on recent labelled rows, and rolls it out in stages — or
refuses a challenger that is not better, and keeps its cooldown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from simulator.data import CLASSES, sensor_csv, sensor_rows
from simulator.rig.agents import wait_until
from simulator.rig.browser import (
    CHROMEDRIVER,
    CHROMIUM,
    attribute_of,
    chart_series,
    log_in,
    open_chromium,
    screenshot,
    shows,
    text_of,
    wait_for,
)
from simulator.rig.fleet import OPEN_GATES, Fleet, open_fleet

pytestmark = pytest.mark.integration
DEVICES = 6
BUCKET = {"EDGEFLEET_MONITOR_BUCKET_SECONDS": "2", "EDGEFLEET_MONITOR_GRACE_SECONDS": "1.5"}
TEMPERATURE_STD = 6.0


class App:
    """What apps on the devices do: predict one row at a time through the agent, and post
    the true label of every answer back (with request id, prediction and version)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.shift = 0.0  # temperature sensor offset in standard deviations: the drift
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.posted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> App:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        client = httpx.Client(
            base_url=self.fleet.api.base_url, headers=self.fleet.api.headers, timeout=30
        )
        seed = 100
        try:
            while not self.stop.is_set():
                seed += 1
                X, y = sensor_rows(40 * DEVICES, seed)
                X[:, 0] += self.shift * TEMPERATURE_STD  # the sensor reads high; truth is y
                items = []
                for i, (row, label) in enumerate(zip(X.tolist(), y.tolist(), strict=True)):
                    agent = list(self.fleet.agents.values())[i % DEVICES].a
                    prediction = agent.predict_rows("fault", [row])
                    assert prediction.outputs.labels is not None
                    items.append(
                        {
                            "request_id": prediction.request_id,
                            "label": CLASSES[label],
                            "prediction": int(prediction.outputs.labels[0]),
                            "version": prediction.model.manifest.version,
                        }
                    )
                response = client.post("/feedback", json={"model": "fault", "items": items})
                assert response.status_code == 200, response.text
                self.posted += len(items)
                time.sleep(0.1)
        except BaseException as exc:
            self.error = exc
        finally:
            client.close()


def events(fleet: Fleet, kind: str) -> list[dict[str, Any]]:
    """Events of one type, oldest first."""
    result: list[dict[str, Any]] = fleet.api.get("/events", params={"type": kind}).json()
    return result[::-1]


@pytest.fixture
def drift_fleet(tmp_path: Path) -> Iterator[Fleet]:
    with open_fleet(tmp_path, **BUCKET) as fleet:
        dataset = fleet.api.post(
            "/datasets",
            params={"name": "sensors", "label": "fault"},
            content=sensor_csv(4000, seed=1).encode(),
        ).json()
        assert fleet.train(dataset["id"], 0) == 1
        for i in range(DEVICES):
            fleet.add(
                f"dev-{i}",
                "berlin" if i % 2 else "paris",
                window_seconds=1.0,
                sample_rate=1.0,
                samples_per_window=500,
            )
        first = fleet.rollout(1, {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES})
        fleet.wait_status(first["id"], "succeeded")
        yield fleet


def set_policy(fleet: Fleet, **retrain: Any) -> None:
    policy = {
        "accuracy": {"min_labels": 100},
        "retrain": {
            "min_labelled_rows": 300,
            "max_recent_rows": 1200,  # the newest rows: after the drift
            "max_reference_rows": 0,
            # A challenger is meant to predict differently from the drifted champion:
            # like the retraining default plan, do not judge prediction divergence.
            "plan": {
                "preset": "canary",
                "soak_seconds": 0,
                "gates": {**OPEN_GATES, "max_prediction_js": 1.0},
            },
            **retrain,
        },
    }
    response = fleet.api.put("/models/fault/policy", json=policy)
    assert response.status_code == 200, response.text


def drift_points(fleet: Fleet, version: int) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = fleet.api.get(
        "/models/fault/drift", params={"version": version}
    ).json()
    return result


def test_drift_is_detected_retrained_proven_and_rolled_out(drift_fleet: Fleet) -> None:
    fleet = drift_fleet
    set_policy(fleet)
    with App(fleet) as app:
        # Stationary: buckets are judged, nothing drifts.
        wait_until(
            lambda: sum(p["requests"] >= 500 for p in drift_points(fleet, 1)) >= 3,
            timeout=60,
            what="three judged buckets",
        )
        assert app.error is None
        assert events(fleet, "drift") == []
        before = [p for p in drift_points(fleet, 1) if p["accuracy"] is not None]
        assert before and all(p["accuracy"] > 0.75 for p in before[-2:])
        assert all(f["verdict"] != "drift" for p in before for f in p["features"])

        app.shift = 2.0  # the temperature sensor starts reading 2σ high
        wait_until(lambda: bool(events(fleet, "drift")), timeout=30, what="a drift event")
        drift = events(fleet, "drift")[0]
        assert drift["version"] == 1 and "temperature_c" in drift["data"]["features"]
        assert drift["data"]["readings"]["temperature_c"]["mean_shift"] > 1.0

        wait_until(
            lambda: bool(events(fleet, "challenger_registered")), timeout=120, what="a challenger"
        )
        started = events(fleet, "retrain_started")
        # Lineage: the job follows from the drift (or from the accuracy drop that came with
        # it: whichever was the newest pending trigger when the job started).
        causes = {e["id"]: e for e in events(fleet, "drift") + events(fleet, "accuracy_drop")}
        assert len(started) == 1 and started[0]["cause_id"] in causes
        assert causes[started[0]["cause_id"]]["version"] == 1
        registered = events(fleet, "challenger_registered")[-1]
        job = fleet.api.get(f"/jobs/{started[0]['job_id']}").json()
        assert job["kind"] == "retrain" and job["trigger_event_id"] == started[0]["cause_id"]
        assert registered["job_id"] == job["id"] and registered["version"] == 2
        assert job["result"]["decision"] == "registered"
        assert job["result"]["challenger"] >= job["result"]["champion"] + 0.02

        wait_until(lambda: bool(events(fleet, "release")), timeout=30, what="the release")
        release = events(fleet, "release")[-1]
        rollout = fleet.wait_status(release["rollout_id"], "succeeded", timeout=60)
        assert rollout["version"] == 2 and rollout["created_by"] == f"retraining job {job['id']}"
        staged = [e["type"] for e in fleet.api.get(f"/rollouts/{rollout['id']}/events").json()]
        # canary: 1 device → 10% → 50% → 100% (on 6 devices 10% is 1 device: 3 stages)
        assert staged.count("stage_started") == len(rollout["stages"]) == 3
        wait_until(lambda: all(fleet.serving(d) == 2 for d in fleet.agents), what="v2 everywhere")
        version = fleet.api.get("/models/fault/versions/2").json()
        assert version["release"] == "rolling_out" and version["rollout_id"] == rollout["id"]

        # Accuracy is back up, on the drifted data, with the new version.
        wait_until(
            lambda: (
                sum(
                    p["accuracy"] is not None and p["labels"] >= 100 for p in drift_points(fleet, 2)
                )
                >= 2
            ),
            timeout=30,
            what="v2 accuracy",
        )
        assert app.error is None
    after = [p["accuracy"] for p in drift_points(fleet, 2) if p["labels"] >= 100]
    during = [
        p["accuracy"]
        for p in drift_points(fleet, 1)
        if p["labels"] >= 100 and p["bucket_start"] >= drift["data"]["onset"]
    ]
    assert float(np.median(after)) > float(np.median(during)) + 0.1
    assert float(np.median(after)) > 0.75
    if CHROMIUM and CHROMEDRIVER:  # else tests/e2e/test_dashboard.py says why it skips
        the_dashboard_shows_it(fleet, drift)


def the_dashboard_shows_it(fleet: Fleet, drift: dict[str, Any]) -> None:
    """What an operator sees of that story in a browser: PSI rising past its threshold on the
    feature that moved, the drift marked, and the lineage from v1 through the drift to the
    retrained challenger v2."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = open_chromium()
    try:
        log_in(driver, fleet.server.url, fleet.server.token)
        driver.get(f"{fleet.server.url}/ui/#/drift/fault")
        wait_for(lambda: driver.find_elements(By.ID, "drift-version"), "the drift page")
        Select(driver.find_element(By.ID, "drift-selector")).select_by_value(
            drift["data"]["selector"]
        )
        wait_for(lambda: driver.find_elements(By.ID, "drift-version"), "the drift page again")
        Select(driver.find_element(By.ID, "drift-version")).select_by_value("1")
        wait_for(partial(shows, driver, "#drift h2", "(v1,"), "v1's readings")
        psi = chart_series(driver, "#psi-chart")
        threshold = float(attribute_of(driver, "#psi-chart line.threshold", "data-value"))
        peaks = {name: max(v for v in values if v is not None) for name, values in psi.items()}
        assert peaks["temperature_c"] > threshold, (peaks, threshold)
        assert max(peaks, key=lambda name: peaks[name]) == "temperature_c", peaks
        assert driver.find_elements(By.CSS_SELECTOR, "#psi-chart line.mark.drift")
        screenshot(driver, "drift")
        driver.get(f"{fleet.server.url}/ui/#/models/fault")
        wait_for(partial(shows, driver, "#lineage-v1", "challenger v2"), "v1's lineage")
        assert "drift" in text_of(driver, "#lineage-v1")
        screenshot(driver, "model-lineage")
    finally:
        driver.quit()


def test_a_challenger_that_is_not_better_is_refused_and_the_cooldown_holds(
    drift_fleet: Fleet,
) -> None:
    fleet = drift_fleet
    set_policy(fleet, min_improvement=0.9)  # no challenger can win by 0.9 accuracy
    with App(fleet) as app:
        wait_until(lambda: len(drift_points(fleet, 1)) >= 2, timeout=60, what="judged buckets")
        app.shift = 2.0
        wait_until(
            lambda: bool(events(fleet, "challenger_refused")),
            timeout=120,
            what="a refused challenger",
        )
        refused = events(fleet, "challenger_refused")[-1]
        assert "does not beat" in refused["message"]
        # The event is written by the job before the job row records its end: wait for that.
        wait_until(
            lambda: fleet.api.get(f"/jobs/{refused['job_id']}").json()["status"] != "running",
            timeout=60,
            what="the refused job's end",
        )
        job = fleet.api.get(f"/jobs/{refused['job_id']}").json()
        assert job["status"] == "succeeded" and job["stage"] == "refused"
        assert job["result_version"] is None and job["result"]["decision"] == "refused"
        # The drift goes on and the accuracy stays down: more triggers, but the cooldown
        # (an hour) lets no second retraining start.
        wait_until(lambda: bool(events(fleet, "accuracy_drop")), timeout=30, what="accuracy drop")
        time.sleep(6)
        assert app.error is None
    assert len(events(fleet, "retrain_started")) == 1
    assert fleet.api.get("/models/fault").json()["latest_version"] == 1
    assert events(fleet, "release") == []
    assert fleet.api.get("/rollouts").json()[0]["version"] == 1  # nothing else rolled out
    assert all(fleet.serving(d) == 1 for d in fleet.agents)


def test_a_challenger_waits_for_approval_when_the_policy_says_so(drift_fleet: Fleet) -> None:
    fleet = drift_fleet
    set_policy(fleet, auto_rollout=False)
    with App(fleet) as app:
        wait_until(lambda: len(drift_points(fleet, 1)) >= 2, timeout=60, what="judged buckets")
        app.shift = 1.5
        wait_until(
            lambda: bool(events(fleet, "challenger_registered")), timeout=120, what="a challenger"
        )
        time.sleep(2)  # several monitor ticks: nothing is released without approval
        assert fleet.api.get("/models/fault/versions/2").json()["release"] == "awaiting_approval"
        assert events(fleet, "release") == []
        assert fleet.api.post("/models/fault/versions/2/approve").status_code == 200
        assert fleet.api.post("/models/fault/versions/2/approve").status_code == 409
        wait_until(lambda: bool(events(fleet, "release")), timeout=30, what="the release")
        release = events(fleet, "release")[0]
        fleet.wait_status(release["rollout_id"], "succeeded", timeout=60)
        wait_until(lambda: all(fleet.serving(d) == 2 for d in fleet.agents), what="v2 everywhere")
        assert app.error is None
    assert [e["version"] for e in events(fleet, "approved")] == [2]
    # Sampled rows are acknowledged like windows: nothing piles up in the agents' outboxes
    # (the last window's batch may still be on its way).
    for agent in fleet.agents.values():
        waiting = [i for i in agent.a.outbox.pending(10_000) if i.channel == "samples"]
        assert len(waiting) <= 2, f"{agent.settings.device_id}: {len(waiting)} unacked batches"
