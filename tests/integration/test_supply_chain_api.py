"""Upload → train each algorithm → signed manifest → artifact, through the REST API, on SQLite
and PostgreSQL. The manifest is checked with `cryptography` directly and the artifact is run
by onnxruntime, independently of edgefleet's own verification code."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.canonical import canonical_json
from simulator.data import sensor_csv
from tests.integration.conftest import Api, MakeApi

pytestmark = pytest.mark.integration


def check_signed_artifact(api: Api, version: dict) -> None:  # type: ignore[type-arg]
    manifest = version["manifest"]
    keys = api.client.get("/api/v1/keys").json()["keys"]
    model_key = next(k for k in keys if k["role"] == "model")
    assert manifest["key_id"] == model_key["key_id"]
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(model_key["public_key"]))
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    public.verify(base64.b64decode(manifest["signature"]), canonical_json(unsigned))

    response = api.get(f"/artifacts/{manifest['sha256']}")
    assert response.status_code == 200
    artifact = response.content
    assert len(artifact) == manifest["size"] == version["size"]
    assert hashlib.sha256(artifact).hexdigest() == manifest["sha256"]

    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    golden = manifest["golden"]
    X = np.array(
        [[np.nan if v is None else v for v in g["input"]] for g in golden["vectors"]],
        dtype=np.float32,
    )
    outputs = session.run(None, {manifest["input"]["tensor"]["name"]: X})
    if manifest["output"]["task"] == "classification":
        assert outputs[0].tolist() == [g["label"] for g in golden["vectors"]]
        expected = np.array([g["probabilities"] for g in golden["vectors"]])
        np.testing.assert_allclose(outputs[1], expected, atol=golden["atol"], rtol=0)
    else:
        expected = np.array([g["value"] for g in golden["vectors"]])
        np.testing.assert_allclose(outputs[0].ravel(), expected, atol=golden["atol"], rtol=0)


def test_each_algorithm_end_to_end(make_api: MakeApi, database_url: str | None) -> None:
    api = make_api(database_url)
    uploaded = api.upload(sensor_csv(500, seed=1))
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    assert dataset["rows"] == 500 and dataset["label_kind"] == "string"
    assert dataset["classes"] == ["bearing_wear", "clogged_filter", "normal", "overheating"]

    small: dict[str, dict[str, Any]] = {
        "logreg": {},
        "random_forest": {"n_estimators": 20, "max_depth": 6},
        "hist_gb": {"max_iter": 30},
        "xgboost": {"n_estimators": 30, "max_depth": 4},
        "lightgbm": {"n_estimators": 30, "num_leaves": 15},
    }
    for number, (algorithm, params) in enumerate(small.items(), start=1):
        job = api.train_ok(
            "fault", dataset_id=dataset["id"], algorithm=algorithm, params=params, seed=7
        )
        assert job["result_version"] == number and job["progress"] == 1.0
        version = api.get(f"/models/fault/versions/{number}").json()
        manifest = version["manifest"]
        assert manifest["version"] == number and manifest["name"] == "fault"
        assert manifest["input"]["features"] == dataset["features"]
        assert manifest["output"]["classes"] == dataset["classes"]
        lineage = manifest["lineage"]
        assert lineage["dataset_sha256"] == dataset["sha256"]
        assert lineage["algorithm"] == algorithm and lineage["seed"] == 7
        assert lineage["params"] | params == lineage["params"]
        assert {"accuracy", "f1_macro", "roc_auc"} <= set(lineage["metrics"])
        assert lineage["metrics"]["accuracy"] > 0.6
        assert version["parity_max_abs_diff"] == lineage["parity"]["max_abs_diff"] < 1e-4
        assert lineage["parity"]["rows"] == 100
        assert sum(manifest["reference"]["prediction"]["class_counts"]) == 100
        assert sum(manifest["reference"]["features"][0]["counts"]) == 400
        assert len(manifest["golden"]["vectors"]) == 8
        check_signed_artifact(api, version)

    models = api.get("/models").json()
    assert [(m["name"], m["latest_version"]) for m in models] == [("fault", 5)]
    versions = api.get("/models/fault/versions").json()
    assert [v["version"] for v in versions] == [1, 2, 3, 4, 5]
    assert all(v["manifest"] is None for v in versions)


def test_regression(api: Api) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = X @ np.array([2.0, -1.0, 0.5]) + rng.normal(scale=0.1, size=300)
    rows = "\n".join(",".join(f"{v:.5f}" for v in [*x, t]) for x, t in zip(X, y, strict=True))
    dataset = api.upload("a,b,c,target\n" + rows + "\n", name="lin", label="target").json()
    assert dataset["label_kind"] == "number"
    job = api.train_ok("power", dataset_id=dataset["id"], algorithm="ridge", task="regression")
    version = api.get(f"/models/power/versions/{job['result_version']}").json()
    assert version["manifest"]["output"]["value_output"] == "variable"
    assert version["metrics"]["r2"] > 0.95
    check_signed_artifact(api, version)
    for algorithm in ("xgboost", "lightgbm"):  # trees on a linear target: looser, still good
        job = api.train_ok(
            "power", dataset_id=dataset["id"], algorithm=algorithm, task="regression"
        )
        version = api.get(f"/models/power/versions/{job['result_version']}").json()
        assert version["metrics"]["r2"] > 0.8
        check_signed_artifact(api, version)
    # The model's task is fixed by its first version.
    conflict = api.train("power", dataset_id=dataset["id"], algorithm="hist_gb")
    assert conflict.status_code == 422  # 'number' labels have too many classes for classification


def test_impute_policy_keeps_missing_values_in_the_model(api: Api) -> None:
    lines = sensor_csv(400, seed=2).splitlines()
    lines = [lines[0]] + [
        ",".join("" if (i % 7 == 0 and j == 1) else c for j, c in enumerate(line.split(",")))
        for i, line in enumerate(lines[1:])
    ]
    text = "\n".join(lines) + "\n"
    assert api.upload(text).status_code == 422  # 'reject' is the default
    dataset = api.upload(text, nan_policy="impute").json()
    assert dataset["missing_values"] > 0
    job = api.train_ok(
        "fault",
        dataset_id=dataset["id"],
        algorithm="hist_gb",
        params={"max_iter": 20},
        validation_fraction=0.5,
    )
    version = api.get(f"/models/fault/versions/{job['result_version']}").json()
    manifest = version["manifest"]
    assert manifest["input"]["nan_policy"] == "impute"
    assert manifest["reference"]["features"][1]["missing"] > 0
    check_signed_artifact(api, version)


def test_parity_gate_refuses_to_register(make_api: MakeApi) -> None:
    api = make_api(parity_atol=1e-12)
    dataset = api.upload(sensor_csv(300, seed=4)).json()
    blobs_before = api.blob_files()
    response = api.train(
        "fault", dataset_id=dataset["id"], algorithm="random_forest", params={"n_estimators": 10}
    )
    job = api.wait_job(response.json()["id"])
    assert job["status"] == "failed" and job["stage"] == "failed"
    assert "parity gate" in job["error"] and "not registered" in job["error"]
    assert job["result_version"] is None
    assert api.get("/models/fault").status_code == 404
    assert api.get("/models").json() == []
    assert api.blob_files() == blobs_before  # no orphan artifact


def test_aliases(api: Api) -> None:
    dataset = api.upload(sensor_csv(200, seed=5)).json()
    api.train_ok("fault", dataset_id=dataset["id"], algorithm="logreg")
    api.train_ok("fault", dataset_id=dataset["id"], algorithm="logreg", seed=1)
    response = api.put("/models/fault/aliases/champion", json={"version": 1})
    assert response.status_code == 200 and response.json()["version"] == 1
    assert api.get("/models/fault/versions/champion").json()["version"] == 1
    api.put("/models/fault/aliases/champion", json={"version": 2})
    assert api.get("/models/fault").json()["aliases"] == {"champion": 2}
    assert api.get("/models/fault/versions/2").json()["aliases"] == ["champion"]

    missing = api.put("/models/fault/aliases/champion", json={"version": 9})
    assert missing.status_code == 404 and "no version 9" in missing.text
    bad = api.put("/models/fault/aliases/Bad%20Alias", json={"version": 1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["path", "alias"]
    assert api.get("/models/fault/versions/nope").status_code == 404
    assert api.get("/models/other/versions/1").status_code == 404
    viewer = api.token_for("viewer")
    assert (
        api.put(
            "/models/fault/aliases/x", json={"version": 1}, headers=api.auth(viewer)
        ).status_code
        == 403
    )
    assert api.delete("/models/fault/aliases/champion").status_code == 204
    assert api.get("/models/fault").json()["aliases"] == {}


def test_artifact_range_requests(api: Api) -> None:
    dataset = api.upload(sensor_csv(200, seed=6)).json()
    job = api.train_ok(
        "fault", dataset_id=dataset["id"], algorithm="random_forest", params={"n_estimators": 5}
    )
    sha = api.get(f"/models/fault/versions/{job['result_version']}").json()["sha256"]
    whole = api.get(f"/artifacts/{sha}").content
    head = api.get(f"/artifacts/{sha}", headers={**api.auth(), "Range": "bytes=0-99"})
    assert head.status_code == 206 and head.content == whole[:100]
    assert head.headers["content-range"] == f"bytes 0-99/{len(whole)}"
    rest = api.get(f"/artifacts/{sha}", headers={**api.auth(), "Range": "bytes=100-"})
    assert head.content + rest.content == whole  # a resumed download is the whole file
    assert api.get(f"/artifacts/{'0' * 64}").status_code == 404
    assert api.get("/artifacts/not-a-hash").status_code == 404
    # A dataset is a blob too, but not a model artifact: not downloadable here.
    assert api.get(f"/artifacts/{dataset['sha256']}").status_code == 404
    assert api.client.get(f"/api/v1/artifacts/{sha}").status_code == 401
    head_only = api.client.head(f"/api/v1/artifacts/{sha}", headers=api.auth())
    assert head_only.status_code == 200
    assert head_only.headers["content-length"] == str(len(whole))
    # A token that downloaded (and is now remembered) stops working the moment it is revoked.
    issued = api.post("/tokens", json={"name": "downloader", "role": "viewer"}).json()
    downloader = api.auth(issued["token"])
    assert api.client.get(f"/api/v1/artifacts/{sha}", headers=downloader).status_code == 200
    assert api.delete(f"/tokens/{issued['id']}").status_code == 200
    assert api.client.get(f"/api/v1/artifacts/{sha}", headers=downloader).status_code == 401
    assert (
        api.client.get(f"/api/v1/artifacts/{sha}", headers=api.auth("garbage")).status_code == 401
    )


def test_version_numbers_stay_monotonic_after_a_failed_job(make_api: MakeApi) -> None:
    api = make_api()
    dataset = api.upload(sensor_csv(200, seed=8)).json()
    api.train_ok("fault", dataset_id=dataset["id"], algorithm="logreg")
    # Break the stored dataset: the job fails, the version number is not consumed.
    blob = api.settings.blobs_dir / dataset["sha256"][:2] / dataset["sha256"]
    original = blob.read_bytes()
    blob.write_bytes(original + b"tampered")
    job = api.wait_job(
        api.train("fault", dataset_id=dataset["id"], algorithm="logreg").json()["id"]
    )
    assert job["status"] == "failed" and "corrupt" in job["error"]
    blob.write_bytes(original)
    assert (
        api.train_ok("fault", dataset_id=dataset["id"], algorithm="logreg")["result_version"] == 2
    )


def test_openapi_describes_every_field(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    missing = []
    for name, schema in spec["components"]["schemas"].items():
        if name in ("HTTPValidationError", "ValidationError"):
            continue
        for prop, body in schema.get("properties", {}).items():
            if not body.get("description"):
                missing.append(f"{name}.{prop}")
    assert not missing, f"fields without a description: {missing}"
    assert json.dumps(spec)  # serialisable


def test_a_search_registers_the_best_candidate_and_keeps_every_score(api: Api) -> None:
    dataset = api.upload(sensor_csv(400, seed=3)).json()
    search = {"params": {"max_depth": [1, 8], "n_estimators": [3, 20]}, "folds": 3}
    job = api.train_ok("fault", dataset_id=dataset["id"], algorithm="random_forest", search=search)
    result = job["result"]
    assert (result["metric"], result["folds"], result["grid_size"]) == ("accuracy", 3, 4)
    scores = {json.dumps(c["params"], sort_keys=True): c["mean"] for c in result["candidates"]}
    assert len(scores) == 4
    best = max(result["candidates"], key=lambda c: c["mean"])
    assert result["best"] == best["params"]
    assert best["params"]["max_depth"] == 8  # a stump cannot tell four faults apart
    lineage = api.get(f"/models/fault/versions/{job['result_version']}").json()["manifest"][
        "lineage"
    ]
    assert lineage["params"] | result["best"] == lineage["params"]
    # A larger grid than max_candidates is sampled, seeded.
    sampled = {"params": {"max_depth": [2, 3, 4, 5, 6]}, "max_candidates": 2}
    job = api.train_ok("fault", dataset_id=dataset["id"], algorithm="random_forest", search=sampled)
    assert (job["result"]["grid_size"], len(job["result"]["candidates"])) == (5, 2)


@pytest.mark.parametrize(
    ("search", "loc", "text"),
    [
        ({"params": {"depth": [1]}}, ["body", "search", "params", "depth"], "unknown parameter"),
        ({"params": {"max_depth": [4, 0]}}, ["body", "search", "params", "max_depth"], "outside"),
        ({"params": {}}, ["body", "search", "params"], "at least 1"),
        ({"params": {"max_depth": [4]}, "folds": 1}, ["body", "search", "folds"], "2"),
    ],
)
def test_a_bad_search_is_refused_before_a_job_exists(
    api: Api, search: dict[str, Any], loc: list[str], text: str
) -> None:
    dataset = api.upload(sensor_csv(200, seed=3)).json()
    response = api.train(
        "fault", dataset_id=dataset["id"], algorithm="random_forest", search=search
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc and text in detail["msg"], detail
    assert api.get("/jobs").json() == []


def test_two_versions_compared_on_one_holdout(api: Api) -> None:
    dataset = api.upload(sensor_csv(400, seed=3)).json()
    api.train_ok("fault", dataset_id=dataset["id"], algorithm="logreg")
    api.train_ok("fault", dataset_id=dataset["id"], algorithm="random_forest")
    api.put("/models/fault/aliases/champion", json={"version": 1})
    result = api.get("/models/fault/compare", params={"a": "champion", "b": "2"}).json()
    holdout = result["holdout"]
    assert holdout == {
        "dataset_id": dataset["id"],
        "rows": 80,  # v2's validation rows: 20% of 400
        "of_version": 2,
        "unseen_by_both": True,  # same dataset, same seed and fraction: the same split
    }
    a, b = result["a"], result["b"]
    assert (a["version"], a["algorithm"], b["version"], b["algorithm"]) == (
        1,
        "logreg",
        2,
        "random_forest",
    )
    # v2's own validation accuracy is what its training measured on the same rows.
    trained = api.get("/models/fault/versions/2").json()["metrics"]["accuracy"]
    assert abs(b["metrics"]["accuracy"] - trained) < 1e-9
    assert b["size"] == api.get("/models/fault/versions/2").json()["size"]
    assert all(v > 0 for v in (*a["latency_us"].values(), *b["latency_us"].values()))
    assert set(a["latency_us"]) == {"1", "64"}
    missing = api.get("/models/fault/compare", params={"a": "1", "b": "9"})
    assert missing.status_code == 404
