"""The dashboard at /ui in a real browser: Debian's headless Chromium driven by Selenium
through Debian's chromedriver, against a real `edgefleet server`. Screenshots of each page
go to test-artifacts/dashboard/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from shared.broker_address import CONTROL_PLANE_USER
from shared.messages import DeviceState, ErrorInfo, ModelStatus, Phase
from shared.topics import Channel, Topics
from simulator.broker import MosquittoBroker
from simulator.data import write_sensor_csv
from simulator.rig.agents import CP_PASSWORD, wait_until
from simulator.rig.browser import (
    CHROMEDRIVER,
    CHROMIUM,
    chart_series,
    log_in,
    open_chromium,
    screenshot,
    shows,
    text_of,
    wait_for,
)
from simulator.rig.server import ServerProcess, run_cli, start_server, stop_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them)",
    ),
]
MARKUP = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
OPERATOR = f"ops {MARKUP}"  # a token name: shown in the header and in the events it causes


@dataclass
class Site:
    server: ServerProcess
    rollout_id: str
    viewer: str
    operator: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = Path(tmp_path_factory.mktemp("dashboard"))
    broker = MosquittoBroker(tmp / "broker")
    broker.add_control_plane_user(CP_PASSWORD)
    broker.start()
    mqtt_env = broker.control_plane_env(CP_PASSWORD)
    server = start_server(tmp / "cp", env=mqtt_env)
    env = server.env
    try:
        csv = write_sensor_csv(tmp / "s.csv", 300, seed=1)
        run_cli("datasets", "upload", str(csv), "--name", "s", "--label", "fault", env=env)
        run_cli("train", "--model", "fault", "--dataset", "1", "--algorithm", "logreg", env=env)
        with server.client() as api:
            for i in range(3):
                labels = {"site": "berlin", "note": MARKUP} if i == 0 else {"site": "paris"}
                api.post("/devices", json={"id": f"dev-{i}", "labels": labels})
            rollout = api.post(
                "/rollouts",
                json={
                    "model": "fault",
                    "version": "1",
                    "selector": "",
                    "plan": {"preset": "canary", "soak_seconds": 3600},
                },
            )
            assert rollout.status_code == 201, rollout.text
            # A device that reports markup in its errors (a compromised one, say).
            report_error(broker, "dev-1", MARKUP)
            wait_until(
                lambda: api.get("/devices/dev-1").json()["state"] is not None, what="dev-1's state"
            )
            viewer = api.post("/tokens", json={"name": "watcher", "role": "viewer"}).json()
            operator = api.post("/tokens", json={"name": OPERATOR, "role": "operator"}).json()
        yield Site(server, rollout.json()["id"], viewer["token"], operator["token"])
    finally:
        stop_server(server)
        broker.stop()


def report_error(broker: MosquittoBroker, device_id: str, message: str) -> None:
    """A retained state report for ``device_id`` whose model refused an update with
    ``message``, published on the device's state topic as the device would."""
    now = datetime.now(UTC)
    error = ErrorInfo(reason="sha256_mismatch", message=message, at=now, model="fault")
    state = DeviceState(
        device_id=device_id,
        seq=1,
        agent_version="test",
        labels={},
        deployment_seq=0,
        models=[
            ModelStatus(
                name="fault", active=None, previous=None, phase=Phase.FAILED, last_error=error
            )
        ],
        dropped_messages=0,
        outbox_dropped=0,
        updated_at=now,
        last_error=error,
    )
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dashboard-test")
    client.username_pw_set(CONTROL_PLANE_USER, CP_PASSWORD)
    client.connect(broker.host, broker.cp_port)
    client.loop_start()
    try:
        topic = Topics().device(device_id, Channel.STATE)
        client.publish(topic, state.model_dump_json(), qos=1, retain=True).wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = open_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def at_least(least: int, count: Callable[[], int]) -> bool:
    return count() >= least


def gates_green(driver: Any) -> bool:
    """Every gate of the current stage passes, as the page shows them."""
    verdicts = driver.execute_script(
        "return [...document.querySelectorAll('#gates tbody tr td:nth-child(2)')]"
        ".map(e => e.innerText)"
    )
    return bool(verdicts) and all(v == "pass" for v in verdicts)


def on_version(driver: Any, version: int) -> int:
    """Devices the rollout page counts on ``version``, whatever their phase."""
    stats = driver.execute_script(
        "return [...document.querySelectorAll('#versions .version-count')].map(e => e.innerText)"
    )
    counted = 0
    for stat in stats:
        count, label = stat.split("\n", 1)
        if label.startswith(f"v{version} "):
            counted += int(count)
    return counted


def test_a_page_without_a_token_asks_for_one(site: Site, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(site.server.url + "/ui/")
    wait_for(lambda: browser.find_element(By.ID, "login"), "the login form")
    screenshot(browser, "login")
    field = browser.find_element(By.ID, "token")
    field.send_keys("ef_not-a-token")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(lambda: "refused this token" in text_of(browser, "#login"), "the refusal")


def test_every_page_renders_real_data_with_markup_shown_as_text(site: Site, browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    log_in(browser, site.server.url, site.server.token)
    browser.execute_script(  # what the page's CSP blocks (the pages below change only the hash)
        "window.violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI))"
    )
    wait_for(lambda: "dev-2" in text_of(browser, "#fleet table"), "the devices")
    fleet_table = text_of(browser, "#fleet table")
    assert fleet_table.count(MARKUP) == 2  # a label and an error message, as text
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert.text
    assert "3\ndevices" in text_of(browser, "#fleet .row")
    screenshot(browser, "fleet")
    pages = {
        "device": ("#/devices/dev-1", "#device", f"sha256_mismatch: {MARKUP}"),
        "rollouts": ("#/rollouts", "#rollouts", site.rollout_id),
        "rollout": (f"#/rollouts/{site.rollout_id}", "#rollout", "Gates"),
        "models": ("#/models", "#models", "fault"),
        "model": ("#/models/fault", "#model", "dataset 1 → job 1 → v1"),
        "drift": ("#/drift/fault", "#drift", "PSI per feature"),
    }
    for name, (hash_, section, expected) in pages.items():
        browser.get(f"{site.server.url}/ui/{hash_}")
        wait_for(partial(shows, browser, section, expected), f"the {name} page")
        assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
        screenshot(browser, name)
    # The signed manifest's details, as the API has them.
    with site.server.client() as api:
        manifest = api.get("/models/fault/versions/1").json()["manifest"]
    browser.get(f"{site.server.url}/ui/#/models/fault")
    wait_for(partial(shows, browser, "#model", manifest["key_id"]), "the signing key id")
    assert f"{manifest['signature'][:24]}…" in text_of(browser, "#model")
    assert browser.execute_script("return window.violations") == []  # the page keeps its CSP
    # Every request the page made went to the control plane.
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources and all(url.startswith(site.server.url + "/") for url in resources)


def test_an_operator_pauses_from_the_page_and_the_page_follows_the_api(
    site: Site, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, site.server.url, site.operator)
    browser.get(f"{site.server.url}/ui/#/rollouts/{site.rollout_id}")
    wait_for(lambda: text_of(browser, "#rollout-status") == "running", "running")
    browser.find_element(By.ID, "action-pause").click()
    wait_for(lambda: text_of(browser, "#rollout-status") == "paused", "paused on the page")
    wait_for(partial(shows, browser, "#rollout", f"by {OPERATOR}"), "the pause event, as text")
    assert OPERATOR in text_of(browser, "#who")
    assert not browser.find_elements(By.CSS_SELECTOR, "img, script:not([src])")
    with site.server.client() as api:
        assert api.get(f"/rollouts/{site.rollout_id}").json()["status"] == "paused"
        # A change made elsewhere shows without a reload (the page polls).
        assert api.post(f"/rollouts/{site.rollout_id}/resume").status_code == 200
    wait_for(lambda: text_of(browser, "#rollout-status") == "running", "running again")
    screenshot(browser, "rollout-operator")
    browser.find_element(By.ID, "action-abort").click()  # asks first
    alert = wait_for(lambda: browser.switch_to.alert, "the confirmation")
    alert.dismiss()
    with site.server.client() as api:
        assert api.get(f"/rollouts/{site.rollout_id}").json()["status"] == "running"
    # Roll back with a click (and a confirmation).
    browser.find_element(By.ID, "action-rollback").click()
    wait_for(lambda: browser.switch_to.alert, "the confirmation").accept()
    wait_for(lambda: text_of(browser, "#rollout-status") == "rolled_back", "rolled back")
    with site.server.client() as api:
        assert api.get(f"/rollouts/{site.rollout_id}").json()["status"] == "rolled_back"
    assert not browser.find_elements(By.ID, "actions")  # nothing left to do to it


def test_a_viewer_sees_no_actions_and_the_api_refuses_them_anyway(site: Site, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, site.server.url, site.viewer)
    browser.get(f"{site.server.url}/ui/#/rollouts/{site.rollout_id}")
    wait_for(lambda: text_of(browser, "#rollout-status"), "the rollout")
    assert not browser.find_elements(By.ID, "actions")
    assert "watcher (viewer)" in text_of(browser, "#who")
    screenshot(browser, "rollout-viewer")
    refused = httpx.post(
        f"{site.server.url}/api/v1/rollouts/{site.rollout_id}/pause",
        headers={"Authorization": f"Bearer {site.viewer}"},
    )
    assert refused.status_code == 403


def test_a_token_in_a_url_is_refused_and_the_page_forbids_other_hosts(site: Site) -> None:
    for name in ("token", "access_token"):
        answer = httpx.get(f"{site.server.url}/api/v1/devices", params={name: site.server.token})
        assert answer.status_code == 400
        assert answer.json()["detail"][0]["type"] == "token_in_url"
    page = httpx.get(f"{site.server.url}/ui/")
    policy = page.headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    assert httpx.get(f"{site.server.url}/ui/../keys").status_code in (404, 200)
    assert httpx.get(f"{site.server.url}/ui/secret.txt").status_code == 404


def test_a_rollouts_cohorts_and_history_come_from_the_api(site: Site) -> None:
    with site.server.client() as api:
        rollout = api.get(f"/rollouts/{site.rollout_id}").json()
        members = api.get(f"/rollouts/{site.rollout_id}/devices")
        assert members.status_code == 200 and members.headers["X-Total-Count"] == "3"
        assert [m["rank"] for m in members.json()] == [0, 1, 2]
        assert {m["device_id"] for m in members.json()} == {"dev-0", "dev-1", "dev-2"}
        by_stage = []
        for stage in rollout["stages"]:
            cohort = api.get(
                f"/rollouts/{site.rollout_id}/devices", params={"stage": stage["index"]}
            )
            by_stage.append([m["device_id"] for m in cohort.json()])
            assert all(m["stage"] == stage["index"] for m in cohort.json())
        assert [d for cohort in by_stage for d in cohort] == [
            m["device_id"] for m in members.json()
        ]
        assert len(by_stage[0]) == rollout["stages"][0]["target"]
        beyond = api.get(
            f"/rollouts/{site.rollout_id}/devices", params={"stage": len(rollout["stages"])}
        )
        assert beyond.status_code == 422 and beyond.json()["detail"][0]["loc"] == [
            "query",
            "stage",
        ]
        paged = api.get(f"/rollouts/{site.rollout_id}/devices", params={"limit": 1, "offset": 2})
        assert [m["rank"] for m in paged.json()] == [2]
        # No device reports a model: all three serve none from start to now.
        history = api.get(f"/rollouts/{site.rollout_id}/versions", params={"points": 5}).json()
        assert len(history["times"]) == 5
        assert history["series"] == [{"version": None, "devices": [3] * 5}]


def test_a_rollout_advances_on_screen_without_a_reload(tmp_path: Path, browser: Any) -> None:
    """Real agents install the version stage by stage; the page, opened once, shows each
    stage and each device that takes it, then the end."""
    from simulator.rig.fleet import OPEN_GATES, open_fleet

    with open_fleet(tmp_path) as fleet:
        csv = write_sensor_csv(tmp_path / "s.csv", 300, seed=1)
        dataset = fleet.api.post(
            "/datasets", params={"name": "s", "label": "fault"}, content=csv.read_bytes()
        ).json()
        version = fleet.train(dataset["id"], 0)
        for i in range(4):
            fleet.add(f"dev-{i}", "berlin")
        wait_until(
            lambda: sum(d["online"] for d in fleet.api.get("/devices").json()) == 4, what="online"
        )
        soak = {"soak_seconds": 3600}  # each stage waits for the operator's promote
        plan = {"stages": [{"count": 1, **soak}, {"percent": 50, **soak}], "gates": OPEN_GATES}
        rollout = fleet.rollout(version, plan)
        log_in(browser, fleet.server.url, fleet.server.token)
        browser.get(f"{fleet.server.url}/ui/#/rollouts/{rollout['id']}")
        browser.execute_script("window.openedOnce = true")  # a reload would forget it
        for stage, serving in ((1, 1), (2, 2), (3, 4)):
            try:
                current = f"{stage} (current)"
                wait_for(
                    partial(shows, browser, "#rollout table", current),
                    f"stage {stage} on the page",
                    timeout=60,
                )
            except (AssertionError, LookupError) as exc:
                shown = text_of(browser, "main")
                state = fleet.api.get(f"/rollouts/{rollout['id']}").json()
                raise AssertionError(f"{exc}\npage:\n{shown}\napi: {state}") from exc
            wait_for(
                partial(at_least, serving, partial(on_version, browser, version)),
                f"{serving} devices on v{version} on the page",
                timeout=60,
            )
            wait_for(partial(gates_green, browser), f"stage {stage}'s gates green on the page")
            screenshot(browser, f"rollout-stage-{stage}")
            # Skip the soak: the operator's promote, from outside the page.
            assert fleet.api.post(f"/rollouts/{rollout['id']}/promote").status_code == 200
        wait_for(lambda: text_of(browser, "#rollout-status") == "succeeded", "succeeded", 60)
        assert browser.execute_script("return window.openedOnce") is True
        first = fleet.api.get(f"/rollouts/{rollout['id']}/devices", params={"stage": 0}).json()
        assert [m["device_id"] for m in first] == [
            t.split(" ")[0]
            for t in browser.execute_script(
                "return [...document.querySelectorAll('.cohort')].map(e => e.innerText)"
            )[:1]
        ]
        # Devices per version since the rollout began, drawn from the server's history: the
        # four went from no model to v1 (the chart is the API's, whenever the page opened).
        history = fleet.api.get(f"/rollouts/{rollout['id']}/versions").json()
        series = {s["version"]: s["devices"] for s in history["series"]}
        assert series[None][0] == 4 and series[version][-1] == 4
        wait_for(
            lambda: chart_series(browser, "#versions-chart").get(f"v{version}", [0])[-1] == 4,
            "v1 at 4 devices on the chart",
        )
        assert chart_series(browser, "#versions-chart")["v–"][0] == 4
