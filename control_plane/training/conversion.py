"""ONNX export with skl2onnx, and running the export on validation rows (sessions come from
``agent.inference``, the code devices use)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.inference import Decoder, Outputs, describe, run
from control_plane.errors import JobFailedError
from shared.manifest import OutputSchema, Task, TensorSpec

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "input"


@cache
def _register_boosters() -> None:
    """skl2onnx converts XGBoost and LightGBM estimators inside a pipeline with
    onnxmltools' converters, once they are registered (as skl2onnx documents)."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBClassifier, XGBRegressor

    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    for estimator, convert in (
        (XGBClassifier, convert_xgboost),
        (LGBMClassifier, convert_lightgbm),
    ):
        update_registered_converter(
            estimator,
            f"edgefleet{estimator.__name__}",
            calculate_linear_classifier_output_shapes,
            convert,
            options=options,
        )
    regressors = ((XGBRegressor, convert_xgboost), (LGBMRegressor, convert_lightgbm))
    for estimator, convert in regressors:
        update_registered_converter(
            estimator,
            f"edgefleet{estimator.__name__}",
            calculate_linear_regressor_output_shapes,
            convert,
            options={"split": None} if estimator is LGBMRegressor else None,
        )


def export_onnx(pipeline: Any, n_features: int, task: Task) -> bytes:
    """Convert a fitted pipeline: float32 input ``[None, n_features]``, plain tensor outputs
    (``zipmap=False``: ~10% faster than a list of dicts and a fixed output shape)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    _register_boosters()

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


def output_schema(task: Task, outputs: list[TensorSpec], classes: list[str]) -> OutputSchema:
    """The output schema of an export: skl2onnx names the label output first and the
    probabilities second for a classifier, the value first for a regressor."""
    classification = task == "classification"
    return OutputSchema(
        task=task,
        outputs=outputs,
        classes=classes,
        label_output=outputs[0].name if classification else None,
        probabilities_output=outputs[1].name if classification else None,
        value_output=outputs[0].name if not classification else None,
    )


def run_onnx(session: Any, X: npt.NDArray[np.float32], task: Task) -> Outputs:
    """An exported model on rows, decoded by the device's own ``agent.inference.Decoder``."""
    inputs, outputs = describe(session)
    decoder = Decoder.of(output_schema(task, outputs, classes=[]))
    return run(session, inputs[0].name, decoder, np.ascontiguousarray(X, dtype=np.float32))


def opset_of(model_bytes: bytes) -> dict[str, int]:
    import onnx

    proto = onnx.load_model_from_string(model_bytes)
    return {entry.domain: int(entry.version) for entry in proto.opset_import}
