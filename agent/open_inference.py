"""The Open Inference Protocol's REST shapes (v2, as KServe's ``required_api.md`` defines
them) for the agent's models: parsing an inference request into the float32 rows a model
takes, and the server metadata, model metadata and inference response documents.

No HTTP here: a request that is malformed raises ``RequestError`` (the server answers 400),
one that does not fit the model raises ``InputError`` (422).

Datatypes: every model takes one FP32 tensor [rows, features]. FP32 and FP64 data are
numbers, ``null`` marking a missing value (accepted only by models that impute); INT8…INT64
and UINT8…UINT64 data are integers within their datatype's range; BOOL data are ``true`` /
``false`` (1.0 / 0.0). All are converted to float32; a value outside float32's range is
refused. Integer and BOOL tensors have no missing values. BYTES and FP16 are refused: text
is not a feature value, and FP16 has no JSON form (the protocol says so itself).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import numpy as np
import numpy.typing as npt

from agent.errors import AgentError
from agent.inference import InputError, LoadedModel, Outputs
from agent.slot import Prediction
from shared.manifest import ModelManifest, OutputSchema

PLATFORM = "onnxruntime_onnx"
DATATYPES = (
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
)
_FLOAT_DATATYPES = frozenset({"FP32", "FP64"})
_INTEGER_RANGES = {
    **{f"INT{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": (0, 2**bits - 1) for bits in (8, 16, 32, 64)},
}
_REFUSED_DATATYPES = {
    "BYTES": "input datatype BYTES cannot be converted to the model's FP32 input; send the "
    "features as numbers (FP32, FP64, INT*, UINT* or BOOL)",
    "FP16": "input datatype FP16 has no JSON representation; send FP32",
}
_DTYPE_NAMES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "string": "BYTES"}


class RequestError(AgentError, ValueError):
    """An inference request that is malformed, whatever the model (a 400)."""


class ServerMetadata(TypedDict):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class ModelParameters(TypedDict):
    """Ours, beyond the protocol: what a client needs to build rows and read answers."""

    features: list[str]
    nan_policy: str
    task: str
    classes: list[str]
    sha256: str


class ModelMetadata(TypedDict):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: ModelParameters


class ResponseOutput(TypedDict):
    """``data``: a numpy array, written by orjson as a flat JSON list (NaN as null)."""

    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[np.float32] | npt.NDArray[np.int64]


class InferenceResponse(TypedDict):
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, str]
    outputs: list[ResponseOutput]


def server_metadata(version: str) -> ServerMetadata:
    """``GET /v2``: no protocol extensions."""
    return {"name": "edgefleet", "version": version, "extensions": []}


def model_metadata(model: LoadedModel) -> ModelMetadata:
    """``GET /v2/models/{name}``: the serving version (the only one that may be asked for)."""
    manifest = model.manifest
    tensor = manifest.input.tensor
    return {
        "name": manifest.name,
        "versions": [str(manifest.version)],
        "platform": PLATFORM,
        "inputs": [
            {
                "name": tensor.name,
                "datatype": _DTYPE_NAMES[tensor.dtype],
                "shape": [-1, len(manifest.input.features)],
            }
        ],
        "outputs": [
            {
                "name": spec.name,
                "datatype": _DTYPE_NAMES[spec.dtype],
                "shape": [-1 if d is None else d for d in spec.shape],
            }
            for spec in manifest.output.outputs
        ],
        "parameters": {
            "features": manifest.input.features,
            "nan_policy": manifest.input.nan_policy,
            "task": manifest.output.task,
            "classes": manifest.output.classes,
            "sha256": manifest.sha256,
        },
    }


@dataclass(frozen=True)
class InferenceRequest:
    """A v2 inference request, checked for structure; the checks against a model (tensor
    name, outputs, feature count, datatype, values) happen in ``rows``, against the version
    that serves. ``parameters`` (of the request, its input and its outputs) are accepted and
    ignored: the protocol defines none, and we define none."""

    id: str | None
    outputs: list[str] | None  # in the order asked for
    name: str
    datatype: str
    shape: tuple[int, int]
    data: list[Any]

    @classmethod
    def parse(cls, body: Mapping[str, object]) -> InferenceRequest:
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise RequestError('"id" must be a string')
        _check_parameters(body, "the request")
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise RequestError('"inputs" must be a list of one input tensor')
        name, datatype, shape, data = _parse_input(inputs[0])
        return cls(request_id, _parse_outputs(body.get("outputs")), name, datatype, shape, data)

    def rows(self, model: LoadedModel) -> npt.NDArray[np.float32]:
        """The float32 batch for ``model``, checked against its input tensor, features and
        outputs."""
        spec = model.manifest.input
        if self.outputs is not None:
            unknown = sorted(set(self.outputs) - set(output_names(model.manifest.output)))
            if unknown:
                raise RequestError(f"model {model.name!r} has no outputs {unknown}")
        if self.name != spec.tensor.name:
            raise RequestError(
                f"model {model.name!r} takes the input tensor {spec.tensor.name!r}, "
                f"not {self.name!r}"
            )
        n, width = self.shape
        if width != len(spec.features):
            raise InputError(
                f"shape {[n, width]}: the model takes {len(spec.features)} features "
                f"({', '.join(spec.features)})"
            )
        data = self.data
        if not (data and isinstance(data[0], list)):
            if self.datatype in _FLOAT_DATATYPES:
                return model.rows_from_flat(data, n)
            data = [data[i * width : (i + 1) * width] for i in range(n)]
        return model.rows_from_lists(_as_numbers(self.datatype, data, spec.features))

    def response(self, prediction: Prediction) -> InferenceResponse:
        """The inference response: the outputs asked for, in the order asked for (default:
        all, in the model's order)."""
        manifest = prediction.model.manifest
        tensors = output_tensors(manifest, prediction.outputs)
        if self.outputs is not None:
            by_name = {tensor["name"]: tensor for tensor in tensors}
            tensors = [by_name[name] for name in self.outputs]
        return {
            "model_name": manifest.name,
            "model_version": str(manifest.version),
            "id": self.id if self.id is not None else prediction.request_id,
            "parameters": {"request_id": prediction.request_id},
            "outputs": tensors,
        }


def _check_parameters(holder: Mapping[str, object], what: str) -> None:
    parameters = holder.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestError(f'"parameters" of {what} must be an object')


def _parse_input(tensor: Mapping[str, object]) -> tuple[str, str, tuple[int, int], list[Any]]:
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise RequestError(f"the input tensor lacks {missing}")
    name, shape, datatype, data = (tensor[k] for k in ("name", "shape", "datatype", "data"))
    if not isinstance(name, str):
        raise RequestError("the input tensor's name must be a string")
    if datatype not in DATATYPES:
        raise RequestError(
            f"input datatype {datatype!r} is not a datatype of the protocol "
            f"({', '.join(DATATYPES)})"
        )
    assert isinstance(datatype, str)
    _check_parameters(tensor, "the input tensor")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    ):
        raise RequestError(f"input shape {shape!r} must be [rows, features]")
    if not isinstance(data, list):
        raise RequestError("input data must be a list")
    n, width = shape
    nested = bool(data) and isinstance(data[0], list)
    if nested and len(data) != n:
        raise RequestError(f"shape {shape} has {n} rows but data has {len(data)}")
    if not nested and len(data) != n * width:
        raise RequestError(f"shape {shape} needs {n * width} values but data has {len(data)}")
    return name, datatype, (n, width), data


def _parse_outputs(outputs: object) -> list[str] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise RequestError('"outputs" must be a list of {"name": ...} objects')
    names: list[str] = []
    for output in outputs:
        _check_parameters(output, f"output {output['name']!r}")
        if output["name"] in names:
            raise RequestError(f"output {output['name']!r} is asked for twice")
        names.append(output["name"])
    return names


def _as_numbers(datatype: str, rows: list[Any], features: Sequence[str]) -> list[Any]:
    """Rows of numbers (or ``None``) for ``LoadedModel.rows_from_lists``, which checks the
    count, float32 range and NaN policy. Integer and BOOL values are checked against their
    datatype here; a row that is not a list of the right length goes through unchanged, for
    ``rows_from_lists`` to name what is wrong with it."""
    if datatype in _FLOAT_DATATYPES:
        return rows
    refused = _REFUSED_DATATYPES.get(datatype)
    if refused is not None:
        raise InputError(refused)
    converted: list[Any] = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(features):
            converted.append(row)
            continue
        converted.append([_number(datatype, v, i, f) for v, f in zip(row, features, strict=True)])
    return converted


def _number(datatype: str, value: object, row: int, feature: str) -> int | float:
    if value is None:
        raise InputError(
            f"row {row}: {feature} is null; {datatype} data has no missing values "
            "(send FP32 or FP64 with null)"
        )
    if datatype == "BOOL":
        if type(value) is not bool:
            raise InputError(f"row {row}: {feature} must be true or false (BOOL), got {value!r}")
        return 1.0 if value else 0.0
    low, high = _INTEGER_RANGES[datatype]
    if type(value) is not int:  # floats and bools are not integers here
        raise InputError(f"row {row}: {feature} must be an integer ({datatype}), got {value!r}")
    if not low <= value <= high:
        raise InputError(f"row {row}: {feature}={value} is out of {datatype}'s range")
    return value


def output_names(output: OutputSchema) -> list[str]:
    """The outputs an inference answers, in the manifest's order."""
    if output.task == "regression":
        return [output.value_output or output.outputs[0].name]
    answered = {output.label_output or "label", output.probabilities_output or "probabilities"}
    return [o.name for o in output.outputs if o.name in answered]


def output_tensors(manifest: ModelManifest, outputs: Outputs) -> list[ResponseOutput]:
    """Every output the model answers, in the manifest's order, data flattened row-major
    (numpy arrays: the server writes them with orjson, NaN and infinities as null)."""
    spec = manifest.output
    n = int(outputs.values.shape[0])
    if spec.task == "regression":
        name = spec.value_output or spec.outputs[0].name
        values = np.ascontiguousarray(outputs.values.reshape(-1))
        return [{"name": name, "datatype": "FP32", "shape": [n, 1], "data": values}]
    assert outputs.labels is not None  # LoadedModel.run gives labels for classification
    label_name = spec.label_output or "label"
    proba_name = spec.probabilities_output or "probabilities"
    tensors: dict[str, ResponseOutput] = {
        label_name: {
            "name": label_name,
            "datatype": "INT64",
            "shape": [n],
            "data": np.ascontiguousarray(outputs.labels.reshape(-1)),
        },
        proba_name: {
            "name": proba_name,
            "datatype": "FP32",
            "shape": [n, int(outputs.values.shape[1])],
            "data": np.ascontiguousarray(outputs.values.reshape(-1)),
        },
    }
    return [tensors[name] for name in output_names(spec)]


def json_floats(values: npt.NDArray[np.float32]) -> list[float | None]:
    """Flattened row-major; NaN and infinities become null (JSON has no such numbers)."""
    flat = cast(list[float | None], values.reshape(-1).tolist())
    if np.isfinite(values).all():
        return flat
    return [v if v is not None and math.isfinite(v) else None for v in flat]
