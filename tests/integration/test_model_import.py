"""Importing an ONNX model trained elsewhere: it ends signed and registered like a trained
version (checked by the device's own verification), and every upload a device could not
run as that model is refused with the reason before anything is stored."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from agent.inference import load_model
from control_plane.auth.keys import load_keys
from shared.hashing import sha256_bytes
from shared.manifest import ModelManifest
from shared.verification import check_artifact
from simulator.data import CLASSES, FEATURES, sensor_csv, sensor_rows
from tests.factories import trained_elsewhere
from tests.integration.conftest import Api, MakeApi

pytestmark = pytest.mark.integration


def graph_model(nodes: list[Any], inputs: list[Any], outputs: list[Any], **kw: Any) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=kw.pop("init", []))
    opsets = kw.pop("opsets", [helper.make_opsetid("", 17)])
    return helper.make_model(graph, opset_imports=opsets, **kw).SerializeToString()  # type: ignore[no-any-return]


def importing(api: Api, data: bytes, dataset_id: int, **params: Any) -> Any:
    return api.post(
        "/models/fault/import",
        params={"dataset_id": dataset_id, "filename": "model.onnx", **params},
        content=data,
        headers={**api.auth(), "Content-Type": "application/octet-stream"},
    )


@pytest.fixture
def dataset(api: Api) -> dict[str, Any]:
    response = api.upload(sensor_csv(300, seed=1))
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_an_onnx_model_from_elsewhere_becomes_a_signed_version(
    api: Api, dataset: dict[str, Any], tmp_path: Path
) -> None:
    data = trained_elsewhere()
    # Its class indices are simulator.data's order, not the dataset's sorted one: said so.
    response = importing(api, data, dataset["id"], classes=CLASSES)
    assert response.status_code == 202, response.text
    assert response.json()["kind"] == "import"
    job = api.wait_job(response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    version = api.get(f"/models/fault/versions/{job['result_version']}").json()
    manifest = ModelManifest.model_validate_json(json.dumps(version["manifest"]))
    assert version["algorithm"] == "onnx"
    assert version["sha256"] == sha256_bytes(data)  # the bytes devices get are the upload
    source = manifest.lineage.source
    assert source is not None
    assert (source.format, source.sha256, source.filename) == (
        "onnx",
        sha256_bytes(data),
        "model.onnx",
    )
    assert manifest.lineage.dataset_id == dataset["id"]
    assert manifest.lineage.metrics["accuracy"] > 0.7  # measured on the reference rows
    assert manifest.output.classes == CLASSES
    assert manifest.input.features == FEATURES
    # What a device does before serving it: signature, sha256 and size, then loading with
    # its inputs and outputs checked and the golden vectors reproduced.
    artifact = api.client.get(version["artifact_url"], headers=api.auth()).content
    manifest.verify_signature(load_keys(api.settings.keys_dir).model.verify_key)
    check_artifact(manifest, sha256_bytes(artifact), len(artifact))
    path = tmp_path / "model.onnx"
    path.write_bytes(artifact)
    served = load_model(path, manifest)
    X, _ = sensor_rows(20, seed=5)
    assert served.run(X.astype(np.float32)).labels is not None


def _custom_op() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])
    node = helper.make_node("Secret", ["x"], ["y"], domain="com.example")
    return graph_model(
        [node],
        [x],
        [y],
        opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )


def _loop() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [None, 6]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [None, 6]),
        ],
    )
    node = helper.make_node("Loop", ["", "", "x"], ["y"], body=body)
    return graph_model([node], [x], [y])


def _future_opset() -> bytes:
    """Opset 99: valid ONNX, but no onnxruntime a device has can run it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])
    node = helper.make_node("Identity", ["x"], ["y"])
    return graph_model([node], [x], [y], opsets=[helper.make_opsetid("", 99)])


def _fixed_batch() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [1])
    p = helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3])
    nodes = [
        helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0),
        helper.make_node("Slice", ["x", "s", "e", "a"], ["p"]),
    ]
    init = [
        helper.make_tensor("s", TensorProto.INT64, [1], [0]),
        helper.make_tensor("e", TensorProto.INT64, [1], [3]),
        helper.make_tensor("a", TensorProto.INT64, [1], [1]),
    ]
    return graph_model(nodes, [x], [y, p], init=init)


@pytest.mark.parametrize(
    ("make", "code", "text"),
    [
        (lambda: b"\x00\x01 not a model", "not_onnx", "not an ONNX model"),
        (lambda: pickle.dumps({"a": 1}), "not_onnx", "not an ONNX model"),
        (_custom_op, "custom_op", "custom operator domain 'com.example'"),
        (_loop, "loop", "the graph loops (Loop)"),
        (_future_opset, "unsupported", "onnxruntime cannot load it"),
        (_fixed_batch, "input_mismatch", "fixed batch size 1"),
        (lambda: trained_elsewhere(features=4), "input_mismatch", "takes 4 features"),
        (lambda: trained_elsewhere(zipmap=True), "output_mismatch", "zipmap=False"),
    ],
    ids=["bytes", "pickle", "custom-op", "loop", "opset", "fixed-batch", "features", "zipmap"],
)
def test_uploads_a_device_could_not_run_are_refused_before_anything_is_stored(
    api: Api, dataset: dict[str, Any], make: Any, code: str, text: str
) -> None:
    blobs = api.blob_files()
    response = importing(api, make(), dataset["id"])
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body"]
    assert detail["type"] == code
    assert text in detail["msg"]
    assert api.blob_files() == blobs
    assert api.get("/jobs").json() == []
    assert api.get("/models").json() == []


def test_import_refusals_of_the_request(make_api: MakeApi) -> None:
    api = make_api(max_import_bytes=10_000)
    dataset = api.upload(sensor_csv(300, seed=1)).json()
    regression = api.upload(
        "a,b,c,d,e,f,y\n" + "".join(f"{i},1,2,3,4,5,{i * 0.5}\n" for i in range(150)),
        name="r",
        label="y",
    ).json()
    data = trained_elsewhere()
    assert len(data) < 10_000
    cases = [
        (importing(api, data, 999), 422, ["query", "dataset_id"], "no dataset 999"),
        (importing(api, b"x" * 10_001, dataset["id"]), 413, ["body"], "the cap is 10000"),
        (
            importing(api, data, regression["id"], task="classification"),
            422,
            ["query", "task"],
            "classification needs",
        ),
        (
            importing(api, data, dataset["id"], classes=[*CLASSES[:3], "other"]),
            422,
            ["query", "classes"],
            "are not the reference dataset's",
        ),
    ]
    for response, status, loc, text in cases:
        assert response.status_code == status, response.text
        detail = response.json()["detail"][0]
        assert (detail["loc"], text in detail["msg"]) == (loc, True), detail
    assert api.get("/jobs").json() == []


def test_a_model_whose_classes_do_not_fit_fails_and_leaves_nothing(
    api: Api, dataset: dict[str, Any]
) -> None:
    """Class indices beyond the dataset's classes are only seen when the model runs: the
    job fails with the reason and the stored upload is removed."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    probabilities = helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 4])
    nodes = [
        helper.make_node("Slice", ["x", "s", "e", "a"], ["p"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Expand", ["seven", "n1"], ["label"]),
    ]
    init = [
        helper.make_tensor("s", TensorProto.INT64, [1], [0]),
        helper.make_tensor("e", TensorProto.INT64, [1], [4]),
        helper.make_tensor("a", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.INT64, [], [0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
        helper.make_tensor("seven", TensorProto.INT64, [], [7]),
    ]
    blobs = api.blob_files()
    response = importing(
        api, graph_model(nodes, [x], [label, probabilities], init=init), dataset["id"]
    )
    assert response.status_code == 202, response.text
    job = api.wait_job(response.json()["id"])
    assert job["status"] == "failed"
    assert "predicts class index 7" in job["error"]
    assert api.blob_files() == blobs
    assert api.get("/models").json() == []


def _sklearn_model() -> tuple[bytes, list[str] | None]:
    """A pipeline fitted on the class names: skops keeps them, so no order is given."""
    import skops.io
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = sensor_rows(400, seed=4)
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=10, random_state=0))
    model.fit(X.astype(np.float32), np.asarray(CLASSES)[y])
    return skops.io.dumps(model), None


def _xgboost_model() -> tuple[bytes, list[str] | None]:
    import xgboost

    X, y = sensor_rows(400, seed=4)
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(X.astype(np.float32), y)
    return bytes(model.get_booster().save_raw("json")), CLASSES


def _lightgbm_model() -> tuple[bytes, list[str] | None]:
    import lightgbm

    X, y = sensor_rows(400, seed=4)
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(X.astype(np.float32), y)
    return model.booster_.model_to_string().encode(), CLASSES


@pytest.mark.parametrize(
    ("fmt", "make"),
    [("sklearn", _sklearn_model), ("xgboost", _xgboost_model), ("lightgbm", _lightgbm_model)],
)
def test_other_formats_are_converted_and_pass_the_parity_gate(
    api: Api, dataset: dict[str, Any], tmp_path: Path, fmt: str, make: Any
) -> None:
    data, classes = make()
    params: dict[str, Any] = {"format": fmt}
    if classes:
        params["classes"] = classes
    response = importing(api, data, dataset["id"], **params)
    assert response.status_code == 202, response.text
    job = api.wait_job(response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    version = api.get(f"/models/fault/versions/{job['result_version']}").json()
    manifest = ModelManifest.model_validate_json(json.dumps(version["manifest"]))
    assert version["algorithm"] == fmt
    source = manifest.lineage.source
    assert source is not None and (source.format, source.sha256) == (fmt, sha256_bytes(data))
    parity = manifest.lineage.parity
    assert parity.rows == dataset["rows"] and parity.max_abs_diff <= parity.atol
    assert manifest.lineage.metrics["accuracy"] > 0.7
    # Devices get the conversion; the upload itself is not kept.
    assert {p.name for p in api.blob_files()} >= {version["sha256"]}
    assert not any(p.name == sha256_bytes(data) for p in api.blob_files())
    path = tmp_path / "model.onnx"
    path.write_bytes(api.client.get(version["artifact_url"], headers=api.auth()).content)
    X, _ = sensor_rows(20, seed=5)
    assert load_model(path, manifest).run(X.astype(np.float32)).labels is not None


def _untrusted_skops() -> bytes:
    """A transformer whose function would run on the inputs: numpy.load is not trusted."""
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    return skops.io.dumps(make_pipeline(FunctionTransformer(np.load), LogisticRegression()))  # type: ignore[no-any-return]


def _tampered_tree() -> bytes:
    """A fitted forest whose first tree's root points far outside the tree: predict would
    read out of bounds (scikit-learn does not check), so it must never run."""
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    X, y = sensor_rows(200, seed=4)
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    tree = model.estimators_[0].tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    nodes["left_child"][0] = 10**6
    tree.__setstate__({**state, "nodes": nodes})
    return skops.io.dumps(model)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fmt", "make", "code", "text"),
    [
        ("sklearn", lambda: pickle.dumps([1, 2]), "not_skops", "pickles are never loaded"),
        ("sklearn", _untrusted_skops, "untrusted_types", "untrusted types in the file: numpy.load"),
        ("sklearn", _tampered_tree, "bad_tree", "nodes that point outside it"),
        ("xgboost", lambda: b"{not json", "not_xgboost", "not an XGBoost model"),
        ("lightgbm", lambda: b"\xff\xfe", "not_lightgbm", "not a LightGBM model"),
        ("xgboost", lambda: _xgboost_model()[0], "task_mismatch", "not regression"),
    ],
    ids=["pickle", "untrusted", "tampered-tree", "xgboost", "lightgbm", "task"],
)
def test_other_formats_that_are_not_safe_or_do_not_fit_are_refused(
    api: Api, fmt: str, make: Any, code: str, text: str
) -> None:
    regression = "a,b,c,d,e,f,y\n" + "".join(f"{i},1,2,3,4,5,{i * 0.5}\n" for i in range(50))
    task = "regression" if code == "task_mismatch" else "classification"
    if task == "regression":
        dataset_id = api.upload(regression, name="r", label="y").json()["id"]
    else:
        dataset_id = api.upload(sensor_csv(300, seed=1)).json()["id"]
    blobs = api.blob_files()
    response = importing(api, make(), dataset_id, format=fmt, task=task)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert (detail["type"], detail["loc"]) == (code, ["body"])
    assert text in detail["msg"]
    assert api.blob_files() == blobs
    assert api.get("/jobs").json() == []


def test_a_conversion_that_fails_the_parity_gate_is_refused_with_the_difference(
    make_api: MakeApi,
) -> None:
    """onnxruntime's float32 trees differ from XGBoost's by ~1e-7: under a tolerance of
    1e-12 that is a failed parity gate, refused with the measured difference."""
    api = make_api(parity_atol=1e-12)
    dataset = api.upload(sensor_csv(300, seed=1)).json()
    blobs = api.blob_files()
    data, classes = _xgboost_model()
    response = importing(api, data, dataset["id"], format="xgboost", classes=classes)
    assert response.status_code == 202, response.text
    job = api.wait_job(response.json()["id"])
    assert job["status"] == "failed"
    assert "parity gate: xgboost and onnxruntime differ by" in job["error"]
    assert "tolerance 1e-12" in job["error"]
    assert api.blob_files() == blobs
    assert api.get("/models").json() == []
