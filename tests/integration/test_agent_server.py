"""The agent's local inference API over real sockets, real model slots and real ONNX models:
v2 protocol routes, /v1/predict, every refusal, keep-alive, and hot swaps under load."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import orjson
import pytest

import agent.server
from agent.inference import LoadedModel, describe, session_for
from agent.server import MAX_BODY_BYTES, MAX_HEAD_BYTES, InferenceServer
from agent.slot import ModelSlot, ModelUnavailableError, Prediction
from shared.hashing import sha256_bytes
from shared.manifest import InputSchema, ModelManifest, OutputSchema, Reference
from shared.signing import SigningKey
from simulator.data import CLASSES, FEATURES, sensor_rows
from simulator.rig.models import make_model

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Model:
    manifest: ModelManifest
    onnx: bytes

    def loaded(self) -> LoadedModel:
        return LoadedModel(manifest=self.manifest, session=session_for(self.onnx))

    def reference(self, X: npt.NDArray[np.float32]) -> list[Any]:
        """What bare onnxruntime answers."""
        session = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
        return list(session.run(None, {self.manifest.input.tensor.name: X}))


@dataclass(frozen=True)
class Models:
    fault: Model
    fault_v2: Model
    other: Model
    level: Model  # regression, nan_policy "impute"


def make_regressor(base: ModelManifest) -> Model:
    """A ridge regression on the sensor features that imputes missing values."""
    from control_plane.training.algorithms import ALGORITHMS, build_pipeline
    from control_plane.training.conversion import export_onnx
    from control_plane.training.parity import feature_references, prediction_reference_values

    X = sensor_rows(200, 3)[0].astype(np.float32)
    target = X[:, 0] * 0.5 + X[:, 4] * 0.01
    spec = ALGORITHMS[("regression", "ridge")]
    pipeline = build_pipeline(spec, spec.defaults, "impute", 0).fit(X, target)
    onnx = export_onnx(pipeline, X.shape[1], "regression")
    inputs, outputs = describe(session_for(onnx))
    manifest = base.model_copy(
        update={
            "name": "level",
            "sha256": sha256_bytes(onnx),
            "size": len(onnx),
            "input": InputSchema(tensor=inputs[0], features=FEATURES, nan_policy="impute"),
            "output": OutputSchema(
                task="regression", outputs=outputs, value_output=outputs[0].name
            ),
            "reference": Reference(
                rows=len(X),
                features=feature_references(X, FEATURES, 10),
                prediction=prediction_reference_values(pipeline.predict(X), 5),
            ),
        }
    )
    return Model(manifest, onnx)


@pytest.fixture(scope="module")
def models() -> Models:
    key = SigningKey.generate()
    fault = Model(*make_model(key))
    return Models(
        fault=fault,
        fault_v2=Model(*make_model(key, version=2, seed=1)),
        other=Model(
            *make_model(key, name="other", algorithm="random_forest", params={"n_estimators": 5})
        ),
        level=make_regressor(fault.manifest),
    )


class SlotBackend:
    """The agent's side of the server: one ModelSlot per model name."""

    def __init__(self, *models: Model) -> None:
        self.slots: dict[str, ModelSlot] = {}
        for model in models:
            self.slots.setdefault(model.manifest.name, ModelSlot(model.manifest.name)).activate(
                model.loaded(), None
            )

    def model_names(self) -> list[str]:
        return sorted(name for name, slot in self.slots.items() if slot.current is not None)

    def model(self, name: str) -> LoadedModel:
        slot = self.slots.get(name)
        if slot is None or slot.current is None:
            raise ModelUnavailableError(f"no model {name!r} is serving on this device")
        return slot.current

    def predict(
        self, name: str, X: npt.NDArray[np.float32], model: LoadedModel | None = None
    ) -> Prediction:
        slot = self.slots.get(name)
        if slot is None:
            raise ModelUnavailableError(f"no model {name!r} is serving on this device")
        return slot.predict(X, model)


class FailingBackend(SlotBackend):
    """Serves metadata, but inference raises ``error``."""

    def __init__(self, error: Exception, *models: Model) -> None:
        super().__init__(*models)
        self.error = error

    def predict(
        self, name: str, X: npt.NDArray[np.float32], model: LoadedModel | None = None
    ) -> Prediction:
        raise self.error


Serve = Callable[[SlotBackend], httpx.Client]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a server on a free port for a backend; a client bound to it."""
    started: list[tuple[InferenceServer, httpx.Client]] = []

    def start(backend: SlotBackend) -> httpx.Client:
        server = InferenceServer(backend, port=0)
        server.start()
        client = httpx.Client(base_url=server.url, timeout=10)
        started.append((server, client))
        return client

    yield start
    for server, client in started:
        client.close()
        server.stop()


def rows(n: int, seed: int = 5) -> npt.NDArray[np.float32]:
    return sensor_rows(n, seed)[0].astype(np.float32)


def v2_request(X: npt.NDArray[np.float32] | list[Any], **extra: Any) -> dict[str, Any]:
    data = X.reshape(-1).tolist() if isinstance(X, np.ndarray) else X
    n = len(X) if isinstance(X, np.ndarray) else 1
    return {
        "inputs": [{"name": "input", "shape": [n, 6], "datatype": "FP32", "data": data}],
        **extra,
    }


def named(row: npt.NDArray[np.float32]) -> dict[str, float]:
    return dict(zip(FEATURES, row.tolist(), strict=True))


def test_health(serve: Serve, models: Models) -> None:
    empty = serve(SlotBackend())
    assert empty.get("/v2/health/live").json() == {"live": True}
    not_ready = empty.get("/v2/health/ready")
    assert (not_ready.status_code, not_ready.json()) == (
        400,
        {"ready": False, "error": "no model is assigned to this device"},
    )

    client = serve(SlotBackend(models.fault))
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert ready.headers["content-type"] == "application/json"


def test_model_metadata(serve: Serve, models: Models) -> None:
    client = serve(SlotBackend(models.fault, models.level))
    meta = client.get("/v2/models/fault").json()
    assert meta == {
        "name": "fault",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 6]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]},
        ],
        "parameters": {
            "features": FEATURES,
            "nan_policy": "reject",
            "task": "classification",
            "classes": CLASSES,
            "sha256": models.fault.manifest.sha256,
        },
    }
    level = client.get("/v2/models/level").json()
    assert level["outputs"] == [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}]
    assert level["parameters"]["task"] == "regression"

    assert client.get("/v2/models/fault/ready").status_code == 200
    for path in ("/v2/models/nope", "/v2/models/nope/ready"):
        missing = client.get(path)
        assert missing.status_code == 404
        assert "no model 'nope'" in missing.json()["error"]
        assert "fault, level" in missing.json()["error"]


def test_infer_flat_and_nested_match_onnxruntime(serve: Serve, models: Models) -> None:
    client = serve(SlotBackend(models.fault))
    X = rows(25)
    labels, probabilities = models.fault.reference(X)

    flat = client.post("/v2/models/fault/infer", json=v2_request(X))
    nested = client.post(
        "/v2/models/fault/infer",
        json={
            "inputs": [{"name": "input", "shape": [25, 6], "datatype": "FP32", "data": X.tolist()}]
        },
    )
    for response in (flat, nested):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model_name"], body["model_version"]) == ("fault", "1")
        label, proba = body["outputs"]
        assert (label["name"], label["datatype"], label["shape"]) == ("label", "INT64", [25])
        assert label["data"] == labels.tolist()
        assert (proba["name"], proba["datatype"], proba["shape"]) == (
            "probabilities",
            "FP32",
            [25, 4],
        )
        np.testing.assert_allclose(np.reshape(proba["data"], (25, 4)), probabilities, atol=1e-6)

    only_labels = client.post(
        "/v2/models/fault/infer", json=v2_request(X, outputs=[{"name": "label"}])
    ).json()
    assert [o["name"] for o in only_labels["outputs"]] == ["label"]


def test_request_ids_are_unique_and_echoed(serve: Serve, models: Models) -> None:
    client = serve(SlotBackend(models.fault))
    seen = set()
    for _ in range(5):
        response = client.post("/v2/models/fault/infer", json=v2_request(rows(1)))
        body = response.json()
        assert response.headers["x-request-id"] == body["id"] == body["parameters"]["request_id"]
        seen.add(body["id"])
        predicted = client.post("/v1/predict", json={"features": named(rows(1)[0])})
        assert predicted.headers["x-request-id"] == predicted.json()["request_id"]
        seen.add(predicted.json()["request_id"])
    assert len(seen) == 10

    mine = client.post("/v2/models/fault/infer", json=v2_request(rows(1), id="req-42")).json()
    assert mine["id"] == "req-42"
    assert mine["parameters"]["request_id"] not in seen | {"req-42"}


def test_v1_predict(serve: Serve, models: Models) -> None:
    client = serve(SlotBackend(models.fault))
    X = rows(3)
    labels, probabilities = models.fault.reference(X)

    one = client.post("/v1/predict", json={"features": named(X[0])})
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["model"], body["version"]) == ("fault", 1)
    [prediction] = body["predictions"]
    assert prediction["class_index"] == labels[0]
    assert prediction["class"] == CLASSES[labels[0]]
    assert list(prediction["probabilities"]) == CLASSES
    np.testing.assert_allclose(
        list(prediction["probabilities"].values()), probabilities[0], atol=1e-6
    )

    several = client.post("/v1/predict", json={"model": "fault", "rows": [named(r) for r in X]})
    assert [p["class"] for p in several.json()["predictions"]] == [CLASSES[i] for i in labels]


def test_v1_predict_needs_a_model_name_when_several_serve(serve: Serve, models: Models) -> None:
    client = serve(SlotBackend(models.fault, models.other))
    row = named(rows(1)[0])
    ambiguous = client.post("/v1/predict", json={"features": row})
    assert ambiguous.status_code == 400
    assert "several models serve (fault, other)" in ambiguous.json()["error"]
    chosen = client.post("/v1/predict", json={"model": "other", "features": row})
    assert chosen.status_code == 200
    assert chosen.json()["model"] == "other"


def test_regression_imputes_missing_values(serve: Serve, models: Models) -> None:
    client = serve(SlotBackend(models.level))
    X = rows(2)
    X[1, 2] = np.nan
    [expected] = models.level.reference(X)

    data: list[float | None] = [*X.reshape(-1).tolist()]
    data[6 + 2] = None  # JSON null: a missing value
    body = client.post(
        "/v2/models/level/infer",
        json={"inputs": [{"name": "input", "shape": [2, 6], "datatype": "FP32", "data": data}]},
    ).json()
    [output] = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("variable", "FP32", [2, 1])
    np.testing.assert_allclose(output["data"], expected.reshape(-1), rtol=1e-5)

    row = named(X[0])
    del row["current_a"]
    predicted = client.post("/v1/predict", json={"features": row})
    assert predicted.status_code == 200, predicted.text
    [value] = predicted.json()["predictions"]
    assert isinstance(value["value"], float)


def status(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


def test_refusals(serve: Serve, models: Models) -> None:
    client = serve(SlotBackend(models.fault, models.level))
    infer = "/v2/models/fault/infer"
    good = v2_request(rows(2))
    tensor = good["inputs"][0]

    def with_tensor(**change: Any) -> dict[str, Any]:
        return {"inputs": [{**tensor, **change}]}

    cases: list[tuple[str, str, Any, int, str]] = [
        # 400: malformed requests
        ("POST", infer, b"{not json", 400, "not valid JSON"),
        ("POST", infer, b"[1, 2]", 400, "must be a JSON object"),
        (
            "POST",
            infer,
            b'{"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", '
            b'"data": [NaN, 1, 2, 3, 4, 5]}]}',
            400,
            "NaN is not JSON",
        ),
        ("POST", infer, {}, 400, '"inputs" must be a list of one input tensor'),
        ("POST", infer, {"inputs": [tensor, tensor]}, 400, "list of one input tensor"),
        ("POST", infer, {"inputs": [{"name": "input"}]}, 400, "lacks ['shape', 'datatype'"),
        ("POST", infer, with_tensor(name="x"), 400, "takes the input tensor 'input', not 'x'"),
        ("POST", infer, with_tensor(datatype="FLOAT"), 400, "'FLOAT' is not a datatype"),
        ("POST", infer, with_tensor(shape=[12]), 400, "must be [rows, features]"),
        ("POST", infer, with_tensor(shape=[3, 6]), 400, "needs 18 values but data has 12"),
        ("POST", infer, with_tensor(data=[[1.0] * 6]), 400, "has 2 rows but data has 1"),
        ("POST", infer, {**good, "id": 7}, 400, '"id" must be a string'),
        ("POST", infer, {**good, "outputs": [{"name": "x"}]}, 400, "has no outputs ['x']"),
        ("POST", "/v1/predict", {"model": "fault"}, 400, 'either "features"'),
        ("POST", "/v1/predict", {"model": 3, "rows": []}, 400, '"model" must be a string'),
        ("POST", "/v1/predict", {"model": "fault", "rows": {}}, 400, '"rows" must be a list'),
        ("POST", "/v1/predict", {"model": "fault", "features": [1]}, 400, "must be an object"),
        # 404: unknown models and routes
        ("POST", "/v2/models/nope/infer", good, 404, "no model 'nope'"),
        ("POST", "/v1/predict", {"model": "nope", "rows": []}, 404, "no model 'nope'"),
        ("GET", "/v2/nothing", None, 404, "no route /v2/nothing"),
        # 405: wrong method
        ("GET", infer, None, 405, "GET is not allowed on /v2/models/fault/infer; use POST"),
        ("POST", "/v2/health/live", {}, 405, "use GET"),
        ("DELETE", "/v2/models/fault", None, 405, "use GET"),
        # 422: inputs that do not fit the model
        ("POST", infer, with_tensor(shape=[2, 5], data=[1.0] * 10), 422, "takes 6 features"),
        ("POST", infer, with_tensor(data=["a"] * 12), 422, "must be a number, got 'a'"),
        ("POST", infer, with_tensor(data=[1e39] * 12), 422, "not a finite float32"),
        ("POST", infer, with_tensor(data=[[1.0] * 6, [1.0] * 5]), 422, "row 1: 5 values"),
        ("POST", "/v1/predict", {"model": "fault", "rows": []}, 422, "no rows"),
        ("POST", "/v1/predict", {"model": "fault", "features": {"x": 1}}, 422, "unknown feat"),
        ("POST", "/v1/predict", {"model": "fault", "features": {"rpm": 1}}, 422, "missing feat"),
    ]
    for method, path, body, expected, message in cases:
        content = body if isinstance(body, bytes) else None
        json_body = None if isinstance(body, bytes) or body is None else body
        response = client.request(method, path, content=content, json=json_body)
        code, error = status(response)
        assert (code, message in error) == (expected, True), (method, path, body, error)
        if expected == 405:
            assert response.headers["allow"] in {"GET", "POST"}
    # the server still serves after all of these, on the same client
    assert client.post(infer, json=good).status_code == 200


def test_missing_values_refused_for_a_reject_model(serve: Serve, models: Models) -> None:
    client = serve(SlotBackend(models.fault))
    data: list[float | None] = [*rows(1).reshape(-1).tolist()]
    data[3] = None
    refused = client.post(
        "/v2/models/fault/infer",
        json={"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": data}]},
    )
    assert status(refused) == (
        422,
        "row 0: pressure_bar is missing and this model does not accept missing values",
    )
    row: dict[str, float | None] = {**named(rows(1)[0]), "rpm": None}
    assert status(client.post("/v1/predict", json={"features": row}))[0] == 422


def raw_post(port: int, headers: dict[str, str]) -> tuple[int, str, str | None]:
    """A POST with exactly these headers and no body: status, error, Connection header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/v2/models/fault/infer")
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        response = conn.getresponse()
        error = httpx.Response(200, content=response.read()).json()["error"]
        return response.status, error, response.getheader("Connection")
    finally:
        conn.close()


def test_body_length_limits(models: Models) -> None:
    with InferenceServer(SlotBackend(models.fault), port=0) as server:
        assert raw_post(server.port, {"Content-Length": str(MAX_BODY_BYTES + 1)}) == (
            413,
            f"body of {MAX_BODY_BYTES + 1} bytes; at most {MAX_BODY_BYTES} per request",
            "close",
        )
        assert raw_post(server.port, {})[:2] == (411, "Content-Length is required")
        assert raw_post(server.port, {"Transfer-Encoding": "chunked"})[:2] == (
            411,
            "chunked bodies are not supported; send Content-Length",
        )
        status, error, connection = raw_post(server.port, {"Content-Length": "-3"})
        assert (status, connection) == (400, "close")
        assert error.startswith("malformed HTTP request: ") and "Content-Length" in error


def test_inference_failure_is_a_500(
    serve: Serve, models: Models, caplog: pytest.LogCaptureFixture
) -> None:
    client = serve(FailingBackend(RuntimeError("onnxruntime exploded"), models.fault))
    with caplog.at_level(logging.ERROR, logger="agent.server"):
        for _ in range(3):
            failed = client.post("/v1/predict", json={"features": named(rows(1)[0])})
            assert status(failed) == (500, "inference failed; the agent log has the details")
            assert "exploded" not in failed.text
    assert any("onnxruntime exploded" in (r.exc_text or "") for r in caplog.records)
    assert client.get("/v2/models/fault").status_code == 200


def test_model_unavailable_is_a_503(serve: Serve, models: Models) -> None:
    empty = serve(SlotBackend())
    assert status(empty.post("/v1/predict", json={"features": {}})) == (
        503,
        "no model is serving on this device",
    )
    withdrawn = serve(FailingBackend(ModelUnavailableError("fault was withdrawn"), models.fault))
    assert status(withdrawn.post("/v2/models/fault/infer", json=v2_request(rows(1)))) == (
        503,
        "fault was withdrawn",
    )


def test_keep_alive_and_stop(models: Models) -> None:
    server = InferenceServer(SlotBackend(models.fault), port=0)
    server.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/v2/health/live")
    assert conn.getresponse().read() == b'{"live":true}'
    sock = conn.sock
    for path in ("/v2/models/fault", "/v2/nothing", "/v2/health/ready"):
        conn.request("GET", path)
        conn.getresponse().read()
        assert conn.sock is sock, path  # errors keep the connection too
    # a refused POST's body is read all the same: it is not taken for the next request
    conn.request("POST", "/v2/health/live", body=b"GET /v2 HTTP/1.1\r\n\r\n")
    response = conn.getresponse()
    response.read()
    assert (response.status, response.getheader("Connection")) == (405, None)
    conn.request("GET", "/v2/health/live")
    assert conn.getresponse().read() == b'{"live":true}'
    assert conn.sock is sock
    started = time.monotonic()
    server.stop()  # with this keep-alive connection idle and open
    assert time.monotonic() - started < 2
    conn.request("GET", "/v2/health/live")  # the bytes fit the socket buffer; nobody reads
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.getresponse()
    conn.close()


class SlowBackend(SlotBackend):
    """Inference takes ``delay`` seconds; ``running`` is set when it starts."""

    def __init__(self, delay: float, *models: Model) -> None:
        super().__init__(*models)
        self.delay = delay
        self.running = threading.Event()

    def predict(
        self, name: str, X: npt.NDArray[np.float32], model: LoadedModel | None = None
    ) -> Prediction:
        self.running.set()
        time.sleep(self.delay)
        return super().predict(name, X, model)


def test_stop_lets_requests_in_flight_finish(models: Models) -> None:
    backend = SlowBackend(0.3, models.fault)
    server = InferenceServer(backend, port=0)
    server.start()
    answers: list[int] = []

    def request() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            response = client.post("/v1/predict", json={"features": named(rows(1)[0])})
            answers.append(response.status_code)

    thread = threading.Thread(target=request)
    thread.start()
    assert backend.running.wait(5)
    server.stop()
    thread.join(5)
    assert answers == [200]


def test_hot_swap_under_load(models: Models) -> None:
    backend = SlotBackend(models.fault)
    slot = backend.slots["fault"]
    versions = {1: models.fault.loaded(), 2: models.fault_v2.loaded()}
    X = rows(1)
    expected = {
        1: models.fault.reference(X)[1][0],
        2: models.fault_v2.reference(X)[1][0],
    }
    assert not np.allclose(expected[1], expected[2])  # so answers tell the versions apart
    answers: list[tuple[int, int, list[float]]] = []

    def hammer(server: InferenceServer, requests: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for _ in range(requests):
                response = client.post("/v1/predict", json={"features": named(X[0])})
                if response.status_code != 200:
                    answers.append((response.status_code, -1, []))
                    continue
                body = response.json()
                probabilities = body["predictions"][0]["probabilities"]
                answers.append((200, body["version"], list(probabilities.values())))

    with InferenceServer(backend, port=0) as server:
        threads = [threading.Thread(target=hammer, args=(server, 250)) for _ in range(2)]
        for thread in threads:
            thread.start()
        swaps = 0
        while any(thread.is_alive() for thread in threads):
            slot.activate(versions[2 if swaps % 2 == 0 else 1], None)
            swaps += 1
            time.sleep(0.002)
        for thread in threads:
            thread.join()

    assert len(answers) == 500
    assert [a for a in answers if a[0] != 200] == []
    assert {version for _, version, _ in answers} == {1, 2}
    assert swaps > 10
    for _, version, probabilities in answers:  # each answer came whole from its version
        np.testing.assert_allclose(probabilities, expected[version], atol=1e-6)


class GatedBackend(SlotBackend):
    """Inference waits for ``gate`` (set by the test); ``running`` is set when it waits.
    With ``burn_seconds``, it first computes for that much of its thread's CPU time."""

    def __init__(self, *models: Model) -> None:
        super().__init__(*models)
        self.gate = threading.Event()
        self.running = threading.Event()
        self.burn_seconds = 0.0

    def predict(
        self, name: str, X: npt.NDArray[np.float32], model: LoadedModel | None = None
    ) -> Prediction:
        until = time.thread_time() + self.burn_seconds
        while time.thread_time() < until:
            pass
        self.running.set()
        assert self.gate.wait(30)
        return super().predict(name, X, model)


def post_in_thread(url: str, answers: list[int]) -> threading.Thread:
    def post() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            answers.append(
                client.post("/v1/predict", json={"features": named(rows(1)[0])}).status_code
            )

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_a_slow_route_moves_off_the_loop_and_health_checks_go_on(models: Models) -> None:
    """The loop answers a request itself until its route proves slow (over
    OFFLOAD_AFTER_US); from then on a worker thread answers it, and the loop goes on
    answering everyone else meanwhile."""
    backend = GatedBackend(models.fault)
    answers: list[int] = []
    with InferenceServer(backend, port=0) as server:
        backend.burn_seconds = 0.01  # the route's first answer takes 10 ms of CPU: over 2 ms
        first = post_in_thread(server.url, answers)  # answered on the loop: it blocks it
        assert backend.running.wait(10)
        backend.gate.set()
        first.join(10)
        backend.gate.clear()
        backend.running.clear()
        backend.burn_seconds = 0.0
        second = post_in_thread(server.url, answers)  # now in a worker thread
        assert backend.running.wait(10)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/v2/health/live").json() == {"live": True}  # while it waits
            assert client.get("/v2/models/fault").status_code == 200
        assert second.is_alive()
        backend.gate.set()
        second.join(10)
    assert answers == [200, 200]


def read_answer(reader: Any) -> tuple[int, bytes]:
    """One HTTP answer from a socket's file: status and body."""
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, reader.read(length)


def raw_exchange(port: int, data: bytes, responses: int) -> list[tuple[int, bytes]]:
    """Send ``data`` in one write; read ``responses`` answers (status, body) in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reader = sock.makefile("rb")
        return [read_answer(reader) for _ in range(responses)]


def test_pipelined_requests_are_answered_in_order_up_to_a_malformed_one(models: Models) -> None:
    body = orjson.dumps(v2_request(rows(1)))
    requests = [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v2/models/fault/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body,
        b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",  # malformed
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",  # after it: not read
    ]
    with InferenceServer(SlotBackend(models.fault), port=0) as server:
        answers = raw_exchange(server.port, b"".join(requests), 4)
    assert [status for status, _ in answers] == [200, 200, 404, 400]
    assert orjson.loads(answers[1][1])["model_name"] == "fault"
    assert orjson.loads(answers[3][1])["error"].startswith("malformed HTTP request")


def test_expect_100_continue(models: Models) -> None:
    """curl sends a body over 1 KiB only after a 100 Continue (or a 1 s wait)."""
    body = orjson.dumps(v2_request(rows(40)))
    head = (
        b"POST /v2/models/fault/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with (
        InferenceServer(SlotBackend(models.fault), port=0) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(20).startswith(b"HTTP/1.1 200 OK")


def test_headers_are_bounded(models: Models) -> None:
    huge = b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n"
    with InferenceServer(SlotBackend(models.fault), port=0) as server:
        [(status, body)] = raw_exchange(
            server.port, b"GET /v2/health/live HTTP/1.1\r\n" + huge + b"\r\n", 1
        )
    assert (status, orjson.loads(body)["error"]) == (431, f"headers over {MAX_HEAD_BYTES} bytes")


def test_connections_are_bounded_and_idle_ones_closed(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.server, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(agent.server, "IDLE_TIMEOUT_S", 0.5)
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with InferenceServer(SlotBackend(models.fault), port=0) as server:
        kept = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
        try:
            for sock in kept:  # each is accepted and answered
                sock.sendall(live)
                assert read_answer(sock.makefile("rb"))[0] == 200
            [(status, body)] = raw_exchange(server.port, live, 1)  # the fourth
            assert (status, orjson.loads(body)["error"]) == (
                503,
                "over 3 connections; try again later",
            )
            for sock in kept:  # idle past the timeout: closed by the server (EOF)
                assert sock.recv(100) == b""
        finally:
            for sock in kept:
                sock.close()


class FakeTransport(asyncio.Transport):
    """What a connection writes, and whether it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def test_reading_resumes_after_a_worker_answers_whatever_writes_did_meanwhile(
    models: Models,
) -> None:
    """A connection stops reading while a worker answers its request, and while its client
    does not read its answers; when both are over, it reads again, in whichever order they
    ended."""
    backend = GatedBackend(models.fault)

    async def scenario() -> None:
        router = agent.server._Router(backend, backend.model_names, None)
        connection = agent.server._Connection(router)
        transport = FakeTransport()
        connection.connection_made(transport)
        body = orjson.dumps({"features": named(rows(1)[0])})
        request = b"POST /v1/predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        router._cost_us[b"/v1/predict"] = 10 * agent.server.OFFLOAD_AFTER_US  # a slow route
        connection.data_received(request)
        assert not transport.reading  # a worker answers it
        connection.pause_writing()
        connection.resume_writing()  # the client read its answers meanwhile
        assert not transport.reading
        backend.gate.set()
        while b"200 OK" not in transport.written:
            await asyncio.sleep(0.01)
        assert transport.reading
        router.shut_down()

    asyncio.run(asyncio.wait_for(scenario(), 30))
