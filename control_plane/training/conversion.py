"""ONNX export with skl2onnx, and running the export on validation rows (sessions come from
``agent.inference``, the code devices use)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from agent.inference import Outputs
from control_plane.errors import JobFailedError
from shared.manifest import Task

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "input"


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


def run_onnx(session: Any, X: npt.NDArray[np.float32], task: Task) -> Outputs:
    outputs = session.run(None, {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})
    if task == "classification":
        return Outputs(
            values=np.asarray(outputs[1], dtype=np.float32),
            labels=np.asarray(outputs[0], dtype=np.int64),
        )
    return Outputs(values=np.asarray(outputs[0], dtype=np.float32).reshape(-1), labels=None)


def opset_of(model_bytes: bytes) -> dict[str, int]:
    import onnx

    proto = onnx.load_model_from_string(model_bytes)
    return {entry.domain: int(entry.version) for entry in proto.opset_import}
