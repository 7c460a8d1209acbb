"""Enrollment and admission against a real mosquitto with the dynamic security plugin, on
the control plane's default `broker_accounts = "dynsec"`: bootstrap tokens, pending →
accepted / rejected, pre-authorized ids, reissue and decommission, each checked by what the
broker lets the device do."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session

from control_plane.store.tables import BootstrapToken
from simulator.broker import MosquittoBroker, connack_code, dynsec_plugin, mosquitto_available
from simulator.data import sensor_csv
from simulator.rig.agents import CP_PASSWORD, wait_until
from tests.integration.conftest import Api, MakeApi, MqttDevice, bridge_of, state

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not mosquitto_available() or dynsec_plugin() is None,
        reason="needs mosquitto with mosquitto_dynamic_security.so (Debian: apt install mosquitto)",
    ),
]
ACCEPTED, NOT_AUTHORISED = 0, 5


@pytest.fixture
def dynsec_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path / "broker", auth="dynsec")
    broker.add_control_plane_user(CP_PASSWORD)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fleet(make_api: MakeApi, dynsec_broker: MosquittoBroker) -> Api:
    api = make_api(mqtt_url=dynsec_broker.control_plane_url(CP_PASSWORD))
    assert api.settings.broker_accounts == "dynsec"  # the default, not a test setting
    wait_until(bridge_of(api).connected.is_set, what="bridge connected")
    return api


def bootstrap(api: Api, **body: Any) -> tuple[int, str]:
    response = api.post("/bootstrap-tokens", json={"name": "line-1", **body})
    assert response.status_code == 201, response.text
    return int(response.json()["id"]), str(response.json()["token"])


def enroll(api: Api, secret: str, device_id: str, **labels: str) -> Any:
    return api.client.post(
        "/api/v1/enroll",
        json={"device_id": device_id, "labels": labels},
        headers={"Authorization": f"Bearer {secret}"},
    )


def check_in(api: Api, token: str) -> Any:
    return api.get("/enrollment", headers=api.auth(token))


def connects(broker: MosquittoBroker, device_id: str, token: str) -> int:
    return connack_code(broker.host, broker.port, device_id, token, client_id=device_id)


def test_a_device_enrolls_waits_for_an_operator_and_then_reaches_only_its_own_topics(
    fleet: Api, dynsec_broker: MosquittoBroker
) -> None:
    api, broker = fleet, dynsec_broker
    _, secret = bootstrap(api, uses=2, labels={"site": "berlin"})
    enrolled = enroll(api, secret, "dev-a", hw="rpi4")
    assert enrolled.status_code == 201, enrolled.text
    body = enrolled.json()
    assert (body["admission"], body["broker_account"], body["ready"]) == ("pending", False, False)
    token = body["token"]

    # Pending: no broker account, and its token is good for the check-in only.
    assert connects(broker, "dev-a", token) == NOT_AUTHORISED
    assert check_in(api, token).json()["admission"] == "pending"
    assert api.get("/devices/dev-a/floor", headers=api.auth(token)).status_code == 401

    approved = api.post("/devices/dev-a/approve")
    assert approved.json()["admission"] == "accepted", approved.text
    assert approved.json()["labels"] == {"hw": "rpi4", "site": "berlin"}
    status = check_in(api, token).json()  # the account is made with the token it presents
    assert (status["admission"], status["broker_account"], status["ready"]) == (
        "accepted",
        True,
        True,
    )
    assert connects(broker, "dev-a", token) == ACCEPTED
    assert connack_code(broker.host, broker.port, "dev-a", token) == NOT_AUTHORISED  # client id
    assert api.get("/devices/dev-a/floor", headers=api.auth(token)).status_code == 200

    # Its own state reaches the control plane; one forged on another device's topic does not.
    other = enroll(api, secret, "dev-b").json()["token"]
    api.post("/devices/dev-b/approve")
    check_in(api, other)
    # The plugin checks subscriptions: another device's topic or a wildcard is refused.
    granted: list[list[bool]] = []
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-a")
    probe.username_pw_set("dev-a", token)
    probe.on_subscribe = lambda _c, _u, _m, codes, _p: granted.append(
        [not code.is_failure for code in codes]
    )
    probe.connect(broker.host, broker.port)
    probe.loop_start()
    try:
        for topic in ("dev-b/desired", "+/desired", "dev-a/desired"):
            probe.subscribe(f"edgefleet/v1/devices/{topic}", qos=1)
        wait_until(lambda: len(granted) == 3, what="three SUBACKs")
        assert granted == [[False], [False], [True]]
    finally:
        probe.loop_stop()
        probe.disconnect()
    device = MqttDevice(broker, "dev-a", token)
    try:
        device.client.publish("edgefleet/v1/devices/dev-b/state", state("dev-b"), qos=1)
        device.send("state", state("dev-a"))
        wait_until(lambda: api.get("/devices/dev-a").json()["state"] is not None, what="state")
        assert api.get("/devices/dev-b").json()["state"] is None
        # Reissuing its token ends its live connection; the old token no longer connects.
        api.post("/devices/dev-a/reissue")
        wait_until(lambda: not device.client.is_connected(), what="live connection ended")
    finally:
        device.close()

    # The bootstrap token is used up; a third device is refused and nothing is created.
    refused = enroll(api, secret, "dev-c")
    assert refused.status_code == 401
    assert refused.json()["detail"][0]["type"] == "bootstrap_used_up"
    assert api.get("/devices/dev-c").status_code == 404


def test_reissue_reject_and_remove_change_what_the_broker_accepts(
    fleet: Api, dynsec_broker: MosquittoBroker
) -> None:
    api, broker = fleet, dynsec_broker
    added = api.post("/devices", json={"id": "dev-r", "labels": {}})
    assert added.status_code == 201, added.text
    assert added.json()["device"]["broker_account"] is True  # made before the answer
    old = added.json()["token"]
    assert connects(broker, "dev-r", old) == ACCEPTED

    reissued = api.post("/devices/dev-r/reissue")
    new = reissued.json()["token"]
    assert connects(broker, "dev-r", old) == NOT_AUTHORISED
    assert connects(broker, "dev-r", new) == ACCEPTED
    assert api.get("/devices/dev-r/floor", headers=api.auth(old)).status_code == 401

    assert api.post("/devices/dev-r/reject").json()["broker_account"] is False
    assert connects(broker, "dev-r", new) == NOT_AUTHORISED
    assert check_in(api, new).json()["admission"] == "rejected"
    assert api.post("/devices/dev-r/approve").json()["admission"] == "accepted"
    assert check_in(api, new).json()["ready"] is True
    assert connects(broker, "dev-r", new) == ACCEPTED

    removed = api.delete("/devices/dev-r").json()
    assert (removed["admission"], removed["broker_account"]) == ("decommissioned", False)
    assert connects(broker, "dev-r", new) == NOT_AUTHORISED
    assert check_in(api, new).status_code == 401
    assert api.post("/devices/dev-r/approve").status_code == 409
    assert api.post("/devices/dev-r/reissue").status_code == 409
    events = [e["message"] for e in api.get("/events", params={"device_id": "dev-r"}).json()]
    assert {"decommissioned", "rejected", "accepted", "token reissued"} <= set(events)


def test_preauthorized_ids_are_accepted_as_they_enroll(
    fleet: Api, dynsec_broker: MosquittoBroker
) -> None:
    api, broker = fleet, dynsec_broker
    listed = api.post(
        "/devices/preauthorize",
        json={"devices": [{"id": "dev-p1", "labels": {"line": "7"}}, {"id": "dev-p2"}]},
    )
    assert listed.status_code == 201, listed.text
    assert {d["admission"] for d in listed.json()} == {"preauthorized"}
    _, secret = bootstrap(api, uses=5)
    enrolled = enroll(api, secret, "dev-p1").json()
    assert (enrolled["admission"], enrolled["ready"]) == ("accepted", True)
    assert connects(broker, "dev-p1", enrolled["token"]) == ACCEPTED
    assert api.get("/devices/dev-p1").json()["labels"] == {"line": "7"}
    # A list naming an existing id stores none of it.
    again = api.post(
        "/devices/preauthorize", json={"devices": [{"id": "dev-p3"}, {"id": "dev-p2"}]}
    )
    assert again.status_code == 409
    assert api.get("/devices/dev-p3").status_code == 404


@pytest.mark.parametrize(
    ("device_id", "code"),
    [
        ("dev/a", "invalid"),
        ("dev+a", "invalid"),
        ("dev#a", "invalid"),
        ("Dev-A", "invalid"),
        ("edgefleet-control-plane", "reserved"),
        ("a" * 1000, "string_too_long"),
        ("", "invalid"),
    ],
)
def test_bad_ids_are_refused_and_spend_nothing(
    make_api: MakeApi, device_id: str, code: str
) -> None:
    api = make_api()
    token_id, secret = bootstrap(api, uses=1)
    response = enroll(api, secret, device_id)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == code
    assert api.get("/devices").json() == []
    (row,) = [t for t in api.get("/bootstrap-tokens").json() if t["id"] == token_id]
    assert row["uses"] == 0
    assert "token" not in row  # never shown again


def test_reused_expired_revoked_and_unknown_bootstrap_tokens_are_refused(
    make_api: MakeApi,
) -> None:
    api = make_api()
    _, secret = bootstrap(api, uses=2)
    assert enroll(api, secret, "dev-1").status_code == 201
    twice = enroll(api, secret, "dev-1")  # the same device again: it exists, no use spent
    assert (twice.status_code, twice.json()["detail"][0]["type"]) == (409, "already_enrolled")
    assert enroll(api, secret, "dev-2").status_code == 201
    reused = enroll(api, secret, "dev-7")
    assert (reused.status_code, reused.json()["detail"][0]["type"]) == (401, "bootstrap_used_up")

    expiring_id, expiring = bootstrap(api, uses=3)
    with Session(api.client.app.state.engine) as session:  # type: ignore[attr-defined]
        row = session.get(BootstrapToken, expiring_id)
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
        session.commit()
    expired = enroll(api, expiring, "dev-3")
    assert (expired.status_code, expired.json()["detail"][0]["type"]) == (401, "bootstrap_expired")

    revoked_id, revoked = bootstrap(api, uses=3)
    assert api.delete(f"/bootstrap-tokens/{revoked_id}").status_code == 200
    refused = enroll(api, revoked, "dev-4")
    assert (refused.status_code, refused.json()["detail"][0]["type"]) == (401, "bootstrap_revoked")

    unknown = enroll(api, "efb_" + "x" * 43, "dev-5")
    assert (unknown.status_code, unknown.json()["detail"][0]["type"]) == (401, "bootstrap_unknown")
    operator_token = api.token_for("operator")  # an API token is not a bootstrap token
    assert enroll(api, operator_token, "dev-6").status_code == 401
    assert [d["id"] for d in api.get("/devices").json()] == ["dev-1", "dev-2"]


def test_a_broker_that_does_not_answer_leaves_no_half_made_device(
    make_api: MakeApi, dynsec_broker: MosquittoBroker
) -> None:
    api = make_api(mqtt_url=dynsec_broker.control_plane_url(CP_PASSWORD))
    wait_until(bridge_of(api).connected.is_set, what="bridge connected")
    dynsec_broker.stop()
    ids = ["dev-x", "dev-y", "dev-z"]  # a list: the same path as one device
    response = api.post("/devices", json=[{"id": i} for i in ids])
    assert response.status_code == 503, response.text
    assert response.json()["detail"][0]["type"] == "broker_unavailable"
    assert all(api.get(f"/devices/{i}").status_code == 404 for i in ids)
    assert not [t for t in api.get("/tokens").json() if t["device_id"] in ids]
    assert not api.get("/events", params={"type": "device_admission"}).json()


def test_devices_registered_in_bulk_each_get_their_own_broker_account(
    fleet: Api, dynsec_broker: MosquittoBroker
) -> None:
    api, broker = fleet, dynsec_broker
    ids = [f"dev-{i:03d}" for i in range(250)]  # more than one dynsec message holds (100)
    body = [{"id": i, "labels": {"line": str(n % 3)}} for n, i in enumerate(ids)]
    response = api.post("/devices", json=body)
    assert response.status_code == 201, response.text
    registered = response.json()
    assert [r["device"]["id"] for r in registered] == ids  # in the order given
    assert all(r["device"]["broker_account"] for r in registered)
    tokens = {r["device"]["id"]: r["token"] for r in registered}
    assert len(set(tokens.values())) == len(ids)
    for device_id in ("dev-000", "dev-149", "dev-249"):
        assert connects(broker, device_id, tokens[device_id]) == ACCEPTED
        assert connects(broker, device_id, tokens["dev-001"]) == NOT_AUTHORISED
    listed = api.get("/devices", params={"selector": "line=1", "limit": 1})
    assert listed.headers["X-Total-Count"] == str(len(ids[1::3]))
    walked: list[str] = []  # page after page by the last id seen
    while page := api.get("/devices", params={"limit": 100, "after": (walked or [""])[-1]}).json():
        walked += [d["id"] for d in page]
    assert walked == ids


@pytest.mark.parametrize(
    ("items", "status", "loc"),
    [
        ([{"id": "dev-a"}, {"id": "Bad_Id"}], 422, ["body", 1, "id"]),
        ([{"id": "dev-a"}, {"id": "dev-b", "labels": {"k": "a,b"}}], 422, ["body", 1, "labels"]),
        ([{"id": "dev-a"}, {"id": "dev-b"}, {"id": "dev-a"}], 422, ["body"]),
        ([{"id": "dev-a"}, {"id": "dev-known"}], 409, ["body", 1, "id"]),
        ([], 422, ["body"]),
    ],
)
def test_a_bad_item_refuses_the_whole_list(
    fleet: Api, items: list[dict[str, Any]], status: int, loc: list[Any]
) -> None:
    api = fleet
    assert api.post("/devices", json={"id": "dev-known"}).status_code == 201
    response = api.post("/devices", json=items)
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["loc"][: len(loc)] == loc
    assert [d["id"] for d in api.get("/devices").json()] == ["dev-known"]
    assert {t["device_id"] for t in api.get("/tokens").json()} - {None} == {"dev-known"}


def test_a_rejected_device_stops_downloading_at_once(make_api: MakeApi) -> None:
    """Valid tokens are remembered for 30 s by the artifact route; a rejection forgets the
    device's at once (in the process that rejected it)."""
    api = make_api()
    dataset = api.upload(sensor_csv(200, seed=2)).json()
    version = api.train_ok("fault", dataset_id=dataset["id"], algorithm="logreg")
    token = api.post("/devices", json={"id": "dev-d", "labels": {}}).json()["token"]
    deployed = api.post(
        "/deployments", json={"device_id": "dev-d", "model": "fault", "version": "1"}
    )
    assert deployed.status_code == 201, deployed.text
    sha256 = api.get("/models/fault/versions/1").json()["sha256"]
    assert version["result_version"] == 1
    download = f"/artifacts/{sha256}"
    assert api.get(download, headers=api.auth(token)).status_code == 200
    api.post("/devices/dev-d/reject")
    assert api.get(download, headers=api.auth(token)).status_code == 401
    api.post("/devices/dev-d/approve")
    assert api.get(download, headers=api.auth(token)).status_code == 200
