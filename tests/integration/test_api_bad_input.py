"""Every refused request answers 4xx naming the field and the rule, and stores nothing."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from control_plane.store.db import create_db_engine
from control_plane.store.tables import Job, JobStatus
from simulator.data import sensor_csv
from tests.integration.conftest import Api, MakeApi

pytestmark = pytest.mark.integration
GOOD = "a,b,y\n" + "".join(f"{i},{i % 3},{'x' if i % 2 else 'z'}\n" for i in range(40))


def detail(response) -> dict:  # type: ignore[no-untyped-def, type-arg]
    body = response.json()["detail"]
    return body[0] if isinstance(body, list) else {"msg": body}


def test_auth_and_roles(api: Api) -> None:
    anonymous = api.client
    assert anonymous.get("/api/v1/healthz").json()["status"] == "ok"
    assert {k["role"] for k in anonymous.get("/api/v1/keys").json()["keys"]} == {
        "model",
        "deployment",
    }
    for path in ("/api/v1/models", "/api/v1/datasets", "/api/v1/jobs/1", "/api/v1/tokens"):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    assert api.get("/models", headers={"Authorization": "Bearer ef_wrong"}).status_code == 401
    assert api.get("/models", headers={"Authorization": "Basic abc"}).status_code == 401

    viewer, operator = api.token_for("viewer"), api.token_for("operator")
    assert api.get("/models", headers=api.auth(viewer)).status_code == 200
    refused = api.upload(GOOD, label="y", token=viewer)
    assert refused.status_code == 403
    assert "operator role" in detail(refused)["msg"]
    assert api.upload(GOOD, label="y", token=operator).status_code == 201
    assert (
        api.post(
            "/tokens", json={"name": "x", "role": "admin"}, headers=api.auth(operator)
        ).status_code
        == 403
    )

    tokens = api.get("/tokens").json()
    assert all("token" not in t and "token_hash" not in t for t in tokens)
    viewer_id = next(t["id"] for t in tokens if t["name"] == "test-viewer")
    assert api.delete(f"/tokens/{viewer_id}").json()["revoked_at"] is not None
    assert api.get("/models", headers=api.auth(viewer)).status_code == 401
    assert api.post("/tokens", json={"name": "x", "role": "root"}).status_code == 422


@pytest.mark.parametrize(
    ("body", "params", "status", "loc", "text"),
    [
        ("", {}, 422, ["body", "file"], "empty"),
        ("a,b\n1,2\n", {}, 422, ["body", "label"], "not in the header"),
        ("a,y\n1,x\nfoo,z\n" + "1,x\n" * 30, {}, 422, ["body", "file"], "'foo' is not a finite"),
        ("a,y\n1,x\n,z\n" + "1,x\n" * 30, {}, 422, ["body", "file"], "missing value"),
        ("a,y\n1,\n" + "1,x\n" * 30, {}, 422, ["body", "label"], "label 'y' is missing"),
        (GOOD, {"nan_policy": "ignore"}, 422, ["query", "nan_policy"], "reject"),
        (GOOD, {"name": "Bad Name"}, 422, ["query", "name"], "dataset names match"),
        ("a,b,c,d,y\n" + "1,2,3,4,x\n" * 30, {}, 422, ["body", "file"], "at most 4 allowed"),
        ("a,y\n" + "1,x\n" * 60, {}, 422, ["body", "file"], "more than 50 rows"),
        ("a,y\n" + "1,x\n" * 5, {}, 422, ["body", "file"], "at least 20 are needed"),
        ("a,y\n" + "1234567890,x\n" * 40, {}, 413, ["body"], "cap"),
    ],
)
def test_dataset_upload_refusals(
    make_api: MakeApi,
    body: str,
    params: dict,  # type: ignore[type-arg]
    status: int,
    loc: list[str],
    text: str,
) -> None:
    api = make_api(max_dataset_columns=4, max_dataset_rows=50, max_dataset_bytes=400)
    query = {"name": "d", "label": "y", "nan_policy": "reject", **params}
    response = api.post(
        "/datasets",
        params=query,
        content=body.encode(),
        headers={**api.auth(), "Content-Type": "text/csv"},
    )
    assert response.status_code == status, response.text
    assert detail(response)["loc"] == loc
    assert text in detail(response)["msg"]
    assert api.get("/datasets").json() == []
    assert api.blob_files() == []  # nothing half-stored


def test_dataset_missing_query_parameters(api: Api) -> None:
    response = api.post("/datasets", content=GOOD.encode())
    assert response.status_code == 422
    assert {tuple(d["loc"]) for d in response.json()["detail"]} == {
        ("query", "name"),
        ("query", "label"),
    }


@pytest.mark.parametrize(
    ("path", "name", "known"),
    [("/rollouts", "status", "running"), ("/events", "type", "gate_failed")],
)
def test_unknown_filter_values_are_refused(api: Api, path: str, name: str, known: str) -> None:
    """A status or event type the control plane does not know is a 422 naming the parameter
    and the values it takes, not an empty list (a typo would look like "none") or a 500."""
    response = api.get(path, params={name: "runing\u00f4"})
    assert response.status_code == 422
    # (a repeatable parameter's loc also says which of its values: ["query", "type", 0])
    assert detail(response)["loc"][:2] == ["query", name]
    assert known in detail(response)["msg"]
    assert api.get(path, params={name: known}).json() == []


def test_dataset_versions_and_idempotent_reupload(api: Api) -> None:
    first = api.upload(GOOD, name="d", label="y")
    assert first.status_code == 201
    again = api.upload(GOOD, name="d", label="y")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    second = api.upload(GOOD + "1,1,x\n", name="d", label="y")
    assert second.status_code == 201
    assert second.json()["version"] == 2
    assert [d["version"] for d in api.get("/datasets", params={"name": "d"}).json()] == [1, 2]
    assert api.get("/datasets/999").status_code == 404


def test_train_refusals(api: Api) -> None:
    sensors = api.upload(sensor_csv(200, seed=9)).json()
    other = api.upload(GOOD, name="other", label="y").json()
    numeric = api.upload(
        "a,y\n" + "".join(f"{i},{i * 0.37}\n" for i in range(300)), name="num", label="y"
    ).json()
    cases = [
        (
            "fault",
            {"dataset_id": 999, "algorithm": "logreg"},
            422,
            ["body", "dataset_id"],
            "no dataset 999",
        ),
        (
            "fault",
            {"dataset_id": sensors["id"], "algorithm": "svm"},
            422,
            ["body", "algorithm"],
            "unknown algorithm 'svm'",
        ),
        (
            "fault",
            {"dataset_id": sensors["id"], "algorithm": "logreg", "params": {"Cx": 1}},
            422,
            ["body", "params", "Cx"],
            "unknown parameter 'Cx'",
        ),
        (
            "fault",
            {
                "dataset_id": sensors["id"],
                "algorithm": "random_forest",
                "params": {"n_estimators": 100000},
            },
            422,
            ["body", "params", "n_estimators"],
            "outside [1, 500]",
        ),
        (
            "fault",
            {"dataset_id": sensors["id"], "algorithm": "logreg", "colour": "red"},
            422,
            ["body", "colour"],
            "Extra inputs",
        ),
        (
            "fault",
            {"dataset_id": sensors["id"], "algorithm": "logreg", "validation_fraction": 0.9},
            422,
            ["body", "validation_fraction"],
            "0.5",
        ),
        (
            "Fault!",
            {"dataset_id": sensors["id"], "algorithm": "logreg"},
            422,
            ["path", "name"],
            "model names match",
        ),
        (
            "fault",
            {"dataset_id": sensors["id"], "algorithm": "ridge", "task": "regression"},
            422,
            ["body", "task"],
            "not numeric",
        ),
        (
            "fault",
            {"dataset_id": numeric["id"], "algorithm": "logreg"},
            422,
            ["body", "task"],
            "2 to 100 distinct labels",
        ),
    ]
    for model, body, status, loc, text in cases:
        response = api.train(model, **body)
        assert response.status_code == status, (body, response.text)
        assert detail(response)["loc"] == loc, body
        assert text in detail(response)["msg"], (text, response.text)
    assert api.get("/jobs").json() == []  # no job was created for a refused request

    api.train_ok("fault", dataset_id=sensors["id"], algorithm="logreg")
    mismatch = api.train("fault", dataset_id=other["id"], algorithm="logreg")
    assert mismatch.status_code == 409
    assert "takes features" in detail(mismatch)["msg"]
    task = api.train("fault", dataset_id=numeric["id"], algorithm="ridge", task="regression")
    assert task.status_code == 409
    assert "classification model" in detail(task)["msg"]
    assert api.get("/models/fault").json()["latest_version"] == 1
    assert api.get("/jobs/999").status_code == 404


def test_interrupted_jobs_fail_on_restart_and_queued_ones_run(make_api: MakeApi) -> None:
    api = make_api()
    dataset = api.upload(sensor_csv(200, seed=10)).json()
    engine = create_db_engine(api.settings.resolved_database_url)
    request = {
        "dataset_id": dataset["id"],
        "algorithm": "logreg",
        "task": "classification",
        "params": {},
        "seed": 0,
        "validation_fraction": 0.2,
    }
    with Session(engine) as session:
        running = Job(model_name="fault", request=request, status=JobStatus.RUNNING)
        queued = Job(model_name="fault", request=request)
        session.add_all([running, queued])
        session.commit()
        assert running.id is not None
        assert queued.id is not None
        ids = (running.id, queued.id)
    api.client.__exit__(None, None, None)  # stop the server ...
    from fastapi.testclient import TestClient

    from control_plane.app import create_app

    with TestClient(create_app(api.settings)) as restarted:  # ... and start it again
        api.client = restarted
        assert api.wait_job(ids[0])["error"].startswith("interrupted")
        assert api.wait_job(ids[1])["status"] == "succeeded"
    with Session(engine) as session:
        assert not session.exec(select(Job).where(Job.status == JobStatus.RUNNING)).all()
    engine.dispose()
