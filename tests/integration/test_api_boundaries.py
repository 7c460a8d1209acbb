"""Every REST boundary holds against what a careless client or an attacker sends: a clear
4xx in the one error shape, echoing at most a short piece of the input, quickly, and never a
500. One test per finding of the audit (issue 11)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from simulator.data import sensor_csv
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}


def assert_error(response: Any, status: int, *, max_bytes: int = 2000) -> dict[str, Any]:
    """The one shape: {"detail": [{"loc": [...], "msg": "...", "type": "..."}]}, short."""
    assert response.status_code == status, response.text[:500]
    assert len(response.content) <= max_bytes, len(response.content)
    body = response.json()
    assert isinstance(body["detail"], list) and body["detail"], body
    first: dict[str, Any] = body["detail"][0]
    assert set(first) == {"loc", "msg", "type"}, first
    return first


def raw(api: Api, method: str, path: str, body: bytes, token: str | None = None) -> Any:
    return api.client.request(
        method, "/api/v1" + path, content=body, headers={**api.auth(token), **JSON}
    )


def test_401_403_404_422_answer_in_one_shape(api: Api) -> None:
    missing = api.client.get("/api/v1/devices")
    assert assert_error(missing, 401)["type"] == "http_401"
    assert missing.headers["www-authenticate"] == "Bearer"
    viewer = api.token_for("viewer")
    assert_error(api.post("/devices", json={"id": "dev-1"}, headers=api.auth(viewer)), 403)
    assert_error(api.get("/devices/no-such-device"), 404)
    assert_error(api.post("/devices", json={"id": 7}), 422)
    assert_error(api.client.get("/api/v1/no/such/route", headers=api.auth()), 404)


def test_token_list_and_revocation_with_devices(api: Api) -> None:
    token = api.post("/devices", json={"id": "dev-1"}).json()["token"]
    tokens = api.get("/tokens")
    assert tokens.status_code == 200, tokens.text
    device_token = next(t for t in tokens.json() if t["role"] == "device")
    assert device_token["device_id"] == "dev-1"
    revoked = api.delete(f"/tokens/{device_token['id']}")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert api.get("/tokens").status_code == 200
    assert api.get("/devices/dev-1/floor", headers=api.auth(token)).status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/" + "9" * 30,
        "/jobs/" + "9" * 400,
        "/datasets/99999999999999999999",
        "/jobs/-1",
        "/events?job_id=99999999999999999999",
        "/models/x/drift?version=99999999999999999999",
    ],
)
def test_integers_beyond_a_bigint_in_paths_are_422(api: Api, path: str) -> None:
    assert_error(api.get(path), 422)


def test_integers_beyond_a_bigint_in_bodies_are_422(api: Api) -> None:
    body = {"dataset_id": 10**30, "algorithm": "logreg"}
    first = assert_error(api.train("fault", **body), 422)
    assert first["loc"] == ["body", "dataset_id"]


def test_version_refs_are_ascii_digits_or_an_alias(api: Api) -> None:
    api.upload(sensor_csv(100, seed=1))
    api.train_ok("fault", dataset_id=1, algorithm="logreg")
    for ref in ("²", "١", "1e3", " 1", "9" * 40):
        response = api.get(f"/models/fault/versions/{ref}")
        assert response.status_code in (404, 422), (ref, response.text)
        assert_error(response, response.status_code)
    assert api.get("/models/fault/versions/1").status_code == 200


def test_coercion_is_refused(api: Api) -> None:
    assert_error(api.post("/devices", json={"id": "dev-1", "labels": {"a": 1}}), 422)
    assert_error(api.train("fault", dataset_id="1", algorithm="logreg"), 422)
    assert_error(api.train("fault", dataset_id=True, algorithm="logreg"), 422)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_are_422_and_not_echoed_raw(api: Api, literal: bytes) -> None:
    body = b'{"dataset_id": 1, "algorithm": "logreg", "validation_fraction": ' + literal + b"}"
    assert_error(raw(api, "POST", "/models/fault/train", body), 422)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/devices", {"id": "dev-2\n"}),
        ("/tokens", {"name": "x", "role": "viewer\n"}),
        ("/deployments", {"device_id": "dev-1\n", "model": "fault", "version": "1"}),
    ],
)
def test_names_ending_in_a_newline_are_refused(api: Api, path: str, body: dict[str, Any]) -> None:
    assert_error(api.post(path, json=body), 422)
    response = api.upload("a,y\n" + "1,x\n" * 40, name="sensors\n", label="y")
    assert response.status_code == 422, response.text


def test_deep_json_is_refused_before_parsing(api: Api) -> None:
    deep = b'{"retrain": ' * 900 + b"{}" + b"}" * 900
    first = assert_error(raw(api, "PUT", "/models/fault/policy", deep), 400)
    assert first["type"] == "too_deep"


def test_a_huge_body_is_refused_early_and_briefly(api: Api) -> None:
    items = [{"request_id": f"r{i}", "label": 1} for i in range(1_000_000)]
    body = json.dumps({"model": "fault", "items": items}).encode()
    started = time.monotonic()
    first = assert_error(raw(api, "POST", "/feedback", body), 413, max_bytes=300)
    assert first["type"] == "too_large"
    assert time.monotonic() - started < 5  # refused by its length, not after parsing 40 MB


def test_an_error_echoes_only_a_short_piece_of_the_input(api: Api) -> None:
    body = json.dumps({"id": "x" * 1_000_000}).encode()
    first = assert_error(raw(api, "POST", "/devices", body), 422, max_bytes=1000)
    assert first["loc"] == ["body", "id"]


def test_plan_sizes_are_bounded(api: Api) -> None:
    api.upload(sensor_csv(100, seed=1))
    api.train_ok("fault", dataset_id=1, algorithm="logreg")
    for i in range(3):
        api.post("/devices", json={"id": f"dev-{i}"})
    started = time.monotonic()
    tiny = api.post(
        "/rollouts",
        json={"model": "fault", "version": "1", "plan": {"exponential": {"factor": 1.000001}}},
    )
    assert tiny.status_code == 201, tiny.text  # 3 devices: 3 stages, found in microseconds
    assert time.monotonic() - started < 5
    assert_error(
        api.post(
            "/rollouts",
            json={
                "model": "fault",
                "version": "1",
                "plan": {"stages": [{"count": 1}] * 51},
            },
        ),
        422,
    )


def test_policy_values_are_bounded(api: Api) -> None:
    api.upload(sensor_csv(100, seed=1))
    api.train_ok("fault", dataset_id=1, algorithm="logreg")
    for retrain in (
        {"recent_seconds": 1e300},
        {"schedule_seconds": 1e300, "triggers": ["schedule"]},
        {"cooldown_seconds": -1},
        {"min_labelled_rows": 10**30},
        {"plan": {"preset": "canary", "soak_seconds": 1e300}},
    ):
        assert_error(api.put("/models/fault/policy", json={"retrain": retrain}), 422)
    assert api.get("/models/fault/policy").status_code == 200  # nothing stored


def test_device_ids_cannot_take_a_service_accounts_name(api: Api) -> None:
    first = assert_error(api.post("/devices", json={"id": "edgefleet-control-plane"}), 422)
    assert first["type"] == "reserved"


def test_a_device_token_downloads_only_what_is_deployed_to_it(api: Api) -> None:
    api.upload(sensor_csv(100, seed=1))
    v1 = api.train_ok("fault", dataset_id=1, algorithm="logreg")["result_version"]
    v2 = api.train_ok("fault", dataset_id=1, algorithm="logreg", seed=1)["result_version"]
    sha = {v: api.get(f"/models/fault/versions/{v}").json()["sha256"] for v in (v1, v2)}
    token = api.post("/devices", json={"id": "dev-1"}).json()["token"]
    device = api.auth(token)
    assert api.get(f"/artifacts/{sha[v1]}", headers=device).status_code == 403
    api.post("/deployments", json={"device_id": "dev-1", "model": "fault", "version": str(v1)})
    assert api.get(f"/artifacts/{sha[v1]}", headers=device).status_code == 200
    assert api.get(f"/artifacts/{sha[v2]}", headers=device).status_code == 403
    api.post("/deployments", json={"device_id": "dev-1", "model": "fault", "version": str(v2)})
    assert api.get(f"/artifacts/{sha[v2]}", headers=device).status_code == 200
    assert api.get(f"/artifacts/{sha[v1]}", headers=device).status_code == 200  # rollback slot
    assert api.get(f"/artifacts/{sha[v1]}").status_code == 200  # an operator: any


def test_feedback_for_a_request_id_belongs_to_the_device_that_reported_it(api: Api) -> None:
    api.upload(sensor_csv(100, seed=1))
    api.train_ok("fault", dataset_id=1, algorithm="logreg")
    a = api.post("/devices", json={"id": "dev-a"}).json()["token"]
    b = api.post("/devices", json={"id": "dev-b"}).json()["token"]
    first = {"model": "fault", "items": [{"request_id": "req-1", "label": "normal"}]}
    assert api.post("/feedback", json=first, headers=api.auth(a)).status_code == 200
    again = {"model": "fault", "items": [{"request_id": "req-1", "label": "overheating"}]}
    assert api.post("/feedback", json=again, headers=api.auth(a)).status_code == 200  # its own
    stolen = api.post("/feedback", json=again, headers=api.auth(b))
    assert assert_error(stolen, 403)["loc"] == ["body", "items", 0, "request_id"]
    assert api.post("/feedback", json=first).status_code == 200  # an operator may correct it
