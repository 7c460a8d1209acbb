"""Monitoring API boundaries: policy, feedback, manual retraining, approval — bad input is
refused with a reason and stores nothing; on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from simulator.data import sensor_csv
from tests.integration.conftest import Api, MakeApi


def feedback(api: Api, items: list[dict[str, Any]], **kw: Any) -> Any:
    return api.post("/feedback", json={"model": "fault", "items": items}, **kw)


def test_policy_feedback_retrain_and_approval_boundaries(
    make_api: MakeApi, database_url: str | None
) -> None:
    api = make_api(database_url, max_feedback_items=3)
    dataset = api.upload(sensor_csv(300, seed=3)).json()
    api.train_ok("fault", dataset_id=dataset["id"], algorithm="logreg")

    # Policy: defaults until set; bad thresholds, selectors and unknown fields refused.
    policy = api.get("/models/fault/policy").json()
    assert policy["drift"]["psi_drift"] == 0.25 and policy["retrain"]["cooldown_seconds"] == 3600
    bad = api.put("/models/fault/policy", json={"drift": {"psi_watch": 0.3, "psi_drift": 0.2}})
    assert bad.status_code == 422 and "psi_drift" in bad.text
    assert api.put("/models/fault/policy", json={"selectors": ["site=="]}).status_code == 422
    assert api.put("/models/fault/policy", json={"extra": 1}).status_code == 422
    assert api.put("/models/nope/policy", json={}).status_code == 404
    ok = api.put("/models/fault/policy", json={"retrain": {"min_labelled_rows": 10}})
    assert ok.status_code == 200
    assert api.get("/models/fault/policy").json()["retrain"]["min_labelled_rows"] == 10

    # Feedback: every item is checked before any is stored.
    good = {"request_id": "r1", "label": "normal", "prediction": 0, "version": 1}
    unknown_class = feedback(api, [good, {"request_id": "r2", "label": "on-fire"}])
    assert unknown_class.status_code == 422
    assert unknown_class.json()["detail"][0]["loc"] == ["body", "items", 1, "label"]
    assert feedback(api, [{"request_id": "r3", "label": 7}]).status_code == 422  # index
    assert feedback(api, [{**good, "version": 9}]).status_code == 422
    assert feedback(api, [{**good, "request_id": "bad id!"}]).status_code == 422
    assert feedback(api, [good] * 4).status_code == 413  # over max_feedback_items
    assert feedback(api, []).status_code == 422
    missing = api.post("/feedback", json={"model": "nope", "items": [good]})
    assert missing.status_code == 404
    stored = feedback(api, [good])
    assert stored.status_code == 200 and stored.json() == {"stored": 1, "matched_samples": 0}
    again = feedback(api, [{**good, "label": "overheating"}])  # the same id: replaced
    assert again.json()["stored"] == 1
    viewer = api.token_for("viewer")
    assert feedback(api, [good], headers=api.auth(viewer)).status_code == 403

    # A device token posts labels for its own device only.
    device = api.post("/devices", json={"id": "dev-1", "labels": {}}).json()
    as_device = api.auth(device["token"])
    assert feedback(api, [{**good, "device_id": "dev-2"}], headers=as_device).status_code == 422
    assert feedback(api, [good], headers=as_device).status_code == 200

    # Manual retraining without recent labelled rows: the job ends refused, nothing new.
    job = api.post("/models/fault/retrain")
    assert job.status_code == 202, job.text
    done = api.wait_job(job.json()["id"])
    assert done["kind"] == "retrain" and done["status"] == "succeeded"
    assert done["stage"] == "refused" and "0 recent labelled rows" in done["error"]
    assert api.get("/models/fault").json()["latest_version"] == 1
    started = api.get("/events", params={"type": "retrain_started"}).json()
    assert [e["job_id"] for e in started] == [done["id"]]
    refusal = api.get("/events", params={"type": "challenger_refused"}).json()
    assert [e["data"]["decision"] for e in refusal] == ["insufficient_data"]
    assert api.post("/models/nope/retrain").status_code == 404

    # Only a retrained version awaiting approval can be approved.
    refused = api.post("/models/fault/versions/1/approve")
    assert refused.status_code == 409 and "not awaiting approval" in refused.text
    assert api.post("/models/fault/versions/5/approve").status_code == 404
    assert api.get("/models/fault/drift").json() == []
