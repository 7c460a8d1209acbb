"""The whole OpenAPI schema, fuzzed (schemathesis, hypothesis underneath) against a real
`edgefleet server` holding a dataset, a trained model and a device: no request gets a 5xx,
and every route but the two public ones refuses a request without a token. Bounded to a
couple of minutes: a handful of examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from simulator.data import sensor_csv
from simulator.rig.agents import wait_until
from simulator.rig.server import ServerProcess, start_server, stop_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PUBLIC = {("GET", "/api/v1/healthz"), ("GET", "/api/v1/keys"), ("GET", "/api/v1/trust-stores")}
EXAMPLES = 25


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(Path(tmp_path_factory.mktemp("fuzz")) / "cp")
    with server.client() as api:  # something for the routes to find
        api.post(
            "/datasets",
            params={"name": "sensors", "label": "fault"},
            content=sensor_csv(200, seed=1).encode(),
            headers={"Content-Type": "text/csv"},
        ).raise_for_status()
        job = api.post("/models/fault/train", json={"dataset_id": 1, "algorithm": "logreg"})
        job_id = job.json()["id"]
        wait_until(
            lambda: api.get(f"/jobs/{job_id}").json()["status"] == "succeeded",
            timeout=120,
            what="training",
        )
        api.post("/devices", json={"id": "dev-1", "labels": {"site": "x"}}).raise_for_status()
    try:
        yield server
    finally:
        stop_server(server)


def test_no_request_gets_a_server_error(served: ServerProcess) -> None:
    """Every operation, a dozen generated requests each (the same ones every run), with an
    admin token. Revoking tokens by fuzzed ids would revoke the token the fuzzing runs with
    (test_api_boundaries revokes tokens on purpose), so that operation sits out."""
    api_schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {served.token}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    checked = []
    for operation in operations:
        if operation.label == "DELETE /api/v1/tokens/{token_id}":
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same examples every run: a failure reproduces
            database=None,
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(
                base_url=served.url, headers=headers, checks=[not_a_server_error]
            )

        fuzz()
        checked.append(operation.label)
    assert len(checked) > 30


def test_every_protected_route_refuses_a_request_without_a_token(
    served: ServerProcess,
) -> None:
    document = httpx.get(served.url + "/openapi.json").json()
    checked = 0
    for path, operations in document["paths"].items():
        for method in operations:
            if (method.upper(), path) in PUBLIC:
                continue
            url = served.url + path.replace("{", "").replace("}", "")
            response = httpx.request(method.upper(), url, timeout=30)
            assert response.status_code == 401, (method, path, response.status_code)
            if method != "head":  # a HEAD answer has no body
                assert response.json()["detail"][0]["type"] == "http_401"
            checked += 1
    assert checked > 30
