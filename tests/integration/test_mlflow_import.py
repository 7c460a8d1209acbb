"""Importing from an MLflow model registry: a real `mlflow server` on a free port with a
local backend store; models logged to it with MLflow's own API, then imported by URI
(version or alias) into the signed supply chain."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from shared.manifest import ModelManifest
from simulator.broker import free_port
from simulator.data import CLASSES, sensor_csv, sensor_rows
from tests.integration.conftest import MakeApi

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # its own health route says when it serves
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{(root / 'server.log').read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not up:\n{(root / 'server.log').read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def fitted() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    X, y = sensor_rows(400, seed=4)
    model = RandomForestClassifier(n_estimators=10, random_state=0)
    return model.fit(X.astype(np.float32), np.asarray(CLASSES)[y])


@pytest.fixture(scope="module")
def registry(mlflow_server: str) -> str:
    """Three registered models: sklearn logged the default way (skops) with an alias, the
    same as ONNX, and one logged as a cloudpickle."""
    import mlflow
    from skl2onnx import to_onnx

    mlflow.set_tracking_uri(mlflow_server)
    model = fitted()
    X, _ = sensor_rows(5, seed=1)
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name="sensor",
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
        onnx_model = to_onnx(
            model,
            X.astype(np.float32),
            options={id(model): {"zipmap": False, "nocl": True}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        mlflow.onnx.log_model(onnx_model, name="onnx", registered_model_name="sensor-onnx")
        mlflow.sklearn.log_model(
            model,
            name="pickled",
            registered_model_name="pickled",
            serialization_format="cloudpickle",
        )
    mlflow.MlflowClient().set_registered_model_alias("sensor", "champion", "1")
    return mlflow_server


def test_models_from_the_registry_become_signed_versions(make_api: MakeApi, registry: str) -> None:
    api = make_api(mlflow_tracking_uri=registry)
    dataset = api.upload(sensor_csv(300, seed=1)).json()
    cases = [
        ("models:/sensor@champion", "sklearn", None),
        ("models:/sensor-onnx/1", "onnx", sorted(CLASSES)),
    ]
    for uri, fmt, classes in cases:
        body = {"uri": uri, "dataset_id": dataset["id"], "classes": classes}
        response = api.post("/models/fault/import/mlflow", json=body)
        assert response.status_code == 202, response.text
        job = api.wait_job(response.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        version = api.get(f"/models/fault/versions/{job['result_version']}").json()
        manifest = ModelManifest.model_validate_json(json.dumps(version["manifest"]))
        source = manifest.lineage.source
        assert source is not None and (source.format, source.uri) == (fmt, uri)
        assert manifest.output.classes == sorted(CLASSES)  # as the model knows them
        assert manifest.lineage.metrics["accuracy"] > 0.7


@pytest.mark.parametrize(
    ("uri", "code", "text"),
    [
        ("models:/nothing/7", "mlflow_not_found", "MLflow cannot give models:/nothing/7"),
        ("models:/pickled/1", "mlflow_pickle", "pickles are never loaded"),
    ],
)
def test_what_the_registry_cannot_give_is_refused(
    make_api: MakeApi, registry: str, uri: str, code: str, text: str
) -> None:
    api = make_api(mlflow_tracking_uri=registry)
    dataset = api.upload(sensor_csv(300, seed=1)).json()
    blobs = api.blob_files()
    response = api.post(
        "/models/fault/import/mlflow", json={"uri": uri, "dataset_id": dataset["id"]}
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert (detail["loc"], detail["type"]) == (["body", "uri"], code)
    assert text in detail["msg"]
    assert api.blob_files() == blobs
    assert api.get("/jobs").json() == []


def test_without_a_registry_configured_the_import_says_so(make_api: MakeApi) -> None:
    api = make_api()
    dataset = api.upload(sensor_csv(300, seed=1)).json()
    body = {"uri": "models:/sensor/1", "dataset_id": dataset["id"]}
    response = api.post("/models/fault/import/mlflow", json=body)
    assert response.status_code == 422
    assert "mlflow_tracking_uri" in response.json()["detail"][0]["msg"]
    bad = api.post("/models/fault/import/mlflow", json={**body, "uri": "runs:/abc/model"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "uri"]


def test_each_new_version_is_logged_to_mlflow(make_api: MakeApi, registry: str) -> None:
    """With a tracking server set, a trained version is a run there: parameters, metrics,
    the ONNX file and its signed manifest, tagged with the edgefleet version."""
    import mlflow

    api = make_api(mlflow_tracking_uri=registry)
    dataset = api.upload(sensor_csv(300, seed=1)).json()
    job = api.train_ok("logged", dataset_id=dataset["id"], algorithm="logreg")
    version = api.get(f"/models/logged/versions/{job['result_version']}").json()
    client = mlflow.MlflowClient(registry)
    experiment = client.get_experiment_by_name("edgefleet-logged")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["edgefleet.version"] == str(version["version"])
    assert run.data.tags["edgefleet.sha256"] == version["sha256"]
    assert run.data.params["algorithm"] == "logreg"
    assert run.data.metrics["accuracy"] == version["metrics"]["accuracy"]
    files = {f.path for f in client.list_artifacts(run.info.run_id, "edgefleet")}
    assert files == {"edgefleet/logged-v1.onnx", "edgefleet/logged-v1.manifest.json"}
