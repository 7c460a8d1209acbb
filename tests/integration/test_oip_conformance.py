"""The Open Inference Protocol's required REST API (KServe's ``docs/predict-api/v2/
required_api.md``), checked against a real agent over real HTTP: the agent installs signed
models from a desired state on the rig's mosquitto, then every required route is called as a
client of the protocol would call it.

What the spec requires, and where it is checked:

* health: ``GET v2/health/live``, ``GET v2/health/ready``,
  ``GET v2/models/${MODEL_NAME}[/versions/${MODEL_VERSION}]/ready``; 200 is true, 4xx false;
  "server ready": all the models are ready (here: every model assigned to the device);
* server metadata ``GET v2``: ``{"name", "version", "extensions": [...]}``;
* model metadata ``GET v2/models/${MODEL_NAME}[/versions/${MODEL_VERSION}]``: name,
  versions, platform, inputs and outputs as ``{"name", "datatype", "shape"}``, -1 for a
  variable dimension;
* inference ``POST v2/models/${MODEL_NAME}[/versions/${MODEL_VERSION}]/infer``: ``id``,
  ``parameters``, ``inputs`` (name, shape, datatype, parameters, data flat or nested),
  ``outputs`` asked for by name; the response's model_name, model_version, id, parameters,
  outputs (name, shape, datatype, data);
* every failure: an HTTP error status and ``{"error": $string}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from edgefleet import __version__
from shared.manifest import ModelManifest
from simulator.broker import free_port
from simulator.data import FEATURES, sensor_rows
from simulator.rig.agent_rig import DEVICE, Rig, open_rig
from simulator.rig.agents import AgentThread, wait_until
from simulator.rig.models import make_model

pytestmark = pytest.mark.integration

PROTOCOL_DATATYPES = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
}


@dataclass(frozen=True)
class Model:
    manifest: ModelManifest
    onnx: bytes

    def reference(self, X: npt.ArrayLike) -> tuple[list[int], npt.NDArray[np.float32]]:
        """Labels and probabilities from bare onnxruntime on float32 rows."""
        session = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
        rows = np.asarray(X, dtype=np.float32)
        labels, probabilities = session.run(None, {self.manifest.input.tensor.name: rows})
        return labels.tolist(), np.asarray(probabilities)


@dataclass(frozen=True)
class Device:
    rig: Rig
    agent: AgentThread
    client: httpx.Client
    fault: Model
    other: Model


def answers(client: httpx.Client, path: str, status: int = 200) -> bool:
    try:
        return client.get(path).status_code == status
    except httpx.TransportError:  # the agent's API is not listening yet
        return False


def start_device(rig: Rig) -> tuple[AgentThread, httpx.Client]:
    """An agent of the rig with its local API on a free port, once the API answers."""
    agent = rig.start_agent(api_port=free_port())
    client = httpx.Client(base_url=f"http://127.0.0.1:{agent.settings.api_port}", timeout=10)
    wait_until(lambda: answers(client, "/v2/health/live"), what="the local API")
    return agent, client


def deploy(rig: Rig, *models: Model, mode: str = "normal") -> None:
    for model in models:
        rig.artifacts.add(model.manifest.sha256, model.onnx, mode)
    rig.publish(rig.next_desired(DEVICE, [model.manifest for model in models]))


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """One agent serving ``fault`` v1 (logistic regression, refuses missing values) and
    ``other`` v3 (random forest), both installed through a signed desired state."""
    with open_rig(tmp_path_factory.mktemp("oip")) as rig:
        fault = Model(*make_model(rig.model_key))
        other = Model(
            *make_model(
                rig.model_key,
                name="other",
                version=3,
                algorithm="random_forest",
                params={"n_estimators": 5},
            )
        )
        agent, client = start_device(rig)
        deploy(rig, fault, other)
        wait_until(lambda: answers(client, "/v2/health/ready"), what="both models serving")
        try:
            yield Device(rig, agent, client, fault, other)
        finally:
            client.close()


def rows(n: int, seed: int = 7) -> npt.NDArray[np.float64]:
    return sensor_rows(n, seed)[0]


def request(
    data: Any, datatype: str = "FP32", shape: list[int] | None = None, **extra: Any
) -> dict[str, Any]:
    array = np.asarray(data)
    return {
        "inputs": [
            {
                "name": "input",
                "shape": shape or [int(array.shape[0]), len(FEATURES)],
                "datatype": datatype,
                "data": data,
            }
        ],
        **extra,
    }


def error_of(response: httpx.Response) -> str:
    """The protocol's error object: exactly ``{"error": $string}``."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# --- health and server metadata -------------------------------------------------------------------


def test_server_metadata_and_health(device: Device) -> None:
    client = device.client
    metadata = client.get("/v2")
    assert metadata.status_code == 200
    assert metadata.headers["content-type"] == "application/json"
    assert metadata.json() == {"name": "edgefleet", "version": __version__, "extensions": []}

    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    for path in ("/v2/models/fault/ready", "/v2/models/other/versions/3/ready"):
        assert client.get(path).status_code == 200, path
    for path in ("/v2/models/nope/ready", "/v2/models/fault/versions/2/ready"):
        assert client.get(path).status_code == 404, path


# --- model metadata -------------------------------------------------------------------------------


def test_model_metadata(device: Device) -> None:
    client = device.client
    for name, version in (("fault", "1"), ("other", "3")):
        metadata = client.get(f"/v2/models/{name}")
        assert metadata.status_code == 200
        body = metadata.json()
        assert {"name", "versions", "platform", "inputs", "outputs"} <= set(body)
        assert (body["name"], body["versions"], body["platform"]) == (
            name,
            [version],
            "onnxruntime_onnx",
        )
        assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 6]}]
        assert body["outputs"] == [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]},
        ]
        for tensor in body["inputs"] + body["outputs"]:
            assert set(tensor) == {"name", "datatype", "shape"}
            assert tensor["datatype"] in PROTOCOL_DATATYPES
            assert all(isinstance(d, int) and (d == -1 or d >= 0) for d in tensor["shape"])
        assert client.get(f"/v2/models/{name}/versions/{version}").json() == body


def test_version_paths(device: Device) -> None:
    client = device.client
    X = rows(2)
    labels, _ = device.fault.reference(X)
    infer = client.post("/v2/models/fault/versions/1/infer", json=request(X.tolist()))
    assert infer.status_code == 200, infer.text
    assert (infer.json()["model_name"], infer.json()["model_version"]) == ("fault", "1")
    assert infer.json()["outputs"][0]["data"] == labels

    for path in ("/v2/models/fault/versions/2", "/v2/models/fault/versions/2/ready"):
        missing = client.get(path)
        assert missing.status_code == 404
        assert error_of(missing) == (
            "model 'fault' has no version '2' on this device; it serves version 1"
        )
    wrong = client.post("/v2/models/fault/versions/3/infer", json=request(X.tolist()))
    assert (wrong.status_code, error_of(wrong)) == (
        404,
        "model 'fault' has no version '3' on this device; it serves version 1",
    )


# --- inference: datatypes -------------------------------------------------------------------------


def as_datatype(datatype: str, X: npt.NDArray[np.float64]) -> list[Any]:
    """Rows of ``X`` as a client holding that datatype would send them."""
    values: npt.NDArray[Any] = X
    if datatype == "BOOL":
        values = np.greater(X, np.median(X, axis=0))  # above each feature's median
    elif datatype.startswith(("INT", "UINT")):
        bits = int(datatype.removeprefix("U").removeprefix("INT"))
        values = np.clip(np.round(X), 0, 2 ** (bits - 1) - 1).astype(np.int64)
    elif datatype == "FP64":
        values = X + 1 / 3  # more digits than float32 holds: rounded by the agent
    rows: list[Any] = values.tolist()
    return rows


@pytest.mark.parametrize(
    "datatype",
    ["FP32", "FP64", "INT32", "INT64", "BOOL", "INT8", "INT16", "UINT8", "UINT16", "UINT32"],
)
def test_each_datatype_is_converted_to_the_models_float32(device: Device, datatype: str) -> None:
    data = as_datatype(datatype, rows(5))
    labels, probabilities = device.fault.reference(np.asarray(data, dtype=np.float64))
    for representation in (data, [v for row in data for v in row]):  # nested, then flat
        response = device.client.post(
            "/v2/models/fault/infer",
            json=request(representation, datatype, shape=[5, 6]),
        )
        assert response.status_code == 200, (datatype, response.text)
        label, proba = response.json()["outputs"]
        assert label["data"] == labels
        np.testing.assert_allclose(np.reshape(proba["data"], (5, 4)), probabilities, atol=1e-6)


# --- inference: request and response shape --------------------------------------------------------


def test_inference_response_follows_the_spec(device: Device) -> None:
    X = rows(3)
    labels, probabilities = device.other.reference(X)
    body = request(
        X.tolist(),
        id="42",
        parameters={"priority": 1, "trace": True, "note": "ignored"},
    )
    body["inputs"][0]["parameters"] = {"binary_data_size": 0, "origin": "sensor"}
    response = device.client.post("/v2/models/other/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"model_name", "model_version", "id", "parameters", "outputs"}
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("other", "3", "42")
    assert answer["parameters"] == {"request_id": response.headers["x-request-id"]}
    for output in answer["outputs"]:
        assert set(output) == {"name", "shape", "datatype", "data"}
        assert len(output["data"]) == math.prod(output["shape"])
        assert output["datatype"] in PROTOCOL_DATATYPES
    label, proba = answer["outputs"]
    assert (label["name"], label["datatype"], label["shape"], label["data"]) == (
        "label",
        "INT64",
        [3],
        labels,
    )
    assert (proba["name"], proba["datatype"], proba["shape"]) == ("probabilities", "FP32", [3, 4])
    np.testing.assert_allclose(np.reshape(proba["data"], (3, 4)), probabilities, atol=1e-6)

    anonymous = device.client.post("/v2/models/other/infer", json=request(X.tolist())).json()
    assert anonymous["id"] == anonymous["parameters"]["request_id"]


def test_requested_outputs_are_named_and_ordered(device: Device) -> None:
    X = rows(2).tolist()

    def names(outputs: list[dict[str, Any]]) -> list[str]:
        response = device.client.post("/v2/models/fault/infer", json=request(X, outputs=outputs))
        assert response.status_code == 200, response.text
        return [o["name"] for o in response.json()["outputs"]]

    assert names([{"name": "probabilities"}, {"name": "label"}]) == ["probabilities", "label"]
    assert names([{"name": "label", "parameters": {"binary_data": False}}]) == ["label"]
    assert names([{"name": "probabilities"}]) == ["probabilities"]


# --- errors ---------------------------------------------------------------------------------------

INFER = "/v2/models/fault/infer"


def good_request() -> dict[str, Any]:
    return request(rows(2).tolist())


def with_tensor(**change: Any) -> dict[str, Any]:
    return {"inputs": [{**good_request()["inputs"][0], **change}]}


def refused(client: httpx.Client, body: Any, status: int, path: str = INFER) -> str:
    """POST ``body`` (bytes as they are, anything else as JSON): its status and error."""
    if isinstance(body, bytes):
        response = client.post(path, content=body)
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, (path, body, response.text)
    return error_of(response)


def test_unknown_models_versions_and_routes(device: Device) -> None:
    client = device.client
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/nope/versions/1"):
        missing = client.get(path)
        assert missing.status_code == 404
        assert error_of(missing) == (
            "no model 'nope' is serving on this device (serving: fault, other)"
        )
    for path in ("/v2/models/nope/infer", "/v2/models/nope/versions/1/infer"):
        assert "no model 'nope'" in refused(client, good_request(), 404, path)
    assert "no route /v2/repository/index" in refused(client, {}, 404, "/v2/repository/index")
    assert "POST is not allowed on /v2; use GET" in refused(client, {}, 405, "/v2")
    assert client.get(INFER).status_code == 405


def test_malformed_requests_are_400(device: Device) -> None:
    good = good_request()
    flat = [v for row in good["inputs"][0]["data"] for v in row]
    cases: list[tuple[Any, str]] = [
        (b"{not json", "body is not valid JSON"),
        (b'"inputs"', "body must be a JSON object"),
        ({"inputs": []}, '"inputs" must be a list of one input tensor'),
        ({"inputs": [{"name": "input"}]}, "the input tensor lacks ['shape', 'datatype', 'data']"),
        (with_tensor(datatype="FLOAT"), "input datatype 'FLOAT' is not a datatype of the protoc"),
        (with_tensor(datatype=None), "input datatype None is not a datatype of the protocol"),
        (with_tensor(shape=[12]), "input shape [12] must be [rows, features]"),
        (with_tensor(shape=[3, 6]), "shape [3, 6] has 3 rows but data has 2"),
        (with_tensor(shape=[3, 6], data=flat), "shape [3, 6] needs 18 values but data has 12"),
        (with_tensor(name="x"), "model 'fault' takes the input tensor 'input', not 'x'"),
        (with_tensor(parameters=[1]), '"parameters" of the input tensor must be an object'),
        ({**good, "parameters": "x"}, '"parameters" of the request must be an object'),
        ({**good, "id": 7}, '"id" must be a string'),
        ({**good, "outputs": "label"}, '"outputs" must be a list of {"name": ...} objects'),
        ({**good, "outputs": [{"name": "label"}] * 2}, "output 'label' is asked for twice"),
        ({**good, "outputs": [{"name": "x"}]}, "model 'fault' has no outputs ['x']"),
    ]
    for body, message in cases:
        assert message in refused(device.client, body, 400), body
    assert device.client.post(INFER, json=good).status_code == 200


def test_inputs_that_cannot_become_float32_rows_are_422(device: Device) -> None:
    flat = [v for row in good_request()["inputs"][0]["data"] for v in row]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"datatype": "BYTES"}, "input datatype BYTES cannot be converted to the model's FP32"),
        ({"datatype": "FP16"}, "input datatype FP16 has no JSON representation; send FP32"),
        ({"shape": [2, 5], "data": flat[:10]}, "shape [2, 5]: the model takes 6 features"),
        ({"data": [flat[:6], flat[:5]]}, "row 1: 5 values; the model takes 6"),
        ({"datatype": "FP64", "data": [1e300] * 12}, "temperature_c=1e+300 is not a finite flo"),
        (
            {"data": [None, *flat[1:]]},
            "row 0: temperature_c is missing and this model does not accept missing values",
        ),
        ({"data": [True] * 12}, "row 0: temperature_c must be a number, got True"),
        ({"datatype": "INT32", "data": [2**31] * 12}, "=2147483648 is out of INT32's range"),
        ({"datatype": "UINT8", "data": [-1] * 12}, "temperature_c=-1 is out of UINT8's range"),
        ({"datatype": "INT64", "data": [1.5] * 12}, "must be an integer (INT64), got 1.5"),
        ({"datatype": "INT64", "data": [None] * 12}, "null; INT64 data has no missing values"),
        ({"datatype": "BOOL", "data": [1] * 12}, "must be true or false (BOOL), got 1"),
    ]
    for change, message in cases:
        assert message in refused(device.client, with_tensor(**change), 422), change


# --- server ready: every assigned model -----------------------------------------------------------


def test_ready_needs_every_assigned_model(rig: Rig) -> None:
    fault = Model(*make_model(rig.model_key))
    other = Model(*make_model(rig.model_key, name="other", seed=2))
    _, client = start_device(rig)

    nothing = client.get("/v2/health/ready")
    assert (nothing.status_code, nothing.json()) == (
        400,
        {"ready": False, "error": "no model is assigned to this device"},
    )

    rig.artifacts.add(fault.manifest.sha256, fault.onnx)
    rig.artifacts.add(other.manifest.sha256, other.onnx, "down")  # its download fails for now
    rig.publish(rig.next_desired(DEVICE, [fault.manifest, other.manifest]))
    wait_until(lambda: answers(client, "/v2/models/fault/ready"), what="fault serving")

    not_ready = client.get("/v2/health/ready")
    assert (not_ready.status_code, not_ready.json()) == (
        400,
        {"ready": False, "error": "assigned models not serving yet: other"},
    )
    other_ready = client.get("/v2/models/other/ready")
    assert other_ready.status_code == 400
    assert other_ready.json()["ready"] is False
    assert client.get("/v2/models/fault/ready").status_code == 200
    pending = client.get("/v2/models/other")
    assert pending.status_code == 404
    assert "assigned" in error_of(pending)

    rig.artifacts.modes[other.manifest.sha256] = "normal"  # the agent's retry now succeeds
    wait_until(lambda: answers(client, "/v2/health/ready"), what="every assigned model serving")
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/other/ready").status_code == 200


def test_ready_from_the_disk_after_a_restart(tmp_path: Path) -> None:
    """A restarted agent serves its verified store before it hears from the broker, and
    knows what it was assigned: ready at once."""
    with open_rig(tmp_path) as rig:
        fault = Model(*make_model(rig.model_key))
        agent, client = start_device(rig)
        try:
            deploy(rig, fault)
            wait_until(lambda: answers(client, "/v2/health/ready"), what="fault serving")
            agent.stop()
            rig.agents.remove(agent)
            rig.broker.stop()  # no desired state can arrive now
            restarted = rig.start_agent(api_port=agent.settings.api_port)
            wait_until(lambda: answers(client, "/v2/health/live"), what="the restarted API")
            assert client.get("/v2/health/ready").status_code == 200
            assert restarted.a.assigned_names() == ["fault"]
        finally:
            client.close()
