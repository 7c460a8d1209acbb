"""Loading a verified ONNX model and running it: input validation against the manifest,
onnxruntime sessions, and the handful of checks done before a model may serve."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from agent.errors import AgentError
from agent.verify import check_golden, check_io, golden_inputs
from shared.errors import VerificationError
from shared.manifest import ModelManifest, OutputSchema, TensorSpec

MAX_BATCH_ROWS = 10_000
FLOAT32_MAX = float(np.finfo(np.float32).max)
_PLAIN_NUMBERS = frozenset({float, int})  # not bool (a subclass of int), not str
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(string)": "string",
}


Rows = Sequence[Sequence[float | None]] | npt.NDArray[Any]  # positional rows


class InputError(AgentError, ValueError):
    """A request's inputs do not fit the model's schema (a 4xx, not a model failure)."""


def session_for(model: bytes | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session; one intra-op thread suits single rows (more only help big tree batches)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def describe(session: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The session's inputs and outputs as manifest tensor specs."""

    def spec(node: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) else None for d in node.shape]
        return TensorSpec(name=node.name, dtype=_DTYPES.get(node.type, node.type), shape=shape)

    return [spec(i) for i in session.get_inputs()], [spec(o) for o in session.get_outputs()]


@dataclass(slots=True)
class Outputs:
    """``values``: probabilities [n, classes] or predicted values [n]; ``labels``: class
    indices (classification)."""

    values: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64] | None


@dataclass(frozen=True)
class Decoder:
    """How one model's raw outputs become ``Outputs``: which output holds the class indices
    and which the probabilities (positions found once, not per request). The device serves
    with it and the control plane checks an export with it: one reading of a model's
    outputs everywhere."""

    task: str
    label: int
    probabilities: int

    @classmethod
    def of(cls, output: OutputSchema) -> Decoder:
        names = [o.name for o in output.outputs]
        if output.task != "classification":
            return cls(output.task, 0, 0)
        return cls(
            output.task,
            names.index(output.label_output or "label"),
            names.index(output.probabilities_output or "probabilities"),
        )

    def __call__(self, raw: Sequence[Any]) -> Outputs:
        if self.task == "classification":
            return Outputs(
                values=np.asarray(raw[self.probabilities], dtype=np.float32),
                labels=np.asarray(raw[self.label], dtype=np.int64),
            )
        return Outputs(values=np.asarray(raw[0], dtype=np.float32).reshape(-1), labels=None)


def run(
    session: ort.InferenceSession, input_name: str, decoder: Decoder, X: npt.NDArray[np.float32]
) -> Outputs:
    """``X`` through the model, decoded."""
    return decoder(session.run(None, {input_name: X}))


@dataclass(frozen=True)
class LoadedModel:
    """A verified model ready to serve. Immutable: a swap replaces the whole object, so a
    request that started on one version finishes on it."""

    manifest: ModelManifest
    session: ort.InferenceSession

    @property
    def name(self) -> str:
        return self.manifest.name

    @cached_property
    def _decoder(self) -> Decoder:
        return Decoder.of(self.manifest.output)

    @cached_property
    def _call(self) -> Callable[[npt.NDArray[np.float32]], Outputs]:
        """``run``, with what it needs looked up once. It calls onnxruntime's binding
        directly where it can: ``InferenceSession.run`` checks the feed's names and the
        session's state in Python on every call (~2 µs of a 7 µs single-row run), and the
        feed was checked against the model when it loaded."""
        session, name, decoder = self.session, self.manifest.input.tensor.name, self._decoder
        outputs = [o.name for o in session.get_outputs()]
        binding = getattr(session, "_sess", None)
        if binding is None:  # not an onnxruntime version we know: its public API
            return lambda X: decoder(session.run(outputs, {name: X}))
        call = binding.run
        return lambda X: decoder(call(outputs, {name: X}, None))

    def run(self, X: npt.NDArray[np.float32]) -> Outputs:
        return self._call(X)

    def rows_from_lists(self, rows: Rows) -> npt.NDArray[np.float32]:
        """Validate positional rows against the schema: count, numbers, NaN policy."""
        features = self.manifest.input.features
        if len(rows) == 0:
            raise InputError("no rows")
        if len(rows) > MAX_BATCH_ROWS:
            raise InputError(f"{len(rows)} rows; at most {MAX_BATCH_ROWS} per request")
        fast = _bulk_rows(rows, len(features))
        if fast is not None:
            return fast
        out = np.empty((len(rows), len(features)), dtype=np.float32)
        for i, row in enumerate(rows):
            if not isinstance(row, Sequence) or isinstance(row, str | bytes):
                raise InputError(f"row {i}: a list of {len(features)} numbers is expected")
            if len(row) != len(features):
                raise InputError(
                    f"row {i}: {len(row)} values; the model takes {len(features)} "
                    f"({', '.join(features)})"
                )
            for j, value in enumerate(row):
                out[i, j] = self._number(value, i, features[j])
        return out

    def rows_from_flat(self, values: list[Any], n: int) -> npt.NDArray[np.float32]:
        """``n`` rows given row-major in one flat list (the v2 protocol's data)."""
        width = len(self.manifest.input.features)
        if (
            0 < n <= MAX_BATCH_ROWS
            and len(values) == n * width
            and _PLAIN_NUMBERS.issuperset(map(type, values))
        ):
            with contextlib.suppress(OverflowError):  # an int past float64: the slow path
                X = _float32_rows(np.asarray(values, dtype=np.float64).reshape(n, width))
                if X is not None:
                    return X
        return self.rows_from_lists([values[i * width : (i + 1) * width] for i in range(n)])

    def rows_from_named(self, rows: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float32]:
        """Validate rows given as {feature: value}: every feature present, none unknown."""
        features = self.manifest.input.features
        known = set(features)
        lists: list[list[float | None]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise InputError(f"row {i}: an object of feature values is expected")
            unknown = sorted(set(row) - known)
            if unknown:
                raise InputError(f"row {i}: unknown features {unknown}; the model takes {features}")
            missing = [f for f in features if f not in row]
            if missing and self.manifest.input.nan_policy != "impute":
                raise InputError(f"row {i}: missing features {missing}")
            lists.append([row.get(f) for f in features])
        return self.rows_from_lists(lists)

    def _number(self, value: Any, row: int, feature: str) -> float:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if self.manifest.input.nan_policy != "impute":
                raise InputError(
                    f"row {row}: {feature} is missing and this model does not accept missing values"
                )
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"row {row}: {feature} must be a number, got {value!r}")
        # An int has no NaN, and past 1e308 math.isfinite cannot take it (OverflowError).
        if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > FLOAT32_MAX:
            raise InputError(f"row {row}: {feature}={value} is not a finite float32")
        return float(value)


def _bulk_rows(rows: Rows, width: int) -> npt.NDArray[np.float32] | None:
    """The common case in one numpy conversion: a rectangle of finite float32-range numbers
    (no missing values, no bools, no strings). ``None`` sends the rows through the per-value
    checks, which name the offending row and feature."""
    try:
        if isinstance(rows, np.ndarray):
            if rows.dtype.kind not in "fiu":
                return None
        elif not _PLAIN_NUMBERS.issuperset(map(type, itertools.chain.from_iterable(rows))):
            return None  # bools, strings, None: the slow path explains
        X = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # rows not sequences, ragged rows
        return None
    if X.ndim != 2 or X.shape[1] != width or X.size == 0:
        return None
    return _float32_rows(X)


def _float32_rows(X: npt.NDArray[np.float64]) -> npt.NDArray[np.float32] | None:
    """``X`` as float32 when every value is finite and within float32's range."""
    if not (X.min() >= -FLOAT32_MAX and X.max() <= FLOAT32_MAX):
        return None  # NaN fails the comparison too
    return X.astype(np.float32)


def load_model(model: bytes | Path, manifest: ModelManifest) -> LoadedModel:
    """Load (a file, or bytes already checked against the manifest) in a fresh session and
    check it against the manifest before it may serve: inputs/outputs match, golden vectors
    reproduce within tolerance."""
    try:
        session = session_for(model)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VerificationError(
            "load_failed",
            f"onnxruntime cannot load the model: {type(exc).__name__}: {str(exc)[:300]}",
        ) from exc
    inputs, outputs = describe(session)
    check_io(manifest, inputs, outputs)
    loaded = LoadedModel(manifest=manifest, session=session)
    try:
        result = loaded.run(golden_inputs(manifest))
    except Exception as exc:
        raise VerificationError(
            "golden_mismatch",
            f"the golden vectors fail to run: {type(exc).__name__}: {str(exc)[:300]}",
        ) from exc
    check_golden(manifest, result.labels, result.values)
    return loaded
