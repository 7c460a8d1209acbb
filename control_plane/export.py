"""ONNX export with skl2onnx and running the result with onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from control_plane.errors import JobFailedError
from shared.manifest import Task, TensorSpec

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "input"
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(string)": "string",
}


@dataclass(frozen=True)
class OnnxOutputs:
    """``values``: probabilities ``[n, classes]`` (classification) or predictions ``[n]``;
    ``labels``: class indices (classification only)."""

    values: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64] | None


def export_onnx(pipeline: Any, n_features: int, task: Task) -> bytes:
    """Convert a fitted pipeline: float32 input ``[None, n_features]``, plain tensor outputs
    (``zipmap=False``: ~10% faster than a list of dicts and a fixed output shape)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(pipeline.steps[-1][1]): {"zipmap": False}} if task == "classification" else None
    try:
        proto = convert_sklearn(
            pipeline,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options=options,
            target_opset=TARGET_OPSET,
        )
    except Exception as exc:  # skl2onnx raises many types; the job reports the message
        raise JobFailedError(
            f"ONNX export failed: {type(exc).__name__}: {exc}", code="export_failed"
        ) from exc
    proto.producer_name = "edgefleet"
    return proto.SerializeToString()  # type: ignore[no-any-return]


def session_for(model_bytes: bytes, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )


def describe(session: Any) -> tuple[TensorSpec, list[TensorSpec]]:
    def spec(node: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) else None for d in node.shape]
        return TensorSpec(name=node.name, dtype=_DTYPES.get(node.type, "float32"), shape=shape)

    return spec(session.get_inputs()[0]), [spec(o) for o in session.get_outputs()]


def run_onnx(session: Any, X: npt.NDArray[np.float32], task: Task) -> OnnxOutputs:
    outputs = session.run(None, {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})
    if task == "classification":
        return OnnxOutputs(
            values=np.asarray(outputs[1], dtype=np.float32),
            labels=np.asarray(outputs[0], dtype=np.int64),
        )
    return OnnxOutputs(values=np.asarray(outputs[0], dtype=np.float32).reshape(-1), labels=None)


def opset_of(model_bytes: bytes) -> dict[str, int]:
    import onnx

    proto = onnx.load_model_from_string(model_bytes)
    return {entry.domain: int(entry.version) for entry in proto.opset_import}
